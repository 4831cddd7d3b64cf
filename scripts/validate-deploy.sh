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
# The optional KEDA component, rendered with the base as a user would add
# it. Its ScaledObject is a custom resource: kubernetes-validate has no
# schema for it, so it is checked here against what KEDA reads.
overlay=$(mktemp -d)
trap 'rm -f "$rendered"; rm -rf "$overlay"' EXIT
# kustomize takes relative paths only.
base=$(realpath --relative-to="$overlay" deploy/kubernetes)
cat >"$overlay/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $base
components:
  - $base/autoscaling/keda
YAML
kubectl kustomize "$overlay" >"$overlay/rendered.yaml"
"$python" - "$overlay/rendered.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
deployments = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
scaled = [d for d in docs if d["kind"] == "ScaledObject"]
assert len(scaled) == 1, "one ScaledObject"
so = scaled[0]
assert so["apiVersion"] == "keda.sh/v1alpha1", so["apiVersion"]
spec = so["spec"]
assert spec["scaleTargetRef"]["name"] in deployments, "targets the worker Deployment"
assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"], "replica bounds"
names = set()
for trigger in spec["triggers"]:
    assert trigger["type"] == "prometheus", trigger
    meta = trigger["metadata"]
    for key in ("serverAddress", "query", "threshold"):
        assert isinstance(meta.get(key), str) and meta[key], (trigger["name"], key)
    float(meta["threshold"])
    assert "kcl_" in meta["query"], meta["query"]
    names.add(trigger["name"])
modifiers = spec["advanced"]["scalingModifiers"]
for name in names:
    assert name in modifiers["formula"], ("formula uses", name)
assert modifiers["metricType"] in ("AverageValue", "Value"), modifiers["metricType"]
float(modifiers["target"])
PY
# The rest of the overlay is the base: validated against the schemas.
"$python" - "$overlay/rendered.yaml" "$overlay/core.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] != "ScaledObject"]
yaml.safe_dump_all(docs, open(sys.argv[2], "w"))
PY
"$(dirname "$python")/kubernetes-validate" --strict --quiet -k "$KUBERNETES_VERSION" "$overlay/core.yaml"
python3 -m json.tool deploy/iam-policy.json >/dev/null
echo "validate-deploy: deploy/kubernetes (with autoscaling/keda) and deploy/iam-policy.json are valid" >&2
