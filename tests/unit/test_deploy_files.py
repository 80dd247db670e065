"""The deployment files (deploy/, Dockerfile, docker-compose.yml) against the code they deploy.

- Every metric an alert rule or a dashboard panel names exists in mesh/metrics.py (or the
  gateway's mesh/http_metrics.py), with the labels it is matched or grouped by.
- promtool, when installed, checks the rules, runs their unit tests (alerts_test.yml), checks
  the scrape config and parses every dashboard expression; systemd-analyze, when installed,
  verifies the unit files. Each says so when it skips, and why.
- The unit files agree with the nodes: exit codes, the AI node's drain grace, flags in the env
  file templates.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from mesh import metrics as mesh_metrics
from nodes import cli

yaml = pytest.importorskip("yaml", reason="PyYAML is a test dependency: pip install -e '.[test]'")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
SCRAPE_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "mesh-dashboard.json"
SYSTEMD = DEPLOY / "systemd"
OPERATIONS = ROOT / "docs" / "operations.md"
UNITS = ("mesh-helper@.service", "mesh-ai@.service", "mesh-notifier@.service",
         "mesh-http@.service")

# Labels Prometheus adds to every series (or our scrape config does), and the histogram bucket.
TARGET_LABELS = {"job", "instance", "node", "pool"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                "unless", "bool", "offset"}


# ---- what the code exports ------------------------------------------------------------------

def _exported() -> dict[str, set[str]]:
    """Series name -> label names, for every metric the nodes serve (counters with _total,
    histograms with _bucket/_sum/_count)."""
    objects = [mesh_metrics.HelperMetrics(), mesh_metrics.AINodeMetrics()]
    if importlib.util.find_spec("mesh.http_metrics") is not None:
        from mesh.http_metrics import GatewayMetrics
        objects.append(GatewayMetrics())
    out: dict[str, set[str]] = {}
    for obj in objects:
        for metric in vars(obj).values():
            kind = getattr(metric, "_type", None)
            if kind is None:
                continue
            name, labels = metric._name, set(metric._labelnames)
            if kind == "counter":
                out[f"{name}_total"] = labels
            elif kind == "histogram":
                out[f"{name}_bucket"] = labels | {"le"}
                out[f"{name}_sum"] = out[f"{name}_count"] = labels
            else:
                out[name] = labels
    for prefix, help_by_name in (("mesh_alert_publisher", mesh_metrics.PUBLISHER_STATS_HELP),
                                 ("mesh_alert_subscriber", mesh_metrics.SUBSCRIBER_STATS_HELP)):
        for stat in help_by_name:
            out[f"{prefix}_{stat}_total"] = set()
    return out


EXPORTED = _exported()


def test_exported_names_match_what_prometheus_client_serves():
    """The table above is what a scrape shows (counters get _total, histograms _bucket...)."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    helper = mesh_metrics.HelperMetrics(registry)
    helper.rejected.labels("QueueFull").inc()
    mesh_metrics.register_alert_publisher(
        registry, SimpleNamespace(**dict.fromkeys(mesh_metrics.PUBLISHER_STATS_HELP, 0)))
    served = {line.split("{")[0].split(" ")[0]
              for line in generate_latest(registry).decode().splitlines()
              if line and not line.startswith("#")}
    served = {name for name in served if not name.endswith("_created")}
    assert served <= set(EXPORTED), served - set(EXPORTED)
    assert {"mesh_submit_rejected_total", "mesh_accept_latency_seconds_bucket",
            "mesh_alert_publisher_journal_errors_total", "mesh_queue_depth"} <= served


def _problems(expr: str) -> list[str]:
    """Metric names in `expr` the nodes do not export, and labels they do not carry."""
    problems = []
    names = set(re.findall(r"\b(mesh_[a-z0-9_]+)\b", expr))
    if not names and "up{" not in expr:
        problems.append("names no mesh metric")
    labels_here: set[str] = set(TARGET_LABELS)
    for name in names:
        if name not in EXPORTED:
            problems.append(f"unknown metric {name}")
        else:
            labels_here |= EXPORTED[name]
    for name, matchers in re.findall(r"\b(mesh_[a-z0-9_]+)\{([^}]*)\}", expr):
        for label in re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers):
            if label not in TARGET_LABELS and label not in EXPORTED.get(name, set()):
                problems.append(f"{name} has no label {label!r}")
    for group in re.findall(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)", expr):
        for label in (g.strip() for g in group.split(",") if g.strip()):
            if label not in labels_here:
                problems.append(f"grouping by {label!r}, which no metric here carries")
    return problems


