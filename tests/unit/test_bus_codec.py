"""act.bus without a broker: the codec's round trips and every rejection reason, dead letters,
topic specs, settings, client configurations, publish / flush_and_check and the DLQ helper
(on fake producers and futures)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from act.bus import codec, topics
from act.bus.clients import retry_delay
from act.bus.codec import MalformedMessage, Reason
from act.bus.settings import RECORD_OVERHEAD_BYTES, BusSettings, message_limits
from act.v1 import bus_pb2, types_pb2

LIMIT = 4096  # payload limit used by most tests (the default is 1 MiB)


@dataclass
class Record:
    """Stands in for kafka-python's ConsumerRecord."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)
    partition: int = 2
    offset: int = 41


def _timestamp(seconds: int = 1_767_225_600) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=5)


def _item(item_id: str = "item-1") -> types_pb2.Item:
    return types_pb2.Item(
        item_id=item_id,
        text="Win a FREE cruise, click now",
        images=[types_pb2.Image(uri="https://example.org/a.png", mime_type="image/png")],
        question="Is this spam?",
        metadata={"source": "mail", "lang": "en"},
        event_time=_timestamp(),
        schema_id="moderation",
        content_hash="ab" * 32,
    )


def _decision(item_id: str = "item-1", **fields: Any) -> bus_pb2.Decision:
    values: dict[str, Any] = {
        "item_id": item_id,
        "annotation": types_pb2.Annotation(item_id=item_id, label="spam"),
        "criticism": types_pb2.Criticism(item_id=item_id, label="spam", error_probability=0.2),
        "eps": 0.2,
        "pi": 0.35,
        "delta": True,
        "sampler": "stream",
        "transform_id": "thre(rho=0)",
        "budget_id": "b-1",
        "seed_id": "k-1",
        "window_id": "w-7",
        "decided_time": _timestamp(),
        "item": _item(item_id),
    }
    values.update(fields)
    return bus_pb2.Decision(**values)


def _review(item_id: str = "item-1", **fields: Any) -> bus_pb2.Review:
    values: dict[str, Any] = {
        "item_id": item_id,
        "label": "ham",
        "reviewer": "alice",
        "reviewed_time": _timestamp(),
        "revision": 2,
        "previous_label": "spam",
        "note": "obvious newsletter",
    }
    values.update(fields)
    return bus_pb2.Review(**values)


def _dead_letter(**fields: Any) -> bus_pb2.DeadLetter:
    values: dict[str, Any] = {
        "source_topic": topics.ITEMS_TOPIC,
        "partition": 1,
        "offset": 7,
        "key": b"item-9",
        "payload": b"\x00garbage",
        "reason": "invalid_protobuf: ...",
        "error_type": "MalformedMessage",
        "service": "sampler",
        "failed_time": _timestamp(),
    }
    values.update(fields)
    return bus_pb2.DeadLetter(**values)


MESSAGES: dict[str, Message] = {
    topics.ITEMS_TOPIC: _item(),
    topics.DECISIONS_TOPIC: _decision(),
    topics.REVIEWS_TOPIC: _review(),
    topics.DLQ_TOPIC: _dead_letter(),
}


def _record(topic: str, message: Message, **changes: Any) -> Record:
    encoded = codec.encode(message, producer="test", max_payload_bytes=LIMIT)
    record = Record(topic=topic, key=encoded.key, value=encoded.value, headers=encoded.headers)
    return replace(record, **changes)


def _rejected(record: Record, **kwargs: Any) -> MalformedMessage:
    kwargs.setdefault("max_payload_bytes", LIMIT)
    with pytest.raises(MalformedMessage) as info:
        codec.decode(record, **kwargs)
    return info.value


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("topic", list(MESSAGES))
def test_round_trip_of_each_topic_type_with_key_and_headers(topic: str) -> None:
    message = MESSAGES[topic]
    encoded = codec.encode(message, producer="sampler-0", max_payload_bytes=LIMIT)
    assert encoded.headers == [
        ("act-schema-version", b"1"),
        ("act-message-type", message.DESCRIPTOR.full_name.encode()),
        ("act-producer", b"sampler-0"),
    ]
    expected_key = b"item-9" if topic == topics.DLQ_TOPIC else b"item-1"
    assert encoded.key == expected_key
    record = Record(topic=topic, key=encoded.key, value=encoded.value, headers=encoded.headers)

    decoded = codec.decode(record, max_payload_bytes=LIMIT)
    assert decoded.message == message
    assert type(decoded.message) is codec.TOPIC_MESSAGE_TYPES[topic]
    assert (decoded.topic, decoded.partition, decoded.offset) == (topic, 2, 41)
    assert decoded.key == expected_key
    assert decoded.schema_version == 1
    assert decoded.producer == "sampler-0"
    assert decoded.item_id == ("" if topic == topics.DLQ_TOPIC else "item-1")


