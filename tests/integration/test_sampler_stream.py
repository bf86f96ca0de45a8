"""The sampler service against the real broker: one decision per item, keyed deltas, the
cap never exceeded, malformed items dead-lettered, and a SIGKILL mid-stream changing nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from act.bus import BusSettings, decode
from act.bus.clients import flush_and_check, make_producer, publish
from act.core.sampling import PacerConfig, keyed_uniform
from act.data import text_schema
from act.inference.instant import InstantBackend
from act.inference.types import Item, item_to_proto
from act.sampler.policy import SamplingPolicy
from act.sampler.scoring import Scorer
from act.sampler.service import SamplerWorker
from act.v1 import bus_pb2

POLICY = SamplingPolicy(
    mode="stream",
    seed="stream-test",
    partitions=3,
    pacer=PacerConfig(budget_per_window=60, window_items=300),
)


def _bus(kafka_bootstrap: str) -> BusSettings:
    # A short session: after the SIGKILL the group notices the dead member in seconds.
    return BusSettings(
        kafka_bootstrap=kafka_bootstrap,
        topic_partitions=3,
        kafka_session_timeout_ms=6000,
        kafka_heartbeat_interval_ms=1000,
    )


def _produce_items(bus: BusSettings, suffix: str, n_items: int, *, bad: bool = False) -> None:
    producer = make_producer(bus.kafka_bootstrap, settings=bus)
    futures = []
    for i in range(n_items):
        item = Item(item_id=f"item-{i:05d}", text=f"message number {i}")
        futures.append(publish(producer, f"act.items.v1.{suffix}", item_to_proto(item)))
    if bad:
        futures.append(producer.send(f"act.items.v1.{suffix}", key=b"junk", value=b"\x00not-proto"))
    flush_and_check(futures, producer=producer)
    producer.close()


def _read_decisions(bus: BusSettings, suffix: str, expected: int) -> list[bus_pb2.Decision]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        f"act.decisions.v1.{suffix}",
        bootstrap_servers=bus.kafka_bootstrap,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        consumer_timeout_ms=5000,
        receive_message_max_bytes=64 * 1024 * 1024,
    )
    decisions = [decode(record).message for record in consumer]
    consumer.close()
    assert len(decisions) >= expected, f"{len(decisions)} decisions, expected {expected}"
    return decisions


def _worker(bus: BusSettings, suffix: str) -> SamplerWorker:
    backend = InstantBackend()
    return SamplerWorker(
        Scorer(backend, backend, text_schema()),
        POLICY,
        bus=bus,
        group_id=f"sampler-{suffix}",
        transactional_id=f"sampler-{suffix}",
        topic_suffix=suffix,
    )


def _check(decisions: list[bus_pb2.Decision], n_items: int) -> None:
    ids = [d.item_id for d in decisions]
    assert len(ids) == len(set(ids)) == n_items  # exactly one decision per item
    for decision in decisions:
        assert decision.delta == (keyed_uniform([decision.item_id], "stream-test")[0] < decision.pi)
    per_window: dict[str, int] = {}
    for decision in decisions:
        per_window[decision.window_id] = per_window.get(decision.window_id, 0) + decision.delta
    assert max(per_window.values()) <= 20  # 60 per window over 3 partitions


def test_every_item_gets_exactly_one_decision_with_the_keyed_delta(kafka_bootstrap: str) -> None:
    suffix = uuid.uuid4().hex[:8]
    bus = _bus(kafka_bootstrap)
    worker = _worker(bus, suffix)
    worker._ensure_topics()
    _produce_items(bus, suffix, 3000, bad=True)
    started = time.perf_counter()
    worker.run(idle_exit_seconds=3)
    elapsed = time.perf_counter() - started
    decisions = _read_decisions(bus, suffix, 3000)
    _check(decisions, 3000)
    dead = [
        sample.value
        for metric in worker.registry.collect()
        for sample in metric.samples
        if sample.name == "act_bus_dead_letters_total"
    ]
    assert sum(dead) == 1  # the junk record, and the stream went on
    print(f"\nsampler: 3000 items in {elapsed:.1f} s (including 3 s idle wait)")


SCRIPT = """
import sys
from act.bus import BusSettings
sys.path.insert(0, {tests!r})
from test_sampler_stream import _worker
from test_sampler_stream import _bus
bus = _bus({bootstrap!r})
_worker(bus, {suffix!r}).run(idle_exit_seconds={idle})
"""


def test_sigkill_mid_stream_then_restart_loses_and_duplicates_nothing(
    kafka_bootstrap: str,
) -> None:
    suffix = uuid.uuid4().hex[:8]
    bus = _bus(kafka_bootstrap)
    _worker(bus, suffix)._ensure_topics()
    _produce_items(bus, suffix, N_KILL_ITEMS)
    script = SCRIPT.format(
        tests=str(Path(__file__).parent), bootstrap=kafka_bootstrap, suffix=suffix, idle=60
    )
    process = subprocess.Popen([sys.executable, "-c", script], env=os.environ.copy())
    try:
        deadline = time.time() + 90
        while time.time() < deadline and _committed(bus, f"sampler-{suffix}") < 1000:
            time.sleep(0.05)  # kill it once some transactions are committed
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    partial = len(_read_decisions(bus, suffix, 0))
    assert 0 < partial < N_KILL_ITEMS, partial
    restarted = _worker(bus, suffix)
    runner = threading.Thread(target=restarted.run)
    runner.start()
    deadline = time.time() + 120
    while time.time() < deadline and _committed(bus, f"sampler-{suffix}") < N_KILL_ITEMS:
        time.sleep(0.2)
    restarted.stop()
    runner.join(timeout=30)
    _check(_read_decisions(bus, suffix, N_KILL_ITEMS), N_KILL_ITEMS)
    print(f"\nSIGKILL after {partial} of {N_KILL_ITEMS} decisions; after restart all present once")


N_KILL_ITEMS = 10_000


def _committed(bus: BusSettings, group: str) -> int:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bus.kafka_bootstrap)
    try:
        offsets = admin.list_consumer_group_offsets(group)
    except Exception:  # the group may not exist yet
        return 0
    finally:
        admin.close()
    return sum(meta.offset for meta in offsets.values() if meta.offset > 0)


@pytest.fixture(autouse=True)
def _quiet_kafka_logs() -> None:
    import logging

    logging.getLogger("kafka").setLevel(logging.WARNING)
