"""CPU per record of kafka-python beside confluent-kafka (librdkafka), on the same broker.

    source deploy/local/env.sh   # ACT_KAFKA_BOOTSTRAP
    pip install confluent-kafka  # not a dependency of the project: only this comparison
    python bench/kafka_clients_bench.py [--records 50000] [--rounds 2]

The stream pipeline's bound on a small machine is CPU per item, and kafka-python's share of it
is large (docs/streaming.md, Throughput). This measures what a client with a C core would take
instead, for the team's choice of client (the design names kafka-python). Each round, both
clients in turn, each on a fresh 3-partition topic:

1. produce the same records the pipeline's item producer sends (an `act.v1.Item` encoded by
   the bus codec: key, value, the codec's headers), acks=all, idempotent, linger 5 ms, then
   flush;
2. consume them back from the beginning (no group commits), touching each record's value
   and headers.

CPU = this process's user + system time over each step, per record, background threads (the
clients' I/O threads) included; and records/s. The rounds alternate the clients because this
machine's speed drifts by up to 2x over minutes; the report gives each round's ratio and the
medians.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, os.path.dirname(__file__))
import stream_bench  # the same item payloads as the stream bench

PARTITIONS = 3
CLIENTS = ("kafka-python", "confluent-kafka")

# (produce CPU s/record, consume CPU s/record, produce records/s, consume records/s)
Measurement = tuple[float, float, float, float]


def _topic(bootstrap: str) -> str:
    """A fresh topic, created and led (ensure_topics waits for its partitions' leaders)."""
    from act.bus import TopicSpec, ensure_topics

    name = f"bench.clients.{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, [TopicSpec(name, partitions=PARTITIONS, replication=1)])
    return name


def _drop(bootstrap: str, topics: list[str]) -> None:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.delete_topics(topics)
    finally:
        admin.close()


def _timed(step: Callable[[], int]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of `step`."""
    cpu, wall = time.process_time(), time.perf_counter()
    step()
    return time.process_time() - cpu, time.perf_counter() - wall


def _measurement(
    n: int, produced: tuple[float, float], consume: Callable[[], int], close: Callable[[], None]
) -> Measurement:
    """Times `consume` (then `close`s the consumer) and gives both steps per record."""
    try:
        consume_cpu, consume_wall = _timed(consume)
    finally:
        close()
    produce_cpu, produce_wall = produced
    return produce_cpu / n, consume_cpu / n, n / produce_wall, n / consume_wall


def run_kafka_python(bootstrap: str, topic: str, records: list[Any]) -> Measurement:
    from kafka import KafkaConsumer

    from act.bus.clients import make_producer

    producer = make_producer(bootstrap)

    def produce() -> int:
        for record in records:
            producer.send(topic, key=record.key, value=record.value, headers=record.headers)
        producer.flush()
        return len(records)

    try:
        produced = _timed(produce)
    finally:
        producer.close()
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=1000,
    )

    def consume() -> int:
        seen = 0
        while seen < len(records):
            for part in consumer.poll(timeout_ms=500).values():
                for record in part:
                    _ = record.value, record.headers
                    seen += 1
        return seen

    return _measurement(len(records), produced, consume, consumer.close)


def run_confluent_kafka(bootstrap: str, topic: str, records: list[Any]) -> Measurement:
    from confluent_kafka import Consumer, KafkaException, Producer

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
        }
    )
    failures: list[str] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(str(error))

    def produce() -> int:
        for record in records:
            while True:
                try:
                    producer.produce(
                        topic,
                        value=record.value,
                        key=record.key,
                        headers=record.headers,
                        on_delivery=delivered,
                    )
                    break
                except BufferError:  # the local queue is full: let deliveries drain
                    producer.poll(0.01)
            producer.poll(0)
        if producer.flush(60) != 0 or failures:
            raise KafkaException(f"not every record was delivered: {failures[:3]}")
        return len(records)

    produced = _timed(produce)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-clients-{topic}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])

    def consume() -> int:
        seen = 0
        while seen < len(records):
            for message in consumer.consume(1000, 0.5):
                if message.error() is not None:
                    raise KafkaException(message.error())
                _ = message.value(), message.headers()
                seen += 1
        return seen

    return _measurement(len(records), produced, consume, consumer.close)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=50_000, help="records per client and round")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    bootstrap = os.environ.get("ACT_KAFKA_BOOTSTRAP")
    if not bootstrap:
        print("set ACT_KAFKA_BOOTSTRAP (source deploy/local/env.sh)")
        return 2
    if args.records < 1 or args.rounds < 1:
        print("--records and --rounds must be at least 1")
        return 2
    if importlib.util.find_spec("confluent_kafka") is None:
        print("confluent-kafka is not installed: pip install confluent-kafka")
        return 2
    stream_bench._quiet()
    from act.bus.codec import encode

    records = [encode(m) for m in stream_bench._items(args.records, "clients")]
    console = Console(width=max(Console().width, 100))
    runs = {"kafka-python": run_kafka_python, "confluent-kafka": run_confluent_kafka}
    measured: dict[str, list[Measurement]] = {client: [] for client in CLIENTS}
    topics: list[str] = []
    try:
        for number in range(1, args.rounds + 1):
            for client in CLIENTS:
                with console.status(f"round {number}: {client}, {args.records:,} records"):
                    topics.append(_topic(bootstrap))
                    measured[client].append(runs[client](bootstrap, topics[-1], records))
                produce, consume, produced, consumed = measured[client][-1]
                console.print(
                    f"round {number} {client}: produce {produce * 1e6:.1f} µs CPU/record "
                    f"({produced:,.0f}/s), consume {consume * 1e6:.1f} µs CPU/record "
                    f"({consumed:,.0f}/s)"
                )
    finally:
        if topics:
            _drop(bootstrap, topics)
    _report(console, args, measured)
    return 0


def _report(console: Console, args: argparse.Namespace, measured: dict[str, list[Any]]) -> None:
    table = Table(title=f"{args.rounds} rounds of {args.records:,} records (medians)")
    table.add_column("client")
    for column in ("produce µs CPU/record", "consume µs CPU/record", "produce/s", "consume/s"):
        table.add_column(column, justify="right")
    medians = {
        client: [statistics.median(m[i] for m in measured[client]) for i in range(4)]
        for client in CLIENTS
    }
    for client in CLIENTS:
        produce, consume, produced, consumed = medians[client]
        table.add_row(
            client,
            f"{produce * 1e6:.1f}",
            f"{consume * 1e6:.1f}",
            f"{produced:,.0f}",
            f"{consumed:,.0f}",
        )
    console.print(table)
    for i, step in ((0, "produce"), (1, "consume")):
        ratios = [
            python[i] / confluent[i]
            for python, confluent in zip(
                measured["kafka-python"], measured["confluent-kafka"], strict=True
            )
        ]
        shown = ", ".join(f"{ratio:.1f}" for ratio in ratios)
        console.print(
            f"{step} CPU per record, kafka-python / confluent-kafka per round: {shown} "
            f"(median {statistics.median(ratios):.1f})"
        )


if __name__ == "__main__":
    sys.exit(main())
