"""Items to stored records through the real broker and PostgreSQL: the sampler worker (instant
backend, stream pacer) produces decisions, the DecisionConsumer stores them in a ReviewStore.

- 10,000 items: every item has exactly one record; the queued set (delta = 1) is exactly the
  keyed draws (u(id, seed) < pi); no window spends more than its hard cap.
- The consumer crashing between the database commit and the offset commit, then being stopped
  mid-way, then finishing: the replays are absorbed (no duplicate, nothing missing).
- Malformed and conflicting decisions go to the dead-letter topic with their reasons.

The broker stopped and restarted mid-stream is tested in test_broker_restart.py (on a broker of
its own).

Each test uses topics of its own (a random suffix) and a database of its own (dropped after).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

SEED = "e2e-test"
PARTITIONS = 3
BUDGET_PER_WINDOW = 60  # 20 per partition window
WINDOW_ITEMS = 300
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _quiet_kafka_logs() -> None:
    import logging

    logging.getLogger("kafka").setLevel(logging.CRITICAL)


@pytest.fixture
def store(fresh_database: str) -> Iterator[Any]:
    from act.review import ReviewStore

    review_store = ReviewStore(fresh_database, pool_size=2)
    yield review_store
    review_store.close()


# ----------------------------------------------------------------------------- helpers


def _bus(kafka_bootstrap: str, **overrides: Any) -> Any:
    from act.bus import BusSettings

    settings: dict[str, Any] = {
        "kafka_bootstrap": kafka_bootstrap,
        "topic_partitions": PARTITIONS,
        "kafka_session_timeout_ms": 6000,
        "kafka_heartbeat_interval_ms": 1000,
        "kafka_max_poll_records": 500,
    }
    settings.update(overrides)
    return BusSettings(**settings)


def _policy() -> Any:
    from act.core.sampling import PacerConfig
    from act.sampler.policy import SamplingPolicy

    return SamplingPolicy(
        mode="stream",
        seed=SEED,
        partitions=PARTITIONS,
        pacer=PacerConfig(budget_per_window=BUDGET_PER_WINDOW, window_items=WINDOW_ITEMS),
    )


def _sampler(bus: Any, suffix: str) -> Any:
    from act.data import text_schema
    from act.inference.instant import InstantBackend
    from act.sampler.scoring import Scorer
    from act.sampler.service import SamplerWorker

    backend = InstantBackend()
    return SamplerWorker(
        Scorer(backend, backend, text_schema()),
        _policy(),
        bus=bus,
        group_id=f"sampler-{suffix}",
        transactional_id=f"sampler-{suffix}",
        topic_suffix=suffix,
        micro_batch=256,
    )


def _consumer(store: Any, bus: Any, suffix: str, cls: type | None = None, **kwargs: Any) -> Any:
    from act.data import text_schema
    from act.review.consumer import DecisionConsumer

    cls = cls or DecisionConsumer
    return cls(
        store,
        bus,
        group_id=f"review-{suffix}",
        topic_suffix=suffix,
        schemas=[text_schema()],
        lag_interval_s=1.0,
        stats_interval_s=None,
        retry_backoff_s=0.5,
        **kwargs,
    )


def _produce_items(bus: Any, suffix: str, n_items: int) -> list[str]:
    from act.bus.clients import flush_and_check, make_producer, publish
    from act.inference.types import Item, item_to_proto

    producer = make_producer(bus.kafka_bootstrap, settings=bus, linger_ms=20)
    ids = [f"item-{i:05d}" for i in range(n_items)]
    futures = [
        publish(
            producer,
            f"act.items.v1.{suffix}",
            item_to_proto(Item(item_id=item_id, text=f"message number {i} ({suffix})")),
        )
        for i, item_id in enumerate(ids)
    ]
    flush_and_check(futures, producer=producer, timeout_s=120)
    producer.close()
    return ids


def _count(store: Any) -> int:
    import sqlalchemy as sa

    from act.review.tables import records

    with store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(records)).scalar_one())


def _rows(store: Any) -> list[Any]:
    import sqlalchemy as sa

    from act.review.tables import records

    c = records.c
    with store.engine.connect() as conn:
        return list(conn.execute(sa.select(c.item_id, c.pi, c.delta, c.state, c.window_id)))


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.2)


def _check_records(store: Any, ids: list[str]) -> None:
    from act.core.sampling import keyed_uniform

    rows = _rows(store)
    stored_ids = [row.item_id for row in rows]
    assert len(stored_ids) == len(set(stored_ids)) == len(ids)  # one record per item
    assert set(stored_ids) == set(ids)
    u = keyed_uniform(stored_ids, SEED)
    queued = {row.item_id for row in rows if row.state == "pending"}
    drawn = {row.item_id for row, u_i in zip(rows, u, strict=True) if u_i < row.pi}
    assert {row.item_id for row in rows if row.delta} == queued == drawn
    assert queued, "the pacer selected nothing"
    spent: dict[str, int] = {}
    for row in rows:
        spent[row.window_id] = spent.get(row.window_id, 0) + int(row.delta)
    assert max(spent.values()) <= BUDGET_PER_WINDOW // PARTITIONS


def _metric(registry: Any, name: str, **labels: str) -> float:
    total = 0.0
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


class _Runner(threading.Thread):
    """Runs a worker's `run` in a thread and keeps what it raised."""

    def __init__(self, worker: Any, **run_kwargs: Any) -> None:
        super().__init__(daemon=True)
        self.worker = worker
        self.run_kwargs = run_kwargs
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.worker.run(**self.run_kwargs)
        except BaseException as exc:
            self.error = exc

    def stop(self, timeout: float = 60) -> None:
        self.worker.stop()
        self.join(timeout)
        assert not self.is_alive(), f"{type(self.worker).__name__} did not stop"