def test_message_types_and_keys() -> None:
    assert codec.TOPIC_MESSAGE_TYPES == {
        "act.items.v1": types_pb2.Item,
        "act.decisions.v1": bus_pb2.Decision,
        "act.reviews.v1": bus_pb2.Review,
        "act.dlq.v1": bus_pb2.DeadLetter,
    }
    assert codec.message_type_for_topic("act.reviews.v1") is bus_pb2.Review
    # A suffixed topic (tests, namespaces) has its base's type; others are not ACT topics.
    assert codec.message_type_for_topic("act.decisions.v1.it-1234") is bus_pb2.Decision
    with pytest.raises(KeyError, match="not an ACT topic"):
        codec.message_type_for_topic("act.items.v10")
    assert codec.record_key(_item("ü-é")) == "ü-é".encode()
    assert codec.record_key(_dead_letter(key=b"")) is None
    with pytest.raises(TypeError):
        codec.record_key(types_pb2.Label(name="x"))


def test_decode_with_an_explicit_type_ignores_the_topic_name() -> None:
    record = _record("anything", _review())
    assert codec.decode(record, expected=bus_pb2.Review).message == _review()
    with pytest.raises(KeyError):
        codec.decode(record)


def test_producer_header_is_optional_and_unknown_fields_are_kept() -> None:
    encoded = codec.encode(_item())
    assert [name for name, _ in encoded.headers] == ["act-schema-version", "act-message-type"]
    # A newer writer's extra field (number 99) does not break this reader.
    value = encoded.value + b"\x9a\x06\x03new"
    record = Record(topic=topics.ITEMS_TOPIC, key=encoded.key, value=value, headers=encoded.headers)
    decoded = codec.decode(record)
    assert decoded.producer is None
    assert decoded.message.item_id == "item-1"
    # Compared as messages, not bytes: map entries (the metadata) serialize in no fixed order.
    assert decoded.message == types_pb2.Item.FromString(value)
    # The unknown field is kept, so a relay (e.g. the dead-letter queue) passes it on.
    assert decoded.message.SerializeToString().endswith(b"\x9a\x06\x03new")


# --- rejections ----------------------------------------------------------------------------


def test_bad_protobuf_bytes() -> None:
    error = _rejected(_record(topics.ITEMS_TOPIC, _item(), value=b"\x0a\x05ab"))
    assert error.reason is Reason.INVALID_PROTOBUF
    assert "do not parse as act.v1.Item" in str(error)
    assert str(error).startswith("invalid_protobuf: ")
    assert (error.topic, error.partition, error.offset) == (topics.ITEMS_TOPIC, 2, 41)


def test_invalid_utf8_in_a_string_field_is_bad_protobuf() -> None:
    value = b"\x0a\x06item-1\x12\x02\xff\xfe"  # item_id "item-1", text with invalid UTF-8
    error = _rejected(_record(topics.ITEMS_TOPIC, _item(), value=value))
    assert error.reason is Reason.INVALID_PROTOBUF


def test_missing_payload() -> None:
    error = _rejected(_record(topics.ITEMS_TOPIC, _item(), value=None))
    assert error.reason is Reason.MISSING_PAYLOAD


def test_missing_schema_version_header() -> None:
    record = _record(topics.ITEMS_TOPIC, _item())
    record.headers = [h for h in record.headers if h[0] != "act-schema-version"]
    error = _rejected(record)
    assert error.reason is Reason.MISSING_SCHEMA_VERSION
    assert _rejected(replace(record, headers=None)).reason is Reason.MISSING_SCHEMA_VERSION


