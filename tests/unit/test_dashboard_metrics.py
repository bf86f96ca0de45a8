"""The dashboard and the alert rules query only metrics the services export.

The annotator and the criticizer (ModelServer over the instant backend) and the review server
(on SQLite) run here, get a few requests so that their labelled series exist, and their live
/metrics pages are scraped. The sampler and the decision consumer need a broker: here their
metrics are checked against the families their code declares, and
tests/integration/test_dashboard_metrics_live.py scrapes them running against the local Kafka.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from act.bus.dlq import dead_letters_counter
from act.client import AnnotatorClient, CriticizerClient, ServiceError
from act.core.sampling import PacerConfig
from act.data import text_schema
from act.inference.instant import InstantBackend
from act.inference.types import Item, schema_to_proto
from act.review.consumer import ConsumerMetrics
from act.review.server import ReviewServer
from act.sampler.policy import PartitionSampler, SamplingPolicy, ScoredItem
from act.sampler.service import SamplerMetrics
from act.serving.server import ModelServer
from act.serving.settings import ServingSettings
from act.v1 import bus_pb2

SCHEMA = text_schema()
ITEMS = [Item(item_id=f"m-{i}", text=f"post number {i}") for i in range(40)]


def test_every_query_of_the_dashboard_and_the_rules_parses_and_reads_act_metrics(
    deploy_queries: list[tuple[str, str]], selected_metrics: Callable[[str], set[str]]
) -> None:
    assert len(deploy_queries) > 30
    for where, expr in deploy_queries:
        names = selected_metrics(expr)  # raises on a PromQL syntax error
        assert names, f"{where} selects no metric: {expr}"
        assert all(name.startswith("act_") for name in names), f"{where}: {sorted(names)}"


async def _drive_model_servers(scrape: Callable[[str], set[str]]) -> set[str]:
    """Serves both model services, sends unary, batch and failing requests, scrapes both."""
    backend = InstantBackend()
    settings = ServingSettings(host="127.0.0.1", port=0, metrics_port=0)
    annotator = ModelServer("annotator", backend, settings, close_backend=False)
    criticizer = ModelServer("criticizer", backend, settings, close_backend=False)
    await annotator.start()
    await criticizer.start()
    try:
        async with (
            AnnotatorClient(annotator.address, timeout=10) as annotate,
            CriticizerClient(criticizer.address, timeout=10) as criticize,
        ):
            annotation = await annotate.annotate_one(ITEMS[0], SCHEMA)
            annotations = await annotate.annotate(ITEMS[1:4], SCHEMA)
            await criticize.criticize_one(ITEMS[0], annotation, SCHEMA)
            await criticize.criticize(list(zip(ITEMS[1:4], annotations, strict=True)), SCHEMA)
            with pytest.raises(ServiceError):  # an error series: a strategy nobody runs
                await annotate.annotate_one(ITEMS[4], SCHEMA, "telepathy")
            with pytest.raises(ServiceError):
                await criticize.criticize_one(ITEMS[4], annotation, SCHEMA, "telepathy")
        assert annotator.metrics_url and criticizer.metrics_url
        return await asyncio.to_thread(
            lambda: scrape(annotator.metrics_url) | scrape(criticizer.metrics_url)
        )
    finally:
        await annotator.stop(grace=0)
        await criticizer.stop(grace=0)


def _decisions() -> list[bus_pb2.Decision]:
    backend = InstantBackend()
    annotations = asyncio.run(backend.annotate(ITEMS, SCHEMA, "direct"))
    annotated = list(zip(ITEMS, annotations, strict=True))
    criticisms = asyncio.run(backend.criticize(annotated, SCHEMA, "direct"))
    policy = SamplingPolicy(pacer=PacerConfig(budget_per_window=4, window_items=20), seed="m")
    return PartitionSampler(policy, 0).offer(
        [
            ScoredItem(item, annotation, criticism, offset, 0.0)
            for offset, (item, annotation, criticism) in enumerate(
                zip(ITEMS, annotations, criticisms, strict=True)
            )
        ]
    )


def _review_server_names(tmp_path: Path, scrape: Callable[[str], set[str]]) -> set[str]:
    """The review server's /metrics over a store with decisions, a queue and one review."""
    with ReviewServer(f"sqlite:///{tmp_path / 'review.db'}", 0, 0, host="127.0.0.1") as server:
        store = server.store
        store.register_schema(schema_to_proto(SCHEMA))
        store.upsert_decisions(_decisions())
        store.add_reviewer("alice")
        [claimed] = store.claim("alice", max_items=1)
        store.submit(claimed.item_id, claimed.claim_id, "alice", SCHEMA.labels[0].name)
        return scrape(f"{server.http_url}/metrics")


def _broker_service_declarations(exposed_names: Callable[..., set[str]]) -> set[str]:
    """Sample names the sampler's and the decision consumer's registries declare."""
    registry = CollectorRegistry()
    SamplerMetrics(registry)
    ConsumerMetrics(registry)
    dead_letters_counter(registry)
    return exposed_names(generate_latest(registry).decode(), declared=True)


@pytest.mark.slow
def test_every_queried_metric_is_exported_by_a_service(
    tmp_path: Path,
    queried_metrics: dict[str, list[str]],
    exported_names: Callable[..., set[str]],
    exposed_names: Callable[..., set[str]],
) -> None:
    live = asyncio.run(_drive_model_servers(exported_names))
    live |= _review_server_names(tmp_path, exported_names)
    declared_by_broker_services = _broker_service_declarations(exposed_names)

    missing = {
        name: where
        for name, where in queried_metrics.items()
        if name not in live and name not in declared_by_broker_services
    }
    assert not missing, f"queried but exported by no service: {missing}"
    # The live scrape covers every model-service and review-server metric the queries use.
    for prefix in ("act_annotator_", "act_criticizer_", "act_review_budget_", "act_review_queue_"):
        used = {name for name in queried_metrics if name.startswith(prefix)}
        assert used and used <= live, f"{prefix}*: {sorted(used - live)} not served live"
