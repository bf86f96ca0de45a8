"""The review store's counts on a large PostgreSQL store, beside a count over every record.

    source deploy/local/env.sh   # ACT_DATABASE_URL (deploy/local/stack.sh up)
    python bench/review_stats_bench.py [--records 1000000] [--reviews 20000] [--rounds 5]

Fills a fresh database through the store itself (`upsert_decisions` in batches, windows of
`--window-items` decisions, one in ten selected; then `--reviews` of the selected items claimed
and labelled by `submit`), then times, alternating round by round:

- `stats(recent_windows=0)`: what the reviewer UI, `GET /api/stats` and gRPC `Stats` read;
- `stats(recent_windows=50)`: the counts with the 50 latest windows' budget use;
- a scrape: the review server's Prometheus registry rendered (`generate_latest`), which reads
  `stats(recent_windows=50)` and the last hour's first reviews;
- the reference: `SELECT state, count(*) FROM records GROUP BY state`, the least a count over
  every record costs (how the store counted before `window_counts`).

Prints the medians and, per round, the reference's time over each of the others. The database
is dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import psycopg
import sqlalchemy as sa
from prometheus_client import generate_latest
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

sys.path.insert(0, os.path.dirname(__file__))
from stream_bench import _drop_database

from act.review import ReviewStore
from act.review.metrics import MAX_WINDOWS, review_registry
from act.review.tables import records
from act.v1 import bus_pb2, types_pb2

SCHEMA_ID = "bench-moderation"
LABELS = ("ok", "spam", "abuse")
BATCH = 5000


def _decision(
    template: bus_pb2.Decision, i: int, window_items: int, start: datetime
) -> bus_pb2.Decision:
    decision = bus_pb2.Decision()
    decision.CopyFrom(template)
    selected = i % 10 == 0
    decision.item_id = decision.item.item_id = f"bench-{i:09d}"
    decision.delta = selected
    decision.pi = 0.2 if selected else 0.05
    decision.eps = 0.9 if selected else 0.1
    decision.window_id = f"w{i // window_items}"
    decision.content_ref = f"act.items.v1/0/{i}"
    decision.decided_time.FromDatetime(start + timedelta(milliseconds=i))
    return decision


def _template() -> bus_pb2.Decision:
    decision = bus_pb2.Decision(
        sampler="stream",
        transform_id="pacer",
        budget_id="bench-budget",
        seed_id="bench",
    )
    annotation = decision.annotation
    annotation.label = "spam"
    annotation.schema_id = SCHEMA_ID
    annotation.schema_version = 1
    annotation.model.backend = "instant"
    annotation.model.model = "bench"
    annotation.prompt.strategy_id = "annotate.direct"
    annotation.prompt.version = "1"
    annotation.distribution.add(label="spam", probability=0.7)
    annotation.distribution.add(label="ok", probability=0.3)
    decision.criticism.label = "spam"
    decision.criticism.model.model = "bench-critic"
    decision.item.text = "a bench item of about the length of a short post " * 3
    decision.item.schema_id = SCHEMA_ID
    return decision


def _fill(store: ReviewStore, n: int, window_items: int, reviews: int, console: Console) -> None:
    schema = types_pb2.LabelSchema(schema_id=SCHEMA_ID, version=1)
    for name in LABELS:
        schema.labels.add(name=name)
    store.register_schema(schema)
    template = _template()
    start = datetime.now(UTC) - timedelta(milliseconds=n + 3_600_000)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("storing decisions", total=n)
        for first in range(0, n, BATCH):
            batch = [
                _decision(template, i, window_items, start)
                for i in range(first, min(n, first + BATCH))
            ]
            result = store.upsert_decisions(batch)
            if result.invalid or result.conflicts:
                raise SystemExit(f"the bench's decisions were refused: {result.rejected[:3]}")
            progress.advance(task, len(batch))
        task = progress.add_task("reviewing", total=reviews)
        done = 0
        while done < reviews:
            claimed = store.claim("bench-reviewer", max_items=min(100, reviews - done))
            if not claimed:
                raise SystemExit(f"only {done} items could be claimed for review")
            for k, item in enumerate(claimed):
                store.submit(item.item_id, item.claim_id, "bench-reviewer", LABELS[(done + k) % 3])
            done += len(claimed)
            progress.advance(task, len(claimed))
    with store.engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")


def _seconds(step: Callable[[], object]) -> float:
    started = time.perf_counter()
    step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--window-items", type=int, default=1000)
    parser.add_argument("--reviews", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--database-url", default=os.environ.get("ACT_DATABASE_URL"))
    args = parser.parse_args()
    if not args.database_url or not args.database_url.startswith("postgresql"):
        parser.error(
            "a PostgreSQL URL is needed: --database-url or ACT_DATABASE_URL "
            "(source deploy/local/env.sh)"
        )
    if args.records < 10 or args.window_items < 1 or args.rounds < 1:
        parser.error("--records must be >= 10, --window-items and --rounds >= 1")
    if not 0 <= args.reviews <= args.records // 10:
        parser.error(
            f"--reviews must be from 0 to the tenth of --records that is selected "
            f"({args.records // 10})"
        )
    console = Console()
    admin_url = args.database_url
    name = f"act_bench_stats_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with ReviewStore(admin_url.rsplit("/", 1)[0] + "/" + name) as store:
            fill = _seconds(
                lambda: _fill(store, args.records, args.window_items, args.reviews, console)
            )
            stats = store.stats()
            console.print(
                f"stored {stats.decisions:,} decisions in {len(stats.windows):,} windows "
                f"({stats.selected:,} selected, {stats.reviewed:,} reviewed) in {fill:.0f} s"
            )
            registry = review_registry(store)

            def reference() -> object:
                with store.engine.connect() as conn:
                    return conn.execute(
                        sa.select(records.c.state, sa.func.count()).group_by(records.c.state)
                    ).all()

            steps: dict[str, Callable[[], object]] = {
                "stats, no windows": lambda: store.stats(recent_windows=0),
                f"stats, {MAX_WINDOWS} windows": lambda: store.stats(recent_windows=MAX_WINDOWS),
                "scrape (/metrics)": lambda: generate_latest(registry),
                "count over every record": reference,
            }
            times: dict[str, list[float]] = {label: [] for label in steps}
            for _ in range(args.rounds):
                for label, step in steps.items():
                    times[label].append(_seconds(step))
    finally:
        _drop_database(admin_url, name)
    table = Table(title=f"{args.records:,} records, {args.reviews:,} reviews, {args.rounds} rounds")
    table.add_column("read")
    table.add_column("median ms", justify="right")
    table.add_column("count over every record / this, per round", justify="right")
    counted = times["count over every record"]
    for label, values in times.items():
        ratios = ", ".join(f"{c / v:.0f}" for c, v in zip(counted, values, strict=True))
        table.add_row(
            label,
            f"{statistics.median(values) * 1000:.1f}",
            ratios if values is not counted else "",
        )
    console.print(table)


if __name__ == "__main__":
    main()