# ----------------------------------------------------------------------------- tests


N_ITEMS = 10_000


def test_ten_thousand_items_each_stored_once_with_the_keyed_draws_under_the_cap(
    kafka_bootstrap: str, store: Any
) -> None:
    suffix = uuid.uuid4().hex[:8]
    bus = _bus(kafka_bootstrap)
    sampler = _sampler(bus, suffix)
    sampler._ensure_topics()
    consumer = _consumer(store, bus, suffix)
    threads = [_Runner(sampler), _Runner(consumer)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    try:
        ids = _produce_items(bus, suffix, N_ITEMS)
        _wait_for(lambda: _count(store) >= N_ITEMS, 240, f"{N_ITEMS} records")
        elapsed = time.perf_counter() - started
    finally:
        for thread in threads:
            thread.stop()
    assert all(thread.error is None for thread in threads), [t.error for t in threads]
    _check_records(store, ids)
    registry = consumer.registry
    assert _metric(registry, "act_review_decisions_total", outcome="inserted") == N_ITEMS
    assert _metric(registry, "act_review_decisions_total", outcome="conflict") == 0
    assert _metric(registry, "act_review_decisions_total", outcome="invalid") == 0
    consumer_lag = [
        s.value
        for m in registry.collect()
        for s in m.samples
        if s.name == "act_review_consumer_lag"
    ]
    assert consumer_lag and max(consumer_lag) >= 0
    print(f"\n{N_ITEMS} items stored in {elapsed:.1f} s ({N_ITEMS / elapsed:,.0f} items/s)")


class _Crash(Exception):
    """Stands for the process dying between the database commit and the offset commit."""


def _crashing_consumer_class() -> type:
    from act.review.consumer import DecisionConsumer

    class CrashingConsumer(DecisionConsumer):
        crash_at = 3

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.commits = 0

        def _commit(self, consumer: Any, offsets: Any) -> None:
            self.commits += 1
            if self.commits == self.crash_at:
                raise _Crash(f"crash before commit #{self.commits}")
            super()._commit(consumer, offsets)

    return CrashingConsumer


def test_consumer_crash_and_restart_replays_without_duplicates(
    kafka_bootstrap: str, store: Any
) -> None:
    n_items = 4000
    suffix = uuid.uuid4().hex[:8]
    bus = _bus(kafka_bootstrap, kafka_max_poll_records=200)
    sampler = _sampler(bus, suffix)
    sampler._ensure_topics()
    ids = _produce_items(bus, suffix, n_items)
    sampler.run(idle_exit_seconds=3)  # every decision is on the topic before the consumers start

    # 1. Dies after its third database commit, before the offset commit.
    first = _consumer(store, bus, suffix, _crashing_consumer_class())
    with pytest.raises(_Crash):
        first.run()
    after_crash = _count(store)
    assert 0 < after_crash < n_items
    # 2. Replays the uncommitted poll, then is stopped mid-way.
    second = _consumer(store, bus, suffix)
    runner = _Runner(second)
    runner.start()
    _wait_for(lambda: second.stored >= after_crash + 500, 60, "the second consumer to progress")
    runner.stop()
    assert runner.error is None, runner.error
    replayed = _metric(second.registry, "act_review_decisions_total", outcome="unchanged")
    assert replayed > 0, "the poll stored before the crash was not replayed"
    # 3. Finishes from the committed offsets.
    third = _consumer(store, bus, suffix)
    third.run(idle_exit_seconds=3)

    _check_records(store, ids)
    inserted = sum(
        _metric(c.registry, "act_review_decisions_total", outcome="inserted")
        for c in (first, second, third)
    )
    assert inserted == n_items  # each item inserted once, all replays absorbed
    for c in (first, second, third):
        assert _metric(c.registry, "act_review_decisions_total", outcome="conflict") == 0
    print(
        f"\ncrash after {after_crash} records; replayed {replayed:.0f} unchanged; "
        f"{n_items} records, each once"
    )


def test_malformed_and_conflicting_decisions_go_to_the_dead_letter_topic(
    kafka_bootstrap: str, store: Any
) -> None:
    from kafka import KafkaConsumer

    from act.bus import decode, default_topic_specs, ensure_topics
    from act.bus.clients import flush_and_check, make_producer, publish
    from act.bus.dlq import HEADER_DLQ_REASON
    from act.v1 import bus_pb2

    suffix = uuid.uuid4().hex[:8]
    bus = _bus(kafka_bootstrap)
    ensure_topics(bus.kafka_bootstrap, default_topic_specs(bus, suffix=suffix))

    def decision(pi: float) -> Any:
        message = bus_pb2.Decision(
            item_id="item-x", eps=0.3, pi=pi, delta=True, sampler="stream", window_id="w"
        )
        message.annotation.label = "spam"
        message.annotation.schema_id = "act-moderation"
        message.annotation.schema_version = 1
        message.criticism.error_probability = 0.3
        return message

    topic = f"act.decisions.v1.{suffix}"
    producer = make_producer(bus.kafka_bootstrap, settings=bus)
    futures = [
        publish(producer, topic, decision(0.5)),
        publish(producer, topic, decision(0.5)),  # a redelivery: absorbed
        publish(producer, topic, decision(0.9)),  # a different decision: a conflict
        producer.send(topic, key=b"junk", value=b"\x00not-proto"),
    ]
    flush_and_check(futures, producer=producer)
    producer.close()

    consumer = _consumer(store, bus, suffix)
    consumer.run(idle_exit_seconds=3)
    assert _count(store) == 1
    assert _metric(consumer.registry, "act_review_decisions_total", outcome="unchanged") == 1

    reader = KafkaConsumer(
        f"act.dlq.v1.{suffix}",
        bootstrap_servers=bus.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        consumer_timeout_ms=5000,
        receive_message_max_bytes=64 * 1024 * 1024,
    )
    letters = list(reader)
    reader.close()
    reasons = sorted(dict(letter.headers)[HEADER_DLQ_REASON].decode() for letter in letters)
    assert len(letters) == 2, reasons
    assert "decision_conflict" in reasons
    assert any(reason != "decision_conflict" for reason in reasons)  # the codec's reason
    texts = [decode(letter).message.reason for letter in letters]
    assert any("already stored" in text for text in texts), texts
