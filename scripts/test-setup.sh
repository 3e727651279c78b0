#!/usr/bin/env bash
# Unit tests of scripts/setup.sh's decisions (moto_plan, check_prereqs, setup_moto's skip,
# the options), with fake commands on a PATH of temporary directories: no network, nothing
# installed, a few seconds. Run: bash scripts/test-setup.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/setup.sh
source "$here/setup.sh"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/reactor-test-setup.XXXXXX")"
trap 'rm -rf -- "$tmp"' EXIT
failures=0

ok() { echo "ok - $1"; }
not_ok() {
  echo "not ok - $1"
  shift
  printf '    %s\n' "$@"
  failures=$((failures + 1))
}
# expect_eq NAME EXPECTED ACTUAL
expect_eq() {
  if [[ "$3" == "$2" ]]; then ok "$1"; else not_ok "$1" "expected: $2" "got:      $3"; fi
}

# A directory of commands for a PATH: symlinks to the real coreutils named (resolved now,
# before any test narrows PATH), to which the tests add fakes.
bindir() {
  local dir="$tmp/$1" c
  shift
  mkdir -p "$dir"
  for c in "$@"; do ln -s "$(command -v "$c")" "$dir/$c"; done
  echo "$dir"
}
# fake PATH-OF-SCRIPT BODY: an executable bash script (absolute shebang: works on any PATH).
fake() {
  mkdir -p "$(dirname "$1")"
  printf '#!%s\n%s\n' "$BASH" "$2" >"$1"
  chmod +x "$1"
}
probe_tmp="$tmp/probe-tmp"
mkdir -p "$probe_tmp"
# plan BIN VENV: moto_plan with PATH=BIN only and probes under $probe_tmp.
plan() { (PATH="$1" TMPDIR="$probe_tmp" moto_plan "$2"); }

# (a) no python3 on PATH, no venv: skip, naming python3.
bin="$(bindir a mktemp rm)"
got="$(plan "$bin" "$tmp/a/.venv")"
if [[ "$got" == skip:* && "$got" == *python3* ]]; then
  ok "moto_plan without python3: $got"
else
  not_ok "moto_plan without python3 skips naming python3" "got: $got"
fi

# (b) python3 whose `-m venv` fails as on Debian without python3-venv: skip, naming python3-venv.
bin="$(bindir b mktemp rm)"
fake "$bin/python3" '
if [[ "$1 $2" == "-m venv" ]]; then
  mkdir -p "${!#}/bin"   # Debian leaves a half-made venv behind
  cat <<EOF
The virtual environment was not successfully created because ensurepip is not
available.  On Debian/Ubuntu systems, you need to install the python3-venv
package using the following command.

    apt install python3.11-venv

Failing command: ${!#}/bin/python3
EOF
  exit 1
fi
exit 0'
got="$(plan "$bin" "$tmp/b/.venv")"
if [[ "$got" == skip:* && "$got" == *python3-venv* ]]; then
  ok "moto_plan with a python3 whose -m venv fails: $got"
else
  not_ok "moto_plan with a python3 whose -m venv fails skips naming python3-venv" "got: $got"
fi

# (b') the real Debian shape: a --without-pip venv works, but ensurepip is not importable.
bin="$(bindir b2 mktemp rm)"
fake "$bin/python3" '
case "$1 ${2:-}" in
  "-m venv") mkdir -p "${!#}/bin"; exit 0 ;;
  "-c import ensurepip") echo "ModuleNotFoundError: No module named '\''ensurepip'\''" >&2; exit 1 ;;
esac
exit 0'
got="$(plan "$bin" "$tmp/b2/.venv")"
if [[ "$got" == skip:* && "$got" == *python3-venv* ]]; then
  ok "moto_plan with a python3 without ensurepip: skip naming python3-venv"
else
  not_ok "moto_plan with a python3 without ensurepip skips naming python3-venv" "got: $got"
fi

# (c) python3 with venv (and ensurepip) but no pip of its own: install (pip comes from the venv).
bin="$(bindir c mktemp rm)"
fake "$bin/python3" '
case "$1 ${2:-}" in
  "-m venv") mkdir -p "${!#}/bin"; exit 0 ;;
  "-m pip") echo "/usr/bin/python3: No module named pip" >&2; exit 1 ;;
esac
exit 0'
expect_eq "moto_plan with a python3 that has venv but no pip: install" install \
  "$(plan "$bin" "$tmp/c/.venv")"

# The venv probes ran in temporary directories and removed them; .venv was not touched.
leftover="$(find "$probe_tmp" -mindepth 1 | head -n 3)"
expect_eq "moto_plan's probes left nothing behind" "" "$leftover"
if [[ -e "$tmp/b/.venv" || -e "$tmp/c/.venv" ]]; then
  not_ok "moto_plan does not create .venv" "found: $(ls -d "$tmp"/*/.venv)"
