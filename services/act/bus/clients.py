"""kafka-python producers and consumers with explicit configuration, and durable publishing.

Written for kafka-python 2.2 (pinned: 3.0 changed defaults and APIs). Every setting that
matters for delivery is set here rather than left to the library's defaults:

Producer (`producer_config`): idempotent (`enable_idempotence=True`, `acks='all'`,
unbounded `retries` within `delivery_timeout_ms`), so retries never duplicate or reorder a
partition's records. kafka-python 2.2 accepts idempotence only with
`max_in_flight_requests_per_connection=1` (the Java client allows up to 5), so that is what
it gets. Small `linger_ms` batching, no compression unless `ACT_KAFKA_COMPRESSION` says so,
no topic auto-creation, and a request size that fits the largest dead letter.

Consumer (`consumer_config`): a consumer group with manual commits
(`enable_auto_commit=False`; commit after the outputs are durable, see `flush_and_check`),
`auto_offset_reset='earliest'` (a new group reads the topic from the start),
`isolation_level='read_committed'`, small `max_poll_records`, explicit session, heartbeat and
poll-interval timeouts, and fetch and frame sizes consistent with the topics'
`max.message.bytes` (kafka-python's default frame limit, 1,000,000 bytes, is below its own
1 MiB partition fetch size; 2.2.21 stops enforcing it once a connection has been re-made, so
it rarely bites, but a limit that could cut a valid fetch is not left in place).

Serializers are left unset: the codec (`act.bus.codec`) produces and reads the bytes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from google.protobuf.message import Message
from kafka import KafkaConsumer, KafkaProducer
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

from act.bus import codec
from act.bus.settings import BusSettings
from act.bus.topics import base_topic

# Kafka's own upper bound for the retries of one send; delivery_timeout_ms bounds the time.
MAX_RETRIES = 2_147_483_647


class PublishError(RuntimeError):
    """Some sends failed; `failures` holds (index in the futures given, exception)."""

    def __init__(self, failures: list[tuple[int, BaseException]], total: int) -> None:
        index, first = failures[0]
        super().__init__(
            f"{len(failures)} of {total} sends failed; first (#{index}): "
            f"{type(first).__name__}: {first}"
        )
        self.failures = failures
        self.total = total


def _compression(name: str) -> str | None:
    if name == "none":
        return None
    from kafka import codec as kafka_codec

    available = {
        "gzip": kafka_codec.has_gzip,
        "lz4": kafka_codec.has_lz4,
        "snappy": kafka_codec.has_snappy,
        "zstd": kafka_codec.has_zstd,
    }
    if not available[name]():
        raise ValueError(
            f"ACT_KAFKA_COMPRESSION={name} needs a package that is not installed "
            "(use none or gzip, or install the codec's package)"
        )
    return name


def producer_config(settings: BusSettings | None = None, **overrides: Any) -> dict[str, Any]:
    """The producer's configuration (kafka-python `KafkaProducer` keywords)."""
    settings = settings if settings is not None else BusSettings()
    limits = settings.limits
    config: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "client_id": f"{settings.kafka_client_id}-producer",
        "key_serializer": None,
        "value_serializer": None,
        "acks": "all",
        "enable_idempotence": True,
        "max_in_flight_requests_per_connection": 1,
        "retries": MAX_RETRIES,
        "retry_backoff_ms": 100,
        "delivery_timeout_ms": 120_000,
        "request_timeout_ms": 30_000,
        "max_block_ms": 60_000,
        "linger_ms": settings.kafka_linger_ms,
        "batch_size": 64 * 1024,
        "compression_type": _compression(settings.kafka_compression),
        "max_request_size": limits.dead_letter_record,
        "allow_auto_create_topics": False,
        "metadata_max_age_ms": 300_000,
    }
    config.update(overrides)
    return config


