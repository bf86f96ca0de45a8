"""The in-process trainer: the losses on a problem with structured annotator errors, seeds,
clipping reports, power tuning, metrics files, and a clear error for every kind of bad input."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from act.core.sampling import draw
from act.core.transforms import review_probabilities
from act.trainer import EvalData, TrainConfig, TrainingData, train_in_process
from act.trainer.loop import Batch, batch_loss, with_act_targets

N_CLASSES = 4


class Blobs:
    """Gaussian blobs (4 classes, 8 dimensions) labelled by an annotator that puts the quarter
    of items beyond a hyperplane into the next class (a structured, learnable error), and a
    criticizer whose eps separates the errors from the rest with some noise."""

    def __init__(self, seed: int = 0, n_items: int = 2000, dim: int = 8) -> None:
        rng = np.random.default_rng(seed)
        centers = rng.normal(size=(N_CLASSES, dim)) * 2.0

        def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
            labels = rng.integers(0, N_CLASSES, n)
            return (centers[labels] + rng.normal(size=(n, dim))).astype(np.float32), labels

        self.features, self.labels = sample(n_items)
        held_features, held_labels = sample(1000)
        self.eval = EvalData(features=held_features, labels=held_labels)
        score = self.features @ rng.normal(size=dim)
        self.wrong = score > np.quantile(score, 0.75)
        self.machine = np.where(self.wrong, (self.labels + 1) % N_CLASSES, self.labels)
        noisy = np.where(self.wrong, 0.75, 0.2) + rng.normal(0.0, 0.15, n_items)
        self.eps = np.clip(noisy, 0.0, 1.0)
        self.item_ids = [f"blob-{i}" for i in range(n_items)]

    def reviewed(self, method: str, pi_min: float, **params: Any) -> TrainingData:
        """The data after review: budget 1.1 × the error count, systematic keyed draw."""
        budget = 1.1 * self.wrong.sum()
        pi = review_probabilities(self.eps, budget, method, pi_min=pi_min, **params)
        delta = draw(pi, self.item_ids, "trainer-test", "systematic")
        return TrainingData(
            features=self.features,
            machine_labels=self.machine,
            human_labels=self.labels,  # the oracle knows every label; the ACT losses read
            delta=delta,  # only the reviewed ones
            pi=pi,
            n_classes=N_CLASSES,
        )


@pytest.fixture(scope="module")
def blobs() -> Blobs:
    return Blobs()


def _accuracy(data: TrainingData, eval_data: EvalData, **settings: Any) -> float:
    config = TrainConfig(epochs=10, device="cpu", **settings)
    result = train_in_process(config, data, eval_data)
    assert result.final_accuracy is not None
    return result.final_accuracy


def test_act_loss_matches_human_labels_where_machine_labels_fall_short(blobs: Blobs) -> None:
    top_b = blobs.reviewed("thre", pi_min=0.0, rho=0.0)  # the training default: pi in {0, 1}
    audited = blobs.reviewed("thre", pi_min=1e-3)  # rho = 0.1: some reviews with small pi
    assert audited.delta.sum() > 0 and (audited.pi[audited.delta] < 0.5).any()
    human = _accuracy(top_b, blobs.eval, loss="human")
    machine = _accuracy(top_b, blobs.eval, loss="machine")
    act_clipped = _accuracy(audited, blobs.eval, loss="act")
    act_unbiased_top_b = _accuracy(top_b, blobs.eval, loss="act", max_weight=None)
    act_data = _accuracy(top_b, blobs.eval, loss="act-data")
    # The annotator is wrong on a quarter of the items in a learnable way: training on its
    # labels loses far more than noise; ACT training recovers the human-label accuracy.
    assert human > 0.95
    assert human - machine > 0.15
    for act in (act_clipped, act_unbiased_top_b, act_data):
        assert act > human - 0.03, (act, human)


def test_runs_are_bit_repeatable_with_a_seed(blobs: Blobs) -> None:
    data = blobs.reviewed("thre", pi_min=1e-3)
    config = TrainConfig(loss="act", epochs=2, seed=7, device="cpu")
    first, second = train_in_process(config, data), train_in_process(config, data)
    other = train_in_process(config.model_copy(update={"seed": 8}), data)
    for name, value in first.state_dict.items():
        assert torch.equal(value, second.state_dict[name]), name
    assert [row["train_loss"] for row in first.history] == [
        row["train_loss"] for row in second.history
    ]
    assert not torch.equal(first.state_dict["1.weight"], other.state_dict["1.weight"])


def test_clipping_is_reported_and_the_unbiased_loss_is_one_flag_away(
    blobs: Blobs, caplog: pytest.LogCaptureFixture
) -> None:
    data = blobs.reviewed("thre", pi_min=1e-3)
    config = TrainConfig(loss="act", epochs=1, device="cpu")
    with caplog.at_level(logging.WARNING, logger="act.trainer"):
        clipped = train_in_process(config, data)
    small_pi = int((data.delta & (data.pi < 1.0)).sum())
    assert clipped.weights_clipped and clipped.clipped_items == small_pi > 0
    assert clipped.max_human_weight == pytest.approx(1.0 / data.pi[data.delta].min())
    assert any("clipped at max_weight=1.0" in note for note in clipped.warnings)
    assert "no longer unbiased" in caplog.text
    unbiased = train_in_process(config.model_copy(update={"max_weight": None}), data)
    assert not unbiased.weights_clipped and unbiased.clipped_items == 0 and not unbiased.warnings
    assert unbiased.history[0]["train_loss"] != clipped.history[0]["train_loss"]
    machine = train_in_process(config.model_copy(update={"loss": "machine"}), data)
    assert not machine.weights_clipped and machine.lam is None and not machine.warnings


def test_items_that_could_never_be_reviewed_are_reported(blobs: Blobs) -> None:
    top_b = blobs.reviewed("thre", pi_min=0.0, rho=0.0)
    result = train_in_process(TrainConfig(loss="act", epochs=1, device="cpu"), top_b)
    never = int((top_b.pi == 0).sum())
    assert result.unreviewable_items == never > 0 and not result.weights_clipped
    assert any(f"{never} item(s) have pi = 0" in note for note in result.warnings)


def test_power_tuning_estimates_lam_every_epoch(blobs: Blobs) -> None:
    data = blobs.reviewed("exp", pi_min=1e-3)
    result = train_in_process(TrainConfig(loss="act", lam="power", epochs=3, device="cpu"), data)
    lams = [row["lam"] for row in result.history]
    assert all(0.0 <= lam <= 1.0 for lam in lams)
    assert len(set(lams)) > 1  # re-estimated as the model changes
    assert result.lam == lams[-1]
    fixed = train_in_process(TrainConfig(loss="act", lam=0.5, epochs=1, device="cpu"), data)
    assert fixed.lam == 0.5


def test_power_tuning_refuses_items_that_can_never_be_reviewed(blobs: Blobs) -> None:
    top_b = blobs.reviewed("thre", pi_min=0.0, rho=0.0)
    with pytest.raises(ValueError, match="lam='power' needs pi > 0"):
        train_in_process(TrainConfig(loss="act", lam="power", epochs=1, device="cpu"), top_b)


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_metrics_are_written_per_epoch(blobs: Blobs, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"metrics{suffix}"
    config = TrainConfig(loss="act", epochs=3, device="cpu", metrics_path=path)
    result = train_in_process(config, blobs.reviewed("thre", pi_min=1e-3), blobs.eval)
    if suffix == ".json":
        rows = json.loads(path.read_text())
    else:
        with path.open() as handle:
            rows = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3]
    assert float(rows[-1]["eval_accuracy"]) == pytest.approx(result.final_accuracy)
    assert {"train_loss", "eval_loss", "seconds", "lam"} <= set(rows[0])


def test_predictions_come_from_the_trained_model(blobs: Blobs) -> None:
    data = blobs.reviewed("thre", pi_min=0.0, rho=0.0)
    result = train_in_process(TrainConfig(loss="human", epochs=5, device="cpu"), data, blobs.eval)
    probabilities = result.predict_proba(blobs.eval.features)
    assert probabilities.shape == (1000, N_CLASSES)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    accuracy = (probabilities.argmax(axis=1) == blobs.eval.labels).mean()
    assert accuracy == pytest.approx(result.final_accuracy)


# ----------------------------------------------------------------------------- bad input


def _columns(n: int = 6) -> dict[str, Any]:
    return {
        "features": np.zeros((n, 3), dtype=np.float32),
        "machine_labels": np.arange(n) % 3,
        "human_labels": np.where(np.arange(n) % 2 == 0, np.arange(n) % 3, -1),
        "delta": np.arange(n) % 2 == 0,
        "pi": np.full(n, 0.5),
        "n_classes": 3,
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pi": None}, "pi"),
        ({"features": np.zeros((0, 3), dtype=np.float32)}, "empty"),
        ({"machine_labels": np.array([0, 1, 2, 3, 0, 1])}, r"machine_labels\[3\] = 3"),
        ({"human_labels": np.array([0, -2, 1, -1, 0, -1])}, r"human_labels\[1\] = -2"),
        ({"machine_labels": np.array([0.5, 1, 2, 0, 1, 2])}, "integer class indices"),
        ({"pi": np.array([0.0, 0.5, 0.5, 0.5, 0.5, 0.5])}, "have pi = 0"),
        ({"pi": np.array([0.5, 0.5, 1.5, 0.5, 0.5, 0.5])}, r"pi must lie in .*first at index 2"),
        ({"pi": np.array([0.5, np.nan, 0.5, 0.5, 0.5, 0.5])}, "pi contains 1 NaN"),
        ({"delta": np.array([0, 2, 0, 1, 0, 1])}, "0/1"),
        ({"features": np.full((6, 3), np.nan, dtype=np.float32)}, "NaN or infinite"),
        ({"features": np.array([[0, 0, np.inf]] + [[0, 0, 0]] * 5)}, "first at row 0"),
        ({"features": np.zeros(6)}, r"shape \(N, D\)"),
        ({"delta": np.ones(5, dtype=bool)}, "delta has 5"),
        ({"human_labels": np.zeros(7, dtype=int)}, "human_labels has 7"),
        ({"class_names": ["a", "b"]}, "class_names has 2"),
        ({"features": np.zeros((5, 3), dtype=np.float32)}, "features has 5 rows"),
        ({"n_classes": 1}, "n_classes"),
    ],
)
def test_bad_training_data_is_refused_with_a_clear_message(
    change: dict[str, Any], message: str
) -> None:
    columns = _columns() | change
    columns = {name: value for name, value in columns.items() if value is not None}
    with pytest.raises(ValidationError, match=message):
        TrainingData(**columns)


def test_reviewed_rows_without_a_human_label_are_an_error_unless_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    columns = _columns()
    columns["human_labels"] = np.array([0, -1, -1, -1, 1, -1])  # row 2 reviewed, no label
    data = TrainingData(**columns)
    with pytest.raises(ValueError, match=r"1 reviewed item.*no human label"):
        train_in_process(TrainConfig(loss="act", epochs=1, device="cpu"), data)
    with caplog.at_level(logging.WARNING, logger="act.trainer"):
        result = train_in_process(
            TrainConfig(loss="act", epochs=1, device="cpu", unlabelled_reviews="drop"), data
        )
    assert result.dropped_unlabelled == 1 and result.n_train == 5
    assert "dropping 1 reviewed item" in caplog.text
    # The machine loss does not read human labels: nothing to refuse.
    assert train_in_process(TrainConfig(loss="machine", epochs=1, device="cpu"), data).n_train == 6


def test_human_loss_needs_a_human_label_everywhere() -> None:
    with pytest.raises(ValueError, match=r"loss 'human'.*3 of 6 items have none"):
        train_in_process(
            TrainConfig(loss="human", epochs=1, device="cpu"), TrainingData(**_columns())
        )


@pytest.mark.parametrize(
    ("eval_data", "message"),
    [
        (lambda: EvalData(features=np.zeros((2, 3)), labels=np.array([0, 3])), r"labels\[1\] = 3"),
        (lambda: EvalData(features=np.zeros((2, 4)), labels=np.array([0, 1])), "per item"),
        (lambda: EvalData(features=np.zeros((2, 3)), labels=np.array([0])), "one label per item"),
    ],
)
def test_bad_eval_data_is_refused(eval_data: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        train_in_process(
            TrainConfig(loss="machine", epochs=1, device="cpu"),
            TrainingData(**_columns()),
            eval_data(),
        )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"lam": 1.5}, "lam must be in"),
        ({"max_weight": 0.5}, "max_weight must be >= 1"),
        ({"model": "gpt-5"}, "unknown model"),
        ({"loss": "focal"}, "loss"),
        ({"metrics_path": Path("metrics.txt")}, ".json or .csv"),
        ({"epochs": 0}, "epochs"),
    ],
)
def test_bad_settings_are_refused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TrainConfig(**settings)


def test_features_must_fit_the_model() -> None:
    columns = _columns()
    with pytest.raises(ValueError, match="reads token ids"):
        train_in_process(
            TrainConfig(model="roberta-base", loss="machine", epochs=1, device="cpu"),
            TrainingData(**columns),
        )
    columns["features"] = np.ones((6, 5), dtype=np.int64)
    with pytest.raises(ValueError, match="reads float features"):
        train_in_process(
            TrainConfig(loss="machine", epochs=1, device="cpu"), TrainingData(**columns)
        )
    with pytest.raises(ValueError, match=r"input_shape \(2, 2\) holds 4 values"):
        train_in_process(
            TrainConfig(loss="machine", epochs=1, device="cpu", input_shape=(2, 2)),
            TrainingData(**_columns()),
        )


@pytest.mark.parametrize(("lam", "max_weight"), [(1.0, 1.0), (0.5, None), (0.0, 2.0)])
def test_act_targets_computed_once_per_epoch_give_the_per_batch_loss_and_gradient(
    lam: float, max_weight: float | None
) -> None:
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(32, 4, generator=generator, requires_grad=True)
    delta = torch.rand(32, generator=generator) < 0.3
    batch = Batch(
        features=torch.zeros(32, 1),
        machine=torch.randint(0, 4, (32,), generator=generator),
        human=torch.where(delta, torch.randint(0, 4, (32,), generator=generator), -1),
        delta=delta,
        pi=torch.rand(32, generator=generator, dtype=torch.float64).clamp(min=0.05),
    )
    config = TrainConfig(loss="act", lam=lam, max_weight=max_weight)
    per_batch = batch_loss(config, logits, batch, lam)
    (per_batch_grad,) = torch.autograd.grad(per_batch, logits)
    weighted = with_act_targets(config, batch, lam)
    precomputed = batch_loss(config, logits, weighted, lam)
    (precomputed_grad,) = torch.autograd.grad(precomputed, logits)
    assert torch.allclose(per_batch, precomputed)
    assert torch.allclose(per_batch_grad, precomputed_grad)
