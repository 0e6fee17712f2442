"""ops/: Prometheus config, alert rules, Grafana dashboard and runbooks fit /metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from dispatcher.api import create_app
from dispatcher.api.server import ServerThread
from dispatcher.gateway.simulator import GatewaySimulator
from dispatcher.persistence import store
from dispatcher.persistence.db import Database
from dispatcher.service import rollup
from dispatcher.service.dispatcher import Dispatcher
from support.numbers import number

OPS = Path(__file__).resolve().parents[2] / "ops"
ROOT = OPS.parent
METRIC = re.compile(r"\bsms_dispatcher_[a-z_]+")
REQUIRED_ALERTS = {
    "DispatchPaused",
    "UnknownRecipients",
    "HighErrorRate",
    "GatewayRejectsOurRequests",
    "QueueBacklogOld",
    "NoWorkerConsuming",
    "BreakerOpen",
    "DispatcherTargetDown",
}


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _rules() -> list[dict[str, Any]]:
    groups = _yaml(OPS / "prometheus" / "alerts.yml")["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    exprs = []
    for path in sorted((OPS / "grafana" / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            exprs += [target["expr"] for target in panel["targets"]]
    return exprs


def _exposed(service: Dispatcher) -> set[str]:
    """Sample names /metrics exposes after a send, with every optional gauge present."""
    service.enqueue([number(1), number(2)], "ops test")
    service.dispatch_due(budget_s=10)
    assert rollup.run(service.db) is not None
    with service.db.transaction() as session:
        store.update_control(session, values={"last_balance": 42.0})
    with ServerThread(create_app(service)) as server:
        body = requests.get(f"{server.base_url}/metrics", timeout=30).text
    names = set()
    for family in text_string_to_metric_families(body):
        names.add(family.name)
        names |= {sample.name for sample in family.samples}
    return names


def test_config_files_are_well_formed() -> None:
    prometheus = _yaml(OPS / "prometheus" / "prometheus.yml")
    assert prometheus["scrape_configs"][0]["metrics_path"] == "/metrics"
    assert prometheus["rule_files"] == ["/etc/prometheus/alerts.yml"]
    for path in (OPS / "grafana" / "provisioning").rglob("*.yml"):
        assert _yaml(path)["apiVersion"] == 1, path
    assert _dashboard_exprs(), "the dashboard has panels with queries"


RUNBOOK_URL = "{{ $externalLabels.runbook_base }}/"


def test_every_alert_has_a_runbook_and_the_required_alerts_exist() -> None:
    rules = _rules()
    assert {rule["alert"] for rule in rules} >= REQUIRED_ALERTS
    for rule in rules:
        # A URL from the one configurable base (prometheus.yml's runbook_base).
        url = rule["annotations"]["runbook_url"]
        assert url.startswith(RUNBOOK_URL), url
        runbook = OPS / "runbooks" / url.removeprefix(RUNBOOK_URL)
        text = runbook.read_text()
        assert text.startswith(f"# {rule['alert']}\n"), runbook
        assert "## What to do" in text


def test_every_metric_the_rules_and_dashboard_use_is_exposed(
    service: Dispatcher, simulator: GatewaySimulator
) -> None:
    simulator.configure(number_rules={number(2): "INVALID_NUMBER"})
    exposed = _exposed(service)
    used = set()
    for rule in _rules():
        used |= set(METRIC.findall(rule["expr"]))
        for annotation in rule["annotations"].values():
            used |= set(METRIC.findall(annotation))
    for expr in _dashboard_exprs():
        used |= set(METRIC.findall(expr))
    assert len(used) >= 10
    assert used <= exposed, f"not exposed by /metrics: {sorted(used - exposed)}"


def test_metric_names_follow_prometheus_conventions(database: Database) -> None:
    from dispatcher.api import metrics

    assert rollup.run(database) is not None
    body = metrics.exposition(metrics.registry(database, heartbeat_interval_s=15)).decode()
    for family in text_string_to_metric_families(body):
        assert family.name.startswith("sms_dispatcher_")
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples), family.name
        if family.type == "histogram" or family.name.endswith("_age"):
            assert family.name.endswith("_seconds"), family.name


def test_the_dashboard_imports_into_an_existing_grafana() -> None:
    """Every panel and query reads the `datasource` variable (any Prometheus of the
    Grafana it is imported into), never a uid only our provisioning defines."""
    for path in sorted((OPS / "grafana" / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text())
        [variable] = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
        assert (variable["name"], variable["query"]) == ("datasource", "prometheus")
        sources = list(_datasources(dashboard["panels"]))
        assert len(sources) >= len(dashboard["panels"]), path
        for source in sources:
            assert source == {"type": "prometheus", "uid": "${datasource}"}, path


def _datasources(node: Any) -> Any:
    """Every ``datasource`` value in a dashboard's panels and their queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield value
            else:
                yield from _datasources(value)
    elif isinstance(node, list):
        for item in node:
            yield from _datasources(item)
