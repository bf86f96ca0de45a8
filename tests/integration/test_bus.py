"""act.bus against the real Kafka broker of deploy/local/ (kafka-python 2.2).

- `ensure_topics` creates the four topics with their partitions and configs, and is
  idempotent; an existing topic with too few partitions is an error (or a warning).
- 2,000 items keyed by id, published with `publish` + `flush_and_check`, spread over the
  partitions (one partition per key) and read back by a consumer group with manual commits,
  across a restart of the consumer: every item exactly once, in order within a partition.
- Malformed records produced as raw bytes (bad protobuf, unknown or missing schema version,
  missing item id, key mismatch, wrong type, tombstone, oversized payload) are routed to the
  dead-letter topic by a consume loop built from the codec and `DeadLetterQueue`, with their
  reasons and a counter, while the good records around them still get through.

Every test works in its own namespace (topics `act.*.v1.<suffix>`, unique group ids) and
deletes its topics and groups afterwards, so runs on one broker do not interfere.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

Require = Callable[[str], ModuleType]

N_ITEMS = 2000
N_PARTITIONS = 3


@pytest.fixture
def bus(kafka_bootstrap: str, require_module: Require) -> Iterator[dict[str, Any]]:
    """A namespace of the four topics (created by the test), cleaned up afterwards."""
    require_module("kafka")
    require_module("prometheus_client")
    from kafka.admin import KafkaAdminClient

    from act.bus import topics

    suffix = f"it-{uuid.uuid4().hex[:12]}"
    admin = KafkaAdminClient(
        bootstrap_servers=kafka_bootstrap, client_id="act-it-bus-admin", request_timeout_ms=30_000
    )
    state: dict[str, Any] = {
        "suffix": suffix,
        "bootstrap": kafka_bootstrap,
        "admin": admin,
        "groups": [],
        "names": {base: topics.with_suffix(base, suffix) for base in topics.ALL_TOPICS},
    }
    try:
        yield state
    finally:
        try:
            existing = set(admin.list_topics())
            mine = [name for name in state["names"].values() if name in existing]
            if mine:
                admin.delete_topics(mine, timeout_ms=30_000)
            if state["groups"]:
                try:
                    admin.delete_consumer_groups(state["groups"])
                except Exception as exc:  # cleanup only; the topics are gone anyway
                    logging.getLogger(__name__).warning("deleting groups failed: %s", exc)
        finally:
            admin.close()


def _group(bus: dict[str, Any], name: str) -> str:
    group = f"act-it-{name}-{bus['suffix']}"
    bus["groups"].append(group)
    return group


def _topic_configs(admin: Any, topic: str) -> dict[str, str]:
    from kafka.admin import ConfigResource, ConfigResourceType

    entries: dict[str, str] = {}
    for response in admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)]):
        for resource in response.resources:
            assert resource[0] == 0, resource[1]
            for entry in resource[4]:
                entries[entry[0]] = entry[1]
    return entries


def _poll_until(consumer: Any, done: Callable[[], bool], handle: Callable[[Any], None]) -> None:
    deadline = time.monotonic() + 90
    while not done():
        assert time.monotonic() < deadline, "timed out waiting for records"
        for records in consumer.poll(timeout_ms=500).values():
            for record in records:
                handle(record)


def test_ensure_topics_creates_the_four_topics_and_is_idempotent(
    bus: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    from act.bus import topics

    specs = topics.default_topic_specs(partitions=4, suffix=bus["suffix"])
    started = time.monotonic()
    created = topics.ensure_topics(bus["bootstrap"], specs)
    elapsed = time.monotonic() - started
    assert list(created) == list(bus["names"].values())
    assert all(status.created for status in created.values())
    assert {(s.partitions, s.replication) for s in created.values()} == {(4, 1)}

    admin = bus["admin"]
    described = {t["topic"]: t for t in admin.describe_topics(list(created))}
    for spec in specs:
        assert described[spec.name]["error_code"] == 0
        partitions = described[spec.name]["partitions"]
        assert len(partitions) == 4
        assert all(p["leader"] >= 0 for p in partitions)
        configs = _topic_configs(admin, spec.name)
        for name, value in spec.configs.items():
            assert configs[name] == value, (spec.name, name)
    items = _topic_configs(admin, bus["names"][topics.ITEMS_TOPIC])
    assert items["retention.ms"] == str(7 * 24 * 3600 * 1000)
    assert items["cleanup.policy"] == "delete"

    # Again, and with an open admin client: nothing created, nothing changed.
    again = topics.ensure_topics(bus["bootstrap"], specs)
    assert not any(status.created for status in again.values())
    assert {s.partitions for s in again.values()} == {4}
    assert not any(s.created for s in topics.ensure_topics(None, specs, admin=admin).values())

    # Fewer partitions than asked for: an error that says what to do, or a warning.
    more = topics.default_topic_specs(partitions=6, suffix=bus["suffix"])
    with pytest.raises(topics.TopicMismatchError, match="4 partitions, fewer than the 6"):
        topics.ensure_topics(bus["bootstrap"], more)
    with caplog.at_level(logging.WARNING, logger="act.bus.topics"):
        lenient = topics.ensure_topics(bus["bootstrap"], more, strict=False)
    assert {s.partitions for s in lenient.values()} == {4}
    assert sum("fewer than the 6" in r.getMessage() for r in caplog.records) == 4
    # More partitions than asked for is fine.
    fewer = topics.default_topic_specs(partitions=2, suffix=bus["suffix"])
    assert {s.partitions for s in topics.ensure_topics(bus["bootstrap"], fewer).values()} == {4}
    print(f"\nensure_topics: created 4 topics in {elapsed:.2f}s")


def test_items_keyed_by_id_are_read_exactly_once_by_a_group_with_manual_commits(
    bus: dict[str, Any],
) -> None:
    from act.bus import codec, topics
    from act.bus.clients import flush_and_check, make_consumer, make_producer, publish
    from act.v1 import types_pb2

    specs = topics.default_topic_specs(partitions=N_PARTITIONS, suffix=bus["suffix"])
    topics.ensure_topics(bus["bootstrap"], specs)
    items_topic = bus["names"][topics.ITEMS_TOPIC]

    started = time.monotonic()
    producer = make_producer(bus["bootstrap"], client_id="act-it-bus-producer")
    try:
        futures = [
            publish(
                producer,
                items_topic,
                types_pb2.Item(item_id=f"item-{i:05d}", text=f"text {i}", schema_id="s"),
            )
            for i in range(N_ITEMS)
        ]
        sent = flush_and_check(futures, producer=producer)
    finally:
        producer.close(timeout=10)
    produce_s = time.monotonic() - started

    partition_of: dict[str, int] = {f"item-{i:05d}": m.partition for i, m in enumerate(sent)}
    per_partition = Counter(partition_of.values())
    assert set(per_partition) == set(range(N_PARTITIONS))
    assert min(per_partition.values()) > N_ITEMS / N_PARTITIONS / 2, per_partition

    group = _group(bus, "items")
    seen: list[tuple[str, int, int]] = []  # (item id, partition, offset)

    def handle(record: Any) -> None:
        decoded = codec.decode(record)
        assert decoded.producer == "act-it-bus-producer"
        assert decoded.message.text == f"text {int(decoded.item_id[5:])}"
        seen.append((decoded.item_id, record.partition, record.offset))

    # First member: reads part of the stream, committing after each poll, then stops (a
    # restart). The second member of the same group continues from the committed offsets.
    started = time.monotonic()
    for phase, target in (("first", 700), ("second", N_ITEMS)):
        consumer = make_consumer(
            bus["bootstrap"], group, [items_topic], client_id=f"act-it-bus-{phase}"
        )
        try:
            deadline = time.monotonic() + 90
            while len(seen) < target:
                assert time.monotonic() < deadline, f"{phase}: only {len(seen)} records"
                batch = consumer.poll(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        handle(record)
                if batch:
                    consumer.commit()  # after processing: at-least-once, no gap
        finally:
            consumer.close(autocommit=False)
        if phase == "first":
            assert 700 <= len(seen) < N_ITEMS
    consume_s = time.monotonic() - started

    ids = [item_id for item_id, _, _ in seen]
    assert len(ids) == N_ITEMS
    assert len(set(ids)) == N_ITEMS, "an item was delivered twice"
    assert set(ids) == set(partition_of)
    assert all(partition_of[item_id] == partition for item_id, partition, _ in seen)
    by_partition: dict[int, list[int]] = defaultdict(list)
    for _, partition, offset in seen:
        by_partition[partition].append(offset)
    assert all(offsets == sorted(offsets) for offsets in by_partition.values())

    committed = bus["admin"].list_consumer_group_offsets(group)
    assert {tp.topic for tp in committed} == {items_topic}
    assert {tp.partition: meta.offset for tp, meta in committed.items()} == dict(per_partition)

    # A third member of the group finds nothing left to read.
    consumer = make_consumer(bus["bootstrap"], group, [items_topic], client_id="act-it-bus-third")
    try:
        deadline = time.monotonic() + 30
        redelivered = 0
        while not consumer.assignment():
            assert time.monotonic() < deadline, "no partitions assigned"
            redelivered += sum(len(r) for r in consumer.poll(timeout_ms=500).values())
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            redelivered += sum(len(r) for r in consumer.poll(timeout_ms=300).values())
        assert redelivered == 0
    finally:
        consumer.close(autocommit=False)
    print(
        f"\n{N_ITEMS} items: produced+flushed in {produce_s:.2f}s, consumed in two group "
        f"sessions in {consume_s:.2f}s; per partition {dict(sorted(per_partition.items()))}"
    )


def test_malformed_records_go_to_the_dead_letter_topic_and_the_stream_goes_on(
    bus: dict[str, Any],
) -> None:
    from prometheus_client import CollectorRegistry

    from act.bus import codec, topics
    from act.bus.clients import flush_and_check, make_consumer, make_producer, publish
    from act.bus.dlq import HEADER_DLQ_REASON, DeadLetterQueue
    from act.bus.settings import BusSettings
    from act.v1 import bus_pb2, types_pb2

    specs = topics.default_topic_specs(partitions=N_PARTITIONS, suffix=bus["suffix"])
    topics.ensure_topics(bus["bootstrap"], specs)
    items_topic = bus["names"][topics.ITEMS_TOPIC]
    dlq_topic = bus["names"][topics.DLQ_TOPIC]
    max_payload = BusSettings().max_payload_bytes

    def good(i: int) -> types_pb2.Item:
        return types_pb2.Item(item_id=f"good-{i}", text=f"fine {i}")

    v1 = [("act-schema-version", b"1"), ("act-message-type", b"act.v1.Item")]
    huge = types_pb2.Item(item_id="bad-huge", text="x" * (max_payload + 1000))
    # key -> (value, headers, expected reason)
    bad: dict[str, tuple[bytes | None, list[tuple[str, bytes]], str]] = {
        "bad-protobuf": (b"\x0a\x05ab", v1, "invalid_protobuf"),
        "bad-version": (
            types_pb2.Item(item_id="bad-version").SerializeToString(),
            [("act-schema-version", b"9"), v1[1]],
            "unsupported_schema_version",
        ),
        "bad-no-version": (
            types_pb2.Item(item_id="bad-no-version").SerializeToString(),
            [v1[1]],
            "missing_schema_version",
        ),
        "bad-no-id": (types_pb2.Item(text="who am I").SerializeToString(), v1, "missing_item_id"),
        "bad-key": (
            types_pb2.Item(item_id="someone-else").SerializeToString(),
            v1,
            "key_mismatch",
        ),
        "bad-type": (
            bus_pb2.Review(
                item_id="bad-type", label="x", reviewer="r", revision=1
            ).SerializeToString(),
            [v1[0], ("act-message-type", b"act.v1.Review")],
            "wrong_message_type",
        ),
        "bad-tombstone": (None, v1, "missing_payload"),
        "bad-huge": (huge.SerializeToString(), v1, "payload_too_large"),
    }
    assert len(bad["bad-huge"][0] or b"") > max_payload

    producer = make_producer(bus["bootstrap"], client_id="act-it-bus-raw")
    location: dict[str, tuple[int, int]] = {}
    try:
        futures: list[tuple[str, Any]] = []
        bad_keys = list(bad)
        for i in range(60):  # good records before, between and after the bad ones
            futures.append((f"good-{i}", publish(producer, items_topic, good(i))))
            if i % 7 == 3 and bad_keys:
                key = bad_keys.pop(0)
                value, headers, _ = bad[key]
                futures.append(
                    (
                        key,
                        producer.send(items_topic, key=key.encode(), value=value, headers=headers),
                    )
                )
        assert not bad_keys
        results = flush_and_check([f for _, f in futures], producer=producer)
        location = {
            key: (m.partition, m.offset) for (key, _), m in zip(futures, results, strict=True)
        }

        # The consume loop of a service: decode, process the good, park the bad, then make the
        # dead letters durable before committing the offsets that moved past them.
        registry = CollectorRegistry()
        dlq = DeadLetterQueue(producer, "it-sampler", topic=dlq_topic, registry=registry)
        group = _group(bus, "dlq-loop")
        consumer = make_consumer(bus["bootstrap"], group, [items_topic])
        processed: list[str] = []
        parked: list[str] = []
        started = time.monotonic()
        try:
            deadline = time.monotonic() + 90
            while len(processed) < 60 or len(parked) < len(bad):
                assert time.monotonic() < deadline, (len(processed), len(parked))
                batch = consumer.poll(timeout_ms=500)
                pending = []
                for records in batch.values():
                    for record in records:
                        try:
                            decoded = codec.decode(record)
                        except codec.MalformedMessage as exc:
                            pending.append(dlq.send(record, exc))
                            parked.append(record.key.decode())
                        else:
                            processed.append(decoded.item_id)
                if batch:
                    flush_and_check(pending, producer=producer)
                    consumer.commit()
        finally:
            consumer.close(autocommit=False)
        loop_s = time.monotonic() - started
    finally:
        producer.close(timeout=10)

    assert sorted(processed) == sorted(f"good-{i}" for i in range(60))
    assert sorted(parked) == sorted(bad)
    for key, (_, _, reason) in bad.items():
        count = registry.get_sample_value(
            "act_bus_dead_letters_total", {"topic": items_topic, "reason": reason}
        )
        assert count == 1, (key, reason, count)
    assert dlq.sent == len(bad)

    # Every offset of the input is committed: nothing is stuck behind a bad record.
    committed = bus["admin"].list_consumer_group_offsets(group)
    ends = defaultdict(int)
    for partition, offset in location.values():
        ends[partition] = max(ends[partition], offset + 1)
    assert {tp.partition: meta.offset for tp, meta in committed.items()} == dict(ends)

    # The dead letters, read back from their topic as any consumer would.
    letters: dict[str, tuple[Any, dict[str, bytes]]] = {}
    reader = make_consumer(bus["bootstrap"], _group(bus, "dlq-reader"), [dlq_topic])
    try:
        _poll_until(
            reader,
            lambda: len(letters) >= len(bad),
            lambda record: letters.__setitem__(
                record.key.decode(), (codec.decode(record), dict(record.headers))
            ),
        )
    finally:
        reader.close(autocommit=False)
    assert set(letters) == set(bad)
    for key, (value, _, reason) in bad.items():
        decoded, headers = letters[key]
        letter = decoded.message
        assert isinstance(letter, bus_pb2.DeadLetter)
        assert letter.reason.startswith(f"{reason}: "), (key, letter.reason)
        assert headers[HEADER_DLQ_REASON] == reason.encode()
        assert headers["act-producer"] == b"it-sampler"
        assert letter.error_type == "MalformedMessage"
        assert letter.service == "it-sampler"
        assert letter.source_topic == items_topic
        assert (letter.partition, letter.offset) == location[key]
        assert letter.key == key.encode()
        assert letter.payload == (value or b""), key  # kept whole, even the oversized one
        assert letter.failed_time.seconds > 0
    print(
        f"\nDLQ loop: {len(processed)} good + {len(bad)} bad records in {loop_s:.2f}s; "
        f"reasons: {sorted(reason for _, _, reason in bad.values())}"
    )
