"""The paper's downstream study, offline: review policies, the pilot, training rows, metrics.

For one labelled data set and seed (`run_dataset`):

1. Split the items into a pool (what the pipeline labels and trains on) and a test set, with
   keyed randomness (`split_test`).
2. Pilot: a uniform audit of `pilot_share` of the pool (`PILOT_TRANSFORM`, systematic draw)
   is reviewed by humans. It gives the Horvitz–Thompson error estimate ê, an isotonic
   calibration of eps, the recommended budget (`plan_budget`) and the paper's "Pro Max"
   choice among the candidate models.
3. Train the rows of `ROWS` on the pool and test them: human-only and machine-only
   cross-entropy; at each budget B = f·e·N of the sweep (f a multiple of the pool's true error
   rate e, the paper's "ideal budget" at f = 1) the paper's rows (cross-entropy on the ACT
   data, and the unbiased ACT loss, λ = 1, with norm-paper, exp and thre review
   probabilities) and the design's default (top-B review, human weight clipped at 1); and the
   default after the pilot at the budget the pilot recommends.
4. Annotation metrics: annotator accuracy, criticizer AUROC/AUPRC/ECE/Brier, the budget
   sensitivity curve, AQG and ABS/ABS*.

Every formula comes from `act.core`; training is `act.trainer.train_in_process`.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from act.core.metrics import (
    BudgetRecommendation,
    CriticizerReport,
    ErrorRateEstimate,
    abs_score,
    budget_sensitivity,
    calibrate_eps,
    criticizer_report,
    error_rate_estimate,
    recommended_budget,
)
from act.core.sampling import draw, keyed_uniform
from act.core.selection import ProMaxSelection, pro_max
from act.core.transforms import TransformSpec
from act.experiment.labelled import LabelledData, OperatingPoint

if TYPE_CHECKING:
    from act.trainer import EvalData, TrainingData

# The pilot is a uniform audit: thre with rho = 1 spreads the whole budget evenly.
PILOT_TRANSFORM = TransformSpec(method="thre", params={"rho": 1.0})
# The design's default review policy for training data (DESIGN.md §2.1): the top-B items by
# eps, pi in {0, 1}; pi_min = 0 is passed explicitly because it gives up unbiasedness.
TOP_B = TransformSpec(method="thre", params={"rho": 0.0}, pi_min=0.0)
PAPER_TRANSFORMS = {
    "norm": TransformSpec(method="norm-paper"),
    "exp": TransformSpec(method="exp", params={"beta": 10.0}),
    "thre": TransformSpec(method="thre", params={"rho": 0.1}),
}
BudgetRule = Literal["recommended", "paper"]
CURVE_POINTS = 101


class RowSpec(BaseModel):
    """One row of the downstream table: what is reviewed and how the model is trained."""

    model_config = ConfigDict(frozen=True)

    key: str
    title: str
    short: str  # for gap lines and plot legends
    loss: Literal["human", "machine", "act-data", "act"]
    # Which budget the review uses: none, each multiple of the error rate, or the pilot's.
    budget: Literal["none", "sweep", "pilot"]
    transform: TransformSpec | None = None
    max_weight: float | None = 1.0  # the trainer's clipping of delta/pi; None: unbiased
    rule: BudgetRule | None = None  # for budget == "pilot"


ROWS: tuple[RowSpec, ...] = (
    RowSpec(
        key="human-ce",
        title="Human only — cross-entropy",
        short="human CE",
        loss="human",
        budget="none",
    ),
    RowSpec(
        key="machine-ce",
        title="Machine only — cross-entropy",
        short="machine CE",
        loss="machine",
        budget="none",
    ),
    RowSpec(
        key="act-data-ce",
        title="ACT data — cross-entropy (reviews of thre ρ=0.1)",
        short="ACT-data CE",
        loss="act-data",
        budget="sweep",
        transform=PAPER_TRANSFORMS["thre"],
    ),
    RowSpec(
        key="act-norm",
        title="ACT data — ACT loss, norm (paper: norm-paper, unbiased)",
        short="ACT norm",
        loss="act",
        budget="sweep",
        transform=PAPER_TRANSFORMS["norm"],
        max_weight=None,
    ),
    RowSpec(
        key="act-exp",
        title="ACT data — ACT loss, exp β=10 (unbiased)",
        short="ACT exp",
        loss="act",
        budget="sweep",
        transform=PAPER_TRANSFORMS["exp"],
        max_weight=None,
    ),
    RowSpec(
        key="act-thre",
        title="ACT data — ACT loss, thre ρ=0.1 (unbiased)",
        short="ACT thre",
        loss="act",
        budget="sweep",
        transform=PAPER_TRANSFORMS["thre"],
        max_weight=None,
    ),
    RowSpec(
        key="act-default",
        title="ACT default — top-B review, weights clipped at 1",
        short="ACT default (top-B)",
        loss="act",
        budget="sweep",
        transform=TOP_B,
    ),
    RowSpec(
        key="act-pilot-paper",
        title="ACT default after the pilot, B = 1.1·ê·N (paper's rule)",
        short="ACT after pilot, 1.1·ê·N",
        loss="act",
        budget="pilot",
        transform=TOP_B,
        rule="paper",
    ),
    RowSpec(
        key="act-pilot-recommended",
        title="ACT default after the pilot, recommended B (min of paper and calibrated)",
        short="ACT after pilot, recommended B",
        loss="act",
        budget="pilot",
        transform=TOP_B,
        rule="recommended",
    ),
)
ROW_BY_KEY = {row.key: row for row in ROWS}


class TrainingSettings(BaseModel):
    """How the downstream model of a data set is trained."""

    model_config = ConfigDict(frozen=True)

    model: str
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)


DEFAULT_TRAINING = {
    "mlp": TrainingSettings(model="mlp", epochs=20, batch_size=128, lr=3e-3),
    # Unit-norm sentence embeddings and ~200 items: a linear model needs a larger step.
    "linear": TrainingSettings(model="linear", epochs=50, batch_size=64, lr=3e-2),
}


class StudySettings(BaseModel):
    """What one run of the study does (shared by every data set)."""

    model_config = ConfigDict(frozen=True)

    budget_factors: tuple[float, ...] = (0.25, 0.5, 1.0, 1.1, 1.5)
    pilot_share: float = Field(default=0.1, gt=0, lt=1)
    test_share: float = Field(default=0.3, gt=0, lt=1)
    epochs: int | None = Field(default=None, ge=1)  # None: the model's default
    rows: tuple[str, ...] = tuple(row.key for row in ROWS)

    @property
    def main_factor(self) -> float:
        """The sweep point shown in the paper-style table: the one closest to 1 (the paper's
        budget = the annotator's error proportion)."""
        return min(self.budget_factors, key=lambda factor: (abs(factor - 1.0), factor))

    def training(self, model: str) -> TrainingSettings:
        settings = DEFAULT_TRAINING[model]
        return (
            settings if self.epochs is None else settings.model_copy(update={"epochs": self.epochs})
        )


# ----------------------------------------------------------------------------- results


class RowResult(BaseModel):
    """One trained model, tested."""

    dataset: str
    seed: int
    row: str
    budget_factor: float | None  # the multiple of the error rate (sweep rows), else None
    reviews: int  # human labels the training used
    human_share: float  # reviews / pool size
    test_accuracy: float
    weights_clipped: bool
    n_train: int
    n_test: int


class PilotSummary(BaseModel):
    """The pilot review and the budget it leads to."""

    share: float
    reviewed: int
    error: ErrorRateEstimate
    recommendation: BudgetRecommendation  # for the pool items outside the pilot
    pro_max: ProMaxSelection | None
    pro_max_note: str = ""


class DatasetResult(BaseModel):
    """Annotation quality and the pilot for one data set and seed."""

    dataset: str
    seed: int
    title: str
    provenance: str
    annotator: str
    criticizer: str
    downstream_model: str
    n_pool: int
    n_test: int
    error_rate: float  # true, on the pool
    criticizer_quality: CriticizerReport
    abs: float
    abs_star: float | None
    curve_grid: list[float]
    curve_accuracy: list[float]
    pilot: PilotSummary
    simulated: bool = False


# ----------------------------------------------------------------------------- pieces


def split_test(item_ids: np.ndarray, test_share: float, seed: int) -> np.ndarray:
    """Test-set membership from keyed randomness: u(id, "split/<seed>") < test_share."""
    return keyed_uniform(item_ids.tolist(), f"split/{seed}") < test_share


def pilot_draw(item_ids: Sequence[str], share: float, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(delta, pi) of a uniform audit of `share` of the items (systematic, keyed by `key`)."""
    pi = PILOT_TRANSFORM.apply(np.zeros(len(item_ids)), share * len(item_ids))
    return draw(pi, list(item_ids), key, "systematic"), pi


def plan_budget(
    eps: np.ndarray,
    machine_labels: np.ndarray,
    human_labels: np.ndarray,
    delta: np.ndarray,
    pi: np.ndarray,
) -> tuple[ErrorRateEstimate, BudgetRecommendation]:
    """ê from the pilot (Horvitz–Thompson over every pool item; human labels are read where
    delta = 1 only) and the budget recommended for the pool items the pilot did not review:
    the paper's 1.1·ê·N and the smallest B whose expected residual error, under eps
    calibrated on the pilot (isotonic, weights 1/pi), is under 1% (DESIGN.md §2.1)."""
    error = error_rate_estimate(machine_labels, human_labels, delta, pi)
    reviewed = np.asarray(delta, dtype=bool)
    calibration = calibrate_eps(
        eps[reviewed],
        machine_labels[reviewed] != human_labels[reviewed],
        weights=1.0 / pi[reviewed],
    )
    rest = ~reviewed
    recommendation = recommended_budget(
        error, int(rest.sum()), eps=eps[rest], calibration=calibration
    )
    return error, recommendation


def rule_budget(recommendation: BudgetRecommendation, rule: BudgetRule) -> int:
    """The number of reviews a budget rule asks for, at least one: a small pilot can find no
    error (ê = 0), and the transforms need a positive budget."""
    return max(1, recommendation.paper if rule == "paper" else recommendation.recommended)


def sweep_budget(factor: float, error_rate: float, n_items: int) -> int:
    """B = ⌈f·e·N⌉, at least one review and at most N."""
    return max(1, min(n_items, math.ceil(round(factor * error_rate * n_items, 9))))


def review(
    spec: TransformSpec, eps: np.ndarray, item_ids: Sequence[str], budget: int, key: str
) -> tuple[np.ndarray, np.ndarray]:
    """(delta, pi) of reviewing with `spec` at `budget` reviews: pi = pi_B(eps), delta drawn
    with the paper's independent Bernoulli draws under keyed randomness."""
    pi = spec.apply(eps, float(budget))
    return draw(pi, list(item_ids), key, "bernoulli"), pi


@contextlib.contextmanager
def quiet_trainer() -> Iterator[None]:
    """The trainer warns on every clipped run; the results record clipping per row instead."""
    trainer_log = logging.getLogger("act.trainer")
    previous = trainer_log.level
    trainer_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        trainer_log.setLevel(previous)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One torch thread: the models are small, and on a shared CPU more threads measured ~10×
    slower here (they wait on each other)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train_row(
    spec: RowSpec,
    settings: TrainingSettings,
    seed: int,
    data: TrainingData,
    eval_data: EvalData,
) -> tuple[float, bool]:
    """Train one row and return (test accuracy, whether the human weights were clipped)."""
    from act.trainer import TrainConfig, train_in_process

    config = TrainConfig(
        loss=spec.loss,
        model=settings.model,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        seed=seed,
        lam=1.0,
        max_weight=spec.max_weight,
        device="cpu",
    )
    result = train_in_process(config, data, eval_data)
    accuracy = result.final_accuracy
    assert accuracy is not None  # evaluation data was given
    return float(accuracy), result.weights_clipped


def annotation_quality(
    pool: LabelledData,
) -> tuple[CriticizerReport, float, float | None, list[float], list[float]]:
    """(criticizer report, ABS, ABS* or None, curve grid, curve accuracy) on the pool."""
    report = criticizer_report(pool.eps, pool.machine_labels, pool.labels)
    area = abs_score(pool.eps, pool.machine_labels, pool.labels)
    normalised = (
        abs_score(pool.eps, pool.machine_labels, pool.labels, normalized=True)
        if 0.0 < report.error_rate < 1.0
        else None
    )
    grid = np.linspace(0.0, 1.0, CURVE_POINTS)
    curve = budget_sensitivity(pool.eps, pool.machine_labels, pool.labels, grid=grid)
    return report, area, normalised, list(curve.grid), list(curve.accuracy)


def choose_models(pool: LabelledData, reviewed: np.ndarray) -> tuple[ProMaxSelection | None, str]:
    """The paper's "Pro Max" choice among the candidate models, on the pilot's items."""
    if len(pool.candidates) < 2:
        return None, "no candidate models were labelled"
    if not reviewed.any():
        return None, "the pilot reviewed no item"
    selection = pro_max(
        {name: labels[reviewed] for name, labels in pool.candidates.items()},
        pool.labels[reviewed],
    )
    if (selection.annotator, selection.criticizer) == (pool.annotator, pool.criticizer):
        return selection, "the configured annotator and criticizer"
    return selection, "differs from the configured roles (reported, not applied)"


def summarize_pilot(
    pool: LabelledData, share: float, delta: np.ndarray, pi: np.ndarray, human_labels: np.ndarray
) -> PilotSummary:
    """What the pilot review gives: ê, the recommended budget and the "Pro Max" choice.
    `human_labels` holds the reviewers' labels where delta = 1 (-1 elsewhere)."""
    error, recommendation = plan_budget(pool.eps, pool.machine_labels, human_labels, delta, pi)
    selection, note = choose_models(pool, delta)
    return PilotSummary(
        share=share,
        reviewed=int(np.sum(delta)),
        error=error,
        recommendation=recommendation,
        pro_max=selection,
        pro_max_note=note,
    )


# ----------------------------------------------------------------------------- one data set


@dataclass(frozen=True)
class Split:
    """A data set split into the pool the pipeline labels and trains on, and the test set."""

    data: LabelledData
    seed: int
    pool: LabelledData
    test: LabelledData

    @classmethod
    def of(cls, data: LabelledData, seed: int, test_share: float) -> Split:
        is_test = split_test(data.item_ids, test_share, seed)
        return cls(data, seed, data.subset(~is_test), data.subset(is_test))


def describe_dataset(
    split: Split,
    downstream_model: str,
    pilot: PilotSummary,
    *,
    simulated: bool = False,
) -> DatasetResult:
    """Annotation quality on the pool, with the pilot's outcome."""
    pool = split.pool
    quality, area, normalised, grid, curve = annotation_quality(pool)
    return DatasetResult(
        dataset=split.data.name,
        seed=split.seed,
        title=split.data.title,
        provenance=split.data.provenance,
        annotator=split.data.annotator,
        criticizer=split.data.criticizer,
        downstream_model=downstream_model,
        n_pool=pool.n_items,
        n_test=split.test.n_items,
        error_rate=pool.error_rate,
        criticizer_quality=quality,
        abs=area,
        abs_star=normalised,
        curve_grid=grid,
        curve_accuracy=curve,
        pilot=pilot,
        simulated=simulated,
    )


def train_and_record(
    spec: RowSpec,
    split: Split,
    training: TrainingSettings,
    delta: np.ndarray,
    pi: np.ndarray,
    factor: float | None = None,
) -> RowResult:
    """Train one row on the pool and test it: human labels are the true labels where
    delta = 1 (every true label for the human-only row, none for the machine-only row)."""
    from act.trainer import TrainingData

    pool = split.pool
    human = pool.labels if spec.loss == "human" else np.where(delta, pool.labels, -1)
    data = TrainingData(
        features=pool.features,
        machine_labels=pool.machine_labels,
        human_labels=human,
        delta=delta,
        pi=pi,
        n_classes=len(pool.class_names),
        class_names=list(pool.class_names),
    )
    return record_row(spec, split, training, data, factor)


def record_row(
    spec: RowSpec,
    split: Split,
    training: TrainingSettings,
    data: TrainingData,
    factor: float | None = None,
) -> RowResult:
    """Train one row on `data`, test it on the split's test items, and record the result."""
    from act.trainer import EvalData

    if spec.loss == "human":
        reviews = data.n_items
    else:
        reviews = 0 if spec.loss == "machine" else int(np.sum(data.delta))
    test = split.test
    eval_data = EvalData(
        features=test.features.reshape(test.n_items, *data.features.shape[1:]),
        labels=test.labels,
    )
    accuracy, clipped = train_row(spec, training, split.seed, data, eval_data)
    return RowResult(
        dataset=split.data.name,
        seed=split.seed,
        row=spec.key,
        budget_factor=factor,
        reviews=reviews,
        human_share=reviews / data.n_items,
        test_accuracy=accuracy,
        weights_clipped=clipped,
        n_train=data.n_items,
        n_test=test.n_items,
    )


def baseline_review(spec: RowSpec, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """(delta, pi) of the rows without a budget: everything reviewed or nothing."""
    return np.full(n_items, spec.loss == "human"), np.ones(n_items)


def run_dataset(
    data: LabelledData,
    seed: int,
    settings: StudySettings,
    *,
    simulated: OperatingPoint | None = None,
    on_trained: Callable[[str], None] | None = None,
) -> tuple[DatasetResult, list[RowResult]]:
    """The study for one labelled data set and seed (see the module docstring)."""
    split = Split.of(data, seed, settings.test_share)
    pool = split.pool
    ids = pool.item_ids.tolist()
    training = settings.training(data.downstream_model)
    # The same keyed randomness for every transform: their draws differ only through pi.
    review_key = f"{data.name}/review/{seed}"

    pilot_delta, pilot_pi = pilot_draw(ids, settings.pilot_share, f"{data.name}/pilot/{seed}")
    pilot = summarize_pilot(
        pool, settings.pilot_share, pilot_delta, pilot_pi, np.where(pilot_delta, pool.labels, -1)
    )
    recommendation = pilot.recommendation
    dataset_result = describe_dataset(split, training.model, pilot, simulated=simulated is not None)

    results: list[RowResult] = []

    def record(spec: RowSpec, delta: np.ndarray, pi: np.ndarray, factor: float | None) -> None:
        results.append(train_and_record(spec, split, training, delta, pi, factor))
        if on_trained is not None:
            on_trained(f"{data.name} seed {seed}: {spec.key}")

    for key in settings.rows:
        spec = ROW_BY_KEY[key]
        if spec.budget == "none":
            record(spec, *baseline_review(spec, pool.n_items), None)
        elif spec.budget == "sweep":
            assert spec.transform is not None
            for factor in settings.budget_factors:
                budget = sweep_budget(factor, pool.error_rate, pool.n_items)
                record(spec, *review(spec.transform, pool.eps, ids, budget, review_key), factor)
        else:
            assert spec.transform is not None and spec.rule is not None
            delta, pi = pilot_delta.copy(), pilot_pi.copy()
            rest = ~pilot_delta
            rest_ids = [item for item, keep in zip(ids, rest, strict=True) if keep]
            budget = rule_budget(recommendation, spec.rule)
            delta[rest], pi[rest] = review(
                spec.transform, pool.eps[rest], rest_ids, budget, review_key
            )
            record(spec, delta, pi, None)
    return dataset_result, results


def trainings_per_dataset(settings: StudySettings) -> int:
    """How many models `run_dataset` trains (for progress bars)."""
    count = 0
    for key in settings.rows:
        count += len(settings.budget_factors) if ROW_BY_KEY[key].budget == "sweep" else 1
    return count


class StudyResults(BaseModel):
    """Everything a report shows: the settings, per-data-set metrics and every trained row."""

    title: str
    kind: Literal["experiment", "demo"]
    settings: dict[str, str]
    datasets: list[DatasetResult]
    rows: list[RowResult]
    row_titles: dict[str, str] = Field(default_factory=lambda: {r.key: r.title for r in ROWS})
    main_factor: float | None = None
    elapsed_seconds: float = 0.0
    notes: list[str] = Field(default_factory=list)
