"""Benchmark of act.trainer, measured side by side in one run (these machines are noisy).

    python bench/train_bench.py [--items 20000] [--repeats 5] [--no-ray]

1. Seconds per epoch of the ACT loss (default: clipped; and unbiased) against plain
   cross-entropy on the machine labels, same model, data and batches, runs interleaved so that
   all see the same machine state; prints the ratio (target < 1.15) for a small and a wider
   MLP (the ACT loss adds a fixed cost per batch: its fused autograd function's overhead).
2. Ray Train with 2 CPU workers against in-process training on the same table: seconds per
   epoch (best epoch) and wall time of the whole run including Ray's start-up.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from act.trainer import (
    TrainConfig,
    TrainingData,
    local_ray_init,
    train_in_process,
    train_with_ray,
    write_training_table,
)

TARGET_LOSS_RATIO = 1.15


def synthetic(n_items: int, dim: int = 64, n_classes: int = 10, seed: int = 0) -> TrainingData:
    """Gaussian blobs with a 20% annotator error and a 25% review budget at pi = 0.5 / 0.1."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_classes, dim)) * 1.5
    labels = rng.integers(0, n_classes, n_items)
    wrong = rng.random(n_items) < 0.2
    delta = rng.random(n_items) < np.where(wrong, 0.5, 0.1)
    return TrainingData(
        features=(centers[labels] + rng.normal(size=(n_items, dim))).astype(np.float32),
        machine_labels=np.where(wrong, (labels + 1) % n_classes, labels),
        human_labels=labels,
        delta=delta,
        pi=np.where(wrong, 0.5, 0.1),
        n_classes=n_classes,
    )


def best_epoch(config: TrainConfig, data: TrainingData) -> float:
    """The fastest epoch of one run (the least disturbed by other work), in seconds."""
    return min(row["seconds"] for row in train_in_process(config, data).history)


def loss_overhead(data: TrainingData, hidden_dim: int, repeats: int, console: Console) -> None:
    base = TrainConfig(model="mlp", hidden_dim=hidden_dim, epochs=2, batch_size=256, device="cpu")
    variants = {
        "cross-entropy (machine labels)": base.model_copy(update={"loss": "machine"}),
        "ACT, clipped (default)": base.model_copy(update={"loss": "act"}),
        "ACT, unbiased": base.model_copy(update={"loss": "act", "max_weight": None}),
    }
    timings: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, config in variants.items():  # interleaved: each repeat runs all three
            timings[name].append(best_epoch(config, data))
    table = Table(
        title=f"seconds per epoch, mlp (hidden {hidden_dim}), {len(data.delta):,} items, batch 256"
    )
    for column in ("loss", "best", "median", "ratio to CE (best)"):
        table.add_column(column, justify="right" if column != "loss" else "left")
    reference = min(timings["cross-entropy (machine labels)"])
    for name, values in timings.items():
        ratio = min(values) / reference
        table.add_row(
            name, f"{min(values):.4f}", f"{statistics.median(values):.4f}", f"{ratio:.3f}"
        )
    console.print(table)
    worst = max(min(values) / reference for values in timings.values())
    verdict = "meets" if worst < TARGET_LOSS_RATIO else "MISSES"
    console.print(f"largest ACT/CE ratio {worst:.3f}: {verdict} the target < {TARGET_LOSS_RATIO}")


def ray_against_in_process(data: TrainingData, epochs: int, console: Console) -> None:
    config = TrainConfig(loss="act", model="mlp", epochs=epochs, batch_size=256, device="cpu")
    with tempfile.TemporaryDirectory() as directory:
        table = write_training_table(data, Path(directory) / "train.parquet")
        started = time.perf_counter()
        here = train_in_process(config, data)
        here_wall = time.perf_counter() - started
        started = time.perf_counter()
        on_ray = train_with_ray(
            config,
            table,
            num_workers=2,
            storage_path=Path(directory) / "ray",
            ray_init=local_ray_init(num_workers=2),
        )
        ray_wall = time.perf_counter() - started
    here_epoch = min(row["seconds"] for row in here.history)
    ray_epoch = min(row["seconds"] for row in on_ray.history)
    table = Table(title=f"in-process vs Ray Train (2 CPU workers), {epochs} epochs")
    for column in ("run", "best epoch s", "wall s (incl. start-up)"):
        table.add_column(column)
    table.add_row("in-process", f"{here_epoch:.3f}", f"{here_wall:.1f}")
    table.add_row("Ray Train, 2 workers", f"{ray_epoch:.3f}", f"{ray_wall:.1f}")
    console.print(table)
    console.print(
        f"Ray/in-process: {ray_epoch / here_epoch:.2f}× per epoch, "
        f"{ray_wall / here_wall:.1f}× wall time"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--hidden-dims",
        type=int,
        nargs="+",
        default=[128, 1024],
        help="MLP widths: the loss's fixed cost per batch weighs less as the model grows.",
    )
    parser.add_argument("--ray-epochs", type=int, default=3)
    parser.add_argument("--no-ray", action="store_true", help="Skip the Ray Train comparison.")
    arguments = parser.parse_args()
    console = Console()
    data = synthetic(arguments.items)
    for hidden_dim in arguments.hidden_dims:
        loss_overhead(data, hidden_dim, arguments.repeats, console)
    if not arguments.no_ray:
        ray_against_in_process(data, arguments.ray_epochs, console)


if __name__ == "__main__":
    main()
