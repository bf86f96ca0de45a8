"""The Kafka bus of the ACT pipeline: topics, record encoding, clients, dead letters.

- `act.bus.topics`: the four topics (`act.items.v1`, `act.decisions.v1`, `act.reviews.v1`,
  `act.dlq.v1`), their specs and `ensure_topics` (explicit creation).
- `act.bus.codec`: protobuf values keyed by item id with schema-version and message-type
  headers; `decode` raises `MalformedMessage` with a `Reason`.
- `act.bus.clients`: kafka-python producer and group consumer with explicit configuration,
  `publish` and `flush_and_check`.
- `act.bus.dlq`: `DeadLetterQueue`, parking bad records on `act.dlq.v1` with a counter.
- `act.bus.transactions`: ending a kafka-python transaction with a deadline, and giving a
  transactional producer up cleanly (the sampler's recovery from a broker outage).
- `act.bus.settings`: `BusSettings` (`ACT_KAFKA_BOOTSTRAP`, `ACT_TOPIC_PARTITIONS`, ...).

`topics`, `codec` and `settings` need only protobuf and pydantic; `clients` and `dlq` need
the `serve` extra (kafka-python, prometheus-client) and are imported on first use of their
names here.
"""

from __future__ import annotations

import importlib
from typing import Any

from act.bus.codec import (
    HEADER_MESSAGE_TYPE,
    HEADER_PRODUCER,
    HEADER_SCHEMA_VERSION,
    SCHEMA_VERSION,
    SUPPORTED_SCHEMA_VERSIONS,
    TOPIC_MESSAGE_TYPES,
    Decoded,
    EncodedRecord,
    MalformedMessage,
    Reason,
    dead_letter,
    decode,
    encode,
    message_type_for_topic,
    record_key,
    validate,
)
from act.bus.settings import BusSettings, MessageLimits, message_limits
from act.bus.topics import (
    ALL_TOPICS,
    DECISIONS_TOPIC,
    DLQ_TOPIC,
    ITEMS_TOPIC,
    REVIEWS_TOPIC,
    TopicMismatchError,
    TopicSpec,
    TopicStatus,
    default_topic_specs,
    ensure_topics,
)

_LAZY = {
    "PublishError": "act.bus.clients",
    "consumer_config": "act.bus.clients",
    "flush_and_check": "act.bus.clients",
    "make_consumer": "act.bus.clients",
    "make_producer": "act.bus.clients",
    "producer_config": "act.bus.clients",
    "publish": "act.bus.clients",
    "DeadLetterQueue": "act.bus.dlq",
    "dead_letters_counter": "act.bus.dlq",
}

__all__ = [
    "ALL_TOPICS",
    "DECISIONS_TOPIC",
    "DLQ_TOPIC",
    "HEADER_MESSAGE_TYPE",
    "HEADER_PRODUCER",
    "HEADER_SCHEMA_VERSION",
    "ITEMS_TOPIC",
    "REVIEWS_TOPIC",
    "SCHEMA_VERSION",
    "SUPPORTED_SCHEMA_VERSIONS",
    "TOPIC_MESSAGE_TYPES",
    "BusSettings",
    "Decoded",
    "EncodedRecord",
    "MalformedMessage",
    "MessageLimits",
    "Reason",
    "TopicMismatchError",
    "TopicSpec",
    "TopicStatus",
    "dead_letter",
    "decode",
    "default_topic_specs",
    "encode",
    "ensure_topics",
    "message_limits",
    "message_type_for_topic",
    "record_key",
    "validate",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
