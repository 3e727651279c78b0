#!/usr/bin/env bash
# Builds `wasmtime` 48.0.8 (the CLI, for `wasmtime serve`) into a cache outside the repo, once.
# The benchmarks compare against it in the same run. About 20 minutes on 2 cores; never in CI.
# Prints the binary's path on its last line.
set -euo pipefail
root="${REACTOR_BENCH_CACHE:-$HOME/.cache/reactor}/wasmtime-cli-48.0.8"
bin="$root/bin/wasmtime"
if [ ! -x "$bin" ]; then
  echo "==> building wasmtime-cli 48.0.8 into $root (one time, ~20 minutes)" >&2
  CARGO_TARGET_DIR="$root/target" cargo install wasmtime-cli@48.0.8 --locked --root "$root" >&2
  rm -rf "$root/target"
fi
"$bin" --version >&2
echo "$bin"
