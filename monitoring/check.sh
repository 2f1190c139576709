#!/usr/bin/env bash
# Checks the monitoring configuration; CI runs it, and so can you, from any directory:
#
#   monitoring/check.sh
#
# 1. installs promtool (Debian/Ubuntu package `prometheus`) when it is missing;
# 2. promtool check config   prometheus/prometheus.yml, prometheus/prometheus.local.yml
#    promtool check rules    prometheus/alerts.yml
#    promtool test rules     prometheus/alerts_test.yml
# 3. parses every Grafana dashboard and provisioning file, checks that every panel and target uses
#    the `prometheus` datasource, and checks that every dashboard expression is valid PromQL (each
#    is written, with its Grafana variables replaced by sample values, into a temporary recording
#    rules file for `promtool check rules`);
# 4. checks that every idem_* metric named in an alert or dashboard expression is in the metrics
#    catalogue, docs/metrics.md (histograms with their _bucket, _sum and _count series).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

log() { printf '==> %s\n' "$*"; }

if ! command -v promtool >/dev/null 2>&1; then
  log "promtool not found: installing the Debian package prometheus"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
      echo "promtool is missing and neither root nor sudo is available to install it" >&2
      exit 1
    fi
  fi
  install() {
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus
  }
  if ! install; then
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
    install
  fi
  # The package may start a Prometheus server (systemd hosts); this script only needs promtool.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    $sudo systemctl stop prometheus || true
  fi
fi
promtool --version 2>&1 | head -n 1

log "promtool check config prometheus/prometheus.yml"
promtool check config prometheus/prometheus.yml
log "promtool check config prometheus/prometheus.local.yml"
promtool check config prometheus/prometheus.local.yml
log "promtool check rules prometheus/alerts.yml"
promtool check rules prometheus/alerts.yml
log "promtool test rules prometheus/alerts_test.yml"
(cd prometheus && promtool test rules alerts_test.yml)

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

log "Grafana dashboards and provisioning"
python3 - "$here" "$tmp/dashboard_exprs.yml" <<'PY'
import json, pathlib, re, sys

here = pathlib.Path(sys.argv[1])
out = pathlib.Path(sys.argv[2])
errors = []
DS = {"type": "prometheus", "uid": "prometheus"}

# Grafana's variables, replaced by sample values so that the expressions can be parsed.
SAMPLES = {"__rate_interval": "1m", "__interval": "30s", "__range": "1h",
           "__range_s": "3600", "__interval_ms": "30000"}
VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")

def substitute(expr):
    return VAR.sub(lambda m: SAMPLES.get(m.group(1) or m.group(2), "sample"), expr)

def panels(items):
    for p in items:
        yield p
        yield from panels(p.get("panels", []))

exprs = []
dashboards = sorted((here / "grafana" / "dashboards").glob("*.json"))
if not dashboards:
    errors.append("no dashboard in grafana/dashboards")
uids = {}
for path in dashboards:
    name = path.relative_to(here)
    try:
        d = json.loads(path.read_text())
    except ValueError as e:
        errors.append(f"{name}: not JSON: {e}")
        continue
    uid = d.get("uid")
    if not uid:
        errors.append(f"{name}: no uid")
    elif uid in uids:
        errors.append(f"{name}: uid {uid} also used by {uids[uid]}")
    uids[uid] = name
    for p in panels(d.get("panels", [])):
        where = f"{name}: panel {p.get('id')} ({p.get('title')!r})"
        if p.get("datasource") != DS:
            errors.append(f"{where}: datasource is not {DS}")
        if p.get("type") not in ("row", "text") and not p.get("targets"):
            errors.append(f"{where}: no targets")
        for t in p.get("targets", []):
            if t.get("datasource") != DS:
                errors.append(f"{where}: target {t.get('refId')}: datasource is not {DS}")
            if not t.get("expr"):
                errors.append(f"{where}: target {t.get('refId')}: no expr")
                continue
            exprs.append((f"{where} target {t.get('refId')}", t["expr"]))
    for v in d.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", q or "")
        if v.get("type") == "query":
            if not m:
                errors.append(f"{name}: variable {v.get('name')}: expected label_values(<selector>, <label>)")
            else:
                exprs.append((f"{name}: variable {v.get('name')}", m.group(1)))
    print(f"{name}: uid {uid}, {sum(1 for _ in panels(d.get('panels', [])))} panels")

