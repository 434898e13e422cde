"""The Prometheus alert rules and the Grafana dashboard in deploy/: valid as promtool and Grafana read
them, each alert proven to fire and to stay quiet. tests/test_metrics.py checks that the metrics they
read are the ones the daemons export."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.promql import RULE_TESTS, RULES, alerts, dashboard, dashboard_exprs, metric_names, panels

PROMTOOL = shutil.which("promtool")
# CI sets FOGMESH_REQUIRE_PROMTOOL=1 (`make test` installs Debian's prometheus): there a missing
# promtool fails these tests instead of skipping them.
needs_promtool = pytest.mark.skipif(not PROMTOOL and not os.environ.get("FOGMESH_REQUIRE_PROMTOOL"),
                                    reason="promtool is not installed (apt-get install prometheus)")


def promtool(*args: str, cwd: Path = RULES.parent) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL, "FOGMESH_REQUIRE_PROMTOOL is set but promtool is not installed (deploy/install-deps.sh --test)"
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


@needs_promtool
def test_the_alert_rules_and_the_example_scrape_config_pass_promtool_check():
    rules = promtool("check", "rules", RULES.name)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in rules.stdout
    config = promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr


@needs_promtool
def test_each_alert_fires_when_its_unit_tests_say_and_not_before():
    run = promtool("test", "rules", RULE_TESTS.name)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout + run.stderr


def test_every_alert_is_unit_tested_firing_and_quiet():
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {a["alert"] for a in alerts()}
    assert names == {"FogmeshCoordinatorDown", "FogmeshNoAgentOnline", "FogmeshQueueGrowing", "FogmeshDeadlineMisses",
                     "FogmeshJobsDeadLettered", "FogmeshCloudDeadLetters", "FogmeshOutboxBacklog",
                     "FogmeshCloudUnreachable"}
    assert names - fired == set(), "alerts no test fires"
    assert names - quiet == set(), "alerts no test shows quiet"


def test_every_alert_has_a_severity_and_tells_the_operator_what_to_check():
    for a in alerts():
        assert a["labels"]["severity"] in ("critical", "warning"), a["alert"]
        assert "{{ $labels.site }}" in a["annotations"]["summary"], a["alert"]
        assert len(a["annotations"]["description"]) > 150, a["alert"]
        # A condition that is a state (not an event, as a dead letter is) must last before it pages.
        assert "for" in a or "increase(" in a["expr"], a["alert"]


def test_the_dashboard_imports_with_a_datasource_and_a_site_picker():
    d = dashboard()
    assert d["schemaVersion"] >= 39 and d["uid"] and d["title"] and d.get("id") is None
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    site = variables["site"]
    assert site["type"] == "query" and site["definition"] == "label_values(fogmesh_build_info, site)"
    assert site["datasource"]["uid"] == "${datasource}"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for p in panels():
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"] and all(t["expr"] for t in p["targets"]), p["title"]
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24 and pos["h"] > 0, p["title"]
    titles = " | ".join(p["title"] for p in panels())
    for shown in ("Throughput by status and tier", "Latency", "Time to first token", "Queue", "Agents and slots",
                  "Decode rate by agent and model", "Spend per hour", "Offloads", "Outbox", "Dead letters",
                  "MQTT reconnects"):
        assert shown in titles


def test_every_dashboard_query_follows_the_site_picker():
    for expr in dashboard_exprs():
        for selector in re.findall(r"fogmesh_[a-z0-9_]+(\{[^}]*\})?", expr):
            if "label_values" not in expr:
                assert 'site=~"$site"' in selector, expr


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path):
    """promtool parses each query as a recording rule, Grafana's variables given values."""
    rules = [{"record": f"dashboard:query_{i}",
              "expr": e.replace("$__rate_interval", "5m").replace("$site", ".*")}
             for i, e in enumerate(dashboard_exprs()) if not e.startswith("label_values(")]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run = promtool("check", "rules", str(path), cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert all(metric_names(e) for e in dashboard_exprs()), "a query reads no fogmesh metric"
