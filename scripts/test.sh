#!/usr/bin/env bash
# Runs every test: builds the binaries the multi-process tests start, then
# runs the whole workspace under nextest. Extra arguments go to nextest.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins
cargo nextest run --workspace --no-fail-fast "$@"
