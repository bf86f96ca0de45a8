"""Metrics of the ACT pipeline (DESIGN.md §2.3): annotator accuracy, criticizer quality,
budget sensitivity (AQG / ABS), the Horvitz–Thompson error rate, isotonic calibration of
eps and the recommended human budget.

Pure functions on numpy arrays; no I/O. References used in the docstrings:

- [ACT] Lin et al., "ACT as Human: Multimodal LLM Data Annotation with Critical Thinking",
  NeurIPS 2025.
- [ZC24] Zrnic & Candès, "Active Statistical Inference", ICML 2024.
- [HT52] Horvitz & Thompson, "A Generalization of Sampling Without Replacement From a Finite
  Universe", JASA 1952.
- [W27] Wilson, "Probable Inference, the Law of Succession, and Statistical Inference",
  JASA 1927.
- [MW47] Mann & Whitney, "On a Test of Whether one of Two Random Variables is Stochastically
  Larger than the Other", Ann. Math. Stat. 1947 (AUROC = U / (n_pos · n_neg)).
- [B50] Brier, "Verification of Forecasts Expressed in Terms of Probability", 1950.
- [N15] Naeini, Cooper & Hauskrecht, "Obtaining Well Calibrated Probabilities Using
  Bayesian Binning", AAAI 2015 (ECE).
- [A55] Ayer et al., "An Empirical Distribution Function for Sampling with Incomplete
  Information", Ann. Math. Stat. 1955 (pool-adjacent-violators).

Labels may be ints, strings or any scalars (numpy arrays of any dtype); they are compared
with ``==``. A missing prediction (None or NaN) counts as wrong; a missing reference label
is an error.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import BaseModel, ConfigDict
from scipy.stats import norm, rankdata

from act.core.validation import as_finite_float, as_probability_array, check_same_length

__all__ = [
    "AccuracyEstimate",
    "BudgetRecommendation",
    "BudgetSensitivity",
    "CriticizerReport",
    "ErrorRateEstimate",
    "IsotonicCalibration",
    "abs_score",
    "accuracy",
    "accuracy_interval",
    "aqg",
    "auprc",
    "auroc",
    "brier",
    "budget_sensitivity",
    "calibrate_eps",
    "criticizer_report",
    "ece",
    "error_rate_estimate",
    "label_errors",
    "recommended_budget",
    "wilson_interval",
]

_NUMERIC_KINDS = "biuf"
_TEXT_KINDS = "US"


# --------------------------------------------------------------------------- validation


def _nonempty_1d(array: np.ndarray, name: str) -> np.ndarray:
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    return array


def _as_float_array(values: ArrayLike, name: str) -> NDArray[np.float64]:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric: {exc}") from exc
    _nonempty_1d(array, name)
    not_finite = ~np.isfinite(array)
    if not_finite.any():
        index = int(np.flatnonzero(not_finite)[0])
        raise ValueError(f"{name} must be finite, got {array[index]} at index {index}")
    return array


def _as_binary(values: ArrayLike, name: str) -> NDArray[np.bool_]:
    array = _nonempty_1d(np.asarray(values), name)
    if array.dtype.kind == "b":
        return array
    if array.dtype.kind not in _NUMERIC_KINDS:
        raise ValueError(f"{name} must be boolean or 0/1, got dtype {array.dtype}")
    not_binary = ~np.isin(array, (0, 1))
    if not_binary.any():
        index = int(np.flatnonzero(not_binary)[0])
        raise ValueError(f"{name} must be boolean or 0/1, got {array[index]} at index {index}")
    return array.astype(bool)


def _validate_alpha(alpha: float) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")


def _ceil_count(value: float | NDArray[np.float64]) -> NDArray[np.int64]:
    # Rounding first keeps float noise (0.3 * 10 = 3.0000000000000004) from adding an item.
    return np.ceil(np.round(value, 9)).astype(np.int64)


def _two_sided_z(alpha: float) -> float:
    return float(norm.ppf(1.0 - alpha / 2.0))


# --------------------------------------------------------------------------- labels


def _missing_mask(labels: np.ndarray) -> NDArray[np.bool_]:
    if labels.dtype.kind in "fc":
        return np.isnan(labels)
    if labels.dtype.kind == "O":
        return np.fromiter(
            (x is None or (isinstance(x, float) and math.isnan(x)) for x in labels),
            dtype=bool,
            count=len(labels),
        )
    return np.zeros(len(labels), dtype=bool)


def _labels_equal(left: np.ndarray, right: np.ndarray) -> NDArray[np.bool_]:
    same_family = (left.dtype.kind in _NUMERIC_KINDS and right.dtype.kind in _NUMERIC_KINDS) or (
        left.dtype.kind in _TEXT_KINDS and right.dtype.kind in _TEXT_KINDS
    )
    if not same_family:
        # Element-wise Python == so that e.g. 1 vs "1" is simply unequal on every numpy.
        left, right = left.astype(object), right.astype(object)
    return np.asarray(left == right, dtype=bool)


def _label_array(labels: ArrayLike, name: str) -> np.ndarray:
    return _nonempty_1d(np.asarray(labels), name)


def _reference_labels(labels: ArrayLike, name: str) -> np.ndarray:
    array = _label_array(labels, name)
    missing = _missing_mask(array)
    if missing.any():
        index = int(np.flatnonzero(missing)[0])
        raise ValueError(
            f"{name} has {int(missing.sum())} missing labels (None/NaN), first at index {index}"
        )
    return array


def label_errors(y_pred: ArrayLike, y_true: ArrayLike) -> NDArray[np.bool_]:
    """Error indicators ``err_i = 1[y_pred_i != y_true_i]`` ([ACT]: the event whose
    probability the criticizer's eps estimates).

    A missing prediction (None or NaN) counts as an error. Raises ValueError on empty or
    mismatched inputs and on a missing reference label.
    """
    predictions = _label_array(y_pred, "y_pred")
    references = _reference_labels(y_true, "y_true")
    check_same_length(y_pred=predictions, y_true=references)
    return ~_labels_equal(predictions, references) | _missing_mask(predictions)


# --------------------------------------------------------------------------- results


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class AccuracyEstimate(_Frozen):
    """Accuracy with its Wilson score interval at level 1 - alpha."""

    accuracy: float
    lower: float
    upper: float
    n: int
    alpha: float


class CriticizerReport(_Frozen):
    """Quality of eps as a detector of annotator errors. ``auroc`` is None when the
    annotator made no error or only errors (one class); ``auprc`` is None when it made no
    error."""

    error_rate: float
    auroc: float | None
    auprc: float | None
    ece: float
    brier: float
    n: int


class BudgetSensitivity(_Frozen):
    """Budget sensitivity curve: ``accuracy[j]`` is acc(grid[j]), ``acc0`` is acc(0)."""

    grid: tuple[float, ...]
    accuracy: tuple[float, ...]
    acc0: float
    n_items: int

    @property
    def aqg(self) -> tuple[float, ...]:
        """AQG(b) = acc(b) - acc(0) at every grid point."""
        return tuple(value - self.acc0 for value in self.accuracy)


class ErrorRateEstimate(_Frozen):
    """Horvitz–Thompson estimate of the annotator's error rate with a normal interval."""

    estimate: float
    lower: float
    upper: float
    std_error: float
    n_items: int
    n_reviewed: int
    alpha: float


class IsotonicCalibration(_Frozen):
    """A non-decreasing map eps -> P(error): fitted values at the knots ``thresholds``,
    linear in between and constant beyond the first and last knot."""

    thresholds: tuple[float, ...]
    values: tuple[float, ...]
    n_samples: int
    total_weight: float

    def predict(self, eps: ArrayLike) -> NDArray[np.float64]:
        """Calibrated error probabilities p̂(eps), by linear interpolation between the
        knots and clipping outside them (as sklearn's IsotonicRegression with
        ``out_of_bounds="clip"``)."""
        scores = np.atleast_1d(np.asarray(eps, dtype=np.float64))
        if scores.ndim != 1:
            raise ValueError(f"eps must be a scalar or a 1-D array, got shape {scores.shape}")
        if not np.isfinite(scores).all():
            raise ValueError("eps must be finite")
        return np.interp(scores, self.thresholds, self.values)


class BudgetRecommendation(_Frozen):
    """Human budget (number of reviews) recommended for a batch of ``n_items`` items."""

    paper: int
    calibrated: int | None
    recommended: int
    expected_residual_at_recommended: float | None
    error_rate: float
    n_items: int
    factor: float
    target_residual: float


# --------------------------------------------------------------------------- accuracy


def accuracy(y_pred: ArrayLike, y_true: ArrayLike) -> float:
    """Accuracy ``acc = 1/N Σ_i 1[y_pred_i == y_true_i]`` ([ACT]: annotation quality).

    A missing prediction (None/NaN) counts as wrong.
    """
    return 1.0 - float(label_errors(y_pred, y_true).mean())


def wilson_interval(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval [W27] for a binomial proportion p̂ = successes / n:

    ``(p̂ + z²/2n ± z·sqrt(p̂(1-p̂)/n + z²/4n²)) / (1 + z²/n)``, with z = Φ⁻¹(1 - alpha/2).

    Unlike the Wald interval it stays inside [0, 1] and keeps its coverage near p̂ = 0 or 1.
    """
    _validate_alpha(alpha)
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n={n}], got {successes}")
    z = _two_sided_z(alpha)
    p_hat = successes / n
    denominator = 1.0 + z * z / n
    center = (p_hat + z * z / (2 * n)) / denominator
    half_width = z * math.sqrt(p_hat * (1 - p_hat) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, center - half_width), min(1.0, center + half_width)


def accuracy_interval(
    y_pred: ArrayLike, y_true: ArrayLike, alpha: float = 0.05
) -> AccuracyEstimate:
    """Accuracy with its Wilson score interval [W27] at level 1 - alpha (see
    :func:`wilson_interval`); used to compare candidate annotators on a small human-labelled
    set ([ACT] "Pro Max")."""
    errors = label_errors(y_pred, y_true)
    n = len(errors)
    correct = n - int(errors.sum())
    lower, upper = wilson_interval(correct, n, alpha)
    return AccuracyEstimate(accuracy=correct / n, lower=lower, upper=upper, n=n, alpha=alpha)


# --------------------------------------------------------------------------- criticizer


def _scores_and_errors(
    eps: ArrayLike, errors: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    scores = as_probability_array(eps, "eps")
    indicators = _as_binary(errors, "errors")
    check_same_length(eps=scores, errors=indicators)
    return scores, indicators


def auroc(eps: ArrayLike, errors: ArrayLike) -> float:
    """Area under the ROC curve of eps as a detector of errors ([ACT]: criticism quality),
    via the Mann–Whitney statistic [MW47] with average ranks for ties:

    ``AUROC = (Σ_{i: err_i=1} rank(eps_i) - n₁(n₁+1)/2) / (n₁ · n₀)``

    i.e. P(eps of an error > eps of a correct label) + ½ P(tie). Raises ValueError when
    ``errors`` has only one class.
    """
    scores, indicators = _scores_and_errors(eps, errors)
    n_errors = int(indicators.sum())
    n_correct = len(indicators) - n_errors
    if n_errors == 0 or n_correct == 0:
        raise ValueError(
            "auroc is undefined when errors has only one class "
            f"({n_errors} errors, {n_correct} correct labels)"
        )
    ranks = rankdata(scores, method="average")
    u_statistic = ranks[indicators].sum() - n_errors * (n_errors + 1) / 2.0
    return float(u_statistic / (n_errors * n_correct))


def auprc(eps: ArrayLike, errors: ArrayLike) -> float:
    """Average precision of eps as a detector of errors (area under the precision–recall
    curve without interpolation, as ``sklearn.metrics.average_precision_score``):

    ``AP = Σ_k (R_k - R_{k-1}) · P_k``

    over the distinct eps values in decreasing order, P_k and R_k being precision and recall
    when flagging every item with eps >= the k-th value (R_0 = 0). Tied items enter together.
    Raises ValueError when there is no error.
    """
    scores, indicators = _scores_and_errors(eps, errors)
    n_errors = int(indicators.sum())
    if n_errors == 0:
        raise ValueError("auprc is undefined when errors has no positive (no annotator error)")
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_errors = scores[order], indicators[order]
    last_of_each_value = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(scores) - 1]
    true_positives = np.cumsum(sorted_errors)[last_of_each_value]
    flagged = last_of_each_value + 1
    precision = true_positives / flagged
    recall = true_positives / n_errors
    recall_steps = np.diff(np.r_[0.0, recall])
    return float(np.sum(recall_steps * precision))


def ece(eps: ArrayLike, errors: ArrayLike, n_bins: int = 10) -> float:
    """Expected calibration error of eps as P(error) [N15], with ``n_bins`` equal-width bins
    over [0, 1] (bin j holds eps in [j/n_bins, (j+1)/n_bins), the last bin also eps = 1):

    ``ECE = Σ_j (n_j / N) · |mean_{i∈j}(eps_i) - mean_{i∈j}(err_i)|``

    Empty bins contribute nothing.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    scores, indicators = _scores_and_errors(eps, errors)
    bins = np.minimum((scores * n_bins).astype(np.int64), n_bins - 1)
    score_sums = np.bincount(bins, weights=scores, minlength=n_bins)
    error_sums = np.bincount(bins, weights=indicators.astype(np.float64), minlength=n_bins)
    # |Σ eps - Σ err| / N per bin equals (n_j/N)·|mean eps - mean err| without dividing by n_j.
    return float(np.sum(np.abs(score_sums - error_sums)) / len(scores))


def brier(eps: ArrayLike, errors: ArrayLike) -> float:
    """Brier score [B50] of eps as P(error): ``1/N Σ_i (eps_i - err_i)²`` (lower is better)."""
    scores, indicators = _scores_and_errors(eps, errors)
    return float(np.mean((scores - indicators) ** 2))


def criticizer_report(
    eps: ArrayLike, y_machine: ArrayLike, y_true: ArrayLike, n_bins: int = 10
) -> CriticizerReport:
    """All criticizer-quality metrics of DESIGN §2.3 for ``err = 1[y_machine != y_true]``:
    error rate, AUROC ([MW47]), AUPRC (average precision), ECE ([N15], ``n_bins`` bins) and
    Brier ([B50]). AUROC / AUPRC are None where undefined (see :class:`CriticizerReport`).
    """
    errors = label_errors(y_machine, y_true)
    scores = as_probability_array(eps, "eps")
    check_same_length(eps=scores, y_machine=errors)
    n_errors = int(errors.sum())
    both_classes = 0 < n_errors < len(errors)
    return CriticizerReport(
        error_rate=n_errors / len(errors),
        auroc=auroc(scores, errors) if both_classes else None,
        auprc=auprc(scores, errors) if n_errors > 0 else None,
        ece=ece(scores, errors, n_bins),
        brier=brier(scores, errors),
        n=len(errors),
    )


# --------------------------------------------------------------------------- budget curve


def _budget_grid(grid: ArrayLike | None, n_items: int) -> NDArray[np.float64]:
    if grid is None:
        return np.arange(n_items + 1, dtype=np.float64) / n_items
    return as_probability_array(grid, "grid")


def _expected_corrected_errors(
    scores: NDArray[np.float64], errors: NDArray[np.bool_], n_reviews: NDArray[np.int64]
) -> NDArray[np.float64]:
    """Expected number of errors among the top ``n_reviews`` items by eps under random
    tie-breaking: complete tie groups count fully, the group straddling the cut counts its
    errors times the share of it that is reviewed. That is linear interpolation of the
    cumulative error count over the cumulative group sizes."""
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_errors = scores[order], errors[order]
    group_ends = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(scores) - 1]
    cumulative_items = np.r_[0, group_ends + 1]
    cumulative_errors = np.r_[0, np.cumsum(sorted_errors)[group_ends]]
    return np.interp(n_reviews, cumulative_items, cumulative_errors)


def budget_sensitivity(
    eps: ArrayLike,
    y_machine: ArrayLike,
    y_true: ArrayLike,
    grid: ArrayLike | None = None,
) -> BudgetSensitivity:
    """Budget sensitivity curve ([ACT]; DESIGN §2.3). For each budget fraction b in
    ``grid`` (default every k/N, k = 0..N) the top ⌈bN⌉ items by eps are reviewed, which
    makes their labels correct, and

    ``acc(b) = acc(0) + E[#errors among the top ⌈bN⌉ items] / N``.

    Ties in eps are order-independent: a tie group straddling the cut contributes its
    errors times (slots taken / group size), the expectation under random tie-breaking.
    """
    scores = as_probability_array(eps, "eps")
    errors = label_errors(y_machine, y_true)
    check_same_length(eps=scores, y_machine=errors)
    n_items = len(scores)
    budget_fractions = _budget_grid(grid, n_items)
    n_reviews = np.minimum(_ceil_count(budget_fractions * n_items), n_items)
    acc0 = 1.0 - float(errors.mean())
    corrected = _expected_corrected_errors(scores, errors, n_reviews)
    return BudgetSensitivity(
        grid=tuple(budget_fractions.tolist()),
        accuracy=tuple((acc0 + corrected / n_items).tolist()),
        acc0=acc0,
        n_items=n_items,
    )


def aqg(
    eps: ArrayLike,
    y_machine: ArrayLike,
    y_true: ArrayLike,
    budget_fraction: float | ArrayLike,
) -> float | NDArray[np.float64]:
    """Annotation Quality Gain ([ACT]): ``AQG(b) = acc(b) - acc(0)``, the accuracy gained
    by reviewing the top ⌈bN⌉ items by eps (see :func:`budget_sensitivity`). Returns a float
    for a scalar b and an array for an array of b."""
    scalar = np.ndim(budget_fraction) == 0
    fractions = as_probability_array(np.atleast_1d(budget_fraction), "budget_fraction")
    curve = budget_sensitivity(eps, y_machine, y_true, grid=fractions)
    gains = np.asarray(curve.accuracy) - curve.acc0
    return float(gains[0]) if scalar else gains


def _validate_integration_grid(grid: NDArray[np.float64]) -> None:
    if len(grid) < 2 or grid[0] != 0.0 or grid[-1] != 1.0:
        raise ValueError("grid must start at 0 and end at 1 to integrate over [0, 1]")
    if np.any(np.diff(grid) <= 0):
        raise ValueError("grid must be strictly increasing")


def abs_score(
    eps: ArrayLike,
    y_machine: ArrayLike,
    y_true: ArrayLike,
    normalized: bool = False,
    grid: ArrayLike | None = None,
) -> float:
    """Area under Budget Sensitivity ([ACT]; DESIGN §2.3), by the trapezoid rule:

    ``ABS = ∫_0^1 AQG(b) db``.

    With error rate e, a perfect criticizer gives e - e²/2 and a random (constant) one e/2
    on the default grid. ``normalized=True`` returns

    ``ABS* = (ABS - e/2) / (e - e²/2 - e/2)``

    (1 = perfect, 0 = random, < 0 worse than random; our normalisation, the paper's is not
    public). ABS* is undefined, and raises ValueError, when e is 0 or 1.
    """
    scores = as_probability_array(eps, "eps")
    budget_fractions = _budget_grid(grid, len(scores))
    _validate_integration_grid(budget_fractions)
    curve = budget_sensitivity(scores, y_machine, y_true, grid=budget_fractions)
    gains = np.asarray(curve.accuracy) - curve.acc0
    area = float(np.sum(np.diff(budget_fractions) * (gains[1:] + gains[:-1]) / 2.0))
    if not normalized:
        return area
    error_rate = 1.0 - curve.acc0
    if error_rate in (0.0, 1.0):
        raise ValueError(
            f"normalized ABS is undefined when the error rate is {error_rate:g} "
            "(a perfect and a random criticizer coincide)"
        )
    random_area = error_rate / 2.0
    perfect_area = error_rate - error_rate**2 / 2.0
    return (area - random_area) / (perfect_area - random_area)


# --------------------------------------------------------------------------- error rate


def _reviewed_errors(
    y_machine: np.ndarray, y_human: np.ndarray, reviewed: NDArray[np.bool_]
) -> NDArray[np.bool_]:
    machine_reviewed = y_machine[reviewed]
    human_reviewed = y_human[reviewed]
    missing = _missing_mask(human_reviewed)
    if missing.any():
        index = int(np.flatnonzero(reviewed)[np.flatnonzero(missing)[0]])
        raise ValueError(f"y_human is missing (None/NaN) at reviewed item index {index}")
    errors = np.zeros(len(y_machine), dtype=bool)
    errors[reviewed] = ~_labels_equal(machine_reviewed, human_reviewed) | _missing_mask(
        machine_reviewed
    )
    return errors


def _validate_inclusion_probabilities(pi: NDArray[np.float64], reviewed: NDArray[np.bool_]) -> None:
    outside = (pi < 0.0) | (pi > 1.0)
    if outside.any():
        index = int(np.flatnonzero(outside)[0])
        raise ValueError(f"pi must lie in (0, 1], got {pi[index]} at index {index}")
    reviewed_with_zero = reviewed & (pi == 0.0)
    if reviewed_with_zero.any():
        index = int(np.flatnonzero(reviewed_with_zero)[0])
        raise ValueError(
            f"delta is 1 where pi is 0 (index {index}): an item with pi = 0 cannot be sampled"
        )
    zero = pi == 0.0
    if zero.any():
        raise ValueError(
            f"pi is 0 for {int(zero.sum())} items (first at index {int(np.flatnonzero(zero)[0])}):"
            " the Horvitz–Thompson estimate is unbiased only when every pi > 0"
        )


def error_rate_estimate(
    y_machine: ArrayLike,
    y_human: ArrayLike,
    delta: ArrayLike,
    pi: ArrayLike,
    alpha: float = 0.05,
) -> ErrorRateEstimate:
    """Horvitz–Thompson [HT52] estimate of the annotator's error rate from a Poisson sample
    (item i reviewed, delta_i = 1, with probability pi_i; DESIGN §2.3, [ZC24]):

    ``ê = 1/N Σ_i δ_i / π_i · 1[y_m,i != y_h,i]``

    with the design-based variance estimate (unbiased for Var(ê) under Poisson sampling)

    ``V̂ = 1/N² Σ_i δ_i (1 - π_i) / π_i² · 1[y_m,i != y_h,i]``

    and the normal interval ê ± z_{1-alpha/2} √V̂ clipped to [0, 1]. The estimate itself is
    not clipped (that would bias it). ``y_human`` is read only where delta is 1. Raises
    ValueError if any pi is 0 or nothing was reviewed.
    """
    _validate_alpha(alpha)
    machine = _label_array(y_machine, "y_machine")
    human = _label_array(y_human, "y_human")
    reviewed = _as_binary(delta, "delta")
    probabilities = _as_float_array(pi, "pi")
    check_same_length(y_machine=machine, y_human=human, delta=reviewed, pi=probabilities)
    _validate_inclusion_probabilities(probabilities, reviewed)
    n_reviewed = int(reviewed.sum())
    if n_reviewed == 0:
        raise ValueError("no item was reviewed (delta is 0 everywhere)")

    errors = _reviewed_errors(machine, human, reviewed)
    n_items = len(machine)
    estimate = float(np.sum(errors / probabilities)) / n_items
    variance = float(np.sum(errors * (1.0 - probabilities) / probabilities**2)) / n_items**2
    std_error = math.sqrt(variance)
    half_width = _two_sided_z(alpha) * std_error
    return ErrorRateEstimate(
        estimate=estimate,
        lower=min(1.0, max(0.0, estimate - half_width)),
        upper=min(1.0, max(0.0, estimate + half_width)),
        std_error=std_error,
        n_items=n_items,
        n_reviewed=n_reviewed,
        alpha=alpha,
    )


# --------------------------------------------------------------------------- calibration


def _pool_adjacent_violators(
    targets: NDArray[np.float64], weights: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Weighted non-decreasing least-squares fit of ``targets`` (already in x order) [A55]."""
    block_means: list[float] = []
    block_weights: list[float] = []
    block_sizes: list[int] = []
    for target, weight in zip(targets.tolist(), weights.tolist(), strict=True):
        mean, total, size = target, weight, 1
        while block_means and block_means[-1] > mean:
            previous_mean, previous_total = block_means.pop(), block_weights.pop()
            size += block_sizes.pop()
            mean = (previous_mean * previous_total + mean * total) / (previous_total + total)
            total += previous_total
        block_means.append(mean)
        block_weights.append(total)
        block_sizes.append(size)
    return np.repeat(block_means, block_sizes)


def _drop_flat_interior_knots(
    knots: NDArray[np.float64], values: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    # A knot whose value equals both neighbours changes no interpolated value.
    keep = np.ones(len(values), dtype=bool)
    if len(values) > 2:
        keep[1:-1] = (values[1:-1] != values[:-2]) | (values[1:-1] != values[2:])
    return knots[keep], values[keep]


def calibrate_eps(
    eps_reviewed: ArrayLike,
    errors_reviewed: ArrayLike,
    weights: ArrayLike | None = None,
) -> IsotonicCalibration:
    """Isotonic calibration of eps: the non-decreasing p̂ minimising

    ``Σ_i w_i (err_i - p̂(eps_i))²``

    fitted by the weighted pool-adjacent-violators algorithm [A55] (items with equal eps are
    first pooled into their weighted mean). With ``weights = 1/pi`` of the reviewed items
    the loss is a Horvitz–Thompson [HT52] estimate of the population loss, so the fit
    targets P(error | eps) over all items, not just the reviewed ones (DESIGN §2.1).
    Predictions interpolate linearly between the knots (see
    :meth:`IsotonicCalibration.predict`).
    """
    scores = as_probability_array(eps_reviewed, "eps_reviewed")
    errors = _as_binary(errors_reviewed, "errors_reviewed").astype(np.float64)
    check_same_length(eps_reviewed=scores, errors_reviewed=errors)
    if weights is None:
        sample_weights = np.ones_like(scores)
    else:
        sample_weights = _as_float_array(weights, "weights")
        check_same_length(eps_reviewed=scores, weights=sample_weights)
        if np.any(sample_weights <= 0):
            raise ValueError("weights must be positive (e.g. 1/pi of the reviewed items)")

    knots, group = np.unique(scores, return_inverse=True)
    group_weights = np.bincount(group, weights=sample_weights)
    group_means = np.bincount(group, weights=sample_weights * errors) / group_weights
    fitted = _pool_adjacent_violators(group_means, group_weights)
    knots, fitted = _drop_flat_interior_knots(knots, fitted)
    return IsotonicCalibration(
        thresholds=tuple(knots.tolist()),
        values=tuple(fitted.tolist()),
        n_samples=len(scores),
        total_weight=float(sample_weights.sum()),
    )


# --------------------------------------------------------------------------- budget


def _error_rate_value(error_rate: float | ErrorRateEstimate) -> float:
    if isinstance(error_rate, ErrorRateEstimate):
        # A Horvitz–Thompson estimate can exceed 1 by chance; a budget cannot.
        return min(1.0, max(0.0, error_rate.estimate))
    value = as_finite_float(error_rate, "error_rate")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"error_rate must lie in [0, 1], got {error_rate!r}")
    return value


def _calibrated_budget(
    eps: ArrayLike, calibration: IsotonicCalibration, n_items: int, target_residual: float
) -> tuple[int, NDArray[np.float64]]:
    """Smallest B with (1/N) Σ_{i not in top B by eps} p̂(eps_i) <= target, and the expected
    residual error rate for every B = 0..N."""
    scores = as_probability_array(eps, "eps")
    if len(scores) != n_items:
        raise ValueError(f"eps must hold all n_items={n_items} items, got {len(scores)}")
    # p̂ is non-decreasing in eps, so sorting p̂ descending is reviewing by eps descending.
    error_probabilities = np.sort(calibration.predict(scores))[::-1]
    reviewed_mass = np.r_[0.0, np.cumsum(error_probabilities)]
    residual = np.maximum(reviewed_mass[-1] - reviewed_mass, 0.0) / n_items
    budget = int(np.flatnonzero(residual <= target_residual + 1e-12)[0])
    return budget, residual


def recommended_budget(
    error_rate: float | ErrorRateEstimate,
    n_items: int,
    *,
    factor: float = 1.1,
    eps: ArrayLike | None = None,
    calibration: IsotonicCalibration | None = None,
    target_residual: float = 0.01,
) -> BudgetRecommendation:
    """Human budget for a batch of N = ``n_items`` items (DESIGN §2.1, §2.3).

    - Paper rule ([ACT]: budget = estimated error proportion × 1.1):
      ``B_paper = min(N, ⌈factor · ê · N⌉)``.
    - With ``eps`` for all N items and a ``calibration`` p̂ (see :func:`calibrate_eps`):
      ``B_calibrated = min{B : (1/N) Σ_{i not in top B by eps} p̂(eps_i) <= target_residual}``,
      the smallest budget whose expected residual error rate meets the target.

    ``recommended`` is the smaller of the available ones; both are reported because the
    paper's rule ignores how well eps ranks the errors while the calibrated one relies on
    the calibration being right.
    """
    if isinstance(n_items, bool) or not isinstance(n_items, int | np.integer) or n_items < 1:
        raise ValueError(f"n_items must be a positive integer, got {n_items!r}")
    factor = as_finite_float(factor, "factor")
    if factor <= 0:
        raise ValueError(f"factor must be positive, got {factor!r}")
    target_residual = as_finite_float(target_residual, "target_residual")
    if not 0.0 <= target_residual < 1.0:
        raise ValueError(f"target_residual must lie in [0, 1), got {target_residual!r}")
    if (eps is None) != (calibration is None):
        raise ValueError("eps and calibration must be given together (or neither)")

    rate = _error_rate_value(error_rate)
    n_items = int(n_items)
    paper = min(n_items, int(_ceil_count(factor * rate * n_items)))
    calibrated: int | None = None
    expected_residual: float | None = None
    recommended = paper
    if eps is not None and calibration is not None:
        calibrated, residual = _calibrated_budget(eps, calibration, n_items, target_residual)
        recommended = min(paper, calibrated)
        expected_residual = float(residual[recommended])
    return BudgetRecommendation(
        paper=paper,
        calibrated=calibrated,
        recommended=recommended,
        expected_residual_at_recommended=expected_residual,
        error_rate=rate,
        n_items=n_items,
        factor=factor,
        target_residual=target_residual,
    )
