"""Benchmark of act.core, measured side by side in one run (these machines are noisy).

    python bench/core_bench.py [--items 1000000] [--repeats 3]

Prints the time of every budget transform and both samplers on N items (target: each under
2 s on the 2-core development machine), the stream pacer's per-item cost, and the ratio of
the ACT loss to plain cross-entropy on the same batches, forward and backward (target < 1.2),
timed interleaved so both see the same machine state.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch.nn import functional

from act.core.loss import act_cross_entropy
from act.core.sampling import PacerConfig, StreamPacer, draw, keyed_uniform
from act.core.transforms import METHODS, review_probabilities

TARGET_SECONDS = 2.0
TARGET_LOSS_RATIO = 1.2
CALLS_PER_SAMPLE = 20
# (batch, classes): a small image batch, a large classification batch, a wide-label batch.
LOSS_SHAPES = ((256, 10), (8192, 100), (65536, 10))


def best_of(repeats: int, run: Callable[[], object]) -> float:
    """Fastest of `repeats` runs, in seconds (the least disturbed by other work)."""
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        timings.append(time.perf_counter() - start)
    return min(timings)


def loss_ratio(batch: int, classes: int, repeats: int) -> tuple[float, float, float]:
    """Best seconds of plain CE and ACT CE (forward + backward), alternated, and their ratio."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, classes, generator=generator, requires_grad=True)
    y_machine = torch.randint(0, classes, (batch,), generator=generator)
    y_human = torch.randint(0, classes, (batch,), generator=generator)
    # A realistic batch: 15% review budget under the default transform, keyed draws.
    eps = np.random.default_rng(1).beta(0.5, 3.0, size=batch)
    pi_array = review_probabilities(eps, 0.15 * batch, "thre")
    delta = torch.as_tensor(draw(pi_array, range(batch), "bench", "systematic"))
    pi = torch.as_tensor(pi_array)

    def plain() -> None:
        functional.cross_entropy(logits, y_machine).backward()

    def act() -> None:
        act_cross_entropy(logits, y_machine, y_human, delta, pi).backward()

    def many(step: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            for _ in range(CALLS_PER_SAMPLE):
                step()

        return run

    for warm in (plain, act):
        warm()
    plain_times, act_times = [], []
    for _ in range(repeats):
        plain_times.append(best_of(1, many(plain)) / CALLS_PER_SAMPLE)
        act_times.append(best_of(1, many(act)) / CALLS_PER_SAMPLE)
    # The fastest sample is the least disturbed by the machine's other work.
    plain_best, act_best = min(plain_times), min(act_times)
    return plain_best, act_best, act_best / plain_best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    console = Console()
    rng = np.random.default_rng(0)
    eps = rng.beta(0.5, 3.0, size=args.items)
    budget = 0.1 * args.items
    ids = [f"item-{i:09d}" for i in range(args.items)]
    pi = review_probabilities(eps, budget, "thre")

    table = Table(title=f"act.core on {args.items:,} items (best of {args.repeats})")
    table.add_column("operation")
    table.add_column("seconds", justify="right")
    table.add_column(f"under {TARGET_SECONDS:g} s", justify="center")
    rows: list[tuple[str, float]] = []
    with console.status("timing transforms and samplers"):
        for method in METHODS:
            seconds = best_of(args.repeats, lambda m=method: review_probabilities(eps, budget, m))
            rows.append((f"review_probabilities {method}", seconds))
        rows.append(("keyed_uniform", best_of(args.repeats, lambda: keyed_uniform(ids, "s"))))
        for method in ("bernoulli", "systematic"):
            seconds = best_of(args.repeats, lambda m=method: draw(pi, ids, "s", m))
            rows.append((f"draw {method}", seconds))
    for name, seconds in rows:
        table.add_row(name, f"{seconds:.3f}", "yes" if seconds < TARGET_SECONDS else "NO")
    console.print(table)

    pacer_items = min(args.items, 50_000)
    pacer = StreamPacer(PacerConfig(budget_per_window=100, window_items=1000))
    start = time.perf_counter()
    for item_id, value in zip(ids[:pacer_items], eps[:pacer_items], strict=True):
        pacer.decide(item_id, float(value))
    per_item = (time.perf_counter() - start) / pacer_items
    console.print(
        f"StreamPacer.decide: {per_item * 1e6:.1f} µs per item ({1 / per_item:,.0f} items/s)"
    )

    losses = Table(title="ACT vs plain cross-entropy, forward + backward (best of samples)")
    for column in ("batch x classes", "cross-entropy ms", "ACT ms", "ratio"):
        losses.add_column(column, justify="right")
    losses.add_column(f"under {TARGET_LOSS_RATIO}", justify="center")
    with console.status("timing losses"):
        for batch, classes in LOSS_SHAPES:
            plain, act, ratio = loss_ratio(batch, classes, max(args.repeats, 15))
            losses.add_row(
                f"{batch} x {classes}",
                f"{plain * 1e3:.3f}",
                f"{act * 1e3:.3f}",
                f"{ratio:.2f}",
                "yes" if ratio < TARGET_LOSS_RATIO else "NO",
            )
    console.print(losses)


if __name__ == "__main__":
    main()
