"""Tests of act.core.transforms: the budget transforms pi_B(eps) of DESIGN.md §2.1.

Property-based checks cover every method over a range of hyperparameters, floors and eps
vectors with ties, zeros and ones; example-based checks pin the behaviour each method is
chosen for (top-B selection, uniform mixing, thresholding, the paper variant's collapse) and
the error messages of bad input.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from act.core.transforms import DEFAULT_PARAMS, METHODS, TransformSpec, review_probabilities

PI_MINS = (0.0, 1e-3, 0.05)

# Values that stress the transforms: exact zeros and ones, and repeats that create ties.
_special_eps = st.sampled_from([0.0, 1.0, 0.5, 0.25, 1e-12, 1.0 - 1e-12])
_eps_value = st.one_of(_special_eps, st.floats(min_value=0.0, max_value=1.0))
eps_vectors = st.lists(_eps_value, min_size=1, max_size=60).map(np.array)

_unit = st.one_of(st.sampled_from([0.0, 0.1, 0.5, 1.0]), st.floats(min_value=0.0, max_value=1.0))
_beta = st.one_of(
    st.sampled_from([1e-3, 1.0, 10.0, 100.0, 1e4]),
    st.floats(min_value=1e-3, max_value=1e4),
)
method_params = st.one_of(
    st.tuples(st.just("norm"), st.fixed_dictionaries({"tau": _unit})),
    st.tuples(st.just("norm-paper"), st.just({})),
    st.tuples(st.just("exp"), st.fixed_dictionaries({"beta": _beta})),
    st.tuples(
        st.just("thre"),
        st.fixed_dictionaries({"rho": _unit, "spread": st.sampled_from(["uniform", "eps"])}),
    ),
    st.tuples(st.just("logistic"), st.fixed_dictionaries({"beta": _beta})),
    st.tuples(st.sampled_from(METHODS), st.just({})),  # the documented defaults
)


@st.composite
def problems(draw: st.DrawFn) -> tuple[np.ndarray, float, str, dict[str, Any], float]:
    """(eps, budget, method, params, pi_min) with a valid budget in [N * pi_min, N]."""
    eps = draw(eps_vectors)
    method, params = draw(method_params)
    pi_min = draw(st.sampled_from(PI_MINS))
    n_items = eps.size
    lowest = n_items * pi_min
    kind = draw(st.sampled_from(["fraction", "integer", "edge"]))
    if kind == "integer":
        budget = float(draw(st.integers(min_value=max(1, int(np.ceil(lowest))), max_value=n_items)))
    elif kind == "edge":
        budget = draw(st.sampled_from([float(n_items), lowest if lowest > 0 else 1e-9]))
    else:
        fraction = draw(st.floats(min_value=1e-9, max_value=1.0))
        budget = lowest + fraction * (n_items - lowest)
    return eps, budget, method, params, pi_min


def _lower_bound(method: str, pi_min: float) -> float:
    return 0.0 if method == "norm-paper" else pi_min


@settings(max_examples=400, deadline=None)
@given(problems())
def test_every_transform_spends_the_budget_within_bounds_and_is_monotone(problem) -> None:
    eps, budget, method, params, pi_min = problem
    pi = review_probabilities(eps, budget, method, pi_min=pi_min, **params)

    assert pi.dtype == np.float64
    assert pi.shape == eps.shape
    assert abs(pi.sum() - budget) <= 1e-6 * budget, (pi.sum(), budget)
    # [pi_min, 1], allowing the last-bit rounding of averaging pi over tied eps (thre).
    assert pi.min() >= _lower_bound(method, pi_min) * (1 - 1e-12), pi.min()
    assert pi.max() <= 1.0, pi.max()

    order = np.argsort(eps, kind="stable")
    sorted_eps, sorted_pi = eps[order], pi[order]
    # eps_i < eps_j implies pi_i <= pi_j (up to rounding) ...
    strictly_increasing = np.diff(sorted_eps) > 0
    assert np.all(np.diff(sorted_pi)[strictly_increasing] >= -1e-12)
    # ... and eps_i == eps_j implies pi_i == pi_j exactly.
    tied = np.diff(sorted_eps) == 0
    np.testing.assert_array_equal(sorted_pi[1:][tied], sorted_pi[:-1][tied])


@settings(max_examples=150, deadline=None)
@given(problems(), st.data())
def test_transforms_are_deterministic_and_permutation_equivariant(problem, data) -> None:
    eps, budget, method, params, pi_min = problem
    pi = review_probabilities(eps, budget, method, pi_min=pi_min, **params)
    again = review_probabilities(eps.copy(), budget, method, pi_min=pi_min, **params)
    np.testing.assert_array_equal(pi, again)

    permutation = np.array(data.draw(st.permutations(list(range(eps.size)))), dtype=int)
    permuted = review_probabilities(eps[permutation], budget, method, pi_min=pi_min, **params)
    np.testing.assert_allclose(permuted, pi[permutation], rtol=1e-12, atol=1e-15)


@settings(max_examples=100, deadline=None)
@given(eps_vectors, method_params, st.sampled_from(PI_MINS))
def test_budget_of_all_items_reviews_everything(eps, method_and_params, pi_min) -> None:
    method, params = method_and_params
    pi = review_probabilities(eps, eps.size, method, pi_min=pi_min, **params)
    np.testing.assert_array_equal(pi, np.ones(eps.size))


@settings(max_examples=100, deadline=None)
@given(eps_vectors, method_params, st.sampled_from([1e-3, 0.05]))
def test_budget_of_n_times_pi_min_puts_every_item_at_the_floor(
    eps, method_and_params, pi_min
) -> None:
    method, params = method_and_params
    assume(method != "norm-paper")  # the paper variant has no floor
    pi = review_probabilities(eps, eps.size * pi_min, method, pi_min=pi_min, **params)
    np.testing.assert_array_equal(pi, np.full(eps.size, pi_min))


# --- what each method is for ------------------------------------------------------------------


def test_exp_with_huge_beta_selects_the_top_b_items() -> None:
    rng = np.random.default_rng(3)
    eps = rng.permutation(np.linspace(0.02, 0.98, 40))  # distinct, at least 0.024 apart
    top = np.argsort(-eps)[:7]
    rest = np.setdiff1d(np.arange(40), top)

    pi = review_probabilities(eps, 7, "exp", pi_min=0.0, beta=1e4)
    np.testing.assert_allclose(pi[top], 1.0, atol=1e-12)
    np.testing.assert_allclose(pi[rest], 0.0, atol=1e-12)

    # With a floor, the others sit at pi_min and the B-th item gives up what they take.
    pi = review_probabilities(eps, 7, "exp", pi_min=1e-3, beta=1e4)
    np.testing.assert_allclose(pi[rest], 1e-3, rtol=1e-9)
    assert np.sort(pi[top])[0] == pytest.approx(1.0 - 33 * 1e-3)
    np.testing.assert_allclose(np.sort(pi[top])[1:], 1.0, atol=1e-12)


@pytest.mark.parametrize(
    ("eps", "budget", "method", "params", "expected"),
    [
        # The unsaturated item's weight is below one ulp of the budget: 1 + e^-40 == 1.
        ([0.9, 0.1], 1.0, "exp", {"beta": 50.0}, [1.0, 0.0]),
        ([0.5, 1e-17], 1.0, "norm-paper", {}, [1.0, 2e-17]),
        ([0.5, 1e-17], 1.0, "norm", {"tau": 0.0}, [1.0, 2e-17]),
        # The free item's weight relative to the saturated one under- or overflows a double.
        ([0.2, 0.9], 1.5, "exp", {"beta": 1e4}, [0.5, 1.0]),
        ([0.0, 1.0], 1.5, "exp", {"beta": 720.0}, [0.5, 1.0]),
        ([1.0, 5e-324], 1.5, "norm-paper", {}, [1.0, 0.5]),
    ],
)
def test_water_filling_is_exact_when_weights_span_more_than_a_double(
    eps, budget, method, params, expected
) -> None:
    """Sharp weights (exp with large beta, eps ratios beyond 1e16) must still spend exactly B;
    DESIGN.md §2.1 asks for top-B selection as beta -> inf, with pi_min = 0 allowed."""
    pi = review_probabilities(eps, budget, method, pi_min=0.0, **params)
    assert pi.sum() == pytest.approx(budget, rel=1e-9)
    np.testing.assert_allclose(pi, expected, rtol=1e-6, atol=1e-15)


def test_exp_with_tiny_beta_is_nearly_uniform() -> None:
    eps = np.linspace(0.0, 1.0, 50)
    pi = review_probabilities(eps, 10, "exp", beta=1e-3)
    np.testing.assert_allclose(pi, 0.2, rtol=2e-3)


def test_norm_with_tau_one_is_uniform() -> None:
    eps = np.array([0.0, 0.9, 0.3, 0.3, 1.0, 0.05, 0.6, 0.2])
    pi = review_probabilities(eps, 3, "norm", tau=1.0)
    np.testing.assert_allclose(pi, 3 / 8, rtol=1e-12)


def test_norm_is_proportional_to_the_mixed_score_where_not_clipped() -> None:
    eps = np.array([0.05, 0.1, 0.2, 0.4, 0.8, 0.0])
    tau = 0.25
    pi = review_probabilities(eps, 1.5, "norm", pi_min=1e-3, tau=tau)
    mixed = (1 - tau) * eps + tau * eps.mean()
    np.testing.assert_allclose(pi / mixed, (pi / mixed)[0], rtol=1e-12)


def test_thre_with_no_audit_share_and_no_floor_selects_exactly_the_top_b() -> None:
    rng = np.random.default_rng(7)
    eps = rng.permutation(rng.uniform(size=30))
    pi = review_probabilities(eps, 9, "thre", pi_min=0.0, rho=0.0)
    top = np.argsort(-eps)[:9]
    expected = np.zeros(30)
    expected[top] = 1.0
    np.testing.assert_array_equal(pi, expected)


def test_thre_keeps_the_audit_share_for_the_other_items() -> None:
    eps = np.linspace(0.01, 0.99, 50)
    pi = review_probabilities(eps, 10, "thre", rho=0.1)  # k = floor(0.9 * 10) = 9
    order = np.argsort(-eps)
    np.testing.assert_array_equal(pi[order[:9]], 1.0)
    np.testing.assert_allclose(pi[order[9:]], 1 / 41, rtol=1e-12)


def test_thre_spread_eps_gives_the_other_items_pi_proportional_to_eps_above_the_floor() -> None:
    eps = np.linspace(0.0, 0.99, 100) ** 2
    pi_min = 1e-3
    pi = review_probabilities(eps, 10, "thre", pi_min=pi_min, rho=0.3, spread="eps")
    order = np.argsort(-eps)
    np.testing.assert_array_equal(pi[order[:7]], 1.0)  # k = floor(0.7 * 10)
    rest = order[7:]
    assert np.all(pi[rest] < 1.0)
    free = rest[pi[rest] > pi_min * (1 + 1e-9)]
    floored = rest[pi[rest] <= pi_min * (1 + 1e-9)]
    assert free.size > 50 and floored.size > 0
    ratio = pi[free] / eps[free]
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-9)
    np.testing.assert_allclose(pi[floored], pi_min, rtol=1e-12)
    assert eps[floored].max() < eps[free].min()


def test_logistic_stays_strictly_inside_the_bounds_for_moderate_beta() -> None:
    eps = np.linspace(0.1, 0.9, 40)
    pi = review_probabilities(eps, 12, "logistic", beta=5.0)
    assert np.all(pi > 1e-3)
    assert np.all(pi < 1.0)
    assert np.all(np.diff(pi) > 0)  # strictly increasing where eps is
    assert pi.sum() == pytest.approx(12, rel=1e-9)


def test_norm_paper_collapses_at_low_budget_with_tiny_pi_for_reviewable_items() -> None:
    """The paper's normalisation pi ∝ eps has no floor: at a low budget, items that can still
    be reviewed get pi far below pi_min (and items with eps = 0 get pi = 0), so a reviewed
    item's weight 1/pi explodes. This is the collapse DESIGN.md §2.1 warns about; `norm`
    (tau > 0, floor pi_min) avoids it."""
    rng = np.random.default_rng(11)
    eps = np.concatenate([rng.uniform(0.5, 1.0, 10), rng.uniform(1e-4, 1e-2, 990), [0.0]])
    budget = 5.0  # 0.5% of the items
    paper = review_probabilities(eps, budget, "norm-paper")
    assert paper.sum() == pytest.approx(budget, rel=1e-9)
    positive = paper[eps > 0]
    assert np.all(positive > 0)  # every item with eps > 0 can still be drawn ...
    assert positive.min() < 1e-3 / 5  # ... but some with pi far below pi_min = 1e-3
    assert 1.0 / positive.min() > 5_000  # a huge inverse-probability weight
    assert paper[eps == 0].item() == 0.0  # and eps = 0 is never reviewed: biased

    floored = review_probabilities(eps, budget, "norm")
    assert floored.min() >= 1e-3


def test_norm_paper_gives_zero_eps_items_the_rest_when_few_items_are_flagged() -> None:
    eps = np.array([0.0, 0.0, 0.0, 0.0, 0.7, 0.2])
    pi = review_probabilities(eps, 3, "norm-paper")
    np.testing.assert_allclose(pi, [0.25, 0.25, 0.25, 0.25, 1.0, 1.0], rtol=1e-12)


def test_default_hyperparameters_are_those_documented() -> None:
    assert DEFAULT_PARAMS == {
        "norm": {"tau": 0.1},
        "norm-paper": {},
        "exp": {"beta": 10.0},
        "thre": {"rho": 0.1, "spread": "uniform"},
        "logistic": {"beta": 10.0},
    }
    eps = np.linspace(0.0, 1.0, 21)
    for method, params in DEFAULT_PARAMS.items():
        np.testing.assert_array_equal(
            review_probabilities(eps, 4, method),
            review_probabilities(eps, 4, method, pi_min=1e-3, **params),
        )


# --- errors -----------------------------------------------------------------------------------

_EPS = [0.1, 0.5, 0.9, 0.3]


@pytest.mark.parametrize(
    ("eps", "budget", "method", "kwargs", "message"),
    [
        ([0.1, float("nan"), 0.3], 1, "norm", {}, r"eps contains 1 NaN or infinite"),
        ([0.1, float("inf"), 0.3], 1, "exp", {}, r"eps contains 1 NaN or infinite"),
        ([0.1, -0.01, 0.3], 1, "thre", {}, r"eps must lie in \[0, 1\].*index 1"),
        ([0.1, 1.5, 0.3], 1, "logistic", {}, r"eps must lie in \[0, 1\].*index 1"),
        ([], 1, "norm", {}, r"eps is empty"),
        ([[0.1, 0.2], [0.3, 0.4]], 1, "norm", {}, r"eps must be one-dimensional"),
        (["a", "b"], 1, "norm", {}, r"eps must be an array of numbers"),
        (_EPS, 0, "norm", {}, r"budget must be > 0"),
        (_EPS, -1, "exp", {}, r"budget must be > 0"),
        (_EPS, float("nan"), "exp", {}, r"budget must be finite"),
        (_EPS, 4.5, "thre", {}, r"budget 4.5 exceeds the number of items N = 4"),
        (_EPS, 0.1, "thre", {"pi_min": 0.05}, r"below N \* pi_min"),
        (_EPS, 1, "norm", {"pi_min": 1.0}, r"pi_min must be in \[0, 1\)"),
        (_EPS, 1, "norm", {"pi_min": -0.1}, r"pi_min must be in \[0, 1\)"),
        (_EPS, 1, "softmax", {}, r"unknown transform method 'softmax'"),
        (_EPS, 1, "exp", {"tau": 0.5}, r"unknown parameter\(s\) \['tau'\] for transform 'exp'"),
        (_EPS, 1, "norm-paper", {"tau": 0.5}, r"unknown parameter.*accepted: none"),
        (_EPS, 1, "exp", {"beta": 0.0}, r"beta must be > 0"),
        (_EPS, 1, "logistic", {"beta": -2.0}, r"beta must be > 0"),
        (_EPS, 1, "exp", {"beta": float("inf")}, r"beta must be finite"),
        (_EPS, 1, "thre", {"rho": 1.5}, r"rho must be in \[0, 1\]"),
        (_EPS, 1, "thre", {"rho": -0.1}, r"rho must be in \[0, 1\]"),
        (_EPS, 1, "norm", {"tau": 2.0}, r"tau must be in \[0, 1\]"),
        (_EPS, 1, "thre", {"spread": "linear"}, r"spread must be one of \['uniform', 'eps'\]"),
    ],
)
def test_bad_input_raises_a_value_error_naming_the_problem(
    eps, budget, method, kwargs, message
) -> None:
    with pytest.raises(ValueError, match=message):
        review_probabilities(eps, budget, method, **kwargs)


# --- TransformSpec ----------------------------------------------------------------------------


def test_transform_spec_id_is_stable_and_names_the_resolved_defaults() -> None:
    assert TransformSpec().id == "thre(rho=0.1,spread=uniform;pi_min=0.001)"
    assert TransformSpec(method="exp").id == "exp(beta=10.0;pi_min=0.001)"
    assert TransformSpec(method="exp", params={"beta": 10}).id == "exp(beta=10.0;pi_min=0.001)"
    assert TransformSpec(method="norm-paper").id == "norm-paper(;pi_min=0.001)"
    assert (
        TransformSpec(method="thre", params={"spread": "eps", "rho": 0.0}, pi_min=0.0).id
        == "thre(rho=0.0,spread=eps;pi_min=0.0)"
    )
    # The parameters' order does not matter, and the id survives a JSON round trip.
    spec = TransformSpec(method="thre", params={"spread": "eps", "rho": 0.2})
    assert spec.id == TransformSpec(method="thre", params={"rho": 0.2, "spread": "eps"}).id
    assert TransformSpec.model_validate_json(spec.model_dump_json()).id == spec.id
    assert TransformSpec(method="exp", params={"beta": 5}).id != TransformSpec(method="exp").id


def test_transform_spec_id_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match=r"unknown parameter"):
        _ = TransformSpec(method="exp", params={"rho": 0.1}).id
    with pytest.raises(ValueError, match=r"unknown transform method"):
        _ = TransformSpec(method="nope").id


@settings(max_examples=60, deadline=None)
@given(problems())
def test_transform_spec_apply_equals_review_probabilities(problem) -> None:
    eps, budget, method, params, pi_min = problem
    spec = TransformSpec(method=method, params=params, pi_min=pi_min)
    np.testing.assert_array_equal(
        spec.apply(eps, budget),
        review_probabilities(eps, budget, method, pi_min=pi_min, **params),
    )