for path in sorted((here / "grafana" / "provisioning").rglob("*")):
    if path.is_file() and path.suffix not in (".yml", ".yaml"):
        errors.append(f"{path.relative_to(here)}: provisioning files must be YAML")

# A recording rules file (JSON is YAML) with one rule per expression, for promtool check rules.
rules = [{"record": f"dashboard:expr:{i}", "expr": substitute(e)} for i, (_, e) in enumerate(exprs)]
out.write_text(json.dumps({"groups": [{"name": "dashboard-expressions", "rules": rules}]}, indent=1))
(out.parent / "dashboard_exprs.index").write_text("\n".join(w for w, _ in exprs) + "\n")
print(f"{len(exprs)} dashboard expressions extracted")
if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)
PY

log "promtool check rules on the dashboard expressions"
if ! promtool check rules "$tmp/dashboard_exprs.yml"; then
  echo "a dashboard expression does not parse; rule dashboard:expr:N is expression N of:" >&2
  nl -v0 "$tmp/dashboard_exprs.index" >&2
  exit 1
fi

log "metric names against docs/metrics.md"
python3 - "$here" <<'PY'
import json, pathlib, re, sys

here = pathlib.Path(sys.argv[1])
catalogue = here.parent / "docs" / "metrics.md"
if not catalogue.exists():
    print(f"{catalogue} not found: metric names not checked")
    sys.exit(0)

# | `idem_name` | type | labels | meaning |
types = dict(re.findall(r"^\|\s*`(idem_\w+)`\s*\|\s*(\w+)\s*\|", catalogue.read_text(), re.M))
if not types:
    sys.exit(f"{catalogue}: no metric table found")

def known(name):
    if types.get(name):
        return True
    base, _, suffix = name.rpartition("_")
    return suffix in ("bucket", "sum", "count") and types.get(base) == "histogram"

def alert_exprs(path):
    """`expr:` values of a rules file: one-line, or a `|`/`>` block (no YAML library needed)."""
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)(?:-\s+)?expr:\s*(.*)$", lines[i])
        i += 1
        if not m:
            continue
        indent, rest = len(m.group(1)), m.group(2).strip()
        if rest[:1] in ("|", ">"):
            block = []
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                block.append(lines[i])
                i += 1
            yield "\n".join(block)
        else:
            yield rest.strip("'\"")

sources = [("prometheus/alerts.yml", e) for e in alert_exprs(here / "prometheus" / "alerts.yml")]

def walk(items):
    for p in items:
        yield p
        yield from walk(p.get("panels", []))

for path in sorted((here / "grafana" / "dashboards").glob("*.json")):
    d = json.loads(path.read_text())
    for p in walk(d.get("panels", [])):
        sources += [(path.name, t.get("expr", "")) for t in p.get("targets", [])]
    for v in d.get("templating", {}).get("list", []):
        q = v.get("query")
        sources.append((path.name, q.get("query", "") if isinstance(q, dict) else (q or "")))

names, bad = set(), []
for where, expr in sources:
    # Label values ("...") may contain anything; only identifiers outside strings are names.
    code = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    for name in re.findall(r"\bidem_\w+", code):
        names.add(name)
        if not known(name):
            bad.append(f"{where}: {name} is not in docs/metrics.md")
if bad:
    sys.exit("\n".join(sorted(set(bad))))
print(f"{len(sources)} expressions, {len(names)} metric names, all in the catalogue")
PY

log "all monitoring checks passed"
