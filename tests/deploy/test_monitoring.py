"""deploy/prometheus and deploy/grafana: valid, tested, and over metrics the gateway really exports.

promtool (Debian's ``prometheus`` package) checks the rules, runs their unit tests and parses
every dashboard expression; without it these tests fail when ``CI`` is set and skip otherwise.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import _in_ci
from tests.deploy.exported_metrics import families, names_in, sample_names

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "warmpool-rules.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "warmpool-rules.test.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "warmpool.json"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        message = "promtool not found (apt-get install prometheus)"
        if _in_ci():
            pytest.fail(message + " (CI is set: promtool is required)")
        pytest.skip(message)
    return found


def run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r for g in groups for r in g["rules"] if "alert" in r]


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors of a Markdown text."""
    out = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower().replace("`", "")
            out.add(re.sub(r"[^a-z0-9 _-]", "", title).replace(" ", "-"))
    return out


# -- promtool ----------------------------------------------------------------------------------------
def test_promtool_checks_the_rules() -> None:
    run = run_promtool("check", "rules", RULES.name, cwd=RULES.parent)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in run.stdout


def test_promtool_unit_tests_pass() -> None:
    run = run_promtool("test", "rules", RULE_TESTS.name, cwd=RULES.parent)
    assert run.returncode == 0, run.stdout + run.stderr


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """A test expecting a healthy pool to page is reported as failing (the runner really evaluates)."""
    tests = yaml.safe_load(RULE_TESTS.read_text())
    healthy = tests["tests"][0]
    healthy["alert_rule_test"] = [{"eval_time": "30m", "alertname": "WarmpoolRefreshFailing", "exp_alerts": [{}]}]
    tests["tests"] = [healthy]
    shutil.copy(RULES, tmp_path / RULES.name)
    (tmp_path / "broken.test.yaml").write_text(yaml.safe_dump(tests))
    run = run_promtool("test", "rules", "broken.test.yaml", cwd=tmp_path)
    assert run.returncode != 0 and "WarmpoolRefreshFailing" in run.stdout + run.stderr


def test_every_dashboard_expression_is_valid_promql(tmp_path: Path) -> None:
    # promtool parses recording rules: one per dashboard expression
    rules = [{"record": f"warmpool:dashboard_{i}", "expr": e} for i, e in enumerate(dashboard_exprs())]
    (tmp_path / "dashboard.rules.yaml").write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": rules}]}))
    run = run_promtool("check", "rules", "dashboard.rules.yaml", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr


# -- the rules ----------------------------------------------------------------------------------------
def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    cases = [c for t in yaml.safe_load(RULE_TESTS.read_text())["tests"] for c in t.get("alert_rule_test", [])]
    for rule in alert_rules():
        mine = [c for c in cases if c["alertname"] == rule["alert"]]
        assert any(c["exp_alerts"] for c in mine), f"{rule['alert']} is never tested firing"
        assert any(not c["exp_alerts"] for c in mine), f"{rule['alert']} is never tested quiet"


def test_every_alert_has_a_severity_and_a_runbook_that_exists() -> None:
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"]
        page, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert anchor in anchors((ROOT / page).read_text()), f"{rule['alert']}: no heading #{anchor} in {page}"


def test_the_failures_of_operations_md_all_have_an_alert() -> None:
    names = {r["alert"] for r in alert_rules()}
    for wanted in (
        "WarmpoolPoolWorkerDown",
        "WarmpoolMachinesLost",
        "WarmpoolLaunchesFailing",
        "WarmpoolAssignsFailing",
        "WarmpoolAssignsSlow",
        "WarmpoolCapped",
        "WarmpoolRefreshFailing",
        "WarmpoolRefreshStale",
    ):
        assert wanted in names


# -- the metrics they read ---------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["rules", "dashboard"])
def test_every_expression_names_a_metric_the_gateway_exports(source: str) -> None:
    exprs = [r["expr"] for r in alert_rules()] if source == "rules" else dashboard_exprs()
    assert exprs
    for expr in exprs:
        unknown = names_in(expr) - sample_names()
        assert not unknown, f"{expr!r} reads {sorted(unknown)}, which the gateway does not export"
        assert names_in(expr), expr


def test_exported_metric_names_follow_prometheus_conventions() -> None:
    for name, kind in families().items():
        if name.endswith("_created"):
            continue  # prometheus_client's creation timestamps of counters and histograms
        assert not name.endswith("_total"), name  # the family name; _total is the counter's sample
        if kind == "counter":
            assert f"{name}_total" in sample_names()
        if any(word in name for word in ("duration", "age", "latency")):
            assert name.endswith("_seconds"), f"{name}: a time needs its unit"
    # counts that only grow are counters (read with rate()/increase()), not gauges
    for counter in ("warmpool_lost_machines", "warmpool_unready_machines", "warmpool_assigns"):
        assert families()[counter] == "counter"


def test_the_dashboard_is_importable() -> None:
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and dash["uid"] == "warmpool"
    assert [v["name"] for v in dash["templating"]["list"]] == ["datasource"]
    for p in dash["panels"]:
        assert p["targets"] and p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert {"x", "y", "w", "h"} <= set(p["gridPos"])
