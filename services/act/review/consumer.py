"""The review queue's intake: `act.decisions.v1` into the `ReviewStore`, exactly once in effect.

`DecisionConsumer` reads decisions (`read_committed`, so aborted sampler transactions are never
seen; manual commits) in polls of up to `ACT_KAFKA_MAX_POLL_RECORDS`, and for each poll:

1. decodes every record with the codec; a malformed one is set aside for the dead-letter topic
   with the codec's reason;
2. stores the valid decisions with one `ReviewStore.upsert_decisions` call (one database
   transaction); decisions it rejects (invalid, or conflicting with a stored one) are set aside
   for the dead-letter topic with the store's reason (`invalid_decision`, `decision_conflict`);
3. publishes the dead letters and waits for them (`flush_and_check`);
4. commits the Kafka offsets, only now: a crash anywhere before replays the poll, and the
   upsert, idempotent by item id (the first decision stored wins, an identical redelivery
   changes nothing), absorbs the replay. The dead-letter topic is at least once: a crash
   between 3 and 4 parks the same bad record again on the replay.

A database error (PostgreSQL down, a failover) stores nothing and commits nothing: the consumer
seeks back to the poll's first offsets and retries after a backoff, so the stream waits for the
database rather than skipping records. The broker going away (stopped, restarted) is absorbed
the same way: no wait on it is unbounded (the offset commit has `commit_timeout_s`; the lag gauge
uses the high watermarks of the fetches, no request), a failed offset commit only means those
records are read again (and found unchanged), a dead letter that cannot be published makes the
poll be retried after a backoff, and an error from the poll itself is logged and the poll
retried; kafka-python reconnects and rejoins the group on its own once the broker is back.

Label schemas: a decision carries its schema's id and version (`annotation.schema_id`), not its
labels, so the consumer cannot register a schema from the stream. Whoever configures the
pipeline registers them (`schemas=` here, registered once at start and idempotent; or
`ReviewStore.register_schema` / the review service); records of an unregistered schema are
still stored, and reviews of them are refused until the schema is registered.

Metrics (in the registry given): `act_review_decisions_total{outcome}` (inserted, unchanged,
invalid, conflict, malformed), `act_review_consumer_lag{topic,partition}` (high watermark of the
last fetch minus the offset this consumer last committed, refreshed at most every
`lag_interval_s`), `act_review_queue_pending` (items
waiting for review, from `ReviewStore.stats`, at most every `stats_interval_s`; that is a
count over the records table, so it is kept infrequent), `act_review_batch_failures_total`
(polls retried after a database error) and the dead-letter counter of `act.bus.dlq`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry, Counter, Gauge

from act.bus import DECISIONS_TOPIC, DLQ_TOPIC, BusSettings, MalformedMessage, decode
from act.bus.clients import (
    PublishError,
    consumer_config,
    flush_and_check,
    make_producer,
    retry_delay,
)
from act.bus.dlq import DeadLetterQueue
from act.bus.runtime import prepare_stream_process
from act.bus.topics import with_suffix
from act.review.errors import DecisionConflict, InvalidDecision
from act.review.store import ReviewStore, UpsertResult
from act.v1 import bus_pb2, types_pb2

log = logging.getLogger("act.review.consumer")

OUTCOMES = ("inserted", "unchanged", "invalid", "conflict", "malformed")


class ConsumerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.decisions = Counter(
            "act_review_decisions_total",
            "Decisions read from the decisions topic, by what the store did with them",
            ["outcome"],
            registry=registry,
        )
        for outcome in OUTCOMES:
            self.decisions.labels(outcome=outcome)
        self.lag = Gauge(
            "act_review_consumer_lag",
            "Records of the decisions topic not committed yet (end offset - committed offset)",
            ["topic", "partition"],
            registry=registry,
        )
        self.pending = Gauge(
            "act_review_queue_pending",
            "Records waiting for a review (delta = 1, not claimed or reviewed)",
            registry=registry,
        )
        self.failures = Counter(
            "act_review_batch_failures_total",
            "Polls that could not be stored (database error) and were retried",
            registry=registry,
        )


class DecisionConsumer:
    """Stores every decision of `act.decisions.v1[.<suffix>]`; see the module docstring."""

    def __init__(
        self,
        store: ReviewStore,
        bus_settings: BusSettings | None = None,
        group_id: str = "act-review",
        topic_suffix: str = "",
        *,
        schemas: Iterable[Any] = (),
        registry: CollectorRegistry | None = None,
        lag_interval_s: float = 5.0,
        stats_interval_s: float | None = 30.0,
        retry_backoff_s: float = 1.0,
        max_retry_backoff_s: float = 10.0,
        poll_timeout_ms: int = 500,
        commit_timeout_s: float = 10.0,
    ) -> None:
        self.store = store
        self.bus = bus_settings or BusSettings()
        self.group_id = group_id
        self.topic = with_suffix(DECISIONS_TOPIC, topic_suffix)
        self.dlq_topic = with_suffix(DLQ_TOPIC, topic_suffix)
        self.schemas = [_schema_proto(schema) for schema in schemas]
        self.registry = registry or CollectorRegistry()
        self.metrics = ConsumerMetrics(self.registry)
        self.lag_interval_s = lag_interval_s
        self.stats_interval_s = stats_interval_s
        self.retry_backoff_s = retry_backoff_s
        self.max_retry_backoff_s = max_retry_backoff_s
        self.poll_timeout_ms = poll_timeout_ms
        self.commit_timeout_s = commit_timeout_s
        self.stored = 0  # decisions inserted or found unchanged, by this instance
        self._committed: dict[TopicPartition, int] = {}  # last offsets this instance committed
        self._failures = 0  # consecutive failed polls (sets the backoff)
        self._stop = threading.Event()
        self._last_lag = 0.0
        self._last_stats = 0.0

    # -- lifecycle ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Ends `run` after the poll in progress (its offsets are committed or replayed)."""
        self._stop.set()

    def run(self, idle_exit_seconds: float | None = None) -> None:
        """Consume until `stop()` (or, with `idle_exit_seconds`, until the topic is idle)."""
        for schema in self.schemas:
            self.store.register_schema(schema)
        producer = make_producer(self.bus.kafka_bootstrap, settings=self.bus)
        dead_letters = DeadLetterQueue(
            producer, "review-queue", topic=self.dlq_topic, registry=self.registry
        )
        consumer = KafkaConsumer(**consumer_config(self.group_id, self.bus))
        consumer.subscribe([self.topic], listener=_Rebalance(self))
        idle = 0.0
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    batch = consumer.poll(timeout_ms=self.poll_timeout_ms)
                except KafkaError as error:
                    log.warning("poll failed (%r); retrying", error)
                    self._backoff()
                    continue
                if batch:
                    idle = 0.0
                    self._process(batch, consumer, producer, dead_letters)
                else:
                    idle += time.monotonic() - started
                    if idle_exit_seconds is not None and idle >= idle_exit_seconds:
                        break
                self._refresh_gauges(consumer)
        finally:
            consumer.close(autocommit=False, timeout_ms=5000)
            try:
                producer.close(timeout=5)
            except KafkaError as error:  # unsent dead letters: their polls were not committed
                log.warning("dead-letter producer not closed cleanly: %s", error)

    # -- processing ---------------------------------------------------------------------------

    def _process(
        self,
        batch: dict[TopicPartition, list[Any]],
        consumer: KafkaConsumer,
        producer: Any,
        dead_letters: DeadLetterQueue,
    ) -> None:
        records = [record for part in batch.values() for record in part]
        decoded: list[tuple[Any, bus_pb2.Decision]] = []
        malformed: list[tuple[Any, MalformedMessage]] = []
        for record in records:
            try:
                decoded.append((record, decode(record, expected=bus_pb2.Decision).message))
            except MalformedMessage as error:
                malformed.append((record, error))
        try:
            result = self.store.upsert_decisions(decision for _, decision in decoded)
        except Exception:
            log.exception("storing %d decisions failed; retrying the poll", len(decoded))
            self._retry(batch, consumer)
            return
        # The store has committed: count what it did (a replay of this poll counts as unchanged).
        counts = {
            "inserted": len(result.inserted),
            "unchanged": len(result.unchanged),
            "invalid": len(result.invalid),
            "conflict": len(result.conflicts),
            "malformed": len(malformed),
        }
        for outcome, count in counts.items():
            if count:
                self.metrics.decisions.labels(outcome=outcome).inc(count)
        self.stored += counts["inserted"] + counts["unchanged"]
        futures = [dead_letters.send(record, error) for record, error in malformed]
        for record, problem in _rejected_records(decoded, result):
            reason = "decision_conflict" if isinstance(problem, DecisionConflict) else None
            futures.append(
                dead_letters.send(record, str(problem), reason=reason or "invalid_decision")
            )
        if futures:
            try:
                flush_and_check(futures, producer=producer, timeout_s=self.commit_timeout_s)
            except (PublishError, KafkaError) as error:
                # Stored, not committed: the retry finds these decisions unchanged and parks the
                # bad records again (the dead-letter topic is at least once).
                log.warning("dead letters not published (%s); retrying the poll", error)
                self._retry(batch, consumer)
                return
        self._failures = 0
        offsets = {
            partition: OffsetAndMetadata(part[-1].offset + 1, "", -1)
            for partition, part in batch.items()
        }
        self._commit(consumer, offsets)

    def _retry(self, batch: dict[TopicPartition, list[Any]], consumer: KafkaConsumer) -> None:
        """Seeks back to the poll's first offsets and backs off: the poll is read again."""
        self.metrics.failures.inc()
        for partition, part in batch.items():
            consumer.seek(partition, part[0].offset)
        self._backoff()

    def _backoff(self) -> None:
        self._failures += 1
        self._stop.wait(retry_delay(self._failures, self.retry_backoff_s, self.max_retry_backoff_s))

    def _commit(
        self, consumer: KafkaConsumer, offsets: dict[TopicPartition, OffsetAndMetadata]
    ) -> None:
        """Commits the poll's offsets (after the store committed; see the module docstring).

        A failed commit (the group rebalanced meanwhile, the coordinator is unreachable, no
        answer in `commit_timeout_s`) is only logged: these records are read again (by this
        consumer or the partitions' next owner) and the store absorbs them.
        """
        try:
            consumer.commit(offsets, timeout_ms=int(self.commit_timeout_s * 1000))
        except KafkaError as error:
            log.warning("offset commit failed (%r); the records will be replayed", error)
            return
        for partition, offset in offsets.items():
            self._committed[partition] = offset.offset

    # -- gauges -------------------------------------------------------------------------------

    def _refresh_gauges(self, consumer: KafkaConsumer) -> None:
        now = time.monotonic()
        if now - self._last_lag >= self.lag_interval_s:
            self._last_lag = now
            try:
                self.update_lag(consumer)
            except Exception as error:  # metrics never stop the intake
                log.warning("consumer lag not updated: %s", error)
        if self.stats_interval_s is not None and now - self._last_stats >= self.stats_interval_s:
            self._last_stats = now
            try:
                self.metrics.pending.set(self.store.stats(recent_windows=0).pending)
            except Exception as error:
                log.warning("queue depth not updated: %s", error)

    def update_lag(self, consumer: KafkaConsumer) -> None:
        """Sets the lag of every assigned partition whose high watermark a fetch has reported
        (no request to the broker: this runs in the poll loop, also while the broker is away)."""
        for partition in consumer.assignment():
            end = consumer.highwater(partition)
            if end is None:
                continue
            done = self._committed.get(partition)
            if done is None:  # nothing committed by this instance yet: what it has read so far
                done = consumer.position(partition, timeout_ms=0)
            lag = max(0, end - done)
            self.metrics.lag.labels(topic=partition.topic, partition=str(partition.partition)).set(
                lag
            )

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        for partition in partitions:
            self._committed.pop(partition, None)
            try:
                self.metrics.lag.remove(partition.topic, str(partition.partition))
            except KeyError:
                pass


