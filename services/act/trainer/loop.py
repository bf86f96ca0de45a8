"""The training loop: one implementation, run in-process here and inside Ray Train workers.

The pieces the Ray workers reuse are the loss of a batch (`batch_loss`), an epoch over any
iterable of batches (`train_epoch`), evaluation (`evaluate`), power tuning of lam
(`estimate_power_lambda`) and the human-weight summary (`human_weight_summary`); the loss
formulas themselves are `act.core.loss`'s.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from act.core.loss import (
    act_cross_entropy,
    act_targets,
    act_weights,
    power_tuning_lambda,
    weighted_act_cross_entropy,
)
from act.trainer.config import TrainConfig
from act.trainer.data import EvalData, TrainingData, check_eval, check_features, rows_to_drop
from act.trainer.models import MODELS, build_model

logger = logging.getLogger(__name__)

EpochMetrics = dict[str, Any]


@dataclass(frozen=True)
class Batch:
    """A mini-batch as tensors: features, machine and human labels (-1: none), delta, pi."""

    features: torch.Tensor
    machine: torch.Tensor
    human: torch.Tensor
    delta: torch.Tensor
    pi: torch.Tensor
    # The ACT loss's targets, labels (n, 2) and weights (n, 2) (`act.core.loss.act_targets`),
    # when computed for the epoch's lam over the whole data set up front; None: the loss
    # computes and checks them from delta and pi for every batch.
    act_labels: torch.Tensor | None = None
    act_weights: torch.Tensor | None = None

    def to(self, device: torch.device) -> Batch:
        return self.map(lambda tensor: tensor.to(device))

    def rows(self, indices: torch.Tensor) -> Batch:
        return self.map(lambda tensor: tensor[indices])

    def map(self, function: Callable[[torch.Tensor], torch.Tensor]) -> Batch:
        tensors = (getattr(self, column.name) for column in fields(self))
        return Batch(*(None if tensor is None else function(tensor) for tensor in tensors))


@dataclass(frozen=True)
class WeightSummary:
    """What the human weights delta/pi of a data set are, and what clipping does to them."""

    max_human_weight: float | None  # largest delta/pi before clipping; None: nothing reviewed
    clipped_items: int  # reviewed items whose weight was lowered to max_weight
    unreviewable_items: int  # items with pi = 0: no review could correct their label

    @property
    def clipped(self) -> bool:
        return self.clipped_items > 0


@dataclass
class TrainResult:
    """A finished run: the model (on the CPU), per-epoch metrics and how the loss was weighted."""

    config: TrainConfig
    model: nn.Module
    history: list[EpochMetrics]
    lam: float | None  # the lam of the last epoch (the ACT loss only)
    weights_clipped: bool  # the human weight delta/pi was clipped at max_weight for some item
    clipped_items: int
    max_human_weight: float | None
    unreviewable_items: int  # pi = 0: never reviewable (said in warnings for the ACT loss)
    dropped_unlabelled: int  # reviewed rows without a human label dropped on request
    n_train: int
    item_shape: tuple[int, ...]  # one item's features as the model reads them
    device: str
    seconds: float
    warnings: list[str] = field(default_factory=list)

    @property
    def final_accuracy(self) -> float | None:
        return self.history[-1]["eval_accuracy"] if self.history else None

    @property
    def final_eval_loss(self) -> float | None:
        return self.history[-1]["eval_loss"] if self.history else None

    @property
    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def predict_proba(self, features: Any, batch_size: int = 1024) -> np.ndarray:
        """Class probabilities (N, n_classes) for features shaped like the training ones."""
        inputs = as_model_input(self.config, check_features(features))
        return predict_proba(self.model, inputs, batch_size, torch.device("cpu"))


# ----------------------------------------------------------------------------- pieces


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but torch sees no CUDA device")
    return torch.device(requested)


def item_shape(config: TrainConfig, features_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of one item as the model sees it: config.input_shape, or the data's own."""
    own = tuple(int(size) for size in features_shape[1:])
    if config.input_shape is None:
        return own
    if math.prod(config.input_shape) != math.prod(own):
        raise ValueError(
            f"input_shape {config.input_shape} holds {math.prod(config.input_shape)} values "
            f"but each item has {math.prod(own)} features (shape {own})"
        )
    return config.input_shape


