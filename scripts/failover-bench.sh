#!/usr/bin/env bash
# The failover benchmark (tests/src/bin/lb-failover-bench/): the client's
# gap per failover, p50/p90/max, at the shipped, the previous and tuned
# timers, and with keepalived 2.2 (VRRPv2 advert_int 1, VRRPv3 advert_int
# 0.1) in the same place, topology and client. Twice: natively on this host
# (namespaces, directors with --no-ipvs, the real timers), then in the VM
# test bed (IPVS, software emulation). Not part of CI: figures, not pass or
# fail. LB_BENCH_SETS=text picks sets; `--soak SECONDS` runs the soak
# instead (native, default timers, both CPUs busy). Needs root and
# scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --workspace --bins
if [ "${1:-}" = --soak ]; then
    exec target/debug/lb-failover-bench soak "${2:-600}"
fi
echo "== natively, in network namespaces"
target/debug/lb-failover-bench
echo "== in the VM test bed"
target/debug/lb-vm prepare >/dev/null
exec target/debug/lb-vm run -- "$PWD/target/debug/lb-failover-bench"
