"""The local Kafka broker and PostgreSQL of deploy/local/ do what the streaming services need.

Kafka (kafka-python 2.2): an explicitly created 3-partition topic with its configs, 1,000 keyed
messages produced with acks=all, read back exactly once by a consumer group. PostgreSQL
(psycopg 3): a table, insert/select, and `FOR UPDATE SKIP LOCKED` across two connections.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]

N_MESSAGES = 1000
N_PARTITIONS = 3
N_KEYS = 50


def _config_entries(responses: list[Any]) -> dict[str, str]:
    """name -> value from kafka-python's DescribeConfigs responses (one resource)."""
    entries: dict[str, str] = {}
    for response in responses:
        for resource in response.resources:
            error_code, error_message = resource[0], resource[1]
            assert error_code == 0, error_message
            for entry in resource[4]:
                entries[entry[0]] = entry[1]
    return entries


Require = Callable[[str], ModuleType]


def _admin(kafka_admin: ModuleType, kafka_bootstrap: str) -> Any:
    return kafka_admin.KafkaAdminClient(
        bootstrap_servers=kafka_bootstrap,
        client_id="act-integration-admin",
        request_timeout_ms=30_000,
    )


def _describe_when_created(admin: Any, topic: str, timeout_s: float = 30.0) -> dict[str, Any]:
    """The topic's description once the broker's metadata has it: CreateTopics answers when
    the controller has created the topic, and the broker may still report it unknown (error
    code 3) for a moment after."""
    deadline = time.monotonic() + timeout_s
    while True:
        (described,) = admin.describe_topics([topic])
        if described["error_code"] == 0 or time.monotonic() > deadline:
            return described
        time.sleep(0.1)


def test_kafka_is_a_single_loopback_broker_without_topic_auto_creation(
    kafka_bootstrap: str, require_module: Require
) -> None:
    kafka_admin = require_module("kafka.admin")
    admin = _admin(kafka_admin, kafka_bootstrap)
    try:
        cluster = admin.describe_cluster()
        brokers = cluster["brokers"]
        assert len(brokers) == 1
        assert brokers[0]["host"] == "127.0.0.1"
        config = _config_entries(
            admin.describe_configs(
                [
                    kafka_admin.ConfigResource(
                        kafka_admin.ConfigResourceType.BROKER, str(brokers[0]["node_id"])
                    )
                ]
            )
        )
        assert config["auto.create.topics.enable"] == "false"
        assert config["offsets.topic.replication.factor"] == "1"
        listeners = config["listeners"].split(",")
        assert listeners and all("//127.0.0.1:" in listener for listener in listeners)
    finally:
        admin.close()


def test_kafka_topic_keyed_produce_and_exactly_once_group_consume(
    kafka_bootstrap: str, require_module: Require
) -> None:
    kafka = require_module("kafka")
    kafka_admin = require_module("kafka.admin")
    topic = f"act-it-{uuid.uuid4().hex[:12]}"
    group = f"act-it-group-{uuid.uuid4().hex[:12]}"
    admin = _admin(kafka_admin, kafka_bootstrap)
    try:
        admin.create_topics(
            [
                kafka_admin.NewTopic(
                    name=topic,
                    num_partitions=N_PARTITIONS,
                    replication_factor=1,
                    topic_configs={"retention.ms": "3600000", "cleanup.policy": "delete"},
                )
            ],
            timeout_ms=30_000,
        )
        described = _describe_when_created(admin, topic)
        assert described["error_code"] == 0
        assert len(described["partitions"]) == N_PARTITIONS
        config = _config_entries(
            admin.describe_configs(
                [kafka_admin.ConfigResource(kafka_admin.ConfigResourceType.TOPIC, topic)]
            )
        )
        assert config["retention.ms"] == "3600000"
        assert config["cleanup.policy"] == "delete"

        producer = kafka.KafkaProducer(
            bootstrap_servers=kafka_bootstrap,
            client_id="act-integration-producer",
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            key_serializer=str.encode,
            value_serializer=lambda value: json.dumps(value).encode(),
        )
        try:
            futures = [
                producer.send(topic, key=f"key-{i % N_KEYS}", value={"i": i})
                for i in range(N_MESSAGES)
            ]
            producer.flush(timeout=60)
            sent = [future.get(timeout=30) for future in futures]
        finally:
            producer.close(timeout=10)
        partition_of_key: dict[str, set[int]] = defaultdict(set)
        for i, metadata in enumerate(sent):
            partition_of_key[f"key-{i % N_KEYS}"].add(metadata.partition)
        assert all(len(partitions) == 1 for partitions in partition_of_key.values())
        assert {metadata.partition for metadata in sent} == set(range(N_PARTITIONS))

        consumer = kafka.KafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            client_id="act-integration-consumer",
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            key_deserializer=bytes.decode,
            value_deserializer=json.loads,
        )
        received: list[tuple[str, int]] = []
        try:
            deadline = time.monotonic() + 60
            while len(received) < N_MESSAGES and time.monotonic() < deadline:
                for records in consumer.poll(timeout_ms=500).values():
                    received.extend((record.key, record.value["i"]) for record in records)
            consumer.commit()
        finally:
            consumer.close()
        assert len(received) == N_MESSAGES
        assert sorted(i for _, i in received) == list(range(N_MESSAGES))
        by_key: dict[str, list[int]] = defaultdict(list)
        for key, i in received:
            by_key[key].append(i)
        assert all(values == sorted(values) for values in by_key.values()), "order within a key"

        offsets = admin.list_consumer_group_offsets(group)
        assert {tp.partition for tp in offsets} == set(range(N_PARTITIONS))
        assert sum(meta.offset for meta in offsets.values()) == N_MESSAGES

        # The group's committed offsets hold: a new member of the group reads nothing again.
        again = kafka.KafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        try:
            deadline = time.monotonic() + 30
            redelivered = 0
            while not again.assignment() and time.monotonic() < deadline:
                redelivered += sum(len(r) for r in again.poll(timeout_ms=500).values())
            assert again.assignment(), "the second consumer got no partitions"
            end = time.monotonic() + 2
            while time.monotonic() < end:
                redelivered += sum(len(r) for r in again.poll(timeout_ms=500).values())
            assert redelivered == 0
        finally:
            again.close()
    finally:
        try:
            admin.delete_topics([topic], timeout_ms=30_000)
        finally:
            admin.close()