def check_input_kind(model: str, token_ids: bool) -> None:
    """Text models read integer token ids, the others float features."""
    kind = MODELS[model].input_kind
    if kind == "token_ids" and not token_ids:
        raise ValueError(
            f"model {model!r} reads token ids (integers; see "
            "act.trainer.models.tokenize_texts), got float features"
        )
    if kind == "float" and token_ids:
        raise ValueError(
            f"model {model!r} reads float features, got integers (token ids are for "
            "text models such as roberta-base)"
        )


def as_model_input(config: TrainConfig, features: np.ndarray) -> torch.Tensor:
    """Features reshaped to (N, *item_shape), checked against what the model reads."""
    check_input_kind(config.model, np.issubdtype(features.dtype, np.integer))
    shape = item_shape(config, features.shape)
    return as_tensor(features).reshape(-1, *shape)


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing the array's memory, or a copy where numpy's is read-only (Arrow's)."""
    if not array.flags.writeable or not array.flags.c_contiguous:
        array = np.array(array)
    return torch.from_numpy(array)


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=0.9, weight_decay=config.weight_decay
        )
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def human_weight_summary(
    delta: np.ndarray, pi: np.ndarray, max_weight: float | None
) -> WeightSummary:
    """Largest human weight delta/pi, how many reviewed items clipping at max_weight lowers, and
    how many items had no chance of review."""
    reviewed = np.asarray(delta, dtype=bool)
    probabilities = np.asarray(pi, dtype=np.float64)
    unreviewable = int((probabilities == 0).sum())
    if not reviewed.any():
        return WeightSummary(None, 0, unreviewable)
    weights = 1.0 / probabilities[reviewed]
    clipped = 0 if max_weight is None else int((weights > max_weight).sum())
    return WeightSummary(float(weights.max()), clipped, unreviewable)


def batch_loss(
    config: TrainConfig, logits: torch.Tensor, batch: Batch, lam: float | None
) -> torch.Tensor:
    """The configured loss of one batch (a mean over its items)."""
    if config.loss == "human":
        return functional.cross_entropy(logits, batch.human)
    if config.loss == "machine":
        return functional.cross_entropy(logits, batch.machine)
    if config.loss == "act-data":
        return functional.cross_entropy(
            logits, torch.where(batch.delta, batch.human, batch.machine)
        )
    if batch.act_labels is not None and batch.act_weights is not None:
        return weighted_act_cross_entropy(logits, batch.act_labels, batch.act_weights)
    return act_cross_entropy(
        logits,
        batch.machine,
        batch.human,
        batch.delta,
        batch.pi,
        1.0 if lam is None else lam,
        max_weight=config.max_weight,
    )


def with_act_targets(config: TrainConfig, everything: Batch, lam: float) -> Batch:
    """`everything` with the ACT loss's targets for one epoch's lam, checked once."""
    w_machine, w_human = act_weights(
        everything.delta, everything.pi, lam, max_weight=config.max_weight, dtype=torch.float32
    )
    labels, weights = act_targets(everything.machine, everything.human, w_machine, w_human)
    return replace(everything, act_labels=labels, act_weights=weights)


def train_epoch(
    config: TrainConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Batch],
    lam: float | None,
    device: torch.device,
) -> tuple[float, int]:
    """One pass of SGD over `batches`: the item-weighted mean training loss and the item count."""
    model.train()
    total, count = 0.0, 0
    for batch in batches:
        on_device = batch.to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = batch_loss(config, model(on_device.features), on_device, lam)
        loss.backward()
        optimizer.step()
        size = on_device.machine.shape[0]
        total += float(loss.detach()) * size
        count += size
    return total / max(count, 1), count


def _chunks(tensor: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, tensor.shape[0], batch_size):
        yield tensor[start : start + batch_size]


@torch.no_grad()
def logits_of(
    model: nn.Module, features: torch.Tensor, batch_size: int, device: torch.device
) -> torch.Tensor:
    """Logits of every item, in evaluation mode, gathered on the CPU."""
    model.eval()
    parts = [model(chunk.to(device)).float().cpu() for chunk in _chunks(features, batch_size)]
    return torch.cat(parts)


