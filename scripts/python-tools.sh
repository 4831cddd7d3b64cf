#!/usr/bin/env bash
# Installs the Python tools the tests use into .local-tools/venv (pinned,
# from PyPI), once: kubernetes-validate (deployment files) and
# aws-kinesis-agg (KPL aggregates made by AWS's own library; it imports
# six without declaring it). Prints the venv's python.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

venv=.local-tools/venv
requirements=(kubernetes-validate==1.37.0 aws-kinesis-agg==1.2.3 six==1.17.0 protobuf==7.36.2)
stamp="$venv/.installed"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "${requirements[*]}" ]; then
  echo "python-tools: installing ${requirements[*]}" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "${requirements[@]}"
  echo "${requirements[*]}" >"$stamp"
fi
echo "$PWD/$venv/bin/python"
