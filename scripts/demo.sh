#!/usr/bin/env bash
# The one-command local demo: a controller, a director and two realserver
# agents with HTTP backends in network namespaces, a service created with
# lbctl, balanced answers and `lbctl status`. Needs root. Where this kernel
# has no IPVS (as on the development machines) the demo runs inside the
# project's VM test bed (qemu + Debian's kernel; scripts/setup.sh installs
# it). Everything is cleaned up at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "demo: needs root (network namespaces, IPVS)" >&2
    exit 1
fi
# What it needs (qemu, Debian's kernel, ipvsadm, ...); quick when all is there.
scripts/setup.sh >/dev/null
cargo build -q --workspace --bins
if [ -e /proc/net/ip_vs ] || modprobe -q ip_vs 2>/dev/null; then
    exec target/debug/lb-demo
fi
echo "demo: this kernel has no IPVS; running inside the lbfabric VM test bed (qemu, Debian's kernel)."
target/debug/lb-vm prepare >/dev/null
exec target/debug/lb-vm run -- "$PWD/target/debug/lb-demo"
