"""Training on Ray Train (V2 `TorchTrainer`): the same loop as in-process, data from Parquet.

The driver reads the table's label columns and checks them (`read_review_columns`), so bad
data fails before any worker starts; the workers read their shard of the table with Ray Data
(`get_dataset_shard`), run `act.trainer.loop.train_epoch` on it under DistributedDataParallel,
and report every epoch. Rank 0 evaluates on the held-out table and saves the checkpoint
(`act.trainer.checkpoint` format); its metrics carry the training loss of every worker.

Local runs (tests, a laptop): `ray.init(num_cpus=2, include_dashboard=False, ...)` with
RAY_AUTH_MODE=disabled and RAY_USAGE_STATS_ENABLED=0 (see `local_ray_init`); on a cluster
(KubeRay RayJob) pass the address or let the job's environment connect.

The per-worker batch size is config.batch_size, so a step sees num_workers × batch_size items.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from act.trainer.checkpoint import load_checkpoint, save_checkpoint
from act.trainer.config import TrainConfig
from act.trainer.data import NO_HUMAN_LABEL, check_eval, rows_to_drop
from act.trainer.loop import (
    Batch,
    EpochMetrics,
    bias_notes,
    check_input_kind,
    check_power_tuning,
    deterministic,
    estimate_power_lambda,
    evaluate,
    human_weight_summary,
    item_shape,
    make_optimizer,
    train_epoch,
)
from act.trainer.models import build_model
from act.trainer.table import (
    COLUMNS,
    as_paths,
    read_eval_table,
    read_review_columns,
    read_table_info,
)

LOCAL_RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


@dataclass(frozen=True)
class RayTrainResult:
    """A finished Ray Train run: per-epoch metrics of rank 0 and where the checkpoint is."""

    config: TrainConfig
    history: list[EpochMetrics]
    checkpoint_path: Path
    lam: float | None
    weights_clipped: bool
    clipped_items: int
    max_human_weight: float | None
    unreviewable_items: int  # pi = 0: never reviewable (said in warnings for the ACT loss)
    dropped_unlabelled: int
    num_workers: int
    seconds: float
    warnings: list[str]

    @property
    def final_accuracy(self) -> float | None:
        return self.history[-1]["eval_accuracy"] if self.history else None


def local_ray_init(num_workers: int = 2, object_store_mb: int = 200) -> dict[str, Any]:
    """Settings for a small local Ray (no dashboard, no token auth, no usage stats): the
    keyword arguments of ray.init; sets the environment it needs.

    Ray counts one logical CPU more than the workers take: Ray Data's read tasks need one of
    their own, and with every CPU held by a training worker the read never starts (seen with
    num_cpus=2 and two 1-CPU workers: the run waited forever).
    """
    for name, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(name, value)
    return {
        "num_cpus": num_workers + 1,
        "include_dashboard": False,
        "object_store_memory": object_store_mb * 1024**2,
    }


def _ray() -> Any:
    try:
        import ray
        import ray.train
        import ray.train.torch
    except ImportError as exc:
        raise ImportError(
            f"training on Ray needs ray[train,data] ({exc}): pip install 'act-pipeline[train]'"
        ) from exc
    return ray


def _batches(
    iterator: Any,
    *,
    batch_size: int,
    shape: tuple[int, ...],
    token_ids: bool,
    drop_unlabelled: bool,
    shuffle_seed: int | None,
) -> Iterator[Batch]:
    """The shard's rows as Batches (nullable human labels as -1), dropping unlabelled reviews
    when asked."""
    for columns in iterator.iter_torch_batches(
        batch_size=batch_size,
        device="cpu",
        local_shuffle_buffer_size=None if shuffle_seed is None else 4 * batch_size,
        local_shuffle_seed=shuffle_seed,
    ):
        features = columns["features"].to(torch.int64 if token_ids else torch.float32)
        if not token_ids and not torch.isfinite(features).all():
            raise ValueError("the training table holds NaN or infinite features")
        human = torch.nan_to_num(columns["human_label"].double(), nan=NO_HUMAN_LABEL).long()
        batch = Batch(
            features.reshape(-1, *shape),
            columns["machine_label"].long(),
            human,
            columns["delta"].bool(),
            columns["pi"].double(),
        )
        if drop_unlabelled:
            keep = ~(batch.delta & (batch.human == NO_HUMAN_LABEL))
            batch = batch.rows(keep)
        yield batch


def _all_gather(value: Any) -> list[Any]:
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return [value]
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, value)
    return gathered


def _eval_tensors(iterator: Any, shape: tuple[int, ...], token_ids: bool) -> tuple[Any, Any]:
    parts = list(iterator.iter_torch_batches(batch_size=4096, device="cpu"))
    features = torch.cat([part["features"] for part in parts])
    labels = torch.cat([part["label"] for part in parts]).long()
    return features.to(torch.int64 if token_ids else torch.float32).reshape(-1, *shape), labels


def _worker_loop(loop_config: dict[str, Any]) -> None:
    """What every Ray Train worker runs."""
    ray = _ray()
    config = TrainConfig.model_validate(loop_config["config"])
    shape = tuple(loop_config["item_shape"])
    token_ids = bool(loop_config["token_ids"])
    context = ray.train.get_context()
    rank = context.get_world_rank()
    device = ray.train.torch.get_device()
    shard = ray.train.get_dataset_shard("train")
    eval_iterator = ray.train.get_dataset_shard("eval") if loop_config["has_eval"] else None
    with deterministic(config.seed):
        model = build_model(
            config.model,
            shape,
            loop_config["n_classes"],
            hidden_dim=config.hidden_dim,
            model_path=config.model_path,
        )
        model = ray.train.torch.prepare_model(model)
        # DistributedDataParallel wraps the model; evaluation and saving use the module itself.
        module = getattr(model, "module", model)
        optimizer = make_optimizer(config, model)
        eval_tensors = None
        history: list[EpochMetrics] = []
        lam: float | None = None

        def batches(shuffle_seed: int | None, batch_size: int) -> Iterator[Batch]:
            return _batches(
                shard,
                batch_size=batch_size,
                shape=shape,
                token_ids=token_ids,
                drop_unlabelled=loop_config["drop_unlabelled"],
                shuffle_seed=shuffle_seed,
            )

        for epoch in range(1, config.epochs + 1):
            started = time.perf_counter()
            if config.loss == "act":
                if config.lam == "power":
                    # Each worker estimates lam on its shard; the workers use the mean.
                    local = estimate_power_lambda(
                        module, batches(None, config.eval_batch_size), device
                    )
                    lam = float(np.mean(_all_gather(local)))
                else:
                    lam = float(config.lam)
            loss, items = train_epoch(
                config,
                model,
                optimizer,
                batches(config.seed * 1000 + epoch, config.batch_size),
                lam,
                device,
            )
            per_worker = _all_gather((loss, items))
            total_items = sum(count for _, count in per_worker)
            metrics: EpochMetrics = {
                "epoch": epoch,
                "train_loss": sum(value * count for value, count in per_worker) / total_items,
                "eval_accuracy": None,
                "eval_loss": None,
                "lam": lam,
                "worker_train_loss": [value for value, _ in per_worker],
                "worker_items": [count for _, count in per_worker],
            }
            if rank == 0 and eval_iterator is not None:
                if eval_tensors is None:
                    eval_tensors = _eval_tensors(eval_iterator, shape, token_ids)
                metrics["eval_accuracy"], metrics["eval_loss"] = evaluate(
                    module, *eval_tensors, config.eval_batch_size, device
                )
            metrics["seconds"] = time.perf_counter() - started
            if rank == 0:
                history.append(metrics)
                with tempfile.TemporaryDirectory() as directory:
                    save_checkpoint(
                        directory,
                        module,
                        config,
                        class_names=loop_config["class_names"],
                        item_shape=shape,
                        history=history,
                    )
                    ray.train.report(
                        metrics, checkpoint=ray.train.Checkpoint.from_directory(directory)
                    )
            else:
                ray.train.report(metrics)


def train_with_ray(
    config: TrainConfig,
    table: str | Path | Sequence[str | Path],
    *,
    eval_table: str | Path | Sequence[str | Path] | None = None,
    num_workers: int = 2,
    use_gpu: bool = False,
    cpus_per_worker: float = 1.0,
    storage_path: str | Path | None = None,
    name: str | None = None,
    ray_init: dict[str, Any] | None = None,
) -> RayTrainResult:
    """Trains config.model on a featurized training table with Ray Train's TorchTrainer.

    `eval_table` is a training table too (its human labels, or machine labels where there is
    none, are the reference). Connects to the running Ray, or starts one with `ray_init`
    (e.g. `local_ray_init()`) and shuts it down at the end. Raises ValueError before starting
    any worker when the table cannot support the loss.
    """
    ray = _ray()
    from ray.train import CheckpointConfig, DataConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    started = time.perf_counter()
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    info = read_table_info(table)
    columns = read_review_columns(table)
    drop = rows_to_drop(config, columns)
    if config.loss == "act" and config.lam == "power":
        check_power_tuning(columns.pi[~drop], columns.delta[~drop])
    check_input_kind(config.model, info.token_ids)
    shape = item_shape(config, (info.n_rows, *info.feature_shape))
    summary = human_weight_summary(columns.delta[~drop], columns.pi[~drop], config.max_weight)
    notes = bias_notes(config, summary)
    if drop.any():
        notes.append(f"dropped {int(drop.sum())} reviewed item(s) without a human label")
    eval_data = None
    if eval_table is not None:
        eval_data = read_eval_table(eval_table)
        check_eval(eval_data, info.n_classes, info.feature_shape)
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(**(ray_init or {}))
    try:
        # The trainer reports per epoch; Ray Data's per-operator bars would flood the log.
        ray.data.DataContext.get_current().enable_progress_bars = False
        datasets = {
            # item_id stays behind: strings do not become tensors.
            "train": ray.data.read_parquet([str(path) for path in as_paths(table)]).select_columns(
                [name for name in COLUMNS if name != "item_id"]
            )
        }
        if eval_data is not None:
            datasets["eval"] = ray.data.from_arrow(_eval_arrow(eval_data))
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config={
                "config": config.model_dump(mode="json"),
                "item_shape": list(shape),
                "token_ids": info.token_ids,
                "n_classes": info.n_classes,
                "class_names": info.class_names,
                "has_eval": "eval" in datasets,
                "drop_unlabelled": bool(drop.any()),
            },
            scaling_config=ScalingConfig(
                num_workers=num_workers,
                use_gpu=use_gpu,
                resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
            ),
            run_config=RunConfig(
                name=name,
                storage_path=None if storage_path is None else str(Path(storage_path).resolve()),
                checkpoint_config=CheckpointConfig(num_to_keep=1),
            ),
            datasets=datasets,
            dataset_config=DataConfig(datasets_to_split=["train"]),
        )
        result = trainer.fit()
    finally:
        if started_ray:
            ray.shutdown()
    if result.checkpoint is None:
        raise RuntimeError(f"the Ray Train run ended without a checkpoint: {result.error}")
    checkpoint_path = Path(result.checkpoint.path)
    history = load_checkpoint(checkpoint_path).history
    return RayTrainResult(
        config=config,
        history=history,
        checkpoint_path=checkpoint_path,
        lam=history[-1]["lam"] if history else None,
        weights_clipped=config.loss == "act" and summary.clipped,
        clipped_items=summary.clipped_items if config.loss == "act" else 0,
        max_human_weight=summary.max_human_weight,
        unreviewable_items=summary.unreviewable_items,
        dropped_unlabelled=int(drop.sum()),
        num_workers=num_workers,
        seconds=time.perf_counter() - started,
        warnings=notes,
    )


def _eval_arrow(eval_data: Any) -> Any:
    import pyarrow as pa

    flat = eval_data.features.reshape(eval_data.features.shape[0], -1)
    features = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])
    return pa.table({"features": features, "label": pa.array(eval_data.labels)})
