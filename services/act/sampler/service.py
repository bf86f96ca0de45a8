"""The sampler service: `act.items.v1` in, exactly one decision per item on `act.decisions.v1`.

Each poll is processed in one Kafka transaction: the decisions, the dead letters, each
partition's sampler state (on the compacted topic `act.sampler-state.v1`) and the input
offsets are committed together or not at all. A crash (even SIGKILL) therefore loses and
duplicates nothing: the next instance with the same transactional id fences the old one,
its open transaction is aborted (consumers read `read_committed`), and processing resumes
from the committed offsets with the committed sampler state, drawing the same deltas
(`act.sampler.policy`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import ValidationError

from act.bus import (
    DECISIONS_TOPIC,
    DLQ_TOPIC,
    ITEMS_TOPIC,
    BusSettings,
    MalformedMessage,
    decode,
    default_topic_specs,
    ensure_topics,
)
from act.bus.clients import consumer_config, make_producer, publish
from act.bus.dlq import DeadLetterQueue
from act.bus.topics import with_suffix
from act.inference.types import Item, item_from_proto
from act.sampler.policy import PartitionSampler, SamplerState, SamplingPolicy, ScoredItem
from act.sampler.scoring import Failed, Scorer
from act.v1 import types_pb2

STATE_TOPIC = "act.sampler-state.v1"
log = logging.getLogger("act.sampler")


class SamplerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.decisions = Counter(
            "act_sampler_decisions_total", "Decisions produced", ["delta"], registry=registry
        )
        self.items = Counter(
            "act_sampler_items_total", "Items consumed, by outcome", ["outcome"], registry=registry
        )
        self.pending = Gauge(
            "act_sampler_pending_items", "Items waiting for a full micro-batch", registry=registry
        )
        self.transactions = Counter(
            "act_sampler_transactions_total",
            "Transactions, by result",
            ["result"],
            registry=registry,
        )


class SamplerWorker:
    """Consumes items, scores them, decides, and commits everything in one transaction."""

    def __init__(
        self,
        scorer: Scorer,
        policy: SamplingPolicy,
        *,
        bus: BusSettings | None = None,
        group_id: str = "act-sampler",
        transactional_id: str = "act-sampler-0",
        topic_suffix: str = "",
        micro_batch: int = 64,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.scorer = scorer
        self.policy = policy
        self.bus = bus or BusSettings()
        self.group_id = group_id
        self.transactional_id = transactional_id
        self.items_topic = with_suffix(ITEMS_TOPIC, topic_suffix)
        self.decisions_topic = with_suffix(DECISIONS_TOPIC, topic_suffix)
        self.dlq_topic = with_suffix(DLQ_TOPIC, topic_suffix)
        self.state_topic = with_suffix(STATE_TOPIC, topic_suffix)
        self.topic_suffix = topic_suffix
        self.micro_batch = micro_batch
        self.registry = registry or CollectorRegistry()
        self.metrics = SamplerMetrics(self.registry)
        self._samplers: dict[int, PartitionSampler] = {}
        self._stop = threading.Event()
        self._loop = asyncio.new_event_loop()

    # -- lifecycle ----------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    def run(self, *, idle_exit_seconds: float | None = None) -> None:
        """Process until `stop()` (or, with `idle_exit_seconds`, until the input is idle)."""
        self._ensure_topics()
        producer = make_producer(
            self.bus.kafka_bootstrap, settings=self.bus, transactional_id=self.transactional_id
        )
        producer.init_transactions()
        dead_letters = DeadLetterQueue(
            producer, "sampler", topic=self.dlq_topic, registry=self.registry
        )
        consumer = KafkaConsumer(**consumer_config(self.group_id, self.bus))
        consumer.subscribe([self.items_topic], listener=_Rebalance(self))
        idle = 0.0
        try:
            while not self._stop.is_set():
                batch = consumer.poll(timeout_ms=500)
                if not batch:
                    idle += 0.5
                    if idle_exit_seconds is not None and idle >= idle_exit_seconds:
                        return
                    continue
                idle = 0.0
                self._process(batch, consumer, producer, dead_letters)
        finally:
            consumer.close()
            producer.close()
            self._loop.close()

    # -- processing ---------------------------------------------------------------------------

    def _process(
        self,
        batch: dict[TopicPartition, list[Any]],
        consumer: KafkaConsumer,
        producer: Any,
        dead_letters: DeadLetterQueue,
    ) -> None:
        producer.begin_transaction()
        try:
            offsets: dict[TopicPartition, OffsetAndMetadata] = {}
            for partition, records in batch.items():
                offsets[partition] = self._process_partition(
                    partition, records, producer, dead_letters
                )
            producer.send_offsets_to_transaction(offsets, self.group_id)
            producer.commit_transaction()
            self.metrics.transactions.labels(result="committed").inc()
        except Exception:
            log.exception("transaction aborted; resuming from the committed offsets")
            producer.abort_transaction()
            self.metrics.transactions.labels(result="aborted").inc()
            self._rewind(consumer, list(batch))
        self.metrics.pending.set(sum(s.pending for s in self._samplers.values()))

    def _process_partition(
        self,
        partition: TopicPartition,
        records: Sequence[Any],
        producer: Any,
        dead_letters: DeadLetterQueue,
    ) -> OffsetAndMetadata:
        sampler = self._sampler(partition.partition)
        valid: list[tuple[Any, Item]] = []
        for record in records:
            try:
                decoded = decode(record, expected=types_pb2.Item)
                valid.append((record, item_from_proto(decoded.message)))
            except MalformedMessage as error:
                dead_letters.send(record, error)
                self.metrics.items.labels(outcome="malformed").inc()
            except ValidationError as error:
                dead_letters.send(record, _first_error(error), reason="invalid_item")
                self.metrics.items.labels(outcome="invalid").inc()
        chunks = [valid[i : i + self.micro_batch] for i in range(0, len(valid), self.micro_batch)]
        outcomes = self._loop.run_until_complete(
            self.scorer.score_many([[item for _, item in chunk] for chunk in chunks])
        )
        scored: list[ScoredItem] = []
        for (record, _), outcome in zip(valid, (o for c in outcomes for o in c), strict=True):
            if isinstance(outcome, Failed):
                dead_letters.send(record, outcome.reason, reason="scoring_failed")
                self.metrics.items.labels(outcome="failed").inc()
                continue
            scored.append(
                ScoredItem(
                    outcome.item,
                    outcome.annotation,
                    outcome.criticism,
                    offset=record.offset,
                    event_time=record.timestamp / 1000.0,
                )
            )
        for decision in sampler.offer(scored):
            publish(producer, self.decisions_topic, decision)
            self.metrics.decisions.labels(delta=str(decision.delta).lower()).inc()
        self.metrics.items.labels(outcome="scored").inc(len(scored))
        state = sampler.state()
        # Without pending items every record of the poll is done (decided or dead-lettered).
        next_offset = state.next_offset if sampler.pending else records[-1].offset + 1
        state.next_offset = next_offset
        producer.send(
            self.state_topic,
            key=str(partition.partition).encode(),
            value=state.model_dump_json().encode(),
        )
        return OffsetAndMetadata(next_offset, "", -1)

    # -- state --------------------------------------------------------------------------------

    def _sampler(self, partition: int) -> PartitionSampler:
        if partition not in self._samplers:
            state = self._load_states().get(partition)
            self._samplers[partition] = PartitionSampler(self.policy, partition, state)
        return self._samplers[partition]

    def _load_states(self) -> dict[int, SamplerState]:
        """The last committed state of every partition, read from the compacted state topic."""
        reader = KafkaConsumer(
            bootstrap_servers=self.bus.kafka_bootstrap,
            isolation_level="read_committed",
            enable_auto_commit=False,
            group_id=None,
        )
        try:
            partitions = [
                TopicPartition(self.state_topic, p)
                for p in sorted(reader.partitions_for_topic(self.state_topic) or [])
            ]
            reader.assign(partitions)
            reader.seek_to_beginning(*partitions)
            end = reader.end_offsets(partitions)
            states: dict[int, SamplerState] = {}
            while any(reader.position(p) < end[p] for p in partitions):
                for records in reader.poll(timeout_ms=500).values():
                    for record in records:
                        states[int(record.key)] = SamplerState.model_validate_json(record.value)
            return states
        finally:
            reader.close()

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        for partition in partitions:
            self._samplers.pop(partition.partition, None)

    def _rewind(self, consumer: KafkaConsumer, partitions: list[TopicPartition]) -> None:
        self.forget(partitions)
        for partition in partitions:
            committed = consumer.committed(partition)
            if committed is None:
                consumer.seek_to_beginning(partition)
            else:
                consumer.seek(partition, committed)

    def _ensure_topics(self) -> None:
        ensure_topics(
            self.bus.kafka_bootstrap, default_topic_specs(self.bus, suffix=self.topic_suffix)
        )
        admin = KafkaAdminClient(bootstrap_servers=self.bus.kafka_bootstrap)
        try:
            admin.create_topics(
                [
                    NewTopic(
                        self.state_topic,
                        num_partitions=1,
                        replication_factor=self.bus.topic_replication,
                        topic_configs={"cleanup.policy": "compact"},
                    )
                ]
            )
        except TopicAlreadyExistsError:
            pass
        finally:
            admin.close()


class _Rebalance(ConsumerRebalanceListener):
    """Revoked partitions drop their in-memory sampler: the next owner resumes from the
    committed offsets and state."""

    def __init__(self, worker: SamplerWorker) -> None:
        self.worker = worker

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self.worker.forget(revoked)

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.worker.forget(assigned)  # reload their committed state on first use


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    return f"invalid item: {where}: {first.get('msg', '')}"
