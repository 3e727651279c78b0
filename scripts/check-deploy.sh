#!/usr/bin/env bash
# Offline check of the deployment files (no Docker daemon, no cluster):
#   - docker-compose.yml parses and validates (`docker-compose config -q`);
#   - every manifest of deploy/k8s validates against the Kubernetes API schemas with no
#     unknown field (`kubernetes-validate --strict`), and kustomization.yaml lists exactly
#     the manifests of the directory.
# Installs docker-compose (Debian package) and kubernetes-validate (PyPI) when missing; safe
# to run again. Exits non-zero on the first failing check.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive

apt_install() {
  $sudo apt-get install -y --no-install-recommends "$@" >/dev/null \
    || { $sudo apt-get update >/dev/null && $sudo apt-get install -y --no-install-recommends "$@" >/dev/null; }
}

if ! command -v docker-compose >/dev/null; then
  echo "==> installing docker-compose (apt)"
  apt_install docker-compose
fi

if ! python3 -c 'import kubernetes_validate' 2>/dev/null; then
  echo "==> installing kubernetes-validate (pip)"
  python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
  # A Debian system Python refuses plain pip installs (PEP 668): then install for the user.
  python3 -m pip install --quiet kubernetes-validate 2>/dev/null \
    || python3 -m pip install --quiet --user --break-system-packages kubernetes-validate
fi
# Through the module, so that a fresh install works whether or not its script is on PATH.
kubernetes_validate=(python3 -m kubernetes_validate)

echo "==> docker-compose.yml ($(docker-compose version --short 2>/dev/null || echo unknown))"
# No secret has a default: without them the file must not validate; with generated ones it must.
secrets_dir=$(mktemp -d)
trap 'rm -rf "$secrets_dir"' EXIT
: >"$secrets_dir/empty"
if docker-compose --env-file "$secrets_dir/empty" -f docker-compose.yml config -q 2>/dev/null; then
  echo "docker-compose.yml validates without secrets: a secret has a default" >&2
  exit 1
fi
./scripts/compose-secrets.sh "$secrets_dir/env" >/dev/null
compose=(docker-compose --env-file "$secrets_dir/env" -f docker-compose.yml)
"${compose[@]}" config -q
services=$("${compose[@]}" config --services | tr '\n' ' ')
echo "ok: refused without secrets; docker-compose config -q; services: ${services% }"

echo "==> deploy/k8s (kubernetes-validate $("${kubernetes_validate[@]}" --version), --strict)"
manifests=()
for f in deploy/k8s/*.yaml deploy/k8s/*.yml; do
  [ -e "$f" ] || continue
  [ "$(basename "$f")" = kustomization.yaml ] && continue
  manifests+=("$f")
done
if [ "${#manifests[@]}" = 0 ]; then
  echo "no manifests in deploy/k8s" >&2
  exit 1
fi
status=0
out=$("${kubernetes_validate[@]}" --strict "${manifests[@]}" 2>&1) || status=$?
echo "$out"
# A resource of an unknown kind or apiVersion is only a WARN (exit 0) for kubernetes-validate:
# here it fails, like any ERROR.
if [ "$status" != 0 ] || grep -qE '^(WARN|ERROR|FATAL)' <<<"$out"; then
  echo "FAILED: kubernetes-validate --strict" >&2
  exit 1
fi
echo "ok: ${#manifests[@]} manifests, $(grep -c '^INFO .* passed' <<<"$out") resources"

echo "==> deploy/k8s/kustomization.yaml lists every manifest"
python3 - "${manifests[@]}" <<'EOF'
import os, sys, yaml
with open("deploy/k8s/kustomization.yaml") as f:
    listed = set(yaml.safe_load(f).get("resources") or [])
present = {os.path.basename(p) for p in sys.argv[1:]}
missing, extra = sorted(present - listed), sorted(listed - present)
if missing or extra:
    sys.exit(f"kustomization.yaml: not listed {missing}, listed but absent {extra}")
print(f"ok: {len(listed)} resources listed")
EOF

echo "==> deployment files: all checks passed"