def _rejected_records(
    decoded: Sequence[tuple[Any, bus_pb2.Decision]], result: UpsertResult
) -> list[tuple[Any, InvalidDecision | DecisionConflict]]:
    """The record of each rejected decision.

    The store reports rejections by item id; a poll may hold several decisions of one id (a
    redelivery, or a different decision for a stored item). The first decision stored wins, so
    the rejected ones of an id are its last ones in the poll: k rejections of an id name its
    last k records.
    """
    by_id: dict[str, list[Any]] = {}
    for record, decision in decoded:
        by_id.setdefault(decision.item_id, []).append(record)
    taken: dict[str, int] = {}
    out: list[tuple[Any, InvalidDecision | DecisionConflict]] = []
    for problem in result.rejected:
        candidates = by_id.get(problem.item_id, [])
        index = taken.get(problem.item_id, 0) + 1
        taken[problem.item_id] = index
        if index <= len(candidates):
            out.append((candidates[-index], problem))
        else:  # cannot happen with the store's contract; never drop silently
            log.error("rejected decision %r matches no record of the poll", problem.item_id)
    return out


def _schema_proto(schema: Any) -> types_pb2.LabelSchema:
    if isinstance(schema, types_pb2.LabelSchema):
        return schema
    from act.inference.types import schema_to_proto

    return schema_to_proto(schema)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, consumer: DecisionConsumer) -> None:
        self.consumer = consumer

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self.consumer.forget(revoked)

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        pass