@pytest.mark.parametrize("version", [b"2", b"0", b"one", b"\xff", b""])
def test_unknown_schema_version(version: bytes) -> None:
    record = _record(topics.DECISIONS_TOPIC, _decision())
    record.headers = [("act-schema-version", version), *record.headers[1:]]
    error = _rejected(record)
    assert error.reason is Reason.UNSUPPORTED_SCHEMA_VERSION
    # A reader that knows version 2 takes it (the payload is still v1-compatible).
    if version == b"2":
        decoded = codec.decode(record, max_payload_bytes=LIMIT, supported_versions=frozenset({2}))
        assert decoded.schema_version == 2


def test_conflicting_duplicate_header() -> None:
    record = _record(topics.ITEMS_TOPIC, _item())
    record.headers.append(("act-schema-version", b"2"))
    assert _rejected(record).reason is Reason.DUPLICATE_HEADER
    record.headers[-1] = ("act-schema-version", b"1")  # repeated with the same value: fine
    assert codec.decode(record, max_payload_bytes=LIMIT).message == _item()


def test_missing_and_wrong_message_type_header() -> None:
    record = _record(topics.ITEMS_TOPIC, _item())
    missing = replace(record, headers=[h for h in record.headers if h[0] != "act-message-type"])
    assert _rejected(missing).reason is Reason.MISSING_MESSAGE_TYPE
    # A Review's bytes on the items topic: caught by the header before parsing.
    wrong = _record(topics.ITEMS_TOPIC, _review())
    error = _rejected(wrong)
    assert error.reason is Reason.WRONG_MESSAGE_TYPE
    assert "act.v1.Review" in str(error) and "act.v1.Item" in str(error)


def test_empty_item_id() -> None:
    record = _record(
        topics.ITEMS_TOPIC, _item(), value=types_pb2.Item(text="x").SerializeToString()
    )
    error = _rejected(record)
    assert error.reason is Reason.MISSING_ITEM_ID
    assert error.field == "item_id"
    with pytest.raises(MalformedMessage) as info:
        codec.encode(types_pb2.Item(text="no id"))
    assert info.value.reason is Reason.MISSING_ITEM_ID


def test_key_missing_not_utf8_or_not_the_item_id() -> None:
    record = _record(topics.REVIEWS_TOPIC, _review())
    assert _rejected(replace(record, key=None)).reason is Reason.MISSING_KEY
    assert _rejected(replace(record, key=b"\xff\xfe")).reason is Reason.INVALID_KEY
    error = _rejected(replace(record, key=b"item-2"))
    assert error.reason is Reason.KEY_MISMATCH
    assert "'item-2'" in str(error) and "'item-1'" in str(error)
    with pytest.raises(MalformedMessage) as info:
        codec.encode(_review(), key="other")
    assert info.value.reason is Reason.KEY_MISMATCH


@pytest.mark.parametrize(
    ("name", "value"),
    [("pi", 1.5), ("pi", -0.01), ("pi", float("nan")), ("eps", 2.0), ("eps", float("inf"))],
)
def test_out_of_range_probability(name: str, value: float) -> None:
    bad = _decision(**{name: value})
    record = _record(topics.DECISIONS_TOPIC, _decision(), value=bad.SerializeToString())
    error = _rejected(record)
    assert error.reason is Reason.OUT_OF_RANGE
    assert error.field == name
    assert str(error).startswith(f"out_of_range: {name} = ")
    with pytest.raises(MalformedMessage):
        codec.encode(bad)


def test_decision_consistency_rules() -> None:
    pi_edges = [_decision(pi=0.0, delta=False, capped=True), _decision(pi=1.0)]
    for ok in pi_edges:
        assert codec.decode(_record(topics.DECISIONS_TOPIC, ok), max_payload_bytes=LIMIT)
    cases = {
        "delta": _decision(pi=0.0, delta=True),
        "capped": _decision(pi=0.3, capped=True),
        "annotation.item_id": _decision(annotation=types_pb2.Annotation(item_id="other")),
        "item.item_id": _decision(item=types_pb2.Item(item_id="other")),
    }
    for field_name, bad in cases.items():
        with pytest.raises(MalformedMessage) as info:
            codec.validate(bad, b"item-1")
        assert info.value.reason is Reason.INCONSISTENT_FIELDS
        assert info.value.field == field_name
    bad_eps = _decision(criticism=types_pb2.Criticism(error_probability=1.2))
    with pytest.raises(MalformedMessage) as info:
        codec.validate(bad_eps, b"item-1")
    assert info.value.field == "criticism.error_probability"