def test_postgres_table_insert_select_and_skip_locked(
    database_url: str, require_module: Require
) -> None:
    psycopg = require_module("psycopg")
    from psycopg import sql

    table = sql.Identifier(f"act_it_{uuid.uuid4().hex[:12]}")
    with psycopg.connect(database_url, connect_timeout=10, autocommit=True) as admin:
        assert admin.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        admin.execute(
            sql.SQL(
                "CREATE TABLE {} (id int PRIMARY KEY, payload text NOT NULL, claimed_by text)"
            ).format(table)
        )
        try:
            with admin.cursor() as cursor:
                cursor.executemany(
                    sql.SQL("INSERT INTO {} (id, payload) VALUES (%s, %s)").format(table),
                    [(i, f"item-{i}") for i in range(10)],
                )
            rows = admin.execute(sql.SQL("SELECT id, payload FROM {} ORDER BY id").format(table))
            assert rows.fetchall() == [(i, f"item-{i}") for i in range(10)]

            claim = sql.SQL(
                "SELECT id FROM {} WHERE claimed_by IS NULL ORDER BY id LIMIT 4 "
                "FOR UPDATE SKIP LOCKED"
            ).format(table)
            mark = sql.SQL("UPDATE {} SET claimed_by = %s WHERE id = ANY(%s)").format(table)
            with (
                psycopg.connect(database_url, connect_timeout=10) as worker_a,
                psycopg.connect(database_url, connect_timeout=10) as worker_b,
            ):
                # Both in open transactions: B skips the rows that A holds, without waiting.
                a_ids = [row[0] for row in worker_a.execute(claim)]
                b_ids = [row[0] for row in worker_b.execute(claim)]
                assert a_ids == [0, 1, 2, 3]
                assert b_ids == [4, 5, 6, 7]
                with pytest.raises(psycopg.errors.LockNotAvailable):
                    worker_b.execute(
                        sql.SQL("SELECT id FROM {} WHERE id = 0 FOR UPDATE NOWAIT").format(table)
                    )
                worker_b.rollback()  # the failed statement aborted B's transaction; locks freed

                worker_a.execute(mark, ("a", a_ids))
                worker_a.commit()
                # A's rows are claimed now, B's released ones are free again.
                b_ids = [row[0] for row in worker_b.execute(claim)]
                assert b_ids == [4, 5, 6, 7]
                worker_b.execute(mark, ("b", b_ids))
                worker_b.commit()

            claimed = admin.execute(
                sql.SQL(
                    "SELECT claimed_by, count(*) FROM {} GROUP BY claimed_by "
                    "ORDER BY claimed_by NULLS LAST"
                ).format(table)
            ).fetchall()
            assert claimed == [("a", 4), ("b", 4), (None, 2)]
        finally:
            admin.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
