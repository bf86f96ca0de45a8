"""Encoding and checked decoding of the records on the ACT topics.

A record on an ACT topic is:

- **value**: the serialized protobuf message of the topic's type (`TOPIC_MESSAGE_TYPES`):
  `act.v1.Item`, `act.v1.Decision`, `act.v1.Review` or `act.v1.DeadLetter`;
- **key**: the item id, UTF-8 (the dead-letter topic keeps the rejected record's key as is),
  so every record of one item lands on one partition, in order;
- **headers**: `act-schema-version` (ASCII integer, `b"1"`), `act-message-type` (the full
  protobuf name, e.g. `b"act.v1.Item"`) and optionally `act-producer` (who wrote it).

`decode` checks all of it and raises `MalformedMessage` with one `Reason` per kind of
failure, never a bare parsing error, so a consumer can park the record on `act.dlq.v1`
(`dead_letter`, `act.bus.dlq.DeadLetterQueue`) and go on with the stream. `encode` applies
the same checks, so a producer cannot write what consumers would reject.

Schema version 1 is the `act.v1` protobuf package. Adding fields is compatible and keeps
the version; a change that old readers cannot handle bumps it, and readers list the
versions they understand in `SUPPORTED_SCHEMA_VERSIONS`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, Protocol, TypeVar

from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp

from act.bus.settings import RECORD_OVERHEAD_BYTES, BusSettings, message_limits
from act.bus.topics import DECISIONS_TOPIC, DLQ_TOPIC, ITEMS_TOPIC, REVIEWS_TOPIC, base_topic
from act.v1 import bus_pb2, types_pb2

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS: frozenset[int] = frozenset({SCHEMA_VERSION})

HEADER_SCHEMA_VERSION = "act-schema-version"
HEADER_MESSAGE_TYPE = "act-message-type"
HEADER_PRODUCER = "act-producer"

TOPIC_MESSAGE_TYPES: dict[str, type[Message]] = {
    ITEMS_TOPIC: types_pb2.Item,
    DECISIONS_TOPIC: bus_pb2.Decision,
    REVIEWS_TOPIC: bus_pb2.Review,
    DLQ_TOPIC: bus_pb2.DeadLetter,
}
# The types keyed by item id (all but DeadLetter, which keeps the original key).
ITEM_KEYED_TYPES: tuple[type[Message], ...] = (types_pb2.Item, bus_pb2.Decision, bus_pb2.Review)

M = TypeVar("M", bound=Message)

# Longest reason text a dead letter keeps.
MAX_REASON_CHARS = 4096


class Reason(StrEnum):
    """Why a record was rejected; a small fixed set, fit for a metrics label."""

    MISSING_PAYLOAD = "missing_payload"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    MISSING_SCHEMA_VERSION = "missing_schema_version"
    UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"
    MISSING_MESSAGE_TYPE = "missing_message_type"
    WRONG_MESSAGE_TYPE = "wrong_message_type"
    DUPLICATE_HEADER = "duplicate_header"
    INVALID_PROTOBUF = "invalid_protobuf"
    MISSING_KEY = "missing_key"
    INVALID_KEY = "invalid_key"
    MISSING_ITEM_ID = "missing_item_id"
    KEY_MISMATCH = "key_mismatch"
    MISSING_FIELD = "missing_field"
    OUT_OF_RANGE = "out_of_range"
    INCONSISTENT_FIELDS = "inconsistent_fields"


class MalformedMessage(ValueError):
    """A record that is not a valid message of its topic; `reason` says which rule it broke.

    `str()` is `"<reason>: <detail>"`. `field` names the offending message field when there
    is one; `topic`, `partition`, `offset` locate the record when it came from Kafka.
    """

    def __init__(
        self,
        reason: Reason,
        detail: str,
        *,
        field: str | None = None,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.field = field
        self.topic = topic
        self.partition = partition
        self.offset = offset

    def located(self, record: RecordLike) -> MalformedMessage:
        self.topic = record.topic
        self.partition = record.partition
        self.offset = record.offset
        return self


class RecordLike(Protocol):
    """What `decode` reads of a record: kafka-python's `ConsumerRecord` has all of it."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes | None]] | None: ...


@dataclass(frozen=True)
class EncodedRecord:
    """A message ready for `KafkaProducer.send(topic, value=, key=, headers=)`."""

    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