def test_review_rules() -> None:
    codec.validate(_review(label="", unsure=True), b"item-1")  # unsure without a label: fine
    cases = {
        "revision": (_review(revision=0), Reason.OUT_OF_RANGE),
        "reviewer": (_review(reviewer=""), Reason.MISSING_FIELD),
        "label": (_review(label=""), Reason.MISSING_FIELD),
    }
    for field_name, (bad, reason) in cases.items():
        with pytest.raises(MalformedMessage) as info:
            codec.validate(bad, b"item-1")
        assert (info.value.reason, info.value.field) == (reason, field_name)


def test_dead_letter_rules() -> None:
    record = _record(topics.DLQ_TOPIC, _dead_letter())
    assert _rejected(replace(record, key=b"item-8")).reason is Reason.KEY_MISMATCH
    for name in ("source_topic", "reason"):
        bad = _dead_letter(**{name: ""})
        error = _rejected(_record(topics.DLQ_TOPIC, _dead_letter(), value=bad.SerializeToString()))
        assert (error.reason, error.field) == (Reason.MISSING_FIELD, name)
    # A record that had no key gives a dead letter without one.
    keyless = _record(topics.DLQ_TOPIC, _dead_letter(key=b""))
    assert keyless.key is None
    assert codec.decode(keyless).message.key == b""


def test_oversized_payload() -> None:
    big = _item()
    big.text = "x" * LIMIT
    encoded = codec.encode(big, max_payload_bytes=2 * LIMIT)
    record = Record(topics.ITEMS_TOPIC, encoded.key, encoded.value, encoded.headers)
    error = _rejected(record)
    assert error.reason is Reason.PAYLOAD_TOO_LARGE
    assert f"over the limit of {LIMIT}" in str(error)
    # Checked before anything else: even garbage that large is "too large", not "bad bytes".
    assert _rejected(replace(record, value=b"\xff" * (LIMIT + 1))).reason is (
        Reason.PAYLOAD_TOO_LARGE
    )
    assert codec.decode(record, max_payload_bytes=2 * LIMIT).message == big
    with pytest.raises(MalformedMessage) as info:
        codec.encode(big, max_payload_bytes=LIMIT)
    assert info.value.reason is Reason.PAYLOAD_TOO_LARGE


def test_default_payload_limit_is_one_mib_and_dead_letters_get_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ACT_MAX_PAYLOAD_BYTES", raising=False)
    assert BusSettings().max_payload_bytes == 1024 * 1024
    limit = codec.default_max_payload_bytes()
    assert codec.payload_limit(types_pb2.Item) == limit
    assert codec.payload_limit(bus_pb2.DeadLetter) == message_limits(limit).record + (
        RECORD_OVERHEAD_BYTES
    )
    big = _item()
    big.text = "x" * limit
    with pytest.raises(MalformedMessage) as info:
        codec.encode(big)
    assert info.value.reason is Reason.PAYLOAD_TOO_LARGE


def test_every_reason_is_distinct_and_snake_case() -> None:
    values = [reason.value for reason in Reason]
    assert len(set(values)) == len(values)
    assert all(value.replace("_", "").isalpha() and value.islower() for value in values)


# --- dead letters --------------------------------------------------------------------------


def test_dead_letter_keeps_the_record_and_the_reason() -> None:
    record = Record(topics.ITEMS_TOPIC, b"item-3", b"\x0a\x05ab", [], partition=1, offset=99)
    error = _rejected(record)
    letter = codec.dead_letter(record, str(error), "MalformedMessage", "sampler")
    assert letter.source_topic == topics.ITEMS_TOPIC
    assert (letter.partition, letter.offset) == (1, 99)
    assert (letter.key, letter.payload) == (b"item-3", b"\x0a\x05ab")
    assert letter.reason.startswith("missing_schema_version: ")
    assert (letter.error_type, letter.service) == ("MalformedMessage", "sampler")
    assert letter.failed_time.seconds > 1_700_000_000
    # It is itself a valid record of the dead-letter topic, keyed by the original key.
    assert codec.encode(letter).key == b"item-3"


