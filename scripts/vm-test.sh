#!/usr/bin/env bash
# Runs the real-kernel suite (lb-testkit's `vm` test binary) inside the VM test
# bed: cargo hands the test binary to lb-vm, which boots Debian's kernel under
# qemu and runs it there. Extra arguments go to the test binary.
set -euo pipefail
cd "$(dirname "$0")/.."
# Every binary the tests start (lb-director, lb-controller, ...), not only lb-vm.
cargo build -q --workspace --bins
target/debug/lb-vm prepare >/dev/null
# Build first so the wall time below is the suite's, not the compiler's.
cargo test -q -p lb-testkit --test vm --no-run
started=$(date +%s%N)
CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$PWD/target/debug/lb-vm run --timeout 1800 --" \
    cargo test -p lb-testkit --test vm -- --test-threads 1 "$@"
elapsed=$(( ($(date +%s%N) - started) / 1000000 ))
printf 'vm suite: wall time %d.%03ds\n' $((elapsed / 1000)) $((elapsed % 1000))
