"""Training on Ray Train: two CPU workers read a featurized Parquet table with Ray Data, report
every epoch, and rank 0 leaves a checkpoint that loads into the trained model; bad tables are
refused before Ray starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from act.trainer import (
    TrainConfig,
    TrainingData,
    load_checkpoint,
    local_ray_init,
    read_eval_table,
    train_with_ray,
    write_training_table,
)

ray = pytest.importorskip("ray")


def _blobs(n: int, seed: int, reviewed_share: float = 0.3) -> TrainingData:
    """Four Gaussian blobs; the annotator is wrong on every fifth item, which is reviewed."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(0).normal(size=(4, 6)) * 2.5
    labels = rng.integers(0, 4, n)
    wrong = np.arange(n) % 5 == 0
    delta = wrong | (rng.random(n) < reviewed_share - 0.2)
    return TrainingData(
        features=(centers[labels] + rng.normal(size=(n, 6))).astype(np.float32),
        machine_labels=np.where(wrong, (labels + 1) % 4, labels),
        human_labels=labels,
        delta=delta,
        pi=np.where(delta, 0.5, 0.2),
        n_classes=4,
        class_names=["north", "east", "south", "west"],
    )


@pytest.mark.slow
def test_two_ray_workers_train_and_leave_a_checkpoint_that_loads(tmp_path: Path) -> None:
    table = write_training_table(_blobs(600, seed=1), tmp_path / "train.parquet")
    heldout = write_training_table(_blobs(400, seed=2), tmp_path / "eval.parquet")
    config = TrainConfig(loss="act", epochs=3, batch_size=32, lr=3e-3, device="cpu")
    result = train_with_ray(
        config,
        table,
        eval_table=heldout,
        num_workers=2,
        storage_path=tmp_path / "ray",
        ray_init=local_ray_init(num_workers=2),
    )
    assert not ray.is_initialized()  # the run started Ray, so it shut it down
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    for row in result.history:
        # Every worker trained on its half of the table and reported its loss.
        assert row["worker_items"] == [300, 300]
        assert len(row["worker_train_loss"]) == 2
        assert row["train_loss"] == pytest.approx(np.mean(row["worker_train_loss"]))
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.weights_clipped and result.clipped_items > 0  # delta/pi = 2 was clipped at 1
    assert result.checkpoint_path.is_relative_to(tmp_path / "ray")
    checkpoint = load_checkpoint(result.checkpoint_path)
    assert checkpoint.class_names == ["north", "east", "south", "west"]
    assert checkpoint.history == result.history
    eval_data = read_eval_table(heldout)
    with torch.no_grad():
        predicted = checkpoint.model(torch.tensor(eval_data.features)).argmax(dim=1)
    accuracy = float((predicted.numpy() == eval_data.labels).mean())
    assert accuracy == pytest.approx(result.final_accuracy)
    assert accuracy > 0.85


def test_a_bad_table_is_refused_before_ray_starts(tmp_path: Path) -> None:
    data = _blobs(50, seed=3)
    unreviewed = data.human_labels.copy()
    unreviewed[data.delta] = -1  # reviews decided but not done yet
    pending = data.model_copy(update={"human_labels": unreviewed})
    table = write_training_table(pending, tmp_path / "train.parquet")
    with pytest.raises(ValueError, match="no human label yet"):
        train_with_ray(TrainConfig(loss="act"), table, ray_init=local_ray_init())
    with pytest.raises(ValueError, match="reads token ids"):
        train_with_ray(TrainConfig(loss="machine", model="roberta-base"), table)
    with pytest.raises(FileNotFoundError):
        train_with_ray(TrainConfig(loss="machine"), tmp_path / "missing.parquet")
    assert not ray.is_initialized()
