#!/usr/bin/env bash
# Builds lbfabric's Debian package with cargo-deb: the four binaries, their
# manual pages (rendered from their clap definitions by `--man-page`),
# lbctl's shell completions, the systemd units and /etc/default files.
#   packaging/build-deb.sh [PROFILE]   (default release; dev for tests)
# Prints the .deb's path.
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-release}"
case "$profile" in
    dev) dir=debug ;;
    *) dir="$profile" ;;
esac
command -v cargo-deb >/dev/null || { echo "build-deb: cargo-deb missing (cargo install --locked cargo-deb)" >&2; exit 1; }
cargo build --quiet --profile "$profile" -p lb-controller -p lb-director -p lb-realserver -p lbctl >&2
out=target/lbfabric-deb
rm -rf "$out" && mkdir -p "$out/man" "$out/completions"
for b in lb-controller lb-director lb-realserver lbctl; do
    "target/$dir/$b" --man-page | gzip -9n > "$out/man/$b.1.gz"
done
"target/$dir/lbctl" completion bash > "$out/completions/lbctl"
"target/$dir/lbctl" completion zsh > "$out/completions/_lbctl"
"target/$dir/lbctl" completion fish > "$out/completions/lbctl.fish"
# --fast: gzip, not xz (a test build's binaries are large).
cargo deb --no-build --profile "$profile" -p lb-controller --fast --output "$out/" >&2
ls "$out"/lbfabric_*.deb
