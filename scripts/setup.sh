#!/usr/bin/env bash
# Set-up: everything Reactor needs to build, run and test, installed idempotently, on a
# fresh Debian 12 / Ubuntu that has rustup's Rust and npm (README). Safe to run again, from
# any directory:
#   - the wasm32-wasip2 target (examples and test components are built for it)
#   - Bun, pinned in package.json, from npm into node_modules/.bin/bun (the Bun runtime)
#   - TypeScript for the JavaScript SDK, pinned in sdk/js/package.json (sdk/js/node_modules)
#   - bubblewrap (Debian package), the sandbox Bun functions run in
#   - for the tests only: moto's S3-compatible server (PyPI `moto[server]`) in a virtual
#     environment, .venv at the repository root; the storage and scale-out tests start
#     .venv/bin/python -m moto.server (PostgreSQL and Redis must be running: README); and
#     schemathesis (PyPI), the API fuzzer of scripts/fuzz-api.sh, in the same .venv
#   - the `reactor` binary, installed into ~/.cargo/bin (a release build)
#
# Sourcing it (tests: scripts/test-setup.sh) defines the functions and runs nothing.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Pinned: 5.2.1 answered CompleteMultipartUpload with the wrong XML root (moto #10055).
MOTO_VERSION=5.2.5
# The API fuzzer CI runs over the OpenAPI document (scripts/fuzz-api.sh).
SCHEMATHESIS_VERSION=4.32.5
# The Prometheus text parser the metrics test reads /metrics with.
PROMETHEUS_CLIENT_VERSION=0.26.0
RUSTUP_INSTALL="curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh"
VENV_HINT="python3 -m venv is not available; install it with: sudo apt-get install -y python3-venv"

usage() {
  cat <<'EOF'
Usage: scripts/setup.sh [--no-install] [--no-test-tools] [--help]

Installs what Reactor needs to build, run and test (idempotent, runs from any directory):
the wasm32-wasip2 target, Bun (npm, pinned in package.json), bubblewrap (apt-get), moto
in .venv for the S3 tests, schemathesis in .venv for the API fuzzer, and the reactor
binary into ~/.cargo/bin.

  --no-install      do not build and install the reactor binary (CI uses this)
  --no-test-tools   do not install the test-only tools (moto, schemathesis)
  --help            print this help
EOF
}