def serve_decision_consumer(
    *,
    database_url: str | None = None,
    group_id: str = "act-review",
    topic_suffix: str = "",
    schema_ids: Sequence[str] = (),
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
    bus_settings: BusSettings | None = None,
) -> int:
    """Runs a `DecisionConsumer` until SIGTERM/SIGINT; returns the exit code (for a CLI).

    `database_url` defaults to `act.review.db.url_from_environment()`;
    `schema_ids` name schemas of `SchemaRegistry.with_defaults()` (plus `ACT_SCHEMAS_DIR`) to
    register at start; `metrics_port` serves the consumer's registry over HTTP on
    `metrics_host`.
    """
    import os
    import signal

    from act.inference.schemas import SchemaRegistry
    from act.review.db import url_from_environment

    registry_dir = os.environ.get("ACT_SCHEMAS_DIR") or None
    known = SchemaRegistry.with_defaults(registry_dir)
    schemas = [known.get(schema_id) for schema_id in schema_ids]
    url = database_url or url_from_environment()
    store = ReviewStore(url)
    consumer = DecisionConsumer(
        store, bus_settings, group_id=group_id, topic_suffix=topic_suffix, schemas=schemas
    )
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=metrics_host, registry=consumer.registry)
    previous = {
        sig: signal.signal(sig, lambda *_: consumer.stop())
        for sig in (signal.SIGTERM, signal.SIGINT)
    }
    prepare_stream_process()
    try:
        consumer.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        store.close()
    return 0
