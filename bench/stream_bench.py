"""Throughput of the streaming path, beside raw Kafka on the same broker, in one run.

    source deploy/local/env.sh   # ACT_KAFKA_BOOTSTRAP, ACT_DATABASE_URL
    python bench/stream_bench.py [--items 20000] [--rounds 3] [--poll-records 1000]

The sampler worker (instant backend, stream pacer, Kafka transactions) and the
DecisionConsumer (ReviewStore on PostgreSQL, a fresh database, dropped after) start as two
processes, as the services run, and are warmed up by one item. Then each round, on fresh
item ids:

1. raw: kafka-python produces N messages of the items' size to a fresh topic (acks=all,
   idempotent, as the pipeline's producers) and one consumer reads them back; items/s from the
   first send to the last message read.
2. pipeline: N items are produced to act.items and the clock stops when the store holds all of
   them. items/s from the first send to the last record stored, and the steady rate: items
   per second while the store went from 10 % to 90 % of them (a short run otherwise counts
   the pipeline's fixed delay, about a transaction, as slowness); item latency = the
   record's `received_at` (the store's clock) minus the item's send time, p50 and p99 over
   all rounds.
   The item producer runs on the same two cores as everything else here; in production it
   runs elsewhere. So also:
3. backlog: N items are produced to fresh topics first, then a new sampler and consumer start
   on them; the steady rate, and CPU per item from the first stored batch to the last.
4. CPU per item of each process over the same spans (user + system time, from /proc): what
   each part costs, the broker and PostgreSQL included when they run here (deploy/local);
   and the busy time of the whole machine (all cores, /proc/stat). Throughput on this
   machine is bounded by cores / machine CPU per item.

This machine's speed drifts by up to 2x over minutes (the same code's raw rate was seen from
11,000 to 22,000 items/s), so the three alternate round by round and the report gives each
round's ratio to raw and the medians, with whether the median meets the target (>= 5,000
items/s).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

TARGET_ITEMS_PER_SECOND = 5000.0
PARTITIONS = 3
BROKER = "broker (a local kafka.Kafka JVM)"
DATABASE = "PostgreSQL (local postgres processes)"
REST = "the rest of the machine"
MACHINE = "machine, all processes"


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


def _items(n: int, suffix: str, prefix: str = "") -> list[Any]:
    from act.inference.types import Item, item_to_proto

    return [
        item_to_proto(Item(item_id=f"{prefix}item-{i:07d}", text=f"bench message {i} ({suffix})"))
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


def _stored(engine: Any, ids: list[str]) -> int:
    """How many of these item ids the store holds (primary-key lookups: a count of the whole
    table, polled, cost PostgreSQL more CPU per item than the store's own inserts)."""
    import sqlalchemy as sa

    from act.review.tables import records

    query = sa.select(sa.func.count()).select_from(records).where(_among(ids))
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def _among(ids: list[str]) -> Any:
    """`item_id = ANY(:ids)`: one array parameter (IN takes one per id, at most 65,535)."""
    import sqlalchemy as sa
    from sqlalchemy.dialects.postgresql import ARRAY

    from act.review.tables import records

    return records.c.item_id == sa.any_(sa.bindparam("ids", ids, type_=ARRAY(sa.String)))


# Each partition is stored in order, so once the last (first) ids sent are stored, every
# partition is complete (has begun), when these ids cover all partitions: 50 ids keyed at
# random miss one of 3 partitions with probability 3 * (2/3) ** 50, about 1e-8.
EDGE_IDS = 50


class Pipeline:
    """The sampler and the decision consumer as two child processes, as the services run,
    joined to their groups and warmed up by one item; `run` streams one batch through."""

    def __init__(self, bootstrap: str, url: str, suffix: str, poll_records: int) -> None:
        from act.bus import default_topic_specs, ensure_topics
        from act.bus.clients import make_producer
        from act.review import ReviewStore

        self.topic = f"act.items.v1.{suffix}"
        bus = _bus(bootstrap, poll_records)
        ensure_topics(bootstrap, default_topic_specs(bus, suffix=suffix))
        ReviewStore(url).close()  # migrate before the consumer starts
        self.store = ReviewStore(url, migrate=False, pool_size=1)
        context = multiprocessing.get_context("spawn")
        self.stop = context.Event()
        self.children = [
            context.Process(target=run_sampler, args=(bootstrap, suffix, poll_records, self.stop)),
            context.Process(
                target=run_consumer, args=(bootstrap, suffix, poll_records, url, self.stop)
            ),
        ]
        for child in self.children:
            child.start()
        self.producer = make_producer(bootstrap, settings=bus)

    def warm_up(self) -> None:
        """One item through the whole path (groups joined, transactions initialised)."""
        warm = _items(1, "warm-up")[0]
        warm.item_id = "warm-up"
        self.run([warm], timeout_s=120)

    def run(
        self, messages: list[Any], timeout_s: float = 600
    ) -> tuple[float, float, list[float], dict[str, float]]:
        """items/s from the first send to the last record stored, the steady rate
        (`_steady_rate`), each item's latency in seconds, and CPU seconds per item: the
        sampler, the decision consumer, this process (the item producer) and the machine."""
        import sqlalchemy as sa

        from act.bus.clients import flush_and_check, publish
        from act.review.tables import records

        sent_at: dict[str, float] = {}
        cpu_before = [_cpu_seconds(child.pid) for child in self.children]  # type: ignore[arg-type]
        own_before = time.process_time()
        services_before = _local_services_cpu_seconds()
        machine_before = _machine_busy_seconds()
        started = time.perf_counter()
        futures = []
        for message in messages:
            sent_at[message.item_id] = time.time()
            futures.append(publish(self.producer, self.topic, message))
        flush_and_check(futures, producer=self.producer, timeout_s=300)
        ids = list(sent_at)
        self._wait_until_stored(ids, time.monotonic() + timeout_s)
        elapsed = time.perf_counter() - started
        cpu = {
            name: (_cpu_seconds(child.pid) - before) / len(messages)  # type: ignore[arg-type]
            for name, child, before in zip(
                ("sampler", "decision consumer"), self.children, cpu_before, strict=True
            )
        }
        cpu["item producer (this process)"] = (time.process_time() - own_before) / len(messages)
        _add_services_and_machine(cpu, services_before, machine_before, len(messages))
        with self.store.engine.connect() as conn:
            rows = conn.execute(
                sa.select(records.c.item_id, records.c.received_at).where(_among(ids))
            ).all()
        stored_at = [row.received_at.timestamp() for row in rows]
        latencies = [at - sent_at[row.item_id] for row, at in zip(rows, stored_at, strict=True)]
        return len(messages) / elapsed, _steady_rate(stored_at), latencies, cpu

    def drain(self, ids: list[str], timeout_s: float = 600) -> tuple[float, dict[str, float]]:
        """For items produced before the pipeline started (`ids`, in the order sent): the
        steady rate (`_steady_rate`), and CPU per item from the first stored batch to the last
        (the start-up and the group join left out)."""
        import sqlalchemy as sa

        from act.review.tables import records

        deadline = time.monotonic() + timeout_s
        while not _stored(self.store.engine, ids[:EDGE_IDS]):
            self._check(deadline)
            time.sleep(0.01)
        first = _stored(self.store.engine, ids)
        cpu_before = [_cpu_seconds(child.pid) for child in self.children]  # type: ignore[arg-type]
        services_before = _local_services_cpu_seconds()
        machine_before = _machine_busy_seconds()
        self._wait_until_stored(ids, deadline)
        drained = len(ids) - first
        cpu = {
            name: (_cpu_seconds(child.pid) - before) / drained  # type: ignore[arg-type]
            for name, child, before in zip(
                ("sampler", "decision consumer"), self.children, cpu_before, strict=True
            )
        }
        _add_services_and_machine(cpu, services_before, machine_before, drained)
        with self.store.engine.connect() as conn:
            stored_at = conn.execute(sa.select(records.c.received_at).where(_among(ids))).scalars()
            return _steady_rate([at.timestamp() for at in stored_at]), cpu

    def _wait_until_stored(self, ids: list[str], deadline: float) -> None:
        """Polls until the store holds every one of `ids` (sent in this order): cheaply for
        the last ones sent (`EDGE_IDS`), then once for all."""
        while True:
            if _stored(self.store.engine, ids[-EDGE_IDS:]) == len(ids[-EDGE_IDS:]) and (
                _stored(self.store.engine, ids) == len(ids)
            ):
                return
            self._check(deadline)
            time.sleep(0.02)

    def _check(self, deadline: float) -> None:
        if time.monotonic() > deadline or not all(c.is_alive() for c in self.children):
            raise RuntimeError("the pipeline stalled (see the children's errors)")

    def close(self) -> None:
        self.stop.set()
        for child in self.children:
            child.join(60)
            if child.is_alive():
                child.kill()
        self.producer.close()
        self.store.close()


def _add_services_and_machine(
    cpu: dict[str, float], services_before: dict[str, float], machine_before: float, items: int
) -> None:
    """Adds to `cpu` (seconds per item of the processes measured so far) the local broker's
    and PostgreSQL's, the rest of the machine's and the whole machine's, since the `before`
    readings."""
    machine = (_machine_busy_seconds() - machine_before) / items
    for part, seconds in _local_services_cpu_seconds().items():
        cpu[part] = (seconds - services_before[part]) / items
    cpu[REST] = machine - sum(cpu.values())
    cpu[MACHINE] = machine


def _steady_rate(stored_at: list[float]) -> float:
    """Items per second while the store went from 10 % to 90 % of the records: the rate of
    the stream once running, without the start (the first poll, the first transaction) and
    the end (the last transaction's commit and fetch), which a short run would otherwise
    count as slowness. `received_at` is stamped per stored batch, of up to a poll's records."""
    times = sorted(stored_at)
    first, last = len(times) // 10, (9 * len(times)) // 10
    span = times[last] - times[first]
    return (last - first) / span if span > 0 else math.nan


def _stat(pid: int | str) -> tuple[str, list[str]]:
    """A process's command name and the fields of /proc/<pid>/stat after it (the name may
    hold spaces and parentheses, so it is cut at the last ")")."""
    with open(f"/proc/{pid}/stat") as stat:
        command, _, rest = stat.read().rpartition(")")
    return command.partition("(")[2], rest.split()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = _stat(pid)[1]
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _local_services_cpu_seconds() -> dict[str, float]:
    """CPU seconds so far of the broker and PostgreSQL when they run on this machine (as
    deploy/local starts them): the JVM running `kafka.Kafka`, and every `postgres` process
    with the backends it has reaped (their time moves into the server's children time)."""
    busy = {BROKER: 0.0, DATABASE: 0.0}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            name, fields = _stat(entry.name)
            if name == "java":
                with open(f"/proc/{entry.name}/cmdline", "rb") as cmdline:
                    if b"kafka.Kafka" in cmdline.read():
                        busy[BROKER] += sum(int(t) for t in fields[11:13])
            elif name == "postgres" or name.startswith("postgres:"):
                busy[DATABASE] += sum(int(t) for t in fields[11:15])
        except OSError:  # the process ended meanwhile
            continue
    ticks = os.sysconf("SC_CLK_TCK")
    return {part: value / ticks for part, value in busy.items()}


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


@dataclass
class Rounds:
    """What each round measured (see the module docstring)."""

    raw: list[float] = field(default_factory=list)
    ingest: list[float] = field(default_factory=list)
    ingest_steady: list[float] = field(default_factory=list)
    backlog: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    ingest_cpu: list[dict[str, float]] = field(default_factory=list)
    backlog_cpu: list[dict[str, float]] = field(default_factory=list)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=20_000, help="items per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--poll-records", type=int, default=1000)
    args = parser.parse_args()
    bootstrap = os.environ.get("ACT_KAFKA_BOOTSTRAP")
    database_url = os.environ.get("ACT_DATABASE_URL")
    if not bootstrap or not database_url:
        print("set ACT_KAFKA_BOOTSTRAP and ACT_DATABASE_URL (source deploy/local/env.sh)")
        return 2
    if args.items < 1 or args.rounds < 1:
        print("--items and --rounds must be at least 1")
        return 2
    _quiet()
    import psycopg

    suffix = uuid.uuid4().hex[:8]
    name = f"act_bench_{suffix}"
    base, _, _ = database_url.rpartition("/")
    url = f"{base}/{name}"
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    console = Console(width=max(Console().width, 100))
    measured = Rounds()
    pipeline = None
    try:
        with console.status("starting the sampler and the decision consumer"):
            pipeline = Pipeline(bootstrap, url, suffix, args.poll_records)
            pipeline.warm_up()
        for number in range(1, args.rounds + 1):
            messages = _items(args.items, f"{suffix}-r{number}", f"r{number}-")
            with console.status(f"round {number}: raw kafka-python produce + consume"):
                measured.raw.append(raw_kafka(bootstrap, messages, args.poll_records))
            with console.status(f"round {number}: items produced -> sampler -> store"):
                rate, steady, latencies, cpu = pipeline.run(messages)
            measured.ingest.append(rate)
            measured.ingest_steady.append(steady)
            measured.latencies.extend(latencies)
            measured.ingest_cpu.append(cpu)
            with console.status(f"round {number}: a backlog of {args.items:,} items drained"):
                drained, cpu = backlog(bootstrap, url, args, f"b{number}-")
            measured.backlog.append(drained)
            measured.backlog_cpu.append(cpu)
            console.print(
                f"round {number}: raw {measured.raw[-1]:,.0f} items/s; pipeline while items "
                f"are produced {rate:,.0f} items/s (steady {steady:,.0f}), from a backlog "
                f"{drained:,.0f} items/s (steady)"
            )
    finally:
        if pipeline is not None:
            pipeline.close()
        _drop_database(database_url, name)
    _report(console, args, measured)
    return 0


