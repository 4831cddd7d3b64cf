#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, API docs, the deployment files, unit and
# integration tests.
#
# Brings the local AWS stack up for the run (and down at exit, even on failure) unless it
# was already running, in which case it is left as it was.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

started_stack=0
stop_stack() {
  if [ "$started_stack" = 1 ]; then scripts/local-aws.sh down || true; fi
}
trap stop_stack EXIT

if scripts/local-aws.sh status >/dev/null 2>&1; then
  echo "test: using the local AWS stack that is already running" >&2
else
  started_stack=1
  scripts/local-aws.sh up
fi
eval "$(scripts/local-aws.sh env)"

echo "test: cargo fmt --check" >&2
cargo fmt --all --check
echo "test: cargo clippy" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "test: cargo clippy on the library crates without their optional features" >&2
cargo clippy -p kcl-lease -p kcl-core --locked -- -D warnings
echo "test: cargo doc (broken links and private links fail)" >&2
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace --locked --quiet
echo "test: deployment files" >&2
scripts/validate-deploy.sh
echo "test: cargo test" >&2
# The KPL tests make aggregates with AWS's Python aggregation library.
KCL_TEST_PYTHON=$(scripts/python-tools.sh)
export KCL_TEST_PYTHON
cargo test --workspace --locked