def test_dead_letter_truncates_what_would_not_fit() -> None:
    record = Record(topics.ITEMS_TOPIC, b"k" * 10, b"p" * 1000, [])
    letter = codec.dead_letter(record, "r" * 10_000, "E", "svc", max_copy_bytes=100)
    assert letter.payload == b"p" * 90
    assert len(letter.reason) < codec.MAX_REASON_CHARS + 100
    assert letter.reason.endswith("[payload truncated: first 90 of 1000 bytes kept]")
    tombstone = codec.dead_letter(Record(topics.ITEMS_TOPIC, None, None), "", "E", "svc")
    assert (tombstone.key, tombstone.payload, tombstone.reason) == (b"", b"", "unknown")


# --- topics and settings -------------------------------------------------------------------


def test_topic_names_and_specs(monkeypatch: pytest.MonkeyPatch) -> None:
    assert topics.ALL_TOPICS == ("act.items.v1", "act.decisions.v1", "act.reviews.v1", "act.dlq.v1")
    monkeypatch.delenv("ACT_TOPIC_PARTITIONS", raising=False)
    specs = {spec.name: spec for spec in topics.default_topic_specs()}
    assert list(specs) == list(topics.ALL_TOPICS)
    assert {spec.partitions for spec in specs.values()} == {3}
    assert {spec.replication for spec in specs.values()} == {1}
    items = specs["act.items.v1"].configs
    assert items["cleanup.policy"] == "delete"
    assert items["retention.ms"] == str(7 * 24 * 3600 * 1000)
    assert items["max.message.bytes"] == str(1024 * 1024 + RECORD_OVERHEAD_BYTES)
    assert int(specs["act.dlq.v1"].configs["max.message.bytes"]) > 2 * 1024 * 1024

    monkeypatch.setenv("ACT_TOPIC_PARTITIONS", "12")
    monkeypatch.setenv("ACT_TOPIC_REPLICATION", "3")
    specs = {spec.name: spec for spec in topics.default_topic_specs(suffix="t1")}
    assert list(specs) == [f"{name}.t1" for name in topics.ALL_TOPICS]
    assert {(s.partitions, s.replication) for s in specs.values()} == {(12, 3)}
    assert specs["act.reviews.v1.t1"].configs["min.insync.replicas"] == "2"
    assert topics.base_topic("act.reviews.v1.t1") == "act.reviews.v1"
    explicit = topics.default_topic_specs(partitions=2, replication=1)
    assert {(s.partitions, s.replication) for s in explicit} == {(2, 1)}

    with pytest.raises(ValueError, match="partitions"):
        topics.TopicSpec("x", partitions=0)
    monkeypatch.setenv("ACT_TOPIC_PARTITIONS", "0")
    with pytest.raises(ValidationError):
        BusSettings()


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACT_KAFKA_BOOTSTRAP", "k1:9092,k2:9092")
    monkeypatch.setenv("ACT_KAFKA_CLIENT_ID", "sampler")
    monkeypatch.setenv("ACT_MAX_PAYLOAD_BYTES", "65536")
    settings = BusSettings()
    assert settings.kafka_bootstrap == "k1:9092,k2:9092"
    assert settings.kafka_client_id == "sampler"
    assert settings.limits.payload == 65536
    monkeypatch.setenv("ACT_KAFKA_HEARTBEAT_INTERVAL_MS", "20000")
    with pytest.raises(ValidationError, match="a third of"):
        BusSettings()


def test_limits_are_consistent() -> None:
    limits = message_limits(1024 * 1024)
    assert limits.payload < limits.record < limits.dead_letter_record <= limits.fetch
    assert limits.frame > limits.fetch + limits.dead_letter_record


# --- client configuration ------------------------------------------------------------------


def test_producer_config_is_explicit_and_idempotent() -> None:
    from act.bus import clients

    settings = BusSettings(kafka_bootstrap="b:1", kafka_client_id="sampler")
    config = clients.producer_config(settings)
    assert config["bootstrap_servers"] == "b:1"
    assert config["client_id"] == "sampler-producer"
    assert config["acks"] == "all"
    assert config["enable_idempotence"] is True
    # kafka-python 2.2 accepts idempotence only with one request in flight per connection.
    assert config["max_in_flight_requests_per_connection"] == 1
    assert config["retries"] > 0
    assert config["key_serializer"] is None and config["value_serializer"] is None
    assert config["compression_type"] is None
    assert config["allow_auto_create_topics"] is False
    assert config["max_request_size"] >= settings.limits.dead_letter_record
    assert clients.producer_config(settings, linger_ms=50)["linger_ms"] == 50
    gzip = BusSettings(kafka_compression="gzip")
    assert clients.producer_config(gzip)["compression_type"] == "gzip"

    from kafka import KafkaProducer

    # Every key is one kafka-python 2.2 knows.
    assert set(config) <= set(KafkaProducer.DEFAULT_CONFIG)