def test_problems_finds_unknown_metrics_and_labels():
    assert _problems("rate(mesh_tasks_submitted_total[5m])") == []
    assert _problems("rate(mesh_tasks_submited_total[5m])") == [
        "unknown metric mesh_tasks_submited_total"]
    assert _problems('mesh_tasks_dead_total{cause="x"}') == [
        "mesh_tasks_dead_total has no label 'cause'"]
    assert _problems("sum by (reason) (mesh_queue_depth)") == [
        "grouping by 'reason', which no metric here carries"]
    assert _problems("mesh_queue_depth") == []


# ---- alert rules --------------------------------------------------------------------------

def _rules() -> list[dict]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_every_alert_expression_names_exported_metrics_and_labels():
    bad = {rule["alert"]: _problems(rule["expr"]) for rule in _rules()}
    assert not {k: v for k, v in bad.items() if v}


def test_every_alert_has_a_severity_a_summary_and_a_runbook_section():
    runbook = OPERATIONS.read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", runbook, flags=re.M)}
    for rule in _rules():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        page, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert page == "docs/operations.md" and anchor in anchors, (rule["alert"], anchor)


def test_the_issue_s_alerts_are_there():
    names = {rule["alert"] for rule in _rules()}
    assert {"MeshHelperDown", "MeshHelperAbsent", "MeshQueueHigh", "MeshOldestPendingAge",
            "MeshDeadLetterRate", "MeshNoAINodes", "MeshJournalErrors", "MeshJournalDamaged",
            "MeshJournalFailed", "MeshDeadLettersEvicted", "MeshResultWaitersNearBound"} <= names
    exprs = {rule["alert"]: rule["expr"] for rule in _rules()}
    assert "absent(up" in exprs["MeshHelperAbsent"]


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus), so rule "
                    "syntax and the rule unit tests were not run; the metric-name checks above "
                    "ran without it")
    return path


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def test_promtool_checks_the_rules():
    done = _run(_promtool(), "check", "rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_rule_unit_tests_pass():
    done = _run(_promtool(), "test", "rules", str(ALERTS_TEST))
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_checks_the_scrape_config(tmp_path):
    """Debian's prometheus is built without Consul service discovery: there, the Consul jobs
    are checked as static ones (the relabeling, the rule file and the rest still are)."""
    promtool = _promtool()
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    shutil.copy(ALERTS, tmp_path / ALERTS.name)
    (tmp_path / "prometheus.yml").write_text(SCRAPE_CONFIG.read_text())
    done = _run(promtool, "check", "config", str(tmp_path / "prometheus.yml"))
    if "consul_sd_configs not found" in done.stdout + done.stderr:
        print("this promtool has no Consul SD: checking the Consul jobs as static ones")
        for job in config["scrape_configs"]:
            if job.pop("consul_sd_configs", None) is not None:
                job["static_configs"] = [{"targets": ["127.0.0.1:9"]}]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        done = _run(promtool, "check", "config", str(tmp_path / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_scrape_jobs_are_the_ones_the_rules_match():
    jobs = {job["job_name"] for job in yaml.safe_load(SCRAPE_CONFIG.read_text())["scrape_configs"]}
    matched = set()
    for rule in _rules():
        matched |= set(re.findall(r'job="([^"]+)"', rule["expr"]))
    assert matched <= jobs


# ---- dashboard ----------------------------------------------------------------------------

def _dashboard_exprs() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    return out


def _concrete(expr: str) -> str:
    """A dashboard expression with Grafana's variables filled in, as Prometheus would get it."""
    return (expr.replace("$__rate_interval", "5m").replace('"$helper"', '".*"')
            .replace('"$ai"', '".*"'))


def test_dashboard_is_json_with_panels_over_exported_metrics():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"]
    exprs = _dashboard_exprs()
    assert len(exprs) >= 20
    bad = {f"{title}: {expr}": p for title, expr in exprs if (p := _problems(expr))}
    assert not bad
    shown = " ".join(expr for _, expr in exprs)
    for name in ("mesh_queue_depth", "mesh_oldest_pending_age_seconds",
                 "mesh_tasks_submitted_total", "mesh_accept_latency_seconds_bucket",
                 "mesh_end_to_end_latency_seconds_bucket", "mesh_nodes_alive",
                 "mesh_dead_letters", "mesh_journal_fsync_seconds_bucket", "mesh_journal_bytes"):
        assert name in shown, name
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert set(re.findall(r"\$(\w+)", shown)) - {"__rate_interval"} <= variables


def test_promtool_parses_every_dashboard_expression(tmp_path):
    """promtool has no query checker: the expressions go in as recording rules."""
    promtool = _promtool()
    rules = [{"record": f"mesh_dashboard:panel_{i}", "expr": _concrete(expr)}
             for i, (_, expr) in enumerate(_dashboard_exprs())]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = _run(promtool, "check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


# ---- systemd units ------------------------------------------------------------------------

def _unit(name: str) -> dict[str, list[str]]:
    """Key -> values (a key may repeat) of a unit file, sections merged."""
    out: dict[str, list[str]] = {}
    for line in (SYSTEMD / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key, []).append(value)
    return out


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(s|min)?", value)
    assert match, value
    return float(match.group(1)) * (60 if match.group(2) == "min" else 1)


def _env_args(name: str) -> list[str]:
    for line in (SYSTEMD / name).read_text().splitlines():
        if line.startswith("MESH_ARGS="):
            return line.split("=", 1)[1].split()
    raise AssertionError(f"{name} sets no MESH_ARGS")


@pytest.mark.parametrize("name", UNITS)
def test_unit_runs_sandboxed_as_its_own_user_and_restarts_only_what_a_restart_can_fix(name):
    unit = _unit(name)
    assert unit.get("User") == ["mesh"] or unit.get("DynamicUser") == ["yes"]
    assert unit["Restart"] == ["on-failure"]
    prevented = set(" ".join(unit["RestartPreventExitStatus"]).split())
    # nodes/cli.py: 2 usage, 3 discovery refused or misconfigured; 75 (in use) is retried.
    # Only a usage error stops the restarts: discovery not answering at boot (3) is often a
    # Consul agent still starting, and an --app that does not load (6) comes up once fixed.
    assert prevented == {str(cli.EXIT_USAGE)}
    assert str(cli.EXIT_UNAVAILABLE) not in prevented and str(cli.EXIT_APP) not in prevented
    assert str(cli.EXIT_IN_USE) not in prevented
    for key, value in {"ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
                       "NoNewPrivileges": "yes", "CapabilityBoundingSet": "",
                       "StateDirectoryMode": "0700", "UMask": "0077",
                       "SystemCallFilter": "@system-service"}.items():
        assert value in unit.get(key, []), (key, unit.get(key))
    assert set(unit["RestrictAddressFamilies"][0].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert any(v.startswith("/etc/mesh/") and "%i" in v for v in unit["EnvironmentFile"])
    assert unit["ExecStart"][0].startswith("/opt/mesh/bin/mesh ")
    assert "$MESH_ARGS" in unit["ExecStart"][0]
    assert unit["KillMode"] == ["mixed"]


def test_ai_node_unit_outlasts_the_drain():
    """systemd must not SIGKILL an AI node mid-drain: its stop timeout exceeds --drain-grace
    (the default and the env template's) by a margin for the Helpers' hand-back."""
    stop_s = _seconds(_unit("mesh-ai@.service")["TimeoutStopSec"][0])
    default = cli.build_parser().parse_args(["ai"]).drain_grace
    template = cli.build_parser().parse_args(["ai", *_env_args("ai.env.example")]).drain_grace
    assert stop_s >= max(default, template) + 10


def test_helper_unit_keeps_its_journal_in_the_state_directory():
    unit = _unit("mesh-helper@.service")
    assert "--data-dir /var/lib/mesh/%i" in unit["ExecStart"][0]
    assert "mesh/%i" in unit["StateDirectory"][0].split()
    assert unit["MemoryDenyWriteExecute"] == ["yes"]


@pytest.mark.parametrize("role, template, fixed", [
    ("helper", "helper.env.example", ["--helper-id", "h", "--data-dir", "/var/lib/mesh/h"]),
    ("ai", "ai.env.example", ["--node-id", "a"]),
    ("notifier", "notifier.env.example", ["--notifier-id", "n"]),
    ("http", "http.env.example", ["--tokens", "/run/credentials/x/tokens"]),
])
def test_env_templates_hold_flags_the_node_takes(role, template, fixed):
    try:
        cli.build_parser().parse_args([role, *fixed, *_env_args(template)])
    except SystemExit as exc:  # argparse's way of saying "unknown flag"
        raise AssertionError(f"{template}: mesh {role} refuses its MESH_ARGS") from exc


def test_systemd_analyze_verifies_every_unit(tmp_path):
    """`systemd-analyze verify` on copies whose ExecStart points at this checkout's `mesh`
    (verify insists the binary exists). Any warning counts: verify exits 0 on unknown keys."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: the systemd package): the unit "
                    "files were only checked by the tests above, not by systemd itself")
    mesh = Path(sys.executable).with_name("mesh")
    if not mesh.exists():
        pytest.skip(f"no `mesh` script next to {sys.executable}: pip install -e . first")
    paths = []
    for name in UNITS:
        path = tmp_path / name
        path.write_text((SYSTEMD / name).read_text().replace("/opt/mesh/bin/mesh", str(mesh)))
        paths.append(str(path))
    done = _run(analyze, "verify", *paths)
    if done.returncode != 0 and "Failed to" in done.stderr and "mesh" not in done.stderr:
        pytest.skip(f"systemd-analyze cannot run here: {done.stderr.strip()}")
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


# ---- Docker -------------------------------------------------------------------------------

def _healthcheck():
    spec = importlib.util.spec_from_file_location(
        "mesh_healthcheck", DEPLOY / "docker" / "healthcheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dockerfile_has_a_healthcheck_that_the_image_contains():
    text = (ROOT / "Dockerfile").read_text()
    match = re.search(r"^HEALTHCHECK [^\n]*(?:\\\n[^\n]*)*?CMD (\[[^\n]*\])$", text, flags=re.M)
    assert match, "no HEALTHCHECK ... CMD [...] in the Dockerfile"
    command = json.loads(match.group(1))
    copied = re.search(r"^COPY (\S+) " + re.escape(command[-1]) + "$", text, flags=re.M)
    assert copied and (ROOT / copied.group(1)).is_file()
    ignored = (ROOT / ".dockerignore").read_text().split() if (ROOT / ".dockerignore").exists() else []
    assert not any(copied.group(1).startswith(p.rstrip("/") + "/") for p in ignored)


def test_compose_publishes_intake_and_metrics_ports():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    helper_ports = {p.rsplit(":", 1)[1] for p in services["helper"]["ports"]}
    assert {"7001", "9101"} <= helper_ports
    for name, service in services.items():
        if name.startswith("ai-"):
            assert any(p.endswith(":9102") for p in service["ports"]), name


def test_healthcheck_finds_the_node_and_the_url_to_ask():
    hc = _healthcheck()
    helper = ["/usr/local/bin/python", "/usr/local/bin/mesh", "helper", "--metrics-port", "9101",
              "--metrics-addr", "0.0.0.0"]
    role, args = hc.node_role(helper)
    assert role == "helper"
    assert hc.probe_url(role, args, {}) == "http://127.0.0.1:9101/metrics"
    assert hc.node_role(["python", "-m", "nodes.cli", "ai", "--metrics-port=9"])[0] == "ai"
    assert hc.probe_url("ai", [], {"MESH_METRICS_PORT": "9102"}) == "http://127.0.0.1:9102/metrics"
    assert hc.probe_url("notifier", [], {}) is None
    assert hc.probe_url("http", ["--bind", "0.0.0.0:8080"], {}) == "http://127.0.0.1:8080/healthz"
    assert hc.node_role(["mesh", "submit", "k"]) is None
    assert hc.node_role(["/bin/sh", "-c", "mesh helper"]) is None


def test_healthcheck_answer_follows_the_metrics_server():
    import urllib.request

    from prometheus_client import CollectorRegistry

    hc = _healthcheck()
    server, thread, port = mesh_metrics.serve(CollectorRegistry(), 0)
    try:
        url = hc.probe_url("helper", ["--metrics-port", str(port)], {})
        with urllib.request.urlopen(url, timeout=hc.TIMEOUT_S) as reply:
            assert reply.status == 200
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
