#!/usr/bin/env bash
# API fuzzing: schemathesis (installed into .venv by scripts/setup.sh) generates requests
# from the OpenAPI document that a real `reactor dev` serves at
# /fn/v1/_admin/openapi.json, sends them with an admin token, and checks every answer:
# no 5xx, statuses, content types, headers and bodies as the document describes them, and
# none slower than a request timeout. The whole run is bounded too (no hang). Prints
# schemathesis's summary; exits non-zero on any failure. The logs operation is left out: it
# is a stream that stays open by design (follow=true), which a request timeout would call
# a hang; its errors are the same as its neighbours'.
#
#   scripts/fuzz-api.sh [REACTOR_BINARY]
#
# The binary defaults to the release build ($CARGO_TARGET_DIR or target/release/reactor),
# which `cargo test --release --workspace` (the README's test command) has built; when it
# is missing, `cargo build --release --bin reactor` builds it.
set -euo pipefail
cd "$(dirname "$0")/.."

# Test cases per operation, per phase; CI's budget for the whole run, in seconds.
MAX_EXAMPLES="${REACTOR_FUZZ_EXAMPLES:-100}"
RUN_TIMEOUT_SECS="${REACTOR_FUZZ_TIMEOUT_SECS:-900}"

bin="${1:-${CARGO_TARGET_DIR:-target}/release/reactor}"
if [[ ! -x "$bin" ]]; then
  if [[ $# -gt 0 ]]; then
    echo "fuzz-api.sh: $bin is not an executable" >&2
    exit 1
  fi
  echo "==> $bin is missing: cargo build --release --bin reactor"
  cargo build --release --bin reactor
fi
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
root="$PWD"
schemathesis=.venv/bin/schemathesis
if [[ ! -x "$schemathesis" ]]; then
  echo "fuzz-api.sh: $schemathesis is missing; run scripts/setup.sh first" >&2
  exit 1
fi

workdir="$(mktemp -d "${TMPDIR:-/tmp}/reactor-fuzz.XXXXXX")"
server=""
cleanup() {
  if [[ -n "$server" ]]; then
    kill "$server" 2>/dev/null || true
    # The server drains for up to its grace period; a stuck one is killed.
    for _ in $(seq 1 75); do
      kill -0 "$server" 2>/dev/null || break
      sleep 0.2
    done
    kill -9 "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
  rm -rf -- "$workdir"
}
trap cleanup EXIT

token="rct_$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
url="http://127.0.0.1:$port"

echo "==> reactor dev on $url (workdir $workdir)"
(
  cd "$workdir"
  # Only the defaults: no configuration of the caller's leaks in.
  unset REACTOR_CONFIG REACTOR_TOKEN REACTOR_URL REACTOR_LISTEN
  while IFS='=' read -r name _; do
    unset "$name"
  done < <(env | grep -E '^REACTOR_FUNCTIONS_' || true)
  REACTOR_ADMIN_TOKEN="$token" REACTOR_ORG=fuzz RUST_LOG=warn \
    REACTOR_CREDENTIALS="$workdir/credentials.json" \
    REACTOR_FUNCTIONS_BUN_PATH="$root/node_modules/.bin/bun" \
    exec "$bin" dev --listen "127.0.0.1:$port" --workdir "$workdir/state" \
    >"$workdir/server.log" 2>&1
) &
server=$!
for _ in $(seq 1 300); do
  if curl -fsS "$url/readyz" >/dev/null 2>&1; then
    break
  fi
  if ! kill -0 "$server" 2>/dev/null; then
    echo "fuzz-api.sh: reactor dev exited:" >&2
    cat "$workdir/server.log" >&2
    exit 1
  fi
  sleep 0.2
done
if ! curl -fsS "$url/readyz" >/dev/null 2>&1; then
  echo "fuzz-api.sh: reactor dev was not ready within 60s:" >&2
  cat "$workdir/server.log" >&2
  exit 1
fi

# What the operations can find (scripts/fuzz-api.toml offers these names): a live Bun
# function with env, an empty function, a user who is a member, a contract.
cli() {
  REACTOR_URL="$url" REACTOR_TOKEN="$token" REACTOR_ORG=fuzz \
    REACTOR_CREDENTIALS="$workdir/credentials.json" "$bin" "$@" >/dev/null
}
api() {
  curl -fsS -o /dev/null -X "$1" "$url/fn/v1/_admin$2" -H "Authorization: Bearer $token" \
    -H 'content-type: application/json' --data "$3"
}
echo "==> seeding: functions hello (live) and empty, env, a member, a contract"
cli functions create hello --runtime bun
cli functions deploy hello --dir examples/hello-bun/code
cli functions promote hello
cli functions create empty --runtime bun
cli functions env set hello GREETING hi
api POST /users '{"email":"member@fuzz.example","password":"a-member-of-the-fuzz-org"}'
api PUT /orgs/fuzz/members/member@fuzz.example '{"role":"developer"}'
api POST /contracts '{"name":"greeting@1","input":{"type":"object"}}'

echo "==> schemathesis over $url/fn/v1/_admin/openapi.json ($MAX_EXAMPLES cases per operation and phase)"
status=0
timeout --kill-after=10 "$RUN_TIMEOUT_SECS" "$schemathesis" --config-file scripts/fuzz-api.toml run \
  "$url/fn/v1/_admin/openapi.json" \
  --header "Authorization: Bearer $token" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
  --phases examples,coverage,fuzzing \
  --exclude-operation-id logs \
  --max-examples "$MAX_EXAMPLES" \
  --request-timeout 10 \
  --workers 2 \
  --seed "${REACTOR_FUZZ_SEED:-7}" \
  --no-color || status=$?
if ((status == 124 || status == 137)); then
  echo "fuzz-api.sh: schemathesis did not finish within ${RUN_TIMEOUT_SECS}s (a hang?)" >&2
fi
if ((status != 0)); then
  echo "==> the server's log (last 40 lines)" >&2
  grep -v REACTOR_TOKEN "$workdir/server.log" | tail -n 40 >&2
fi
exit "$status"