def backlog(
    bootstrap: str, url: str, args: argparse.Namespace, prefix: str
) -> tuple[float, dict[str, float]]:
    """items/s and CPU per item of a pipeline started on topics that already hold
    `args.items` items (`Pipeline.drain`)."""
    from act.bus import default_topic_specs, ensure_topics
    from act.bus.clients import flush_and_check, make_producer, publish

    suffix = uuid.uuid4().hex[:8]
    bus = _bus(bootstrap, args.poll_records)
    ensure_topics(bootstrap, default_topic_specs(bus, suffix=suffix))
    producer = make_producer(bootstrap, settings=bus)
    messages = _items(args.items, f"{suffix}-backlog", prefix)
    try:
        futures = [publish(producer, f"act.items.v1.{suffix}", message) for message in messages]
        flush_and_check(futures, producer=producer, timeout_s=300)
    finally:
        producer.close()
    pipeline = Pipeline(bootstrap, url, suffix, args.poll_records)
    try:
        return pipeline.drain([message.item_id for message in messages])
    finally:
        pipeline.close()


def _report(console: Console, args: argparse.Namespace, measured: Rounds) -> None:
    median = statistics.median
    table = Table(
        title=f"stream path, {args.rounds} rounds of {args.items:,} items, {PARTITIONS} "
        "partitions (medians over rounds)"
    )
    table.add_column("path")
    table.add_column("items/s, whole run", justify="right")
    table.add_column("items/s, steady", justify="right")
    table.add_column("p50 / p99 latency", justify="right")
    table.add_row("raw kafka-python produce + consume", f"{median(measured.raw):,.0f}", "", "")
    table.add_row(
        "pipeline, items produced meanwhile",
        f"{median(measured.ingest):,.0f}",
        f"{median(measured.ingest_steady):,.0f}",
        f"{_percentile(measured.latencies, 0.5):,.2f} / "
        f"{_percentile(measured.latencies, 0.99):,.2f} s",
    )
    table.add_row("pipeline, from a backlog", "", f"{median(measured.backlog):,.0f}", "")
    console.print(table)
    parts = Table(title="CPU per item (user + system), median over rounds")
    parts.add_column("process")
    parts.add_column("items produced meanwhile", justify="right")
    parts.add_column("from a backlog", justify="right")
    for part in measured.ingest_cpu[0]:
        during = median(cpu[part] for cpu in measured.ingest_cpu)
        drained = [cpu[part] for cpu in measured.backlog_cpu if part in cpu]
        parts.add_row(
            part,
            f"{during * 1e6:,.0f} µs",
            f"{median(drained) * 1e6:,.0f} µs" if drained else "",
        )
    console.print(parts)
    for label, rates in (
        ("items produced meanwhile, first send to last stored", measured.ingest),
        ("items produced meanwhile, steady", measured.ingest_steady),
        ("from a backlog, steady", measured.backlog),
    ):
        ratios = [rate / raw for rate, raw in zip(rates, measured.raw, strict=True)]
        met = median(rates) >= TARGET_ITEMS_PER_SECOND
        console.print(
            f"{label}: pipeline / raw per round {', '.join(f'{r:.2f}' for r in ratios)} "
            f"(median {median(ratios):.2f}); target >= {TARGET_ITEMS_PER_SECOND:,.0f} items/s "
            f"(median {median(rates):,.0f}): {'met' if met else 'NOT met'}"
        )


if __name__ == "__main__":
    sys.exit(main())