def predict_proba(
    model: nn.Module, features: torch.Tensor, batch_size: int, device: torch.device
) -> np.ndarray:
    return torch.softmax(logits_of(model, features, batch_size, device), dim=1).numpy()


def evaluate(
    model: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    device: torch.device,
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) on held-out items."""
    logits = logits_of(model, features, batch_size, device)
    accuracy = float((logits.argmax(dim=1) == labels).double().mean())
    return accuracy, float(functional.cross_entropy(logits, labels))


def estimate_power_lambda(
    model: nn.Module, batches: Iterable[Batch], device: torch.device
) -> float:
    """PPI++ lam for the current model (`act.core.loss.power_tuning_lambda`).

    The per-item statistic is the gradient of the cross-entropy with respect to the logits,
    softmax(z) - onehot(y): the part of the loss gradient that depends on the label, cheap to
    get for every item in one forward pass (the full parameter gradient is per-item backprop).
    """
    model.eval()
    machine, human, deltas, pis = [], [], [], []
    with torch.no_grad():
        for batch in batches:
            probs = torch.softmax(model(batch.features.to(device)).double(), dim=1).cpu()
            n_classes = probs.shape[1]
            human_labels = torch.where(batch.delta, batch.human, batch.machine)
            machine.append(probs - functional.one_hot(batch.machine, n_classes))
            human.append(probs - functional.one_hot(human_labels, n_classes))
            deltas.append(batch.delta)
            pis.append(batch.pi)
    return power_tuning_lambda(
        torch.cat(machine).numpy(),
        torch.cat(human).numpy(),
        torch.cat(deltas).numpy(),
        torch.cat(pis).numpy(),
    )


def check_power_tuning(pi: np.ndarray, delta: np.ndarray) -> None:
    """Power tuning weighs unreviewed items by (1 - pi)/pi: it needs every pi > 0."""
    if (pi == 0).any():
        raise ValueError(
            f"lam='power' needs pi > 0 for every item, but {int((pi == 0).sum())} have pi = 0 "
            "(top-B review gives pi in {0, 1}); use a fixed lam (1 is the paper's loss) or a "
            "transform with pi_min > 0"
        )
    if not delta.any():
        raise ValueError("lam='power' needs at least one reviewed item (delta = 1)")


@contextlib.contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seeded, deterministic kernels for the duration (restores the previous setting).

    warn_only: CUDA kernels without a deterministic version warn instead of failing; on the
    CPU every kernel used here is deterministic, so runs are bit-repeatable there.
    """
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)


