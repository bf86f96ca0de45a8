"""What the Grafana dashboard and the alert rules of deploy/ query, and what a live /metrics page
exports: shared by the metric-drift tests in tests/unit (the services that need no broker) and
tests/integration (the sampler and the decision consumer, on the local Kafka)."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "deploy" / "grafana" / "act-dashboard.json"
RULES = REPO / "deploy" / "prometheus" / "act-rules.yaml"

# Grafana's variables, replaced by values of the right type so that the queries parse as PromQL.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "$namespace": "act",
}
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*[A-Za-z_][A-Za-z0-9_]*\)$")
# Sample names a metric family of each type exposes (prometheus_client's text format).
SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "unknown": ("",),
}


def _grafana_to_promql(query: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        query = query.replace(variable, value)
    match = LABEL_VALUES.match(query.strip())
    return match["selector"] if match else query


def dashboard_queries() -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every panel target and templating query of the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            query = query["query"] if isinstance(query, dict) else query
            yield f"variable {variable['name']}", _grafana_to_promql(query)
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} {target['refId']}", _grafana_to_promql(target["expr"])


def rule_queries() -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every alerting or recording rule."""
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            yield f"rule {rule.get('alert') or rule.get('record')}", str(rule["expr"])


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (its vector selectors' names)."""
    names: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def sample_names(exposition: str, *, declared: bool = False) -> set[str]:
    """Names of the samples in a Prometheus text exposition. With `declared`, also the sample
    names that each declared family would expose once it has a labelled child."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(sample.name for sample in family.samples)
        if declared:
            names.update(family.name + suffix for suffix in SAMPLE_SUFFIXES[family.type])
    return names


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


@pytest.fixture(scope="session")
def deploy_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every query of the dashboard and of the alert rules."""
    return [*dashboard_queries(), *rule_queries()]


@pytest.fixture(scope="session")
def queried_metrics(deploy_queries: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Metric name -> where the dashboard or the alert rules query it."""
    queried: dict[str, list[str]] = {}
    for where, expr in deploy_queries:
        for name in metric_names(expr):
            queried.setdefault(name, []).append(where)
    return queried


@pytest.fixture(scope="session")
def selected_metrics() -> Callable[[str], set[str]]:
    """`selected_metrics(expr)`: the metric names a PromQL expression selects."""
    return metric_names


@pytest.fixture(scope="session")
def exposed_names() -> Callable[..., set[str]]:
    """`exposed_names(text, declared=False)`: sample names of a Prometheus text exposition."""
    return sample_names


@pytest.fixture(scope="session")
def exported_names() -> Callable[..., set[str]]:
    """`exported_names(url, declared=False)`: the sample names a /metrics URL serves now."""

    def names(url: str, *, declared: bool = False) -> set[str]:
        return sample_names(scrape(url), declared=declared)

    return names
