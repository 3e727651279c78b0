#!/usr/bin/env bash
# Set-up: everything Reactor needs to build, run and test, installed idempotently.
#   - the wasm32-wasip2 target (examples and test components are built for it)
#   - the `reactor` binary, installed into ~/.cargo/bin (a release build)
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> rust target wasm32-wasip2"
rustup target add wasm32-wasip2

if [ "${1:-}" != "--no-install" ]; then
  echo "==> building and installing the reactor binary (a cold build takes several minutes)"
  cargo install --locked --path cli --quiet
  echo "==> installed: $(command -v reactor || echo "$HOME/.cargo/bin/reactor (add ~/.cargo/bin to PATH)")"
fi
