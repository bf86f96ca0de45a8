"""`actctl serve review-consumer` as a process: decisions on the topic end up in the store,
and SIGTERM stops it cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from act.bus import BusSettings, default_topic_specs, ensure_topics
from act.bus.clients import flush_and_check, make_producer, publish
from act.core.sampling import PacerConfig
from act.data import text_schema
from act.inference.instant import InstantBackend
from act.inference.types import Item
from act.review.store import ReviewStore
from act.sampler.policy import PartitionSampler, SamplingPolicy, ScoredItem


def _decisions(n_items: int) -> list:
    import asyncio

    backend = InstantBackend()
    schema = text_schema()
    items = [Item(item_id=f"c-{i}", text=f"post {i}") for i in range(n_items)]
    annotations = asyncio.run(backend.annotate(items, schema, "direct"))
    criticisms = asyncio.run(
        backend.criticize(list(zip(items, annotations, strict=True)), schema, "direct")
    )
    policy = SamplingPolicy(pacer=PacerConfig(budget_per_window=5, window_items=20), seed="c")
    return PartitionSampler(policy, 0).offer(
        [
            ScoredItem(item, annotation, criticism, offset, 0.0)
            for offset, (item, annotation, criticism) in enumerate(
                zip(items, annotations, criticisms, strict=True)
            )
        ]
    )


def test_the_review_consumer_command_stores_decisions_and_stops_on_sigterm(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    bus = BusSettings(kafka_bootstrap=kafka_bootstrap)
    ensure_topics(kafka_bootstrap, default_topic_specs(bus, suffix=suffix))
    producer = make_producer(kafka_bootstrap, settings=bus)
    decisions = _decisions(60)
    futures = [publish(producer, f"act.decisions.v1.{suffix}", d) for d in decisions]
    flush_and_check(futures, producer=producer)
    producer.close()
    url = f"sqlite:///{tmp_path / 'review.db'}"
    command = [
        sys.executable, "-m", "act.cli", "serve", "review-consumer",
        "--database-url", url, "--topic-suffix", suffix, "--group", f"review-{suffix}",
        "--schema-id", "act-moderation",
    ]  # fmt: skip
    env = {**os.environ, "ACT_KAFKA_BOOTSTRAP": kafka_bootstrap}
    process = subprocess.Popen(command, env=env)
    try:
        deadline = time.time() + 60
        stored = 0
        while time.time() < deadline and stored < 60:
            time.sleep(0.5)
            with ReviewStore(url) as store:
                stored = store.stats().decisions
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert stored == 60
    with ReviewStore(url) as store:
        queued = {record.item_id for record in store.claim("checker", max_items=100)}
    assert queued == {d.item_id for d in decisions if d.delta}