def test_compression_without_its_package_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from kafka import codec as kafka_codec

    from act.bus import clients

    monkeypatch.setattr(kafka_codec, "has_lz4", lambda: False)
    with pytest.raises(ValueError, match="lz4 needs a package"):
        clients.producer_config(BusSettings(kafka_compression="lz4"))


def test_consumer_config_is_explicit_with_manual_commits() -> None:
    from kafka import KafkaConsumer

    from act.bus import clients

    settings = BusSettings(kafka_bootstrap="b:1", kafka_client_id="review")
    config = clients.consumer_config("review-queue", settings)
    assert config["group_id"] == "review-queue"
    assert config["client_id"] == "review-consumer"
    assert config["enable_auto_commit"] is False
    assert config["auto_offset_reset"] == "earliest"
    assert config["isolation_level"] == "read_committed"
    assert config["max_poll_records"] == 100
    assert config["session_timeout_ms"] == 30_000
    assert config["heartbeat_interval_ms"] == 3_000
    assert config["allow_auto_create_topics"] is False
    # kafka-python's own consistency rules, and a JoinGroup may last the whole poll interval.
    assert (
        config["fetch_max_wait_ms"]
        < config["request_timeout_ms"]
        < config["connections_max_idle_ms"]
    )
    assert config["request_timeout_ms"] > config["max_poll_interval_ms"]
    assert config["receive_message_max_bytes"] > config["fetch_max_bytes"]
    assert config["max_partition_fetch_bytes"] >= settings.limits.record
    assert set(config) <= set(KafkaConsumer.DEFAULT_CONFIG)
    with pytest.raises(ValueError, match="group id"):
        clients.consumer_config("", settings)


def test_fetch_size_and_wait_come_from_the_settings() -> None:
    from act.bus import clients

    default = clients.consumer_config("g", BusSettings())
    assert (default["fetch_min_bytes"], default["fetch_max_wait_ms"]) == (1, 500)
    tuned = BusSettings(kafka_fetch_min_bytes=65536, kafka_fetch_max_wait_ms=50)
    config = clients.consumer_config("g", tuned)
    assert (config["fetch_min_bytes"], config["fetch_max_wait_ms"]) == (65536, 50)
    # kafka-python refuses a fetch wait at or above the request timeout: said at settings time.
    with pytest.raises(ValueError, match="ACT_KAFKA_FETCH_MAX_WAIT_MS"):
        BusSettings(
            kafka_max_poll_interval_ms=1_000,
            kafka_session_timeout_ms=3_000,
            kafka_heartbeat_interval_ms=1_000,
            kafka_fetch_max_wait_ms=9_000,
        )