# Prints one line per missing prerequisite (stderr), naming the command that installs it;
# checks all of them, then returns 1 when any is missing.
check_prereqs() {
  local missing=0 rust_missing=()
  if ! command -v cc >/dev/null 2>&1; then
    echo "missing: cc, a C compiler (ring, aws-lc-sys and libsqlite3-sys need one); install it with: sudo apt-get install -y build-essential" >&2
    missing=1
  fi
  command -v cargo >/dev/null 2>&1 || rust_missing+=(cargo)
  command -v rustup >/dev/null 2>&1 || rust_missing+=(rustup)
  if ((${#rust_missing[@]})); then
    if [[ -x "$HOME/.cargo/bin/cargo" && -x "$HOME/.cargo/bin/rustup" ]]; then
      echo "missing: ${rust_missing[*]} on PATH (installed in ~/.cargo/bin); load it in this shell with: . \"\$HOME/.cargo/env\"" >&2
    else
      echo "missing: ${rust_missing[*]} (Rust via rustup); install it with: $RUSTUP_INSTALL, then: . \"\$HOME/.cargo/env\"" >&2
    fi
    missing=1
  fi
  if ! command -v npm >/dev/null 2>&1; then
    echo "missing: npm (it installs Bun); install it with: sudo apt-get install -y nodejs npm" >&2
    missing=1
  fi
  return "$missing"
}

# The moto version installed in the virtual environment $1, or nothing.
moto_venv_version() {
  [[ -x "$1/bin/python" ]] || return 0
  "$1/bin/python" -c 'import moto.server, moto; print(moto.__version__)' 2>/dev/null || true
}

# Whether the virtual environment $1 has a working python with pip.
venv_usable() {
  [[ -x "$1/bin/python" ]] && "$1/bin/python" -m pip --version >/dev/null 2>&1
}

# What to do about moto, for the virtual environment $1 (default: .venv at the repo root).
# Prints exactly one of:
#   present          the venv has moto $MOTO_VERSION
#   install          the venv can be (re)made and moto installed into it with its own pip
#   skip:<reason>    it cannot (python3 or its venv module missing); <reason> says the fix
# Never installs anything; the venv probe runs in a temporary directory that it removes.
moto_plan() {
  local venv="${1:-$REPO_ROOT/.venv}" probe ok
  if [[ "$(moto_venv_version "$venv")" == "$MOTO_VERSION" ]]; then
    echo present
    return 0
  fi
  if venv_usable "$venv"; then
    echo install
    return 0
  fi
  if ! command -v python3 >/dev/null 2>&1; then
    echo "skip:python3 is not installed; install it with: sudo apt-get install -y python3 python3-venv"
    return 0
  fi
  # Debian and Ubuntu ship venv's ensurepip in python3-venv: without it `python3 -m venv`
  # fails ("ensurepip is not available"). A --without-pip venv in a temporary directory
  # plus the ensurepip import checks both, fast, without touching .venv.
  probe="$(mktemp -d "${TMPDIR:-/tmp}/reactor-venv-probe.XXXXXX")" || {
    echo "skip:cannot create a temporary directory to check python3 -m venv"
    return 0
  }
  ok=0
  if python3 -m venv --without-pip "$probe/venv" >/dev/null 2>&1 \
    && python3 -c 'import ensurepip' >/dev/null 2>&1; then
    ok=1
  fi
  rm -rf -- "$probe"
  if ((ok)); then
    echo install
  else
    echo "skip:$VENV_HINT"
  fi
}

# Adds .venv/ to the repository's .gitignore unless it is already there.
ignore_venv() {
  local gitignore="$REPO_ROOT/.gitignore"
  if ! grep -qsxE '/?\.venv/?' "$gitignore"; then
    echo ".venv/" >>"$gitignore"
    echo "==> added .venv/ to .gitignore"
  fi
}

MOTO_SUMMARY=""

# Installs moto $MOTO_VERSION into the virtual environment $1 (default .venv) following
# moto_plan; a skip prints one line and returns 0. Sets MOTO_SUMMARY. Never pip-installs
# into the system Python: pip is the venv's own (ensurepip).
setup_moto() {
  local venv="${1:-$REPO_ROOT/.venv}" plan version
  plan="$(moto_plan "$venv")"
  case "$plan" in
    present) ;;
    skip:*)
      echo "==> skipping moto (only the S3 tests need it): ${plan#skip:}"
      MOTO_SUMMARY="skipped (${plan#skip:})"
      return 0
      ;;
    install)
      ignore_venv
      if ! venv_usable "$venv"; then
        rm -rf -- "$venv"
        echo "==> python3 -m venv ${venv#"$REPO_ROOT"/}"
        if ! python3 -m venv "$venv"; then
          rm -rf -- "$venv"
          echo "==> skipping moto (only the S3 tests need it): $VENV_HINT"
          MOTO_SUMMARY="skipped ($VENV_HINT)"
          return 0
        fi
      fi
      echo "==> moto $MOTO_VERSION into ${venv#"$REPO_ROOT"/} (S3-compatible server for the tests, PyPI)"
      if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "moto[server]==$MOTO_VERSION"; then
        echo "setup.sh: pip could not install moto[server]==$MOTO_VERSION into $venv" >&2
        return 1
      fi
      ;;
    *)
      echo "setup.sh: unexpected moto plan: $plan" >&2
      return 1
      ;;
  esac
  version="$(moto_venv_version "$venv")"
  if [[ "$version" != "$MOTO_VERSION" ]]; then
    echo "setup.sh: moto in $venv is '${version:-missing}', expected $MOTO_VERSION" >&2
    return 1
  fi
  MOTO_SUMMARY="$version at ${venv#"$REPO_ROOT"/}/bin/moto_server"
  echo "==> moto $MOTO_SUMMARY"
}

SCHEMATHESIS_SUMMARY=""

# The schemathesis version installed in the virtual environment $1, or nothing.
schemathesis_venv_version() {
  [[ -x "$1/bin/python" ]] || return 0
  "$1/bin/python" -c 'from importlib.metadata import version; print(version("schemathesis"), version("prometheus-client"))' 2>/dev/null || true
}

# Installs schemathesis $SCHEMATHESIS_VERSION into the virtual environment $1 that
# setup_moto made; when there is none (moto was skipped), says so and returns 0.
setup_schemathesis() {
  local venv="${1:-$REPO_ROOT/.venv}" version
  version="$(schemathesis_venv_version "$venv")"
  if [[ "$version" != "$SCHEMATHESIS_VERSION $PROMETHEUS_CLIENT_VERSION" ]]; then
    if ! venv_usable "$venv"; then
      echo "==> skipping schemathesis (only scripts/fuzz-api.sh needs it): no usable $venv"
      SCHEMATHESIS_SUMMARY="skipped (no usable ${venv#"$REPO_ROOT"/})"
      return 0
    fi
    echo "==> schemathesis $SCHEMATHESIS_VERSION (the API fuzzer) and prometheus-client $PROMETHEUS_CLIENT_VERSION (the metrics test's parser) into ${venv#"$REPO_ROOT"/} (PyPI)"
    if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
      "schemathesis==$SCHEMATHESIS_VERSION" "prometheus-client==$PROMETHEUS_CLIENT_VERSION"; then
      echo "setup.sh: pip could not install schemathesis==$SCHEMATHESIS_VERSION and prometheus-client==$PROMETHEUS_CLIENT_VERSION into $venv" >&2
      return 1
    fi
    version="$(schemathesis_venv_version "$venv")"
  fi
  SCHEMATHESIS_SUMMARY="$version at ${venv#"$REPO_ROOT"/}/bin/schemathesis"
  echo "==> schemathesis $SCHEMATHESIS_SUMMARY"
}

