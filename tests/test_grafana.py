"""The sample Grafana dashboard in docs/ asks only for metrics earnevents serves, and shows each of them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from earnevents import metrics as publisher_metrics
from earnevents.worker import metrics as worker_metrics

DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana" / "earnevents.json"


def served_samples() -> set[str]:
    """The sample names the worker's, the publisher's and the dashboard's metrics expose."""
    families: list[tuple[str, str]] = []
    jobs = worker_metrics._JobMetrics()
    for metric in (jobs.started, jobs.succeeded, jobs.retried, jobs.failed, jobs.duration):
        families += [(f.name, f.type) for f in metric.describe()]
    families += [(f.name, f.type) for f in publisher_metrics._published().describe()]
    families += [(name, "gauge") for name, _ in publisher_metrics.QUEUE_GAUGES.values()]
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}
    return {name + suffix for name, kind in families for suffix in suffixes[kind]}


def expressions(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return found + [e for value in node.values() for e in expressions(value)]
    if isinstance(node, list):
        return [e for value in node for e in expressions(value)]
    return []


def test_every_query_names_served_metrics_and_every_metric_has_a_panel():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = expressions(dashboard["panels"])
    assert exprs, "no queries found"
    served = served_samples()
    asked = {name for expr in exprs for name in re.findall(r"\bearnevents_[a-z_]+", expr)}
    assert asked - served == set(), "queries for metrics earnevents does not serve"
    shown = {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in asked}
    families = {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in served}
    assert families - shown == set(), "metrics no panel shows"
    for expr in exprs:  # balanced, and every selector filters by the dashboard's queue variable
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
        assert all('queue=~"$queue"' in selector for selector in re.findall(r"earnevents_[a-z_]+\{[^}]*\}", expr)), expr
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "queue"} <= variables
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
