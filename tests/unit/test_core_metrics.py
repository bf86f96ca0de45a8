"""Tests of act.core.metrics: sklearn is the reference where it has the metric; the rest is
checked against hand computations, closed forms (DESIGN §2.3) and Monte Carlo."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from act.core.metrics import (
    ErrorRateEstimate,
    abs_score,
    accuracy,
    accuracy_interval,
    aqg,
    auprc,
    auroc,
    brier,
    budget_sensitivity,
    calibrate_eps,
    criticizer_report,
    ece,
    error_rate_estimate,
    label_errors,
    recommended_budget,
    wilson_interval,
)

FAST = settings(max_examples=60, deadline=None)

# eps on a coarse lattice so that ties are frequent; errors as 0/1.
scored_errors = st.integers(min_value=2, max_value=40).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 5).map(lambda k: k / 5), min_size=n, max_size=n),
        st.lists(st.integers(0, 1), min_size=n, max_size=n),
    )
)


def _labels_with_error_count(n_items: int, n_errors: int) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.zeros(n_items, dtype=int)
    y_machine = y_true.copy()
    y_machine[:n_errors] = 1
    return y_machine, y_true


# --------------------------------------------------------------------------- labels, accuracy


def test_label_errors_compares_ints_strings_and_mixed_dtypes() -> None:
    assert label_errors([1, 2, 3], [1, 0, 3]).tolist() == [False, True, False]
    assert label_errors(np.array(["cat", "dog"]), ["cat", "cow"]).tolist() == [False, True]
    assert label_errors(np.array([1, 2]), np.array(["1", "2"])).tolist() == [True, True]


def test_missing_prediction_counts_as_wrong() -> None:
    assert label_errors(["a", None, "c"], ["a", "b", "c"]).tolist() == [False, True, False]
    assert label_errors([1.0, math.nan], [1.0, 2.0]).tolist() == [False, True]
    assert accuracy(["a", None, "c", "d"], ["a", "b", "c", "x"]) == 0.5


def test_missing_reference_label_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"y_true has 1 missing labels .* index 1"):
        accuracy(["a", "b"], ["a", None])


@pytest.mark.parametrize(
    ("y_pred", "y_true", "message"),
    [
        ([], [], "y_pred is empty"),
        ([1, 2], [1], "y_pred has 2, y_true has 1"),
        ([[1, 2]], [[1, 2]], "must be a 1-D array"),
    ],
)
def test_accuracy_rejects_bad_input(y_pred: list, y_true: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        accuracy(y_pred, y_true)


def test_wilson_interval_matches_published_value() -> None:
    # 8 successes out of 10 at 95%: (0.4902, 0.9433), e.g. Newcombe (1998), Table I.
    lower, upper = wilson_interval(8, 10, alpha=0.05)
    assert lower == pytest.approx(0.4902, abs=1e-4)
    assert upper == pytest.approx(0.9433, abs=1e-4)


def test_accuracy_interval_contains_estimate_and_stays_in_unit_interval() -> None:
    perfect = accuracy_interval([1, 2, 3], [1, 2, 3])
    assert perfect.accuracy == 1.0 and perfect.upper == 1.0 and perfect.lower < 1.0
    result = accuracy_interval([0] * 80 + [1] * 20, [0] * 100, alpha=0.1)
    assert result.lower < result.accuracy == 0.8 < result.upper
    assert (result.n, result.alpha) == (100, 0.1)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 2.0])
def test_accuracy_interval_rejects_alpha_outside_open_unit_interval(alpha: float) -> None:
    with pytest.raises(ValueError, match=r"alpha must lie in \(0, 1\)"):
        accuracy_interval([1], [1], alpha=alpha)


# --------------------------------------------------------------------------- criticizer


@FAST
@given(scored_errors)
def test_auroc_auprc_brier_match_sklearn_with_ties(scored: tuple[list, list]) -> None:
    eps, errors = np.array(scored[0]), np.array(scored[1])
    assert brier(eps, errors) == pytest.approx(brier_score_loss(errors, eps), abs=1e-12)
    if errors.any():
        assert auprc(eps, errors) == pytest.approx(average_precision_score(errors, eps), abs=1e-12)
    if 0 < errors.sum() < len(errors):
        assert auroc(eps, errors) == pytest.approx(roc_auc_score(errors, eps), abs=1e-12)


def test_auroc_extremes() -> None:
    errors = [0, 0, 1, 1]
    assert auroc([0.1, 0.2, 0.8, 0.9], errors) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], errors) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], errors) == 0.5


def test_auroc_and_auprc_undefined_cases_raise() -> None:
    with pytest.raises(ValueError, match="only one class"):
        auroc([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="only one class"):
        auroc([0.1, 0.2], [True, True])
    with pytest.raises(ValueError, match="no positive"):
        auprc([0.1, 0.2], [0, 0])


def test_ece_hand_computed() -> None:
    # bin [0.1, 0.2): eps 0.125, 0.125 with errors 0, 1 -> |0.125 - 0.5| * 2/5
    # bin [0.7, 0.8): eps 0.75 with error 1            -> |0.75 - 1| * 1/5
    # bin [0.9, 1.0]: eps 0.9375, 1.0 with errors 1, 1  -> |0.96875 - 1| * 2/5
    eps = [0.125, 0.125, 0.75, 0.9375, 1.0]
    errors = [0, 1, 1, 1, 1]
    expected = 0.375 * 2 / 5 + 0.25 / 5 + 0.03125 * 2 / 5
    assert ece(eps, errors) == pytest.approx(expected, abs=1e-15)
    assert ece(eps, errors, n_bins=1) == pytest.approx(abs(np.mean(eps) - 0.8), abs=1e-15)


def test_ece_of_perfect_predictions_is_zero() -> None:
    assert ece([0.0, 1.0, 1.0, 0.0], [0, 1, 1, 0]) == 0.0


@pytest.mark.parametrize("n_bins", [0, -1, 2.5, True])
def test_ece_rejects_bad_bin_count(n_bins: object) -> None:
    with pytest.raises(ValueError, match="n_bins must be a positive integer"):
        ece([0.5], [1], n_bins=n_bins)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("eps", "errors", "message"),
    [
        ([0.5, math.nan], [0, 1], "eps contains 1 NaN"),
        ([0.5, 1.5], [0, 1], r"eps must lie in \[0, 1\]"),
        ([-0.1, 0.5], [0, 1], r"eps must lie in \[0, 1\]"),
        ([0.5, 0.5], [0, 2], "errors must be boolean or 0/1, got 2 at index 1"),
        ([0.5, 0.5], [0, 1, 1], "eps has 2, errors has 3"),
        ([], [], "eps is empty"),
    ],
)
def test_criticizer_metrics_reject_bad_input(eps: list, errors: list, message: str) -> None:
    for metric in (auroc, auprc, ece, brier):
        with pytest.raises(ValueError, match=message):
            metric(eps, errors)


def test_criticizer_report() -> None:
    y_true = np.array(["a", "b", "c", "d"])
    y_machine = np.array(["a", "x", "c", "y"])
    eps = np.array([0.1, 0.9, 0.2, 0.6])
    report = criticizer_report(eps, y_machine, y_true)
    assert report.error_rate == 0.5 and report.n == 4
    assert report.auroc == 1.0 and report.auprc == 1.0
    assert report.brier == pytest.approx(np.mean([0.01, 0.01, 0.04, 0.16]))
    assert report.ece == pytest.approx(ece(eps, [0, 1, 0, 1]))


def test_criticizer_report_without_errors_leaves_ranking_metrics_undefined() -> None:
    report = criticizer_report([0.1, 0.3], [1, 2], [1, 2])
    assert report.error_rate == 0.0 and report.auroc is None and report.auprc is None


# --------------------------------------------------------------------------- budget curve


def test_budget_sensitivity_hand_example_with_ties() -> None:
    # Sorted by eps: 0.9 (error), then a tie group at 0.5 of three items with one error,
    # then 0.1 (error). Error rate 3/5.
    eps = [0.5, 0.9, 0.1, 0.5, 0.5]
    y_machine = [1, 1, 1, 0, 0]
    y_true = [1, 0, 0, 0, 1]
    curve = budget_sensitivity(eps, y_machine, y_true)
    assert curve.acc0 == pytest.approx(0.4)
    corrected = [0, 1, 1 + 1 / 3, 1 + 2 / 3, 2, 3]
    assert curve.accuracy == pytest.approx([0.4 + c / 5 for c in corrected])
    assert curve.grid == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert curve.aqg == pytest.approx([c / 5 for c in corrected])


@FAST
@given(scored_errors, st.data())
def test_budget_sensitivity_is_invariant_to_item_order(scored: tuple, data: st.DataObject) -> None:
    eps, errors = np.array(scored[0]), np.array(scored[1])
    y_true = np.zeros(len(eps), dtype=int)
    permutation = np.array(data.draw(st.permutations(range(len(eps)))))
    original = budget_sensitivity(eps, errors, y_true)
    permuted = budget_sensitivity(eps[permutation], errors[permutation], y_true)
    assert permuted.accuracy == pytest.approx(original.accuracy, abs=1e-12)
    assert np.all(np.diff(original.accuracy) >= -1e-12)
    assert original.accuracy[-1] == pytest.approx(1.0)


def test_budget_grid_rounding_does_not_add_a_review() -> None:
    # 0.3 * 10 == 3.0000000000000004 in floating point: still three reviews.
    eps = np.linspace(1.0, 0.0, 10)
    y_machine, y_true = _labels_with_error_count(10, 10)
    assert aqg(eps, y_machine, y_true, 0.3) == pytest.approx(0.3)


def test_aqg_scalar_and_array() -> None:
    eps = [0.9, 0.8, 0.1, 0.2]
    y_machine, y_true = [1, 1, 0, 0], [0, 0, 0, 0]
    assert isinstance(aqg(eps, y_machine, y_true, 0.25), float)
    assert aqg(eps, y_machine, y_true, 0.25) == pytest.approx(0.25)
    gains = aqg(eps, y_machine, y_true, [0.0, 0.5, 0.75, 1.0])
    assert isinstance(gains, np.ndarray)
    assert gains == pytest.approx([0.0, 0.5, 0.5, 0.5])


@pytest.mark.parametrize("n_errors", [1, 7, 13, 19])
def test_abs_perfect_random_and_inverted_criticizers(n_errors: int) -> None:
    n_items = 20
    y_machine, y_true = _labels_with_error_count(n_items, n_errors)
    errors = (y_machine != y_true).astype(float)
    e = n_errors / n_items

    assert abs_score(errors, y_machine, y_true) == pytest.approx(e - e**2 / 2, abs=1e-12)
    assert abs_score(errors, y_machine, y_true, normalized=True) == pytest.approx(1.0)

    constant = np.full(n_items, 0.3)
    assert abs_score(constant, y_machine, y_true) == pytest.approx(e / 2, abs=1e-12)
    assert abs_score(constant, y_machine, y_true, normalized=True) == pytest.approx(0, abs=1e-12)

    assert abs_score(1 - errors, y_machine, y_true) == pytest.approx(e**2 / 2, abs=1e-12)
    assert abs_score(1 - errors, y_machine, y_true, normalized=True) < 0


def test_abs_with_custom_grid() -> None:
    y_machine, y_true = _labels_with_error_count(10, 5)
    errors = (y_machine != y_true).astype(float)
    # Coarse grid: AQG(0) = 0, AQG(0.5) = 0.5, AQG(1) = 0.5 -> trapezoid 0.125 + 0.25.
    assert abs_score(errors, y_machine, y_true, grid=[0, 0.5, 1]) == pytest.approx(0.375)


@pytest.mark.parametrize("n_errors", [0, 8])
def test_normalized_abs_undefined_when_error_rate_is_zero_or_one(n_errors: int) -> None:
    y_machine, y_true = _labels_with_error_count(8, n_errors)
    with pytest.raises(ValueError, match="normalized ABS is undefined when the error rate"):
        abs_score(np.linspace(0, 1, 8), y_machine, y_true, normalized=True)


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ([0.1, 1.0], "must start at 0 and end at 1"),
        ([0.0, 0.9], "must start at 0 and end at 1"),
        ([0.0, 0.6, 0.4, 1.0], "strictly increasing"),
        ([0.0, 1.2], r"grid must lie in \[0, 1\]"),
    ],
)
def test_abs_rejects_bad_grid(grid: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        abs_score([0.1, 0.9], [0, 1], [0, 0], grid=grid)


# --------------------------------------------------------------------------- error rate


def _review_population(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_items = 1000
    y_true = rng.integers(0, 5, n_items)
    wrong = rng.random(n_items) < 0.2
    y_machine = np.where(wrong, (y_true + 1) % 5, y_true)
    # Review probabilities correlated with the errors, as a criticizer would make them.
    pi = np.clip(np.where(wrong, 0.6, 0.15) + rng.normal(0, 0.05, n_items), 0.05, 1.0)
    return y_machine, y_true, pi


def test_error_rate_estimate_is_unbiased_and_covers() -> None:
    y_machine, y_true, pi = _review_population()
    true_rate = float(np.mean(y_machine != y_true))
    rng = np.random.default_rng(1)
    estimates = [
        error_rate_estimate(y_machine, y_true, rng.random(len(pi)) < pi, pi) for _ in range(1500)
    ]
    values = np.array([result.estimate for result in estimates])
    monte_carlo_error = values.std() / math.sqrt(len(values))
    assert abs(values.mean() - true_rate) < 4 * monte_carlo_error
    # The design-based variance estimate is unbiased for the sampling variance.
    mean_variance = np.mean([result.std_error**2 for result in estimates])
    assert mean_variance == pytest.approx(values.var(), rel=0.15)
    coverage = np.mean([result.lower <= true_rate <= result.upper for result in estimates])
    assert 0.9 <= coverage <= 0.99


def test_error_rate_estimate_reads_human_labels_only_where_reviewed() -> None:
    y_machine = np.array(["a", "b", "c", "d"])
    y_human = np.array(["a", "x", None, None], dtype=object)
    result = error_rate_estimate(y_machine, y_human, [1, 1, 0, 0], [0.5, 0.25, 0.5, 0.5])
    assert result.estimate == pytest.approx((1 / 0.25) / 4)
    assert result.std_error == pytest.approx(math.sqrt(0.75 / 0.25**2) / 4)
    assert (result.n_items, result.n_reviewed) == (4, 2)
    assert result.lower == 0.0 and result.upper == 1.0  # clipped


def test_error_rate_estimate_census_is_exact() -> None:
    result = error_rate_estimate([1, 2, 3, 4], [1, 2, 0, 4], [1, 1, 1, 1], [1, 1, 1, 1])
    assert (result.estimate, result.lower, result.upper, result.std_error) == (0.25, 0.25, 0.25, 0)


@pytest.mark.parametrize(
    ("delta", "pi", "message"),
    [
        ([1, 0, 0], [0.0, 0.5, 0.5], "delta is 1 where pi is 0"),
        ([1, 0, 0], [0.5, 0.0, 0.0], "pi is 0 for 2 items .*unbiased only when every pi > 0"),
        ([0, 0, 0], [0.5, 0.5, 0.5], "no item was reviewed"),
        ([1, 0, 0], [1.5, 0.5, 0.5], r"pi must lie in \(0, 1\]"),
        ([1, 0, 0], [0.5, math.nan, 0.5], "pi must be finite"),
        ([1, 0], [0.5, 0.5, 0.5], "delta has 2, pi has 3"),
        ([1, 0, 2], [0.5, 0.5, 0.5], "delta must be boolean or 0/1"),
    ],
)
def test_error_rate_estimate_rejects_bad_design(delta: list, pi: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        error_rate_estimate([1, 2, 3], [1, 2, 3], delta, pi)


def test_error_rate_estimate_rejects_missing_human_label_on_reviewed_item() -> None:
    with pytest.raises(ValueError, match=r"y_human is missing .* index 1"):
        error_rate_estimate([1, 2], [1, None], [1, 1], [0.5, 0.5])


# --------------------------------------------------------------------------- calibration


@FAST
@given(st.integers(0, 2**32 - 1), st.booleans())
def test_isotonic_calibration_matches_sklearn(seed: int, weighted: bool) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    eps = rng.integers(0, 12, n) / 11  # frequent ties
    errors = (rng.random(n) < eps).astype(int)
    weights = 1 / rng.uniform(0.05, 1.0, n) if weighted else None
    calibration = calibrate_eps(eps, errors, weights)
    reference = IsotonicRegression(out_of_bounds="clip").fit(eps, errors, sample_weight=weights)
    queries = np.linspace(0, 1, 41)
    assert calibration.predict(queries) == pytest.approx(reference.predict(queries), abs=1e-9)
    assert np.all(np.diff(calibration.predict(queries)) >= -1e-12)


def test_isotonic_calibration_pools_violators_and_clips() -> None:
    calibration = calibrate_eps([0.2, 0.4, 0.6, 0.8], [0, 1, 0, 1])
    # Pooled middle block (0.4, 0.6) has mean 0.5; outside [0.2, 0.8] the ends are kept.
    assert calibration.predict([0.0, 0.2, 0.5, 0.7, 0.8, 1.0]) == pytest.approx(
        [0.0, 0.0, 0.5, 0.75, 1.0, 1.0]
    )
    assert calibration.predict(0.5) == pytest.approx([0.5])


@pytest.mark.parametrize(
    ("weights", "message"),
    [([1.0, 0.0], "weights must be positive"), ([1.0], "eps_reviewed has 2, weights has 1")],
)
def test_calibrate_eps_rejects_bad_weights(weights: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        calibrate_eps([0.1, 0.9], [0, 1], weights)


# --------------------------------------------------------------------------- budget


def test_recommended_budget_paper_rule() -> None:
    # 1.1 * 0.1 * 100 is 11.000000000000002 in floating point: still 11 reviews.
    recommendation = recommended_budget(0.1, 100)
    assert (recommendation.paper, recommendation.recommended) == (11, 11)
    assert recommendation.calibrated is None
    assert recommendation.expected_residual_at_recommended is None
    assert recommended_budget(0.95, 100).paper == 100
    assert recommended_budget(0.123, 1000, factor=1.3).paper == math.ceil(1.3 * 123)


def test_recommended_budget_accepts_error_rate_estimate() -> None:
    estimate = ErrorRateEstimate(
        estimate=0.2, lower=0.15, upper=0.25, std_error=0.02, n_items=50, n_reviewed=10, alpha=0.05
    )
    assert recommended_budget(estimate, 50).paper == 11


def test_recommended_budget_with_calibration_takes_the_smaller_budget() -> None:
    # Calibration: eps 0.9 -> P(error) 0.9, eps 0.1 -> 0.0.
    calibration = calibrate_eps([0.1] * 10 + [0.9] * 10, [0] * 10 + [1] * 9 + [0])
    assert calibration.predict([0.1, 0.9]) == pytest.approx([0.0, 0.9])
    eps = np.array([0.9] * 10 + [0.1] * 90)
    recommendation = recommended_budget(0.3, 100, eps=eps, calibration=calibration)
    assert recommendation.paper == 33
    # Reviewing B of the ten flagged items leaves (10 - B) * 0.9 / 100 expected errors;
    # <= 1% first at B = 9.
    assert recommendation.calibrated == 9
    assert recommendation.recommended == 9
    assert recommendation.expected_residual_at_recommended == pytest.approx(0.009)


def test_recommended_budget_keeps_paper_rule_when_it_is_smaller() -> None:
    calibration = calibrate_eps([0.0, 1.0], [0, 1])
    eps = np.linspace(0, 1, 100)
    recommendation = recommended_budget(0.05, 100, eps=eps, calibration=calibration)
    assert recommendation.recommended == recommendation.paper == 6
    assert recommendation.calibrated is not None and recommendation.calibrated > 6
    expected_residual = np.sort(calibration.predict(eps))[: 100 - 6].sum() / 100
    assert recommendation.expected_residual_at_recommended == pytest.approx(expected_residual)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"error_rate": 1.5, "n_items": 10}, r"error_rate must lie in \[0, 1\]"),
        ({"error_rate": 0.1, "n_items": 0}, "n_items must be a positive integer"),
        ({"error_rate": 0.1, "n_items": 10, "factor": 0.0}, "factor must be positive"),
        ({"error_rate": 0.1, "n_items": 10, "target_residual": 1.0}, "target_residual"),
        ({"error_rate": 0.1, "n_items": 10, "eps": [0.5] * 10}, "eps and calibration"),
        (
            {
                "error_rate": 0.1,
                "n_items": 10,
                "eps": [0.5] * 9,
                "calibration": calibrate_eps([0.1, 0.9], [0, 1]),
            },
            "eps must hold all n_items=10 items, got 9",
        ),
    ],
)
def test_recommended_budget_rejects_bad_input(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        recommended_budget(**kwargs)
