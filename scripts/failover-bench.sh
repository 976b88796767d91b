#!/usr/bin/env bash
# The host-loss failover benchmark (tests/src/bin/lb-failover-bench.rs) in
# the VM test bed: prints the client's gap per failover at the shipped and at
# tuned timers, and with keepalived 2.2 (VRRPv2 advert_int 1, VRRPv3
# advert_int 0.1) in the same VM, topology and client. Not part of CI: figures under software emulation, not pass or
# fail. Needs root and scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --workspace --bins
target/debug/lb-vm prepare >/dev/null
exec target/debug/lb-vm run -- "$PWD/target/debug/lb-failover-bench"