else
  ok "moto_plan does not create .venv"
fi

# (d) .venv/bin/python reporting moto 5.2.5: present (no system python3 needed).
bin="$(bindir d mktemp rm)"
fake "$tmp/d/.venv/bin/python" '
case "$1" in
  -c) echo 5.2.5 ;;
  -m) [[ "$2" == pip ]] && echo "pip 24.0 from .venv" ;;
esac'
expect_eq "moto_plan with .venv reporting moto $MOTO_VERSION: present" present \
  "$(plan "$bin" "$tmp/d/.venv")"

# (e) .venv with pip but moto 5.2.1 (the broken one): install, into that venv.
fake "$tmp/e/.venv/bin/python" '
case "$1" in
  -c) echo 5.2.1 ;;
  -m) [[ "$2" == pip ]] && echo "pip 24.0 from .venv" ;;
esac'
expect_eq "moto_plan with .venv reporting moto 5.2.1: install" install \
  "$(plan "$bin" "$tmp/e/.venv")"

# setup_moto on a skip plan: exactly one line, status 0 (the set-up continues).
bin="$(bindir f mktemp rm)"
rc=0
out="$(PATH="$bin" TMPDIR="$probe_tmp" setup_moto "$tmp/f/.venv" 2>&1)" || rc=$?
if [[ $rc == 0 && "$out" == "==> skipping moto (only the S3 tests need it): python3"* \
  && "$(printf '%s\n' "$out" | wc -l)" == 1 ]]; then
  ok "setup_moto without python3 prints one skip line and returns 0"
else
  not_ok "setup_moto without python3 prints one skip line and returns 0" "status: $rc" "output: $out"
fi

# check_prereqs: fake cargo and rustup, no cc, no npm.
bin="$(bindir g)"
fake "$bin/cargo" 'exit 0'
fake "$bin/rustup" 'exit 0'
rc=0
out="$(PATH="$bin" HOME="$tmp/g-home" check_prereqs 2>&1)" || rc=$?
if [[ $rc != 0 ]] && grep -q '^missing: cc.*sudo apt-get install -y build-essential$' <<<"$out" \
  && grep -q 'sudo apt-get install -y nodejs npm' <<<"$out" \
  && ! grep -q 'rustup' <<<"$out"; then
  ok "check_prereqs without cc reports it with build-essential and fails (status $rc)"
else
  not_ok "check_prereqs without cc reports it with build-essential and fails" "status: $rc" "output: $out"
fi

# check_prereqs with nothing at all: every missing one reported, not just the first.
bin="$(bindir h)"
rc=0
out="$(PATH="$bin" HOME="$tmp/h-home" check_prereqs 2>&1)" || rc=$?
if [[ $rc != 0 && "$(wc -l <<<"$out")" -eq 3 ]] \
  && grep -q 'build-essential' <<<"$out" \
  && grep -qF "missing: cargo rustup (Rust via rustup); install it with: curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh, then: . \"\$HOME/.cargo/env\"" <<<"$out" \
  && grep -q 'nodejs npm' <<<"$out"; then
  ok "check_prereqs with nothing installed reports cc, cargo/rustup and npm"
else
  not_ok "check_prereqs with nothing installed reports cc, cargo/rustup and npm" "status: $rc" "output: $out"
fi

# check_prereqs with everything: status 0, silent.
bin="$(bindir i)"
for c in cc cargo rustup npm; do fake "$bin/$c" 'exit 0'; done
rc=0
out="$(PATH="$bin" check_prereqs 2>&1)" || rc=$?
expect_eq "check_prereqs with cc, cargo, rustup and npm: status 0, silent" "0:" "$rc:$out"

# Options: --help and an unknown option return before doing anything.
rc=0
out="$(bash "$here/setup.sh" --help 2>&1)" || rc=$?
if [[ $rc == 0 && "$out" == Usage:* && "$out" == *--no-install* && "$out" == *--no-test-tools* ]]; then
  ok "setup.sh --help"
else
  not_ok "setup.sh --help" "status: $rc" "output: $out"
fi
rc=0
out="$(bash "$here/setup.sh" --bogus 2>&1)" || rc=$?
if [[ $rc == 2 && "$out" == *"unknown option: --bogus"* ]]; then
  ok "setup.sh --bogus fails with status 2"
else
  not_ok "setup.sh --bogus fails with status 2" "status: $rc" "output: $out"
fi

if ((failures)); then
  echo "FAILED: $failures test(s)"
  exit 1
fi
echo "all passed"
