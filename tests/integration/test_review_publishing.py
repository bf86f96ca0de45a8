"""A review stored through the HTTP API is published to act.reviews.v1 (real broker)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from act.bus import BusSettings, decode, default_topic_specs, ensure_topics
from act.core.sampling import PacerConfig
from act.data import text_schema
from act.inference.instant import InstantBackend
from act.inference.types import Item, schema_to_proto
from act.review.publisher import ReviewPublisher
from act.review.server import ReviewServer
from act.review.store import ReviewStore
from act.sampler.policy import PartitionSampler, SamplingPolicy, ScoredItem
from act.v1 import bus_pb2


def _selected_decision() -> bus_pb2.Decision:
    backend = InstantBackend()
    schema = text_schema()
    items = [Item(item_id=f"r-{i}", text=f"post {i}") for i in range(40)]
    annotations = asyncio.run(backend.annotate(items, schema, "direct"))
    criticisms = asyncio.run(
        backend.criticize(list(zip(items, annotations, strict=True)), schema, "direct")
    )
    policy = SamplingPolicy(pacer=PacerConfig(budget_per_window=8, window_items=40), seed="r")
    decisions = PartitionSampler(policy, 0).offer(
        [
            ScoredItem(item, annotation, criticism, offset, 0.0)
            for offset, (item, annotation, criticism) in enumerate(
                zip(items, annotations, criticisms, strict=True)
            )
        ]
    )
    return next(d for d in decisions if d.delta)


def test_a_stored_review_is_published_keyed_by_item_id(
    kafka_bootstrap: str, tmp_path: Path, post_as_reviewer: Callable[..., dict[str, Any]]
) -> None:
    from kafka import KafkaConsumer

    suffix = uuid.uuid4().hex[:8]
    bus = BusSettings(kafka_bootstrap=kafka_bootstrap)
    ensure_topics(kafka_bootstrap, default_topic_specs(bus, suffix=suffix))
    store = ReviewStore(f"sqlite:///{tmp_path / 'review.db'}")
    store.register_schema(schema_to_proto(text_schema()))
    decision = _selected_decision()
    store.upsert_decision(decision)
    token = store.add_reviewer("alice")
    publisher = ReviewPublisher(bus, topic_suffix=suffix)
    server = ReviewServer(http_port=0, grpc_port=0, store=store, on_review=publisher)
    server.start()
    try:
        [claimed] = post_as_reviewer(f"{server.http_url}/api/claim", token, {"max_items": 1})[
            "items"
        ]
        post_as_reviewer(
            f"{server.http_url}/api/items/{claimed['item_id']}/review",
            token,
            {"claim_id": claimed["claim_id"], "label": "spam"},
        )
    finally:
        server.stop()
        publisher.close()
    reader = KafkaConsumer(
        f"act.reviews.v1.{suffix}",
        bootstrap_servers=kafka_bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        consumer_timeout_ms=5000,
    )
    records = list(reader)
    reader.close()
    assert len(records) == 1
    review = decode(records[0]).message
    assert records[0].key == decision.item_id.encode()
    assert (review.item_id, review.label, review.reviewer) == (decision.item_id, "spam", "alice")
