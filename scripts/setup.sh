#!/usr/bin/env bash
# Set-up: everything Reactor needs to build, run and test, installed idempotently.
#   - the wasm32-wasip2 target (examples and test components are built for it)
#   - Bun, pinned in package.json, from npm into node_modules/.bin/bun (the Bun runtime)
#   - bubblewrap (Debian package), the sandbox Bun functions run in
#   - for the tests only: moto's S3-compatible server (PyPI `moto[server]`), which the
#     storage and scale-out tests start (PostgreSQL and Redis must be running: README)
#   - the `reactor` binary, installed into ~/.cargo/bin (a release build)
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> rust target wasm32-wasip2"
rustup target add wasm32-wasip2

echo "==> bun (npm, pinned in package.json)"
if ! command -v npm >/dev/null; then
  echo "npm is needed to install Bun: install Node.js (e.g. apt-get install nodejs npm)" >&2
  exit 1
fi
npm install --no-audit --no-fund --loglevel=error
echo "==> bun $(./node_modules/.bin/bun --version) at node_modules/.bin/bun"

echo "==> bubblewrap (the Bun sandbox)"
if ! command -v bwrap >/dev/null; then
  if ! command -v apt-get >/dev/null; then
    echo "install bubblewrap (bwrap) with your package manager, or run Reactor with functions.bun_sandbox = false" >&2
    exit 1
  fi
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get install -y --no-install-recommends bubblewrap \
    || { $sudo apt-get update && $sudo apt-get install -y --no-install-recommends bubblewrap; }
fi
echo "==> $(bwrap --version)"

# Pinned: 5.2.1 answered CompleteMultipartUpload with the wrong XML root (moto #10055).
MOTO_VERSION=5.2.5
echo "==> moto $MOTO_VERSION (S3-compatible server for the tests, PyPI)"
if ! python3 -c "import moto.server, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
fi
echo "==> moto $(python3 -c 'import moto; print(moto.__version__)')"

if [ "${1:-}" != "--no-install" ]; then
  echo "==> building and installing the reactor binary (a cold build takes several minutes)"
  cargo install --locked --path cli --quiet
  echo "==> installed: $(command -v reactor || echo "$HOME/.cargo/bin/reactor (add ~/.cargo/bin to PATH)")"
fi
