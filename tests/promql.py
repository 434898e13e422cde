"""The PromQL expressions of deploy/'s Grafana dashboard and alert rules, and the metric names they read."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import yaml

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DASHBOARD = DEPLOY / "grafana" / "fogmesh.json"
RULES = DEPLOY / "prometheus" / "fogmesh-alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "fogmesh-alerts.test.yml"
# A metric name in a selector: fogmesh's, or Prometheus' own `up`, the only one the rules may read.
NAME = re.compile(r"\b(fogmesh_[a-z0-9_]+|up(?=\{))")


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(DASHBOARD.read_bytes())
    return data


def panels() -> list[dict[str, Any]]:
    """Every panel that shows data (rows aside), rows' collapsed panels included."""
    out = []
    for p in dashboard()["panels"]:
        out.extend(p.get("panels", []) if p["type"] == "row" else [p])
    return out


def dashboard_exprs() -> list[str]:
    exprs = [t["expr"] for p in panels() for t in p.get("targets", [])]
    exprs += [v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
              for v in dashboard()["templating"]["list"] if v["type"] == "query"]
    return exprs


def alerts() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def alert_exprs() -> list[str]:
    return [str(r["expr"]) for r in alerts()]


def metric_names(expr: str) -> set[str]:
    return set(NAME.findall(expr))
