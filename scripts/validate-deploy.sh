#!/usr/bin/env bash
# Validates the deployment files offline: renders the kustomize base with
# `kubectl kustomize`, checks every resource against the Kubernetes schemas
# with the PyPI package kubernetes-validate (installed by
# scripts/python-tools.sh), and checks that the IAM policy is JSON.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

KUBERNETES_VERSION=1.33.0

if ! command -v kubectl >/dev/null; then
  echo "validate-deploy: installing kubectl with apt-get" >&2
  apt-get install -y kubectl >/dev/null || {
    echo "validate-deploy: kubectl is needed to render deploy/kubernetes (kubectl kustomize)" >&2
    exit 1
  }
fi
python=$(scripts/python-tools.sh)

rendered=$(mktemp --suffix=.yaml)
trap 'rm -f "$rendered"' EXIT
kubectl kustomize deploy/kubernetes >"$rendered"
"$(dirname "$python")/kubernetes-validate" --strict --quiet -k "$KUBERNETES_VERSION" "$rendered"
for kind in ServiceAccount ConfigMap Deployment Service PodDisruptionBudget; do
  grep -q "^kind: $kind$" "$rendered" || { echo "validate-deploy: no $kind rendered" >&2; exit 1; }
done
python3 -m json.tool deploy/iam-policy.json >/dev/null
echo "validate-deploy: deploy/kubernetes and deploy/iam-policy.json are valid" >&2
