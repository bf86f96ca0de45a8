"""Benchmark of the annotator service against its backend in process, side by side in one run.

    python bench/inference_bench.py [--backends instant,embedded] [--rounds 5]

For each backend: items/s of `Backend.annotate` called in process (batches of 64, with as
many batches in flight as the client keeps), and items/s through the annotator service
(`actctl serve annotator`, a separate process as deployed) via the AnnotateBatch RPC (same
batches, same concurrency) and the AnnotateStream RPC (one item per message). Each round runs
the three paths back to back, so a round's ratios compare like with like on this noisy
machine; the table gives the best rate of each path and the median over rounds of the
per-round ratio to the in-process rate. Target: gRPC batch / in process >= 0.9 where the
model's work dominates (embedded). With the instant backend (no model: a hash per item) the
ratio is the bare cost of the protocol instead. Then unary Annotate latency (p50/p99) with
the instant backend, against the in-process call. Texts are unique per round and path, so no
cache is hit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from act.client import AnnotatorClient
from act.inference.base import Backend
from act.inference.registry import create_backend
from act.inference.types import Annotation, Item, Label, LabelSchema

BATCH = 64
TARGET_RATIO = 0.9
WORDS = (
    "the parcel arrived late again and nobody answered my emails about the refund "
    "click this link to win a free phone now limited offer you are an idiot and everyone "
    "hates you thanks for the lovely dinner last night see you next week i will hurt you "
    "if you show up great match yesterday what a goal buy cheap followers here"
).split()
SCHEMA = LabelSchema(
    schema_id="bench-moderation",
    labels=(
        Label(name="safe", description="An ordinary, harmless message."),
        Label(name="harassment", description="Insults or abuse aimed at a person."),
        Label(name="spam", description="Unsolicited advertising or scams."),
        Label(name="violence", description="Threats or descriptions of violence."),
    ),
    instructions="Label the message.",
)
# Items per round: the instant backend needs many to time anything; the embedded one is slow.
ITEMS = {"instant": 8192, "embedded": 1024}


def make_items(count: int, tag: str) -> list[Item]:
    items = []
    for index in range(count):
        words = [WORDS[(index * 7 + k * 13) % len(WORDS)] for k in range(8 + index % 12)]
        items.append(Item(item_id=f"{tag}-{index}", text=f"{tag} {index}: " + " ".join(words)))
    return items


def chunks(items: Sequence[Item], size: int) -> list[Sequence[Item]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


async def run_bounded(calls: list[Callable[[], Awaitable[list]]], concurrency: int) -> int:
    """Run the calls with at most `concurrency` in flight; the number of ok outcomes."""
    semaphore = asyncio.Semaphore(concurrency)

    async def one(call: Callable[[], Awaitable[list]]) -> int:
        async with semaphore:
            return sum(isinstance(outcome, Annotation) for outcome in await call())

    return sum(await asyncio.gather(*(one(call) for call in calls)))


async def in_process(backend: Backend, items: list[Item], concurrency: int) -> float:
    calls = [
        (lambda chunk=chunk: backend.annotate(chunk, SCHEMA, "direct"))
        for chunk in chunks(items, BATCH)
    ]
    start = time.perf_counter()
    ok = await run_bounded(calls, concurrency)
    elapsed = time.perf_counter() - start
    assert ok == len(items), f"in process: {ok} of {len(items)} annotated"
    return len(items) / elapsed


async def through_batch_rpc(client: AnnotatorClient, items: list[Item], concurrency: int) -> float:
    calls = [
        (lambda chunk=chunk: client.annotate(chunk, SCHEMA, "direct", timeout=300))
        for chunk in chunks(items, BATCH)
    ]
    start = time.perf_counter()
    ok = await run_bounded(calls, concurrency)
    elapsed = time.perf_counter() - start
    assert ok == len(items), f"gRPC batch: {ok} of {len(items)} annotated"
    return len(items) / elapsed


async def through_stream_rpc(client: AnnotatorClient, items: list[Item]) -> float:
    start = time.perf_counter()
    ok = 0
    async for outcome in client.stream_annotate(items, SCHEMA, "direct", timeout=300):
        ok += isinstance(outcome, Annotation)
    elapsed = time.perf_counter() - start
    assert ok == len(items), f"gRPC stream: {ok} of {len(items)} annotated"
    return len(items) / elapsed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServiceProcess:
    """`actctl serve annotator --backend NAME` on free ports, logs to a temporary file."""

    def __init__(self, backend: str, concurrency: int) -> None:
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix=f"act-bench-{backend}-", suffix=".log")
        command = [
            sys.executable,
            "-m",
            "act.cli",
            "serve",
            "annotator",
            "--backend",
            backend,
            "--port",
            str(self.port),
            "--metrics-port",
            str(free_port()),
            "--max-concurrency",
            str(concurrency),
            "--max-batch",
            str(BATCH),
        ]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=self.log, env=dict(os.environ)
        )

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()

    def tail(self) -> str:
        return Path(self.log.name).read_text()[-2000:]


PATHS = ("in process", "gRPC batch", "gRPC stream")


async def bench_backend(
    name: str, rounds: int, concurrency: int, items_per_round: int
) -> dict[str, list[float]]:
    """Items/s of every path, one value per round (rounds interleave the paths)."""
    backend = create_backend(name)
    service = ServiceProcess(name, concurrency)
    try:
        async with AnnotatorClient(service.target, timeout=300) as client:
            try:
                await client.wait_ready(timeout=120)
            except TimeoutError:
                raise RuntimeError(f"the {name} service did not start:\n{service.tail()}") from None
            # Warm up: load models and connections on both paths.
            warm = make_items(2 * BATCH, f"warm-{name}")
            await in_process(backend, warm, concurrency)
            await through_batch_rpc(client, warm, concurrency)
            await through_stream_rpc(client, warm)
            rates: dict[str, list[float]] = {path: [] for path in PATHS}
            for round_index in range(rounds):
                tag = f"{name}-r{round_index}"
                fresh = {
                    path: make_items(items_per_round, f"{tag}-{k}") for k, path in enumerate(PATHS)
                }
                rates["in process"].append(
                    await in_process(backend, fresh["in process"], concurrency)
                )
                rates["gRPC batch"].append(
                    await through_batch_rpc(client, fresh["gRPC batch"], concurrency)
                )
                rates["gRPC stream"].append(await through_stream_rpc(client, fresh["gRPC stream"]))
            return rates
    finally:
        service.close()
        await backend.aclose()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def unary_latency(calls: int) -> dict[str, list[float]]:
    backend = create_backend("instant")
    service = ServiceProcess("instant", 4)
    latencies: dict[str, list[float]] = {"in process": [], "gRPC unary": []}
    try:
        async with AnnotatorClient(service.target, timeout=30) as client:
            await client.wait_ready(timeout=60)
            items = make_items(calls + 50, "unary")
            for item in items[:50]:  # warm-up
                await client.annotate_one(item, SCHEMA)
            for item in items[50:]:
                start = time.perf_counter()
                await backend.annotate([item], SCHEMA, "direct")
                latencies["in process"].append(time.perf_counter() - start)
                start = time.perf_counter()
                await client.annotate_one(item, SCHEMA)
                latencies["gRPC unary"].append(time.perf_counter() - start)
    finally:
        service.close()
        await backend.aclose()
    return latencies


def embedded_available() -> bool:
    try:
        create_backend("embedded")
    except Exception:
        return False
    return True


async def main_async(args: argparse.Namespace, console: Console) -> None:
    names = [name.strip() for name in args.backends.split(",") if name.strip()]
    if "embedded" in names and not embedded_available():
        console.print("[yellow]embedded backend unavailable here; skipped[/yellow]")
        names.remove("embedded")

    table = Table(
        title=f"Annotator throughput, batches of {BATCH}, {args.concurrency} in flight "
        f"({args.rounds} interleaved rounds)"
    )
    for column in ("backend", "path", "best items/s", "best / best", "median paired ratio"):
        table.add_column(column, justify="left" if column == "path" else "right")
    verdicts = []
    for name in names:
        items = args.items or ITEMS.get(name, 1024)
        console.print(f"[dim]{name}: {items} items per round...[/dim]")
        rates = await bench_backend(name, args.rounds, args.concurrency, items)
        base = rates["in process"]
        for path in PATHS:
            paired = statistics.median(
                rate / reference for rate, reference in zip(rates[path], base, strict=True)
            )
            table.add_row(
                name,
                path,
                f"{max(rates[path]):,.0f}",
                f"{max(rates[path]) / max(base):.3f}",
                f"{paired:.3f}",
            )
            if path == "gRPC batch" and name != "instant":
                verdicts.append((name, paired))
    console.print(table)
    for name, ratio in verdicts:
        ok = ratio >= TARGET_RATIO
        console.print(
            f"{name}: gRPC batch / in process = {ratio:.3f} (median of paired rounds), target "
            f">= {TARGET_RATIO}: [{'green' if ok else 'red'}]{'met' if ok else 'NOT met'}[/]"
        )
    console.print(
        "[dim]instant: no model work, so its ratio is the bare cost of the protocol "
        "(proto conversion, validation, transport) relative to hashing an item.[/dim]"
    )

    latencies = await unary_latency(args.unary_calls)
    table = Table(title=f"Unary Annotate latency, instant backend ({args.unary_calls} calls)")
    for column in ("path", "p50 ms", "p99 ms", "mean ms"):
        table.add_column(column, justify="right" if column != "path" else "left")
    for path, values in latencies.items():
        table.add_row(
            path,
            f"{percentile(values, 0.5) * 1000:.3f}",
            f"{percentile(values, 0.99) * 1000:.3f}",
            f"{statistics.fmean(values) * 1000:.3f}",
        )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="instant,embedded")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=4, help="batches in flight")
    parser.add_argument("--items", type=int, default=0, help="items per round (0: per backend)")
    parser.add_argument("--unary-calls", type=int, default=2000)
    args = parser.parse_args()
    console = Console()
    asyncio.run(main_async(args, console))


if __name__ == "__main__":
    main()
