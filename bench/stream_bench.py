"""Throughput of the streaming path, beside raw Kafka on the same broker, in one run.

    source deploy/local/env.sh   # ACT_KAFKA_BOOTSTRAP, ACT_DATABASE_URL
    python bench/stream_bench.py [--items 20000] [--poll-records 1000]

1. raw: kafka-python produces N messages of the items' size to a fresh topic (acks=all,
   idempotent, as the pipeline's producers) and one consumer reads them back; items/s from the
   first send to the last message read.
2. pipeline: the sampler worker (instant backend, stream pacer, one Kafka transaction per poll)
   and the DecisionConsumer (ReviewStore on PostgreSQL, a fresh database, dropped after) run as
   two processes, as the services do, already joined to their groups; N items are produced to
   act.items and the clock stops when the store holds N records. items/s from the first send
   to the last record stored; item latency = the record's `received_at` (the store's clock)
   minus the item's send time, p50 and p99.
3. CPU per item of each process over the same span (user + system time, from /proc): what
   each part costs regardless of what else runs on the machine, and so the rate each part
   could sustain on a core of its own (1 / CPU per item); and the busy time of the whole
   machine (all cores, /proc/stat), whose remainder is mostly the broker and PostgreSQL.
   Throughput on this machine is bounded by (cores / machine CPU per item).

Prints a table, the ratio pipeline/raw, and whether the target (>= 5,000 items/s) is met.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
import uuid
from typing import Any

from rich.console import Console
from rich.table import Table

TARGET_ITEMS_PER_SECOND = 5000.0
PARTITIONS = 3


def _bus(bootstrap: str, poll_records: int) -> Any:
    from act.bus import BusSettings

    return BusSettings(
        kafka_bootstrap=bootstrap,
        topic_partitions=PARTITIONS,
        kafka_max_poll_records=poll_records,
        kafka_session_timeout_ms=6000,
        kafka_heartbeat_interval_ms=1000,
    )


def _quiet() -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)


def run_sampler(bootstrap: str, suffix: str, poll_records: int, stop: Any) -> None:
    """Child process: the sampler worker until `stop` is set."""
    _quiet()
    import threading

    from act.bus.runtime import prepare_stream_process
    from act.core.sampling import PacerConfig
    from act.data import text_schema
    from act.inference.instant import InstantBackend
    from act.sampler.policy import SamplingPolicy
    from act.sampler.scoring import Scorer
    from act.sampler.service import SamplerWorker

    backend = InstantBackend()
    worker = SamplerWorker(
        Scorer(backend, backend, text_schema()),
        SamplingPolicy(
            mode="stream",
            seed="bench",
            partitions=PARTITIONS,
            pacer=PacerConfig(budget_per_window=150, window_items=1000),
        ),
        bus=_bus(bootstrap, poll_records),
        group_id=f"bench-sampler-{suffix}",
        transactional_id=f"bench-sampler-{suffix}",
        topic_suffix=suffix,
        micro_batch=256,
    )
    threading.Thread(target=lambda: (stop.wait(), worker.stop()), daemon=True).start()
    prepare_stream_process()  # as `actctl serve sampler` does
    worker.run()


def run_consumer(bootstrap: str, suffix: str, poll_records: int, url: str, stop: Any) -> None:
    """Child process: the decision consumer until `stop` is set."""
    _quiet()
    import threading

    from act.bus.runtime import prepare_stream_process
    from act.data import text_schema
    from act.review import ReviewStore
    from act.review.consumer import DecisionConsumer

    store = ReviewStore(url, pool_size=2)
    consumer = DecisionConsumer(
        store,
        _bus(bootstrap, poll_records),
        group_id=f"bench-review-{suffix}",
        topic_suffix=suffix,
        schemas=[text_schema()],
        stats_interval_s=None,
    )
    threading.Thread(target=lambda: (stop.wait(), consumer.stop()), daemon=True).start()
    prepare_stream_process()  # as `actctl serve review-consumer` does
    try:
        consumer.run()
    finally:
        store.close()


def _items(n: int, suffix: str) -> list[Any]:
    from act.inference.types import Item, item_to_proto

    return [
        item_to_proto(Item(item_id=f"item-{i:07d}", text=f"bench message {i} ({suffix})"))
        for i in range(n)
    ]


def raw_kafka(bootstrap: str, messages: list[Any], poll_records: int) -> float:
    """items/s of plain produce + consume of the same payloads on a fresh topic."""
    from kafka import KafkaConsumer
    from kafka.admin import KafkaAdminClient, NewTopic

    from act.bus.clients import make_producer

    topic = f"bench.raw.{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])
    admin.close()
    payloads = [(m.item_id.encode(), m.SerializeToString()) for m in messages]
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bench-raw-{topic}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=poll_records,
    )
    while not consumer.assignment():
        consumer.poll(timeout_ms=200)
    producer = make_producer(bootstrap)
    started = time.perf_counter()
    for key, value in payloads:
        producer.send(topic, key=key, value=value)
    producer.flush()
    seen = 0
    while seen < len(payloads):
        for records in consumer.poll(timeout_ms=500).values():
            seen += len(records)
    consumer.commit()
    elapsed = time.perf_counter() - started
    producer.close()
    consumer.close()
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.delete_topics([topic])
    admin.close()
    return len(payloads) / elapsed


def _count(engine: Any) -> int:
    import sqlalchemy as sa

    from act.review.tables import records

    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(records)).scalar_one())


def pipeline(
    bootstrap: str, url: str, messages: list[Any], suffix: str, poll_records: int
) -> tuple[float, list[float], dict[str, float]]:
    """items/s from act.items to stored records, each item's latency in seconds, and the CPU
    seconds per item of the sampler, the decision consumer and this process (the producer)."""
    import sqlalchemy as sa

    from act.bus import default_topic_specs, ensure_topics
    from act.bus.clients import flush_and_check, make_producer, publish
    from act.review import ReviewStore
    from act.review.tables import records

    bus = _bus(bootstrap, poll_records)
    ensure_topics(bootstrap, default_topic_specs(bus, suffix=suffix))
    ReviewStore(url).close()  # migrate before the consumer starts
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    children = [
        context.Process(target=run_sampler, args=(bootstrap, suffix, poll_records, stop)),
        context.Process(target=run_consumer, args=(bootstrap, suffix, poll_records, url, stop)),
    ]
    for child in children:
        child.start()
    # Warm-up: one item through the whole path (groups joined, transactions initialised).
    producer = make_producer(bootstrap, settings=bus)
    warm = _items(1, f"warm-{suffix}")[0]
    warm.item_id = "warm-up"
    flush_and_check([publish(producer, f"act.items.v1.{suffix}", warm)], producer=producer)
    store = ReviewStore(url, migrate=False, pool_size=1)
    try:
        deadline = time.monotonic() + 120
        while _count(store.engine) < 1:
            if time.monotonic() > deadline or not all(c.is_alive() for c in children):
                raise RuntimeError("the pipeline did not start (see the children's errors)")
            time.sleep(0.1)
        sent_at: dict[str, float] = {}
        cpu_before = [_cpu_seconds(child.pid) for child in children]  # type: ignore[arg-type]
        own_before = time.process_time()
        machine_before = _machine_busy_seconds()
        started = time.perf_counter()
        futures = []
        for message in messages:
            sent_at[message.item_id] = time.time()
            futures.append(publish(producer, f"act.items.v1.{suffix}", message))
        flush_and_check(futures, producer=producer, timeout_s=300)
        total = len(messages) + 1
        deadline = time.monotonic() + 600
        while _count(store.engine) < total:
            if time.monotonic() > deadline or not all(c.is_alive() for c in children):
                raise RuntimeError("the pipeline stalled")
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        cpu = {
            name: (_cpu_seconds(child.pid) - before) / len(messages)  # type: ignore[arg-type]
            for name, child, before in zip(
                ("sampler", "decision consumer"), children, cpu_before, strict=True
            )
        }
        cpu["item producer (this process)"] = (time.process_time() - own_before) / len(messages)
        machine = (_machine_busy_seconds() - machine_before) / len(messages)
        cpu["broker, database and the rest of the machine"] = machine - sum(cpu.values())
        cpu["machine, all processes"] = machine
        with store.engine.connect() as conn:
            rows = conn.execute(sa.select(records.c.item_id, records.c.received_at)).all()
    finally:
        stop.set()
        for child in children:
            child.join(60)
            if child.is_alive():
                child.kill()
        producer.close()
        store.close()
    latencies = [
        row.received_at.timestamp() - sent_at[row.item_id] for row in rows if row.item_id in sent_at
    ]
    return len(messages) / elapsed, latencies, cpu


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy (not idle or waiting for I/O) since boot."""
    with open("/proc/stat") as stat:
        ticks = [int(t) for t in stat.readline().split()[1:]]
    idle = ticks[3] + ticks[4]
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _drop_database(admin_url: str, name: str) -> None:
    """Drops a database, retrying while a session of another role (which FORCE may not end,
    e.g. another tool's monitoring connection) is still in it."""
    import psycopg

    for attempt in range(20):
        try:
            with psycopg.connect(admin_url, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.ObjectInUse):
            if attempt == 19:
                raise
            time.sleep(0.5)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--poll-records", type=int, default=1000)
    args = parser.parse_args()
    bootstrap = os.environ.get("ACT_KAFKA_BOOTSTRAP")
    database_url = os.environ.get("ACT_DATABASE_URL")
    if not bootstrap or not database_url:
        print("set ACT_KAFKA_BOOTSTRAP and ACT_DATABASE_URL (source deploy/local/env.sh)")
        return 2
    _quiet()
    import psycopg

    suffix = uuid.uuid4().hex[:8]
    messages = _items(args.items, suffix)
    name = f"act_bench_{suffix}"
    base, _, _ = database_url.rpartition("/")
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    console = Console()
    try:
        with console.status("raw kafka-python produce + consume"):
            raw = raw_kafka(bootstrap, messages, args.poll_records)
        with console.status("pipeline: act.items -> sampler -> act.decisions -> PostgreSQL"):
            rate, latencies, cpu = pipeline(
                bootstrap, f"{base}/{name}", messages, suffix, args.poll_records
            )
    finally:
        _drop_database(database_url, name)
    table = Table(title=f"stream path, {args.items:,} items, {PARTITIONS} partitions")
    table.add_column("path")
    table.add_column("items/s", justify="right")
    table.add_column("p50 latency", justify="right")
    table.add_column("p99 latency", justify="right")
    table.add_row("raw kafka-python produce + consume", f"{raw:,.0f}", "", "")
    table.add_row(
        "items -> sampler -> decisions -> store",
        f"{rate:,.0f}",
        f"{_percentile(latencies, 0.5) * 1000:,.0f} ms",
        f"{_percentile(latencies, 0.99) * 1000:,.0f} ms",
    )
    console.print(table)
    parts = Table(title="CPU per item (user + system), over the same span")
    parts.add_column("process")
    parts.add_column("CPU per item", justify="right")
    parts.add_column("items/s on a core of its own", justify="right")
    for name, seconds in cpu.items():
        parts.add_row(name, f"{seconds * 1e6:,.0f} µs", f"{1 / seconds:,.0f}")
    console.print(parts)
    met = rate >= TARGET_ITEMS_PER_SECOND
    console.print(
        f"pipeline / raw = {rate / raw:.2f}; target >= {TARGET_ITEMS_PER_SECOND:,.0f} items/s: "
        f"{'met' if met else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
