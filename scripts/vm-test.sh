#!/usr/bin/env bash
# Runs the real-kernel suites inside the VM test bed: cargo hands each test
# binary to lb-vm, which boots Debian's kernel under qemu and runs it there.
#   1. `vm`: everything that needs IPVS, ipip, namespaces (PID 1 is lb-vm);
#   2. `vm_systemd`: the Debian package's units under systemd as PID 1
#      (lb-vm run --systemd), with the package built here first.
# Extra arguments go to the test binaries (a filter: the pass it matches
# nothing in just reports 0 tests).
set -euo pipefail
cd "$(dirname "$0")/.."
# Every binary the tests start (lb-director, lb-controller, ...), not only lb-vm.
cargo build -q --workspace --bins
target/debug/lb-vm prepare >/dev/null
# Build first so the wall time below is the suite's, not the compiler's.
cargo test -q -p lb-testkit --test vm --test vm_systemd --no-run
started=$(date +%s%N)
CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$PWD/target/debug/lb-vm run --timeout 1800 --" \
    cargo test -p lb-testkit --test vm -- --test-threads 1 "$@"
LB_DEB="$PWD/$(packaging/build-deb.sh dev)"
export LB_DEB
CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$PWD/target/debug/lb-vm run --systemd --timeout 900 --" \
    cargo test -p lb-testkit --test vm_systemd -- --test-threads 1 "$@"
elapsed=$(( ($(date +%s%N) - started) / 1000000 ))
printf 'vm suite: wall time %d.%03ds\n' $((elapsed / 1000)) $((elapsed % 1000))
