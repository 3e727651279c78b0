#!/usr/bin/env bash
# Offline check of the deployment files (no Docker daemon, no cluster):
#   - docker-compose.yml parses and validates (`docker-compose config -q`), and internal TLS
#     is on: every Reactor service has REACTOR_INTERNAL_TLS and https internal URLs, waits
#     for the one-shot certificate generator and mounts its volume read-only (only the
#     generator writes it);
#   - every manifest of deploy/k8s validates against the Kubernetes API schemas with no
#     unknown field (`kubernetes-validate --strict`), and kustomization.yaml lists exactly
#     the manifests of the directory;
#   - internal TLS is on in deploy/k8s: config.yaml turns it on with https URLs, and every
#     Reactor Deployment mounts the Secret reactor-tls read-only with ca.pem and its own
#     role's pair only (never ca.key);
#   - deploy/observability: Prometheus scrapes every Reactor service of the compose file
#     with the metrics token, the Collector takes OTLP traces, and the Grafana dashboard
#     queries only series docs/observability.md lists.
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

echo "==> docker-compose.yml: internal TLS on every Reactor service"
"${compose[@]}" config >"$secrets_dir/config.yml"
python3 - "$secrets_dir/config.yml" <<'EOF'
import sys, yaml
with open(sys.argv[1]) as f:
    services = yaml.safe_load(f)["services"]

def mounts(service):
    """(source, target, read_only) of each volume, short or long syntax."""
    for v in service.get("volumes") or []:
        if isinstance(v, str):
            parts = v.split(":")
            mode = parts[2] if len(parts) > 2 else "rw"
            yield parts[0], parts[1], "ro" in mode.split(",")
        else:
            yield v.get("source"), v.get("target"), bool(v.get("read_only"))

def env(service):
    e = service.get("environment") or {}
    if isinstance(e, list):
        e = dict(x.split("=", 1) for x in e)
    return {k: "" if v is None else str(v) for k, v in e.items()}

errors = []
reactor = {n: s for n, s in services.items() if str(s.get("image", "")).startswith("reactor/")}
inits = [n for n, s in reactor.items() if "--tls-init" in (s.get("command") or [])]
if len(inits) != 1:
    sys.exit(f"expected one service running --tls-init, found {inits}")
init = inits[0]
command = reactor[init]["command"]
init_dir = command[command.index("--tls-init") + 1]
tls_volumes = {src for src, dst, ro in mounts(reactor[init]) if dst == init_dir and not ro}
if len(tls_volumes) != 1:
    sys.exit(f"{init}: no volume mounted read-write at {init_dir}, where it writes")
for name, service in services.items():
    for src, dst, ro in mounts(service):
        if src in tls_volumes and not ro and name != init:
            errors.append(f"{name}: mounts the TLS volume {src} read-write (only {init} may)")
for name, service in sorted(reactor.items()):
    if name == init:
        continue
    e = env(service)
    if e.get("REACTOR_INTERNAL_TLS", "").lower() not in ("true", "1"):
        errors.append(f"{name}: REACTOR_INTERNAL_TLS is not true")
    tls_dir = e.get("REACTOR_INTERNAL_TLS_DIR")
    if not any(src in tls_volumes and dst == tls_dir and ro for src, dst, ro in mounts(service)):
        errors.append(f"{name}: the TLS volume is not mounted read-only at REACTOR_INTERNAL_TLS_DIR ({tls_dir})")
    for key, value in e.items():
        if key.endswith(("_CONTROL_PLANE_URL", "_ADVERTISE_URL")) and not value.startswith("https://"):
            errors.append(f"{name}: {key}={value} is not https")
    depends = service.get("depends_on") or {}
    if not isinstance(depends, dict) or (depends.get(init) or {}).get("condition") != "service_completed_successfully":
        errors.append(f"{name}: does not wait for {init} (condition: service_completed_successfully)")
if errors:
    sys.exit("\n".join(errors))
print(f"ok: {len(reactor) - 1} services with TLS on, certificates from {init} (volume {', '.join(tls_volumes)}), mounted read-only")
EOF

echo "==> deploy/observability: Prometheus scrapes every Reactor service; the dashboard's queries"
python3 - "$secrets_dir/config.yml" <<'EOF'
import json, re, sys, yaml
def check(ok, message):
    if not ok:
        print(f"deploy/observability: {message}", file=sys.stderr)
        sys.exit(1)
compose = yaml.safe_load(open(sys.argv[1]))["services"]
reactor = {n for n, s in compose.items()
           if str(s.get("image", "")).startswith("reactor/") and "--tls-init" not in s.get("command", [])}
check(len(reactor) >= 4, f"expected the Reactor services in docker-compose.yml, found {sorted(reactor)}")
prom = yaml.safe_load(open("deploy/observability/prometheus.yml"))
targets = {t.split(":")[0] for job in prom["scrape_configs"]
           for sc in job.get("static_configs", []) for t in sc["targets"]}
