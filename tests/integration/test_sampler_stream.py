"""The sampler service against the real broker: one decision per item, keyed deltas, the
cap never exceeded, malformed items dead-lettered, and a SIGKILL mid-stream changing nothing:
every decision equals the one a clean run draws (`clean_run_decisions`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from act.bus import BusSettings, decode
from act.bus.clients import flush_and_check, make_producer, publish
from act.core.sampling import PacerConfig, keyed_uniform
from act.data import text_schema
from act.inference.instant import InstantBackend
from act.inference.types import Item, item_from_proto, item_to_proto
from act.sampler.policy import PartitionSampler, SamplingPolicy, ScoredItem
from act.sampler.scoring import Scored, Scorer
from act.sampler.service import PartitionMismatch, SamplerWorker
from act.v1 import bus_pb2, types_pb2

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


def _produce_items(
    bus: BusSettings, suffix: str, n_items: int, *, bad: bool = False, first: int = 0
) -> None:
    producer = make_producer(bus.kafka_bootstrap, settings=bus)
    futures = []
    for i in range(first, first + n_items):
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


def clean_run_decisions(
    bootstrap: str, items_topic: str, policy: SamplingPolicy
) -> dict[str, bus_pb2.Decision]:
    """item id -> the decision a clean run (no crash, no restart) makes for it.

    Reads the items topic back partition by partition, in offset order, scores the items with
    the instant backend and decides them with a fresh `PartitionSampler` per partition: the
    state a clean run carries from its first item to its last, never saved or reloaded.
    """
    import asyncio

    from kafka import KafkaConsumer, TopicPartition

    reader = KafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        group_id=None,
        receive_message_max_bytes=64 * 1024 * 1024,
    )
    try:
        partitions = [
            TopicPartition(items_topic, p) for p in sorted(reader.partitions_for_topic(items_topic))
        ]
        reader.assign(partitions)
        reader.seek_to_beginning(*partitions)
        end = reader.end_offsets(partitions)
        records: dict[int, list[Any]] = {tp.partition: [] for tp in partitions}
        while any(reader.position(tp) < end[tp] for tp in partitions):
            for tp, part in reader.poll(timeout_ms=500).items():
                records[tp.partition].extend(part)
    finally:
        reader.close()
    backend = InstantBackend()
    scorer = Scorer(backend, backend, text_schema())
    expected: dict[str, bus_pb2.Decision] = {}
    for partition, part in records.items():
        valid = [r for r in part if r.key != b"junk"]
        items = [item_from_proto(decode(r, expected=types_pb2.Item).message) for r in valid]
        outcomes = asyncio.run(scorer.score(items))
        scored = [
            ScoredItem(o.item, o.annotation, o.criticism, r.offset, r.timestamp / 1000.0)
            for r, o in zip(valid, outcomes, strict=True)
            if isinstance(o, Scored)
        ]
        for decision in PartitionSampler(policy, partition).offer(scored):
            expected[decision.item_id] = decision
    return expected


def same_draw(decision: Any, expected: bus_pb2.Decision) -> bool:
    """Whether a stored or published decision has the clean run's eps, pi, delta and window."""
    return (
        decision.eps == expected.eps
        and decision.pi == expected.pi
        and decision.delta == expected.delta
        and decision.capped == expected.capped
        and decision.window_id == expected.window_id
    )


def _worker(bus: BusSettings, suffix: str, policy: SamplingPolicy = POLICY) -> SamplerWorker:
    backend = InstantBackend()
    return SamplerWorker(
        Scorer(backend, backend, text_schema()),
        policy,
        bus=bus,
        group_id=f"sampler-{suffix}",
        transactional_id=f"sampler-{suffix}",
        topic_suffix=suffix,
    )


def _samples(worker: SamplerWorker, name: str, labels: dict[str, str] | None = None) -> list[float]:
    return [
        sample.value
        for metric in worker.registry.collect()
        for sample in metric.samples
        if sample.name == name and labels in (None, sample.labels)
    ]