@dataclass(frozen=True)
class Decoded(Generic[M]):
    """A checked message with where it came from."""

    message: M
    key: bytes | None
    topic: str
    partition: int
    offset: int
    schema_version: int
    producer: str | None

    @property
    def item_id(self) -> str:
        """The item id (empty for a DeadLetter, which has none of its own)."""
        return getattr(self.message, "item_id", "")


@functools.lru_cache(maxsize=1)
def default_max_payload_bytes() -> int:
    """`ACT_MAX_PAYLOAD_BYTES` (1 MiB by default), read once."""
    return BusSettings().max_payload_bytes


def payload_limit(message_type: type[Message], max_payload_bytes: int | None = None) -> int:
    """Largest payload of `message_type`, for a data payload limit of `max_payload_bytes`.

    The data types get the limit itself (`ACT_MAX_PAYLOAD_BYTES` by default); a DeadLetter,
    which wraps a whole rejected record, gets a full data record's size more.
    """
    limit = max_payload_bytes if max_payload_bytes is not None else default_max_payload_bytes()
    if message_type is bus_pb2.DeadLetter:
        return message_limits(limit).record + RECORD_OVERHEAD_BYTES
    return limit


def message_type_for_topic(topic: str) -> type[Message]:
    """The value type of an ACT topic (or of a suffixed one, `act.items.v1.<suffix>`)."""
    base = base_topic(topic)
    if base is None:
        raise KeyError(f"{topic!r} is not an ACT topic ({', '.join(TOPIC_MESSAGE_TYPES)})")
    return TOPIC_MESSAGE_TYPES[base]


def message_type_name(message_type: type[Message]) -> str:
    return message_type.DESCRIPTOR.full_name


def record_key(message: Message) -> bytes | None:
    """The Kafka key of a message: its item id, UTF-8; a DeadLetter keeps the original key."""
    if isinstance(message, bus_pb2.DeadLetter):
        return message.key or None
    if isinstance(message, ITEM_KEYED_TYPES):
        return message.item_id.encode("utf-8")  # type: ignore[attr-defined]
    raise TypeError(f"{type(message).__name__} is not carried on an ACT topic")


def encode(
    message: Message,
    *,
    key: bytes | str | None = None,
    producer: str | None = None,
    max_payload_bytes: int | None = None,
) -> EncodedRecord:
    """Serializes `message` with its key and headers, after the checks `decode` applies.

    `key` defaults to `record_key(message)`; a different one raises `MalformedMessage`
    (`key_mismatch`), as does a message that breaks a field rule or exceeds the size limit.
    """
    derived = record_key(message)
    if key is None:
        key = derived
    elif isinstance(key, str):
        key = key.encode("utf-8")
    validate(message, key)
    value = message.SerializeToString()
    limit = payload_limit(type(message), max_payload_bytes)
    if len(value) > limit:
        raise MalformedMessage(
            Reason.PAYLOAD_TOO_LARGE,
            f"{message_type_name(type(message))} serializes to {len(value)} bytes, "
            f"more than the limit of {limit} (ACT_MAX_PAYLOAD_BYTES)",
        )
    return EncodedRecord(
        key=key, value=value, headers=list(_encoded_headers(type(message), producer))
    )


@functools.lru_cache(maxsize=256)
def _encoded_headers(
    message_type: type[Message], producer: str | None
) -> tuple[tuple[str, bytes], ...]:
    """The headers `encode` writes, made once per message type and producer."""
    headers = [
        (HEADER_SCHEMA_VERSION, str(SCHEMA_VERSION).encode("ascii")),
        (HEADER_MESSAGE_TYPE, message_type_name(message_type).encode("ascii")),
    ]
    if producer:
        headers.append((HEADER_PRODUCER, producer.encode("utf-8")))
    return tuple(headers)


def decode(
    record: RecordLike,
    *,
    expected: type[M] | None = None,
    max_payload_bytes: int | None = None,
    supported_versions: frozenset[int] = SUPPORTED_SCHEMA_VERSIONS,
) -> Decoded[M]:
    """Parses and checks one record; raises `MalformedMessage` saying what is wrong.

    `expected` is the message type; by default that of `record.topic` (an ACT topic, possibly
    suffixed). Checks, in order: a payload is present and within `max_payload_bytes`
    (`ACT_MAX_PAYLOAD_BYTES`); the schema-version header is present, single and supported;
    the message-type header names `expected`; the payload parses; the key and the fields
    follow the rules of `validate`.
    """
    message_type: type[Message] = (
        expected if expected is not None else message_type_for_topic(record.topic)
    )
    try:
        return _decode(record, message_type, max_payload_bytes, supported_versions)  # type: ignore[return-value]
    except MalformedMessage as exc:
        exc.located(record)
        raise