missing = reactor - targets
check(not missing, f"prometheus.yml does not scrape {sorted(missing)}")
for job in prom["scrape_configs"]:
    hosts = {t.split(":")[0] for sc in job.get("static_configs", []) for t in sc["targets"]}
    if hosts & reactor:
        check(job.get("authorization", {}).get("credentials_file"), f"{job['job_name']}: no token")
otel = yaml.safe_load(open("deploy/observability/otel-collector.yaml"))
check("otlp" in otel["service"]["pipelines"]["traces"]["receivers"], '"otlp" in otel["service"]["pipelines"]["traces"]["receivers"]')
for name in ("otel-collector", "prometheus", "grafana"):
    check(name in compose, f"docker-compose.yml has no {name}")
for name in reactor:
    env = compose[name].get("environment", {})
    check(env.get("REACTOR_TELEMETRY_OTLP_ENDPOINT", "").startswith("http://otel-collector:"), name)
    check(env.get("REACTOR_TELEMETRY_METRICS_TOKEN"), name)
dash = json.load(open("deploy/observability/grafana/dashboards/reactor.json"))
# The series the services export: docs/observability.md's table is the list.
doc = open("docs/observability.md").read()
known = set(re.findall(r"`(reactor_[a-z_]+)`", doc))
exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
check(len(exprs) >= 10, exprs)
for e in exprs:
    for m in re.findall(r"reactor_[a-z_]+", e):
        base = re.sub(r"_(bucket|count|sum)$", "", m)
        check(m in known or base in known, f"dashboard query names {m}, not in docs/observability.md")
print(f"ok: scrape targets cover {sorted(reactor)}; {len(exprs)} dashboard queries on documented series")
EOF

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

echo "==> deploy/k8s: internal TLS on, each Deployment with its own role's certificate"
python3 - "${manifests[@]}" <<'EOF'
import sys, yaml
docs = [d for p in sys.argv[1:] for d in yaml.safe_load_all(open(p)) if d]
errors = []
config = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "reactor-config"]
if len(config) != 1:
    sys.exit("no ConfigMap reactor-config")
data = config[0].get("data") or {}
if data.get("REACTOR_INTERNAL_TLS", "").lower() not in ("true", "1"):
    errors.append("reactor-config: REACTOR_INTERNAL_TLS is not true")
tls_dir = data.get("REACTOR_INTERNAL_TLS_DIR")
if not tls_dir:
    errors.append("reactor-config: no REACTOR_INTERNAL_TLS_DIR")
for key, value in data.items():
    if key.endswith("_CONTROL_PLANE_URL") and not value.startswith("https://"):
        errors.append(f"reactor-config: {key}={value} is not https")
for d in docs:
    if d["kind"] == "Secret" and "ca.key" in {**(d.get("data") or {}), **(d.get("stringData") or {})}:
        errors.append(f"Secret {d['metadata']['name']}: holds ca.key")
# The role whose certificate each image presents.
roles = {"reactor/control-plane": "control-plane", "reactor/data-plane": "router",
         "reactor/worker-wasm": "worker", "reactor/worker-bun": "worker"}
deployments = 0
for d in docs:
    if d["kind"] != "Deployment":
        continue
    name, pod = d["metadata"]["name"], d["spec"]["template"]["spec"]
    containers = [c for c in pod["containers"] if c["image"].split(":")[0] in roles]
    if not containers:
        continue
    deployments += 1
    role = roles[containers[0]["image"].split(":")[0]]
    volumes = [v for v in pod.get("volumes") or [] if (v.get("secret") or {}).get("secretName") == "reactor-tls"]
    if len(volumes) != 1:
        errors.append(f"{name}: mounts the Secret reactor-tls {len(volumes)} times, not once")
        continue
    items = volumes[0]["secret"].get("items") or []
    found = {i["key"] for i in items} | {i["path"] for i in items}
    want = {"ca.pem", f"{role}.pem", f"{role}.key"}
    if found != want:
        errors.append(f"{name}: reactor-tls items {sorted(found)}, want exactly {sorted(want)} (never ca.key)")
    for c in containers:
        if not any(m["name"] == volumes[0]["name"] and m["mountPath"] == tls_dir and m.get("readOnly")
                   for m in c.get("volumeMounts") or []):
            errors.append(f"{name}/{c['name']}: reactor-tls is not mounted read-only at {tls_dir}")
        for e in c.get("env") or []:
            if e["name"].endswith(("_CONTROL_PLANE_URL", "_ADVERTISE_URL")) and "value" in e \
                    and not e["value"].startswith("https://"):
                errors.append(f"{name}/{c['name']}: {e['name']}={e['value']} is not https")
if deployments == 0:
    errors.append("no Reactor Deployment in deploy/k8s")
if errors:
    sys.exit("\n".join(errors))
print(f"ok: TLS on in reactor-config; {deployments} Deployments mount reactor-tls read-only, each with its own role's pair")
EOF

echo "==> deployment files: all checks passed"