def consumer_config(
    group_id: str, settings: BusSettings | None = None, **overrides: Any
) -> dict[str, Any]:
    """The group consumer's configuration (kafka-python `KafkaConsumer` keywords)."""
    if not group_id:
        raise ValueError("a consumer group id is required (offsets are committed per group)")
    settings = settings if settings is not None else BusSettings()
    limits = settings.limits
    request_timeout_ms = settings.consumer_request_timeout_ms
    config: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "client_id": f"{settings.kafka_client_id}-consumer",
        "group_id": group_id,
        "key_deserializer": None,
        "value_deserializer": None,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "max_poll_records": settings.kafka_max_poll_records,
        "max_poll_interval_ms": settings.kafka_max_poll_interval_ms,
        "session_timeout_ms": settings.kafka_session_timeout_ms,
        "heartbeat_interval_ms": settings.kafka_heartbeat_interval_ms,
        "request_timeout_ms": request_timeout_ms,
        # kafka-python requires fetch_max_wait_ms < request_timeout_ms < this.
        "connections_max_idle_ms": max(540_000, request_timeout_ms + 60_000),
        "fetch_min_bytes": settings.kafka_fetch_min_bytes,
        "fetch_max_wait_ms": settings.kafka_fetch_max_wait_ms,
        "max_partition_fetch_bytes": limits.record,
        "fetch_max_bytes": limits.fetch,
        "receive_message_max_bytes": limits.frame,
        "check_crcs": True,
        "allow_auto_create_topics": False,
        "exclude_internal_topics": True,
        "partition_assignment_strategy": (RangePartitionAssignor, RoundRobinPartitionAssignor),
        "metadata_max_age_ms": 300_000,
    }
    config.update(overrides)
    return config


def make_producer(
    bootstrap: str | None = None, *, settings: BusSettings | None = None, **overrides: Any
) -> KafkaProducer:
    """An idempotent producer (see `producer_config`); `bootstrap` overrides the setting."""
    if bootstrap is not None:
        overrides.setdefault("bootstrap_servers", bootstrap)
    return KafkaProducer(**producer_config(settings, **overrides))


def make_consumer(
    bootstrap: str | None,
    group_id: str,
    topics: Iterable[str],
    *,
    settings: BusSettings | None = None,
    **overrides: Any,
) -> KafkaConsumer:
    """A group consumer subscribed to `topics`, committing manually (see `consumer_config`)."""
    topics = list(topics)
    if not topics:
        raise ValueError("a consumer needs at least one topic")
    if bootstrap is not None:
        overrides.setdefault("bootstrap_servers", bootstrap)
    return KafkaConsumer(*topics, **consumer_config(group_id, settings, **overrides))


def publish(
    producer: KafkaProducer,
    topic: str,
    message: Message,
    key: bytes | str | None = None,
    *,
    source: str | None = None,
    headers: Sequence[tuple[str, bytes]] = (),
    max_payload_bytes: int | None = None,
    timestamp_ms: int | None = None,
    partition: int | None = None,
) -> Any:
    """Encodes `message` (checked, with its headers) and sends it; returns the send's future.

    The key defaults to the message's (the item id); `source` goes in the `act-producer`
    header (default: the producer's client id); `headers` are added after the codec's;
    `partition` overrides the producer's partitioner (give only the partition it would pick,
    or per-key order is lost). A message of the wrong type for an ACT topic raises TypeError;
    one that breaks the codec's rules raises `MalformedMessage`. Nothing is durable until
    `flush_and_check` says so.
    """
    base = base_topic(topic)
    if base is not None and not isinstance(message, codec.TOPIC_MESSAGE_TYPES[base]):
        raise TypeError(
            f"{topic} carries {codec.message_type_name(codec.TOPIC_MESSAGE_TYPES[base])}, "
            f"not {codec.message_type_name(type(message))}"
        )
    if source is None:
        source = producer.config.get("client_id")
    record = codec.encode(message, key=key, producer=source, max_payload_bytes=max_payload_bytes)
    return producer.send(
        topic,
        value=record.value,
        key=record.key,
        headers=[*record.headers, *headers] if headers else record.headers,
        timestamp_ms=timestamp_ms,
        partition=partition,
    )


def retry_delay(failures: int, first_s: float, max_s: float) -> float:
    """Seconds to wait before the next try after `failures` consecutive failures (>= 1):
    `first_s` doubling each time, capped at `max_s` (the sampler and the decision consumer)."""
    return min(max_s, first_s * 2 ** (failures - 1))


def flush_and_check(
    futures: Sequence[Any], *, producer: KafkaProducer | None = None, timeout_s: float = 60.0
) -> list[Any]:
    """Waits for every send; returns their `RecordMetadata` or raises `PublishError`.

    Call it before committing the input offsets that produced these records: a commit after
    it never loses an output. With `producer`, flushes it first (sends without waiting for
    `linger_ms`). Every future is waited on (within `timeout_s` in all), so the error lists all
    the failures, not just the first.
    """
    deadline = time.monotonic() + timeout_s
    if producer is not None:
        producer.flush(timeout=timeout_s)
    results: list[Any] = []
    failures: list[tuple[int, BaseException]] = []
    for index, future in enumerate(futures):
        try:
            results.append(future.get(timeout=max(0.0, deadline - time.monotonic())))
        except Exception as exc:  # every kind of send failure is reported the same way
            failures.append((index, exc))
    if failures:
        raise PublishError(failures, len(futures))
    return results
