"""The sampler service: `act.items.v1` in, exactly one decision per item on `act.decisions.v1`.

Work is committed in Kafka transactions: the decisions, the dead letters, each partition's
sampler state (on the compacted topic `act.sampler-state.v1`) and the input offsets commit
together or not at all. A transaction spans polls until it holds `transaction_items` records or
has been open `transaction_seconds` (fewer, larger transactions: the commit's round trips are
paid once for many items). A crash (even SIGKILL) therefore loses and duplicates nothing: the
next instance with the same transactional id fences the old one, its open transaction is aborted
(consumers read `read_committed`), and processing resumes from the committed offsets with the
committed sampler state, drawing the same deltas (`act.sampler.policy`).

The same holds while the worker runs and the broker goes away (stopped, restarted, a failover).
Every wait on the broker is bounded (`transaction_timeout_s`, see `act.bus.transactions` for
why kafka-python needs help there). When a transaction fails:

1. if the producer can still abort it, the worker aborts, seeks back to the committed offsets
   and forgets its in-memory samplers (they are reloaded from the committed state);
2. otherwise (a fatal producer error, a commit or abort whose outcome is unknown, the broker
   unreachable) it closes the producer and the consumer and builds new ones: the new producer's
   `init_transactions` (same transactional id) fences the old one and settles its open
   transaction, and only then does the new consumer join and read the committed offsets.

Retries back off exponentially (`retry_backoff_s` doubling up to `max_retry_backoff_s`), every
recovery is logged and counted (`act_sampler_recoveries_total{action}`), and SIGTERM is honoured
during the waits.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import ValidationError

from act.bus import (
    DECISIONS_TOPIC,
    DLQ_TOPIC,
    ITEMS_TOPIC,
    BusSettings,
    MalformedMessage,
    TopicSpec,
    decode,
    default_topic_specs,
    ensure_topics,
)
from act.bus import transactions as txn
from act.bus.clients import consumer_config, make_producer, publish, retry_delay
from act.bus.dlq import DeadLetterQueue
from act.bus.topics import with_suffix
from act.inference.types import Item, item_from_proto
from act.sampler.policy import PartitionSampler, SamplerState, SamplingPolicy, ScoredItem
from act.sampler.scoring import Failed, Scorer
from act.v1 import types_pb2
from act.validation import validation_problems

STATE_TOPIC = "act.sampler-state.v1"
RECOVERY_ACTIONS = ("aborted", "rebuilt")
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
        self.recoveries = Counter(
            "act_sampler_recoveries_total",
            "Failed transactions recovered from, by action: aborted (same producer, rewound to "
            "the committed offsets) or rebuilt (new producer and consumer)",
            ["action"],
            registry=registry,
        )
        for action in RECOVERY_ACTIONS:
            self.recoveries.labels(action=action)
        # Stream mode: the open pacing window of each partition this worker committed last.
        self.window_reviews = Gauge(
            "act_sampler_window_reviews",
            "Reviews drawn in a partition's current pacing window, as last committed",
            ["partition"],
            registry=registry,
        )
        self.window_remaining = Gauge(
            "act_sampler_window_remaining_reviews",
            "Reviews left under the hard cap of a partition's current pacing window, as last "
            "committed",
            ["partition"],
            registry=registry,
        )
        self.position_corrections = Counter(
            "act_sampler_position_corrections_total",
            "Partitions whose fetch position disagreed with their committed sampler state and "
            "were sought to the state's offset",
            registry=registry,
        )


@dataclass
class _Clients:
    """The Kafka clients of one connection; replaced as a whole when a recovery rebuilds."""

    producer: KafkaProducer
    consumer: KafkaConsumer
    dead_letters: DeadLetterQueue
    # Decisions go to their item's partition when both topics have as many partitions: the
    # default partitioner (murmur2 of the same key) would pick it too, at a cost per record.
    same_partitions: bool
    in_transaction: bool = False
    # Offsets were handed to the transaction: kafka-python keeps them pending until they are
    # acknowledged, and would send them again in a later transaction, so a transaction that
    # fails after this point is never retried on the same producer.
    offsets_sent: bool = False


@dataclass
class _Transaction:
    """What one transaction has done so far."""

    offsets: dict[TopicPartition, OffsetAndMetadata] = field(default_factory=dict)
    states: dict[int, SamplerState] = field(default_factory=dict)
    records: int = 0


class _Rebalanced(Exception):
    """Partitions moved while a transaction was open: it is aborted and the work redone."""


class PartitionMismatch(ValueError):
    """The stream budget is split over another number of partitions than the items topic has:
    the partitions together would spend a multiple (or a fraction) of the budget."""


class SamplerWorker:
    """Consumes items, scores them, decides, and commits everything in transactions."""

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
        transaction_items: int = 2000,
        transaction_seconds: float = 0.5,
        transaction_timeout_s: float = 30.0,
        retry_backoff_s: float = 0.5,
        max_retry_backoff_s: float = 10.0,
    ) -> None:
        if transaction_items < 1 or transaction_seconds <= 0 or transaction_timeout_s <= 0:
            raise ValueError("transaction bounds and the transaction timeout must be positive")
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
        self.transaction_items = transaction_items
        self.transaction_seconds = transaction_seconds
        self.transaction_timeout_s = transaction_timeout_s
        self.retry_backoff_s = retry_backoff_s
        self.max_retry_backoff_s = max_retry_backoff_s
        self.registry = registry or CollectorRegistry()
        self.metrics = SamplerMetrics(self.registry)
        self._samplers: dict[int, PartitionSampler] = {}
        self._window_cap = policy.partition_pacer().hard_cap if policy.mode == "stream" else None
        # The committed states read for the partitions without a sampler yet; valid until the
        # assignment changes or the worker rewinds (nothing else commits those partitions).
        self._committed_states: dict[int, SamplerState] | None = None
        self._corrected: dict[TopicPartition, int] = {}  # partition -> offset it was sought to
        self._partitions: dict[str, int] = {}
        self._failures = 0  # consecutive failed transactions (sets the backoff)
        self._rebalanced = False
        self._stop = threading.Event()
        self._loop = asyncio.new_event_loop()

    # -- lifecycle ----------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    def run(self, *, idle_exit_seconds: float | None = None) -> None:
        """Process until `stop()` (or, with `idle_exit_seconds`, until the input is idle).
        PartitionMismatch before anything is read when the stream policy splits its budget
        over another number of partitions than the items topic has."""
        clients: _Clients | None = None
        idle = 0.0
        try:
            self._ensure_topics()
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    if clients is None:
                        clients = self._connect()
                    processed = self._transaction(clients)
                except Exception as error:
                    clients = self._recover(clients, error)
                    continue
                if processed:
                    idle = 0.0
                else:
                    idle += time.monotonic() - started
                    if idle_exit_seconds is not None and idle >= idle_exit_seconds:
                        return
        finally:
            if clients is not None:
                self._disconnect(clients)
            self._loop.close()

    def _connect(self) -> _Clients:
        """A transactional producer (initialised: earlier instances are fenced and their open
        transactions settled), then a consumer that joins the group and reads the committed
        offsets."""
        timeout_ms = int(self.transaction_timeout_s * 1000)
        producer = make_producer(
            self.bus.kafka_bootstrap,
            settings=self.bus,
            transactional_id=self.transactional_id,
            max_block_ms=timeout_ms,
        )
        try:
            producer.init_transactions()
            consumer = KafkaConsumer(**consumer_config(self.group_id, self.bus))
        except BaseException:
            txn.close_producer(producer, 1.0)
            raise
        consumer.subscribe([self.items_topic], listener=_Rebalance(self))
        dead_letters = DeadLetterQueue(
            producer, "sampler", topic=self.dlq_topic, registry=self.registry
        )
        same = self._partitions[self.items_topic] == self._partitions[self.decisions_topic]
        return _Clients(producer, consumer, dead_letters, same_partitions=same)

    def _disconnect(self, clients: _Clients) -> None:
        try:
            clients.consumer.close(autocommit=False, timeout_ms=2000)
        except Exception as error:  # closing is best effort: the group notices a dead member
            log.warning("consumer not closed cleanly: %s", error)
        txn.close_producer(clients.producer, 2.0)
        self._forget_all()

    # -- transactions ---------------------------------------------------------------------------

    def _transaction(self, clients: _Clients) -> int:
        """One transaction over one or more polls; returns the records it committed (0: idle)."""
        consumer = clients.consumer
        batch = consumer.poll(timeout_ms=500)
        if not batch:
            return 0
        self._rebalanced = False  # partitions moving from here on invalidate the transaction
        clients.producer.begin_transaction()
        clients.in_transaction = True
        clients.offsets_sent = False
        work = _Transaction()
        deadline = time.monotonic() + self.transaction_seconds
        while True:
            self._process(batch, clients, work)
            if (
                work.records >= self.transaction_items
                or time.monotonic() >= deadline
                or self._stop.is_set()
            ):
                break
            batch = consumer.poll(timeout_ms=0)  # only what is fetched already
            if self._rebalanced:
                raise _Rebalanced("partitions were reassigned during the transaction")
            if not batch:
                break
        self._commit(clients, work)
        return work.records

    def _commit(self, clients: _Clients, work: _Transaction) -> None:
        producer = clients.producer
        for partition, state in work.states.items():
            producer.send(
                self.state_topic,
                key=str(partition).encode(),
                value=state.model_dump_json().encode(),
            )
        if work.offsets:
            clients.offsets_sent = True
            txn.send_offsets(producer, work.offsets, self.group_id, self.transaction_timeout_s)
        txn.commit(producer, self.transaction_timeout_s)
        clients.in_transaction = False
        self._failures = 0
        self.metrics.transactions.labels(result="committed").inc()
        self.metrics.pending.set(sum(s.pending for s in self._samplers.values()))
        if self._window_cap is not None:
            for partition, state in work.states.items():
                spent = state.pacer.spent if state.pacer is not None else 0
                self.metrics.window_reviews.labels(partition=str(partition)).set(spent)
                self.metrics.window_remaining.labels(partition=str(partition)).set(
                    self._window_cap - spent
                )

    def _recover(self, clients: _Clients | None, error: BaseException) -> _Clients | None:
        """Ends a failed transaction (abort, or give the clients up); backs off; returns the
        clients to go on with (None: connect anew)."""
        if isinstance(error, _Rebalanced):
            log.info("%s; aborting it", error)
        else:
            self._failures += 1
            log.warning(
                "%s failed (%s: %s); recovering (failure %d in a row)",
                "transaction" if clients is not None else "connecting",
                type(error).__name__,
                error,
                self._failures,
                exc_info=not isinstance(error, KafkaError),
            )
        if clients is not None and clients.in_transaction:
            self.metrics.transactions.labels(result="aborted").inc()
        if clients is not None and self._abort_and_rewind(clients):
            self.metrics.recoveries.labels(action="aborted").inc()
            if self._failures:
                self._backoff()
            return clients
        if clients is not None:
            self._disconnect(clients)
        self.metrics.recoveries.labels(action="rebuilt").inc()
        self._backoff()
        return None

    def _abort_and_rewind(self, clients: _Clients) -> bool:
        """Aborts the open transaction (if any) and seeks back to the committed offsets; False
        when that cannot be done with these clients."""
        try:
            if clients.in_transaction:
                if clients.offsets_sent or not txn.can_abort(clients.producer):
                    return False
                txn.abort(clients.producer, self.transaction_timeout_s)
                clients.in_transaction = False
            self._rewind(clients.consumer)
            return True
        except Exception as error:
            log.warning("abort and rewind failed (%s: %s)", type(error).__name__, error)
            return False

    def _backoff(self) -> None:
        self._stop.wait(retry_delay(self._failures, self.retry_backoff_s, self.max_retry_backoff_s))

    # -- processing ---------------------------------------------------------------------------

    def _process(
        self, batch: dict[TopicPartition, list[Any]], clients: _Clients, work: _Transaction
    ) -> None:
        missing = [tp for tp in batch if tp.partition not in self._samplers]
        if missing:
            if self._committed_states is None:
                self._committed_states = self._load_states()
            for tp in missing:
                state = self._committed_states.get(tp.partition)
                if state is None or self._at_committed_state(
                    tp, batch[tp][0].offset, state, clients
                ):
                    self._samplers[tp.partition] = PartitionSampler(
                        self.policy, tp.partition, state
                    )
                else:
                    del batch[tp]  # read again from the state's offset
        for partition, records in batch.items():
            state, next_offset = self._process_partition(partition, records, clients)
            work.states[partition.partition] = state
            work.offsets[partition] = OffsetAndMetadata(next_offset, "", -1)
            work.records += len(records)

    def _at_committed_state(
        self, tp: TopicPartition, fetched: int, state: SamplerState, clients: _Clients
    ) -> bool:
        """Whether the fetch position agrees with the committed sampler state; if not, seeks
        the partition to the state's offset (once) and returns False.

        The state is committed in the same transaction as the group's offsets, so the two
        agree, except when the group's offsets read back are not the last committed ones:
        kafka-python's OffsetFetch (v5) cannot ask for stable offsets (KIP-447), and after a
        broker restart a fetch behind the committed state was seen (its items were decided a
        second time, with the later state). The state is the one to follow: items before its
        offset are decided, items after it are not. A fetch past the state's offset right after
        seeking to it means that offset is gone (retention): reading goes on from there.
        """
        if fetched == state.next_offset:
            return True
        if fetched > state.next_offset and self._corrected.get(tp) == state.next_offset:
            log.warning(
                "%s: offsets %d to %d were deleted before they were decided",
                tp,
                state.next_offset,
                fetched - 1,
            )
            return True
        log.warning(
            "%s: fetched from offset %d, but the committed sampler state is at %d; seeking to it",
            tp,
            fetched,
            state.next_offset,
        )
        self.metrics.position_corrections.inc()
        self._corrected[tp] = state.next_offset
        clients.consumer.seek(tp, state.next_offset)
        return False

    def _process_partition(
        self, partition: TopicPartition, records: Sequence[Any], clients: _Clients
    ) -> tuple[SamplerState, int]:
        sampler = self._samplers[partition.partition]
        dead_letters = clients.dead_letters
        valid: list[tuple[Any, Item]] = []
        for record in records:
            try:
                decoded = decode(record, expected=types_pb2.Item)
                valid.append((record, item_from_proto(decoded.message)))
            except MalformedMessage as error:
                dead_letters.send(record, error)
                self.metrics.items.labels(outcome="malformed").inc()
            except ValidationError as error:
                dead_letters.send(record, _invalid_item(error), reason="invalid_item")
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
        decided_time = Timestamp()
        decided_time.GetCurrentTime()
        target = partition.partition if clients.same_partitions else None
        selected = 0
        decisions = sampler.offer(scored, decided_time=decided_time)
        for decision in decisions:
            publish(clients.producer, self.decisions_topic, decision, partition=target)
            selected += decision.delta
        if selected:
            self.metrics.decisions.labels(delta="true").inc(selected)
        if len(decisions) > selected:
            self.metrics.decisions.labels(delta="false").inc(len(decisions) - selected)
        self.metrics.items.labels(outcome="scored").inc(len(scored))
        state = sampler.state()
        # Without pending items every record of the poll is done (decided or dead-lettered).
        state.next_offset = state.next_offset if sampler.pending else records[-1].offset + 1
        return state, state.next_offset

    # -- state --------------------------------------------------------------------------------

    def _load_states(self) -> dict[int, SamplerState]:
        """The last committed state of every partition, read from the compacted state topic
        (`read_committed`: up to the last stable offset), within `transaction_timeout_s`."""
        timeout_ms = int(self.transaction_timeout_s * 1000)
        reader = KafkaConsumer(
            bootstrap_servers=self.bus.kafka_bootstrap,
            client_id=f"{self.bus.kafka_client_id}-sampler-state",
            isolation_level="read_committed",
            enable_auto_commit=False,
            group_id=None,
            request_timeout_ms=timeout_ms,
            receive_message_max_bytes=self.bus.limits.frame,
            fetch_max_bytes=self.bus.limits.fetch,
            max_partition_fetch_bytes=self.bus.limits.record,
        )
        try:
            deadline = time.monotonic() + self.transaction_timeout_s
            partitions = [
                TopicPartition(self.state_topic, p)
                for p in range(self._partitions[self.state_topic])
            ]
            reader.assign(partitions)
            reader.seek_to_beginning(*partitions)
            end = reader.end_offsets(partitions)
            states: dict[int, SamplerState] = {}
            while any(reader.position(p, timeout_ms=timeout_ms) < end[p] for p in partitions):
                if time.monotonic() > deadline:
                    raise KafkaTimeoutError(
                        f"sampler state not read in {self.transaction_timeout_s:g} s"
                    )
                for records in reader.poll(timeout_ms=200).values():
                    for record in records:
                        states[int(record.key)] = SamplerState.model_validate_json(record.value)
            return states
        finally:
            reader.close()

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        for partition in partitions:
            self._samplers.pop(partition.partition, None)
        self._committed_states = None

    def _forget_all(self) -> None:
        self._samplers.clear()
        self._committed_states = None

    def rebalanced(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions were revoked or assigned: their samplers are reloaded on next use, and an
        open transaction must not commit. Their window gauges go until this worker commits
        for them again (another may own them now)."""
        partitions = list(partitions)
        self.forget(partitions)
        self._rebalanced = True
        for partition in partitions:
            self.metrics.window_reviews.remove(str(partition.partition))
            self.metrics.window_remaining.remove(str(partition.partition))

    def _rewind(self, consumer: KafkaConsumer) -> None:
        """Seeks every assigned partition back to its committed offset; forgets all samplers
        (their committed state is reloaded on next use)."""
        timeout_ms = int(self.transaction_timeout_s * 1000)
        self._forget_all()
        for partition in consumer.assignment():
            committed = consumer.committed(partition, timeout_ms=timeout_ms)
            if committed is None:
                consumer.seek_to_beginning(partition)
            else:
                consumer.seek(partition, committed)

    def _ensure_topics(self) -> None:
        specs = [
            *default_topic_specs(self.bus, suffix=self.topic_suffix),
            TopicSpec(
                self.state_topic,
                partitions=1,
                replication=self.bus.topic_replication,
                configs={"cleanup.policy": "compact"},
            ),
        ]
        statuses = ensure_topics(self.bus.kafka_bootstrap, specs)
        self._partitions = {name: status.partitions for name, status in statuses.items()}
        actual = self._partitions[self.items_topic]
        if self.policy.mode == "stream" and self.policy.partitions != actual:
            raise PartitionMismatch(
                f"{self.items_topic} has {actual} partitions, but the stream budget is split "
                f"over {self.policy.partitions} (--partitions, else ACT_TOPIC_PARTITIONS): "
                f"the partitions would together spend {actual}/{self.policy.partitions} of "
                f"the budget; set it to {actual}"
            )


class _Rebalance(ConsumerRebalanceListener):
    """Revoked or assigned partitions drop their in-memory sampler: their owner resumes from
    the committed offsets and state."""

    def __init__(self, worker: SamplerWorker) -> None:
        self.worker = worker

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self.worker.rebalanced(revoked)

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.worker.rebalanced(assigned)


def _invalid_item(error: ValidationError) -> str:
    return f"invalid item: {validation_problems(error)}"