def write_metrics(history: list[EpochMetrics], path: Path) -> None:
    """The per-epoch metrics as JSON (a list of objects) or CSV (one row per epoch)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        names = list(dict.fromkeys(name for row in history for name in row))
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=names)
            writer.writeheader()
            writer.writerows(history)
    else:
        path.write_text(json.dumps(history, indent=2) + "\n")


def bias_notes(config: TrainConfig, summary: WeightSummary) -> list[str]:
    """What makes this ACT loss biased for the loss on human labels, said in words (DESIGN.md
    §2.1: clipping, and items that could never be reviewed), each also logged."""
    if config.loss != "act":
        return []
    notes = []
    if summary.clipped:
        notes.append(
            f"the human weight delta/pi was clipped at max_weight={config.max_weight} for "
            f"{summary.clipped_items} reviewed item(s) (largest weight "
            f"{summary.max_human_weight:.3g}): lower variance, but no longer unbiased "
            "(max_weight=None for the unbiased loss)"
        )
    if summary.unreviewable_items:
        notes.append(
            f"{summary.unreviewable_items} item(s) have pi = 0 and could never be reviewed: "
            "their machine labels are trusted as they are (top-B review), so the loss is "
            "unbiased only for the other items"
        )
    for note in notes:
        logger.warning(note)
    return notes


class EpochProgress:
    """A rich progress bar over epochs (nothing shown when disabled)."""

    def __init__(self, enabled: bool, epochs: int, title: str) -> None:
        self._progress = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[metrics]}"),
            )
            self._task = self._progress.add_task(title, total=epochs, metrics="")
            self._progress.start()

    def update(self, metrics: EpochMetrics) -> None:
        if self._progress is not None:
            shown = f"loss {metrics['train_loss']:.4f}"
            if metrics.get("eval_accuracy") is not None:
                shown += f"  eval acc {metrics['eval_accuracy']:.4f}"
            self._progress.update(self._task, advance=1, metrics=shown)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


# ----------------------------------------------------------------------------- in-process


def _batches(
    everything: Batch, batch_size: int, shuffle: torch.Generator | None = None
) -> Iterator[Batch]:
    """Mini-batches in a seeded random order (in row order without a generator)."""
    n = everything.machine.shape[0]
    order = torch.arange(n) if shuffle is None else torch.randperm(n, generator=shuffle)
    for indices in _chunks(order, batch_size):
        yield everything.rows(indices)


def train_in_process(
    config: TrainConfig,
    data: TrainingData,
    eval_data: EvalData | None = None,
    *,
    progress: bool = False,
) -> TrainResult:
    """Trains config.model on `data` with config.loss and returns the model and its metrics.

    Raises ValueError, before any training, when the data cannot support the loss (see
    `check_for_training`) or the features do not fit the model.
    """
    started = time.perf_counter()
    drop = rows_to_drop(config, data)
    dropped = int(drop.sum())
    if dropped:
        data = data.rows(~drop)
    if eval_data is not None:
        check_eval(eval_data, data.n_classes, data.features.shape[1:])
    notes = []
    if dropped:
        notes.append(f"dropped {dropped} reviewed item(s) without a human label")
    features = as_model_input(config, data.features)
    eval_tensors = None
    if eval_data is not None:
        eval_tensors = (
            as_model_input(config, eval_data.features),
            as_tensor(eval_data.labels),
        )
    if config.loss == "act" and config.lam == "power":
        check_power_tuning(data.pi, data.delta)
    summary = human_weight_summary(data.delta, data.pi, config.max_weight)
    notes.extend(bias_notes(config, summary))
    device = resolve_device(config.device)
    everything = Batch(
        features,
        as_tensor(data.machine_labels),
        as_tensor(data.human_labels),
        as_tensor(data.delta),
        as_tensor(data.pi),
    )
    history: list[EpochMetrics] = []
    lam: float | None = None
    bar = EpochProgress(progress, config.epochs, f"{config.loss} / {config.model}")
    try:
        with deterministic(config.seed):
            model = build_model(
                config.model,
                tuple(features.shape[1:]),
                data.n_classes,
                hidden_dim=config.hidden_dim,
                model_path=config.model_path,
            ).to(device)
            optimizer = make_optimizer(config, model)
            shuffle = torch.Generator().manual_seed(config.seed)
            for epoch in range(1, config.epochs + 1):
                epoch_started = time.perf_counter()
                if config.loss == "act":
                    lam = (
                        estimate_power_lambda(
                            model, _batches(everything, config.eval_batch_size), device
                        )
                        if config.lam == "power"
                        else float(config.lam)
                    )
                    everything = with_act_targets(config, everything, lam)
                train_loss, _ = train_epoch(
                    config,
                    model,
                    optimizer,
                    _batches(everything, config.batch_size, shuffle),
                    lam,
                    device,
                )
                metrics: EpochMetrics = {
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "eval_accuracy": None,
                    "eval_loss": None,
                    "lam": lam,
                }
                if eval_tensors is not None:
                    metrics["eval_accuracy"], metrics["eval_loss"] = evaluate(
                        model, *eval_tensors, config.eval_batch_size, device
                    )
                metrics["seconds"] = time.perf_counter() - epoch_started
                history.append(metrics)
                bar.update(metrics)
    finally:
        bar.close()
    if config.metrics_path is not None:
        write_metrics(history, config.metrics_path)
    return TrainResult(
        config=config,
        model=model.cpu().eval(),
        history=history,
        lam=lam,
        weights_clipped=config.loss == "act" and summary.clipped,
        clipped_items=summary.clipped_items if config.loss == "act" else 0,
        max_human_weight=summary.max_human_weight,
        unreviewable_items=summary.unreviewable_items,
        dropped_unlabelled=dropped,
        n_train=data.n_items,
        item_shape=tuple(features.shape[1:]),
        device=str(device),
        seconds=time.perf_counter() - started,
        warnings=notes,
    )