def _decode(
    record: RecordLike,
    message_type: type[Message],
    max_payload_bytes: int | None,
    supported_versions: frozenset[int],
) -> Decoded[Message]:
    value = record.value
    if value is None:
        raise MalformedMessage(Reason.MISSING_PAYLOAD, "the record has no value (a tombstone)")
    limit = payload_limit(message_type, max_payload_bytes)
    if len(value) > limit:
        raise MalformedMessage(
            Reason.PAYLOAD_TOO_LARGE,
            f"payload of {len(value)} bytes is over the limit of {limit} (ACT_MAX_PAYLOAD_BYTES)",
        )

    headers = _headers(record.headers)
    raw_version = _single_header(headers, HEADER_SCHEMA_VERSION)
    if raw_version is None:
        raise MalformedMessage(Reason.MISSING_SCHEMA_VERSION, f"no {HEADER_SCHEMA_VERSION} header")
    try:
        version = int(raw_version.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise MalformedMessage(
            Reason.UNSUPPORTED_SCHEMA_VERSION,
            f"{HEADER_SCHEMA_VERSION} header {raw_version[:32]!r} is not an integer",
        ) from None
    if version not in supported_versions:
        raise MalformedMessage(
            Reason.UNSUPPORTED_SCHEMA_VERSION,
            f"schema version {version} is not supported (supported: "
            f"{', '.join(map(str, sorted(supported_versions)))})",
        )

    expected_name = message_type_name(message_type)
    raw_type = _single_header(headers, HEADER_MESSAGE_TYPE)
    if raw_type is None:
        raise MalformedMessage(Reason.MISSING_MESSAGE_TYPE, f"no {HEADER_MESSAGE_TYPE} header")
    if raw_type != expected_name.encode("ascii"):
        raise MalformedMessage(
            Reason.WRONG_MESSAGE_TYPE,
            f"{HEADER_MESSAGE_TYPE} is {raw_type[:100]!r}, expected {expected_name!r}",
        )

    message = message_type()
    try:
        message.ParseFromString(value)
    except DecodeError as exc:
        raise MalformedMessage(
            Reason.INVALID_PROTOBUF,
            f"{len(value)} bytes do not parse as {expected_name}: {exc}",
        ) from exc

    validate(message, record.key)
    raw_producer = _single_header(headers, HEADER_PRODUCER)
    return Decoded(
        message=message,
        key=record.key,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        schema_version=version,
        producer=raw_producer.decode("utf-8", "replace") if raw_producer is not None else None,
    )


def _headers(headers: Sequence[tuple[str, bytes | None]] | None) -> dict[str, list[bytes]]:
    found: dict[str, list[bytes]] = {}
    for name, value in headers or ():
        found.setdefault(name, []).append(value if value is not None else b"")
    return found


def _single_header(headers: dict[str, list[bytes]], name: str) -> bytes | None:
    values = headers.get(name)
    if not values:
        return None
    if len(set(values)) > 1:
        shown = ", ".join(repr(v[:32]) for v in values)
        raise MalformedMessage(Reason.DUPLICATE_HEADER, f"{name} appears with values {shown}")
    return values[0]


def validate(message: Message, key: bytes | None) -> None:
    """Checks the key and the required fields of a message; raises `MalformedMessage`.

    - Item, Decision, Review: `item_id` non-empty; the key is its UTF-8 bytes.
    - Decision: `eps`, `pi` (and a criticism's `error_probability`) finite and in [0, 1];
      `delta` only with `pi > 0`; `capped` only with `pi == 0`; embedded item, annotation and
      criticism, where they carry an item id, carry this one.
    - Review: `revision >= 1`; a `reviewer`; a `label` unless `unsure`.
    - DeadLetter: `source_topic` and `reason` non-empty; the key equals its `key` field.
    """
    if isinstance(message, bus_pb2.DeadLetter):
        if (key or b"") != message.key:
            raise MalformedMessage(
                Reason.KEY_MISMATCH,
                f"record key {_show_key(key)} differs from the dead letter's key "
                f"{_show_key(message.key)}",
                field="key",
            )
        _require(message, "source_topic")
        _require(message, "reason")
        return
    if not isinstance(message, ITEM_KEYED_TYPES):
        raise TypeError(f"{type(message).__name__} is not carried on an ACT topic")

    item_id: str = message.item_id  # type: ignore[attr-defined]
    if not item_id:
        raise MalformedMessage(Reason.MISSING_ITEM_ID, "item_id is empty", field="item_id")
    if key is None:
        raise MalformedMessage(Reason.MISSING_KEY, "the record has no key (expected the item id)")
    try:
        key_text = key.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedMessage(
            Reason.INVALID_KEY, f"key {_show_key(key)} is not UTF-8", field="key"
        ) from None
    if key_text != item_id:
        raise MalformedMessage(
            Reason.KEY_MISMATCH,
            f"key {key_text[:100]!r} differs from item_id {item_id[:100]!r}",
            field="key",
        )

    if isinstance(message, bus_pb2.Decision):
        _validate_decision(message)
    elif isinstance(message, bus_pb2.Review):
        _validate_review(message)


def _validate_decision(decision: bus_pb2.Decision) -> None:
    _probability(decision.eps, "eps")
    _probability(decision.pi, "pi")
    if decision.HasField("criticism"):
        _probability(decision.criticism.error_probability, "criticism.error_probability")
    if decision.delta and decision.pi <= 0.0:
        raise MalformedMessage(
            Reason.INCONSISTENT_FIELDS,
            "delta is set but pi is 0: an item with pi = 0 cannot be drawn",
            field="delta",
        )
    if decision.capped and decision.pi != 0.0:
        raise MalformedMessage(
            Reason.INCONSISTENT_FIELDS,
            f"capped is set but pi is {decision.pi!r}: a capped item has pi forced to 0",
            field="capped",
        )
    for name in ("item", "annotation", "criticism"):
        if decision.HasField(name):
            inner = getattr(decision, name).item_id
            if inner and inner != decision.item_id:
                raise MalformedMessage(
                    Reason.INCONSISTENT_FIELDS,
                    f"{name}.item_id {inner[:100]!r} differs from item_id "
                    f"{decision.item_id[:100]!r}",
                    field=f"{name}.item_id",
                )


def _validate_review(review: bus_pb2.Review) -> None:
    if review.revision < 1:
        raise MalformedMessage(
            Reason.OUT_OF_RANGE,
            f"revision must be >= 1 (1 for the first review), got {review.revision}",
            field="revision",
        )
    _require(review, "reviewer")
    if not review.label and not review.unsure:
        raise MalformedMessage(
            Reason.MISSING_FIELD,
            "label is empty but the review is not marked unsure",
            field="label",
        )


def _probability(value: float, name: str) -> None:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise MalformedMessage(
            Reason.OUT_OF_RANGE, f"{name} = {value!r} is not in [0, 1]", field=name
        )


def _require(message: Any, name: str) -> None:
    if not getattr(message, name):
        raise MalformedMessage(Reason.MISSING_FIELD, f"{name} is empty", field=name)


def _show_key(key: bytes | None) -> str:
    return "None" if key is None else repr(key[:64])


def dead_letter(
    record: RecordLike,
    reason: str,
    error_type: str,
    service: str,
    *,
    failed_time: Timestamp | None = None,
    max_copy_bytes: int | None = None,
) -> bus_pb2.DeadLetter:
    """A DeadLetter that parks `record` (topic, partition, offset, key, value) with why.

    The key and payload are kept whole up to `max_copy_bytes` together (by default the
    largest record a data topic accepts, so the dead letter always fits `act.dlq.v1`); a longer
    payload is cut and the reason says so. The reason is cut at `MAX_REASON_CHARS`.
    """
    key = record.key or b""
    payload = record.value or b""
    limit = (
        max_copy_bytes
        if max_copy_bytes is not None
        else message_limits(default_max_payload_bytes()).record
    )
    reason = reason or "unknown"
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[: MAX_REASON_CHARS - 3] + "..."
    if len(key) + len(payload) > limit:
        kept = max(0, limit - len(key))
        reason = f"{reason} [payload truncated: first {kept} of {len(payload)} bytes kept]"
        payload = payload[:kept]
    if failed_time is None:
        failed_time = Timestamp()
        failed_time.GetCurrentTime()
    return bus_pb2.DeadLetter(
        source_topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=key,
        payload=payload,
        reason=reason,
        error_type=error_type,
        service=service,
        failed_time=failed_time,
    )