def test_stream_processes_freeze_start_up_objects_and_collect_young_ones_less_often() -> None:
    import subprocess
    import sys

    script = (
        "import gc; from act.bus.runtime import prepare_stream_process, GC_YOUNG_THRESHOLD; "
        "prepare_stream_process(); "
        "assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD, gc.get_threshold(); "
        "assert gc.get_freeze_count() > 1000, gc.get_freeze_count(); print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_stream_processes_still_collect_cycles_periodically() -> None:
    """With the young threshold at 100,000 a few cycles would wait for ever: the periodic
    full collection frees them."""
    import subprocess
    import sys

    script = """
import gc, time, weakref
from act.bus.runtime import prepare_stream_process

prepare_stream_process(full_collection_seconds=0.05)

class Node:
    pass

node = Node()
node.self = node  # a cycle: reference counting never frees it
alive = weakref.ref(node)
del node
assert alive() is not None and gc.get_count()[0] < 100_000
deadline = time.monotonic() + 10
while alive() is not None and time.monotonic() < deadline:
    time.sleep(0.01)
print("collected" if alive() is None else "still alive")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "collected", done.stderr


def test_stream_process_collection_period_must_be_positive() -> None:
    from act.bus.runtime import prepare_stream_process

    with pytest.raises(ValueError, match="full_collection_seconds"):
        prepare_stream_process(full_collection_seconds=0)


# --- publish, flush_and_check, DeadLetterQueue on fakes ---------------------------------------


class FakeFuture:
    def __init__(self, result: Any = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error

    def get(self, timeout: float | None = None) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


class FakeProducer:
    def __init__(self, fail: bool = False) -> None:
        self.config = {"client_id": "fake-producer"}
        self.sent: list[dict[str, Any]] = []
        self.flushed = 0
        self.fail = fail

    def send(self, topic: str, **kwargs: Any) -> FakeFuture:
        self.sent.append({"topic": topic, **kwargs})
        if self.fail:
            return FakeFuture(error=RuntimeError("broker said no"))
        return FakeFuture(result=(topic, len(self.sent) - 1))

    def flush(self, timeout: float | None = None) -> None:
        self.flushed += 1


def test_publish_sends_key_value_and_headers() -> None:
    from act.bus.clients import flush_and_check, publish

    producer = FakeProducer()
    futures = [publish(producer, "act.items.v1", _item(f"i-{n}")) for n in range(3)]
    assert flush_and_check(futures, producer=producer) == [("act.items.v1", n) for n in range(3)]
    assert producer.flushed == 1
    sent = producer.sent[0]
    assert sent["key"] == b"i-0"
    assert types_pb2.Item.FromString(sent["value"]) == _item("i-0")
    assert sent["headers"] == [
        ("act-schema-version", b"1"),
        ("act-message-type", b"act.v1.Item"),
        ("act-producer", b"fake-producer"),
    ]
    with pytest.raises(TypeError, match=re.escape("carries act.v1.Decision, not act.v1.Item")):
        publish(producer, "act.decisions.v1.x", _item())
    with pytest.raises(MalformedMessage):
        publish(producer, "act.items.v1", types_pb2.Item())


def test_flush_and_check_reports_every_failure() -> None:
    from act.bus.clients import PublishError, flush_and_check

    futures = [FakeFuture(1), FakeFuture(error=ValueError("a")), FakeFuture(error=OSError("b"))]
    with pytest.raises(PublishError, match="2 of 3 sends failed") as info:
        flush_and_check(futures)
    assert [index for index, _ in info.value.failures] == [1, 2]


def test_dead_letter_queue_publishes_and_counts() -> None:
    from act.bus.dlq import DeadLetterQueue

    registry = CollectorRegistry()
    producer = FakeProducer()
    dlq = DeadLetterQueue(producer, "sampler", topic="act.dlq.v1.t", registry=registry)
    bad = Record(
        topics.ITEMS_TOPIC,
        b"item-5",
        b"\x0a\x05ab",
        list(_record(topics.ITEMS_TOPIC, _item("item-5")).headers),
        partition=0,
        offset=3,
    )
    error = _rejected(bad)
    dlq.send(bad, error)
    dlq.send(bad, KeyError("boom"))
    dlq.send(Record(topics.ITEMS_TOPIC, None, b"x"), "not for us", reason="filtered")
    assert dlq.sent == 3

    def count(reason: str) -> float | None:
        return registry.get_sample_value(
            "act_bus_dead_letters_total", {"topic": topics.ITEMS_TOPIC, "reason": reason}
        )

    assert count("invalid_protobuf") == 1
    assert count("processing_error") == 1
    assert count("filtered") == 1

    first, second, third = producer.sent
    assert {sent["topic"] for sent in producer.sent} == {"act.dlq.v1.t"}
    assert first["key"] == b"item-5" and third["key"] is None
    assert ("act-dlq-reason", b"invalid_protobuf") in first["headers"]
    assert ("act-producer", b"sampler") in first["headers"]
    letter = bus_pb2.DeadLetter.FromString(first["value"])
    assert letter.reason.startswith("invalid_protobuf: ")
    assert (letter.partition, letter.offset, letter.payload) == (0, 3, b"\x0a\x05ab")
    assert letter.error_type == "MalformedMessage" and letter.service == "sampler"
    assert bus_pb2.DeadLetter.FromString(second["value"]).error_type == "KeyError"
    assert bus_pb2.DeadLetter.FromString(third["value"]).reason == "filtered: not for us"

    # One counter per registry: a second queue on the same registry shares it.
    DeadLetterQueue(producer, "other", registry=registry).send(bad, error)
    assert count("invalid_protobuf") == 2


def test_retry_delay_doubles_from_the_first_wait_up_to_the_cap() -> None:
    assert [retry_delay(n, 0.5, 10.0) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 10, 10]
