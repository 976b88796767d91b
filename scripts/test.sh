#!/usr/bin/env bash
# Runs every test: unit and multi-process tests on the host (namespaces
# included), then the real-kernel suite inside the VM, then the demo. Extra
# arguments go to nextest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --workspace --bins
cargo nextest run --workspace --no-fail-fast -E 'not binary(vm) and not binary(vm_systemd)' "$@"
scripts/vm-test.sh
# The operator's first command must keep working.
scripts/demo.sh