BWRAP_SUMMARY=""

# Installs bubblewrap with apt-get when bwrap is missing. Never fails the script: without
# bwrap Reactor still runs WASM functions, and Bun functions run unsandboxed only when
# REACTOR_FUNCTIONS_BUN_SANDBOX=false.
setup_bwrap() {
  local as_root=()
  if ! command -v bwrap >/dev/null 2>&1; then
    if ! command -v apt-get >/dev/null 2>&1; then
      echo "==> no apt-get: install bubblewrap (bwrap) with your package manager, or run Bun functions with REACTOR_FUNCTIONS_BUN_SANDBOX=false; continuing" >&2
    else
      if [[ "$(id -u)" != 0 ]]; then
        if command -v sudo >/dev/null 2>&1; then
          as_root=(sudo)
        else
          echo "==> bubblewrap needs root to install and sudo is missing: install it as root with: apt-get install -y bubblewrap; continuing" >&2
        fi
      fi
      if [[ "$(id -u)" == 0 || ${#as_root[@]} -gt 0 ]]; then
        "${as_root[@]}" apt-get install -y --no-install-recommends bubblewrap \
          || { "${as_root[@]}" apt-get update && "${as_root[@]}" apt-get install -y --no-install-recommends bubblewrap; } \
          || echo "==> apt-get could not install bubblewrap; continuing without it" >&2
      fi
    fi
  fi
  if command -v bwrap >/dev/null 2>&1; then
    BWRAP_SUMMARY="$(bwrap --version) at $(command -v bwrap)"
    echo "==> $BWRAP_SUMMARY"
  else
    BWRAP_SUMMARY="missing: Bun functions will run only with REACTOR_FUNCTIONS_BUN_SANDBOX=false"
  fi
}

main() {
  local install=1 test_tools=1 arg bun_version reactor_summary cargo_bin path_hint=""
  for arg in "$@"; do
    case "$arg" in
      --no-install) install=0 ;;
      --no-test-tools) test_tools=0 ;;
      -h | --help)
        usage
        return 0
        ;;
      *)
        echo "setup.sh: unknown option: $arg" >&2
        usage >&2
        return 2
        ;;
    esac
  done

  if ! check_prereqs; then
    echo "setup.sh: install what is missing above, then run scripts/setup.sh again" >&2
    return 1
  fi
  cd "$REPO_ROOT"

  echo "==> rust target wasm32-wasip2"
  rustup target add wasm32-wasip2

  echo "==> bun (npm, pinned in package.json)"
  npm install --no-audit --no-fund --loglevel=error
  bun_version="$(./node_modules/.bin/bun --version)"
  echo "==> bun $bun_version at node_modules/.bin/bun"

  echo "==> the JavaScript SDK's build tools (sdk/js: TypeScript, pinned in its package.json)"
  npm install --prefix sdk/js --no-audit --no-fund --loglevel=error

  echo "==> bubblewrap (the Bun sandbox)"
  setup_bwrap

  if ((test_tools)); then
    setup_moto "$REPO_ROOT/.venv"
    setup_schemathesis "$REPO_ROOT/.venv"
  else
    MOTO_SUMMARY="skipped (--no-test-tools)"
    SCHEMATHESIS_SUMMARY="skipped (--no-test-tools)"
  fi

  cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
  if ((install)); then
    echo "==> building and installing the reactor binary (a cold build takes several minutes)"
    cargo install --locked --path cli --quiet
    reactor_summary="$cargo_bin/reactor"
    case ":$PATH:" in
      *":$cargo_bin:"* | *":$cargo_bin/:"*) ;;
      *)
        if [[ -z "${CARGO_HOME:-}" || "$cargo_bin" == "$HOME/.cargo/bin" ]]; then
          # shellcheck disable=SC2016 # printed for the user to paste, unexpanded
          path_hint='export PATH="$HOME/.cargo/bin:$PATH"'
        else
          path_hint="export PATH=\"$cargo_bin:\$PATH\""
        fi
        ;;
    esac
  else
    reactor_summary="not built (--no-install); build it with: cargo install --locked --path cli"
  fi

  echo "==> summary"
  echo "    bun:        $bun_version at $REPO_ROOT/node_modules/.bin/bun"
  echo "    bubblewrap: $BWRAP_SUMMARY"
  echo "    moto:       $MOTO_SUMMARY"
  echo "    schemathesis: $SCHEMATHESIS_SUMMARY"
  echo "    reactor:    $reactor_summary"
  if [[ -n "$path_hint" ]]; then
    echo "==> $cargo_bin is not on PATH; to run reactor, put this line in ~/.bashrc or ~/.profile (and run it in this shell):"
    echo "    $path_hint"
  fi
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