def _check(decisions: list[bus_pb2.Decision], n_items: int) -> None:
    ids = [d.item_id for d in decisions]
    assert len(ids) == len(set(ids)) == n_items  # exactly one decision per item
    for decision in decisions:
        assert decision.delta == (keyed_uniform([decision.item_id], "stream-test")[0] < decision.pi)
    per_window: dict[str, int] = {}
    for decision in decisions:
        per_window[decision.window_id] = per_window.get(decision.window_id, 0) + decision.delta
    assert max(per_window.values()) <= 20  # 60 per window over 3 partitions


def test_a_budget_split_over_other_partitions_than_the_topic_has_is_refused(
    kafka_bootstrap: str,
) -> None:
    """The items topic exists with 3 partitions; a policy splitting the stream budget over 2
    would let the 3 partitions spend 3/2 of it: the worker refuses before reading anything."""
    suffix = uuid.uuid4().hex[:8]
    bus = _bus(kafka_bootstrap)
    _worker(bus, suffix)._ensure_topics()
    worker = _worker(bus, suffix, POLICY.model_copy(update={"partitions": 2}))
    with pytest.raises(PartitionMismatch, match="has 3 partitions, but the stream budget is"):
        worker.run(idle_exit_seconds=1)


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
    clean = clean_run_decisions(kafka_bootstrap, f"act.items.v1.{suffix}", POLICY)
    assert all(same_draw(d, clean[d.item_id]) for d in decisions)
    assert sum(_samples(worker, "act_bus_dead_letters_total")) == 1  # the junk record
    # The window gauges: each partition's last window, its reviews and what its cap leaves.
    last_window: dict[int, str] = {}
    for decision in decisions:  # in offset order per partition
        last_window[int(decision.window_id[1:].split("-")[0])] = decision.window_id
    cap = POLICY.partition_pacer().hard_cap
    for partition, window_id in last_window.items():
        spent = sum(d.delta for d in decisions if d.window_id == window_id)
        labels = {"partition": str(partition)}
        assert _samples(worker, "act_sampler_window_reviews", labels) == [spent]
        assert _samples(worker, "act_sampler_window_remaining_reviews", labels) == [cap - spent]
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
    decisions = _read_decisions(bus, suffix, N_KILL_ITEMS)
    _check(decisions, N_KILL_ITEMS)
    clean = clean_run_decisions(kafka_bootstrap, f"act.items.v1.{suffix}", POLICY)
    assert all(same_draw(d, clean[d.item_id]) for d in decisions)
    print(f"\nSIGKILL after {partial} of {N_KILL_ITEMS} decisions; after restart all present once")


N_KILL_ITEMS = 10_000


def test_group_offsets_behind_the_committed_state_are_not_decided_twice(
    kafka_bootstrap: str,
) -> None:
    """The group's offsets read back older than the sampler state committed with them (as
    kafka-python, which cannot ask for stable offsets, was seen to get after a broker restart):
    the worker seeks to the state's offset, so no item is decided twice or with a wrong state."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    suffix = uuid.uuid4().hex[:8]
    bus = _bus(kafka_bootstrap)
    first = _worker(bus, suffix)
    first._ensure_topics()
    _produce_items(bus, suffix, 1500)
    first.run(idle_exit_seconds=3)
    group = KafkaConsumer(
        bootstrap_servers=kafka_bootstrap, group_id=f"sampler-{suffix}", enable_auto_commit=False
    )
    topic = f"act.items.v1.{suffix}"
    group.commit({TopicPartition(topic, p): OffsetAndMetadata(100, "", -1) for p in range(3)})
    group.close()
    _produce_items(bus, suffix, 500, first=1500)
    second = _worker(bus, suffix)
    second.run(idle_exit_seconds=3)
    decisions = _read_decisions(bus, suffix, 2000)
    _check(decisions, 2000)
    clean = clean_run_decisions(kafka_bootstrap, topic, POLICY)
    assert all(same_draw(d, clean[d.item_id]) for d in decisions)
    assert _samples(second, "act_sampler_position_corrections_total") == [3]  # one per partition


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
