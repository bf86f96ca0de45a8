"""Tests of act.core.sampling: keyed randomness and the batch samplers of DESIGN.md §2.2."""

from __future__ import annotations

import hmac
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from act.core.sampling import draw, keyed_uniform
from act.core.transforms import review_probabilities


def _reference_uniform(item_id: str | bytes | int, seed: str | bytes | int) -> float:
    """u = first 8 bytes of HMAC-SHA256(seed, id), big-endian, top 53 bits / 2^53 (stdlib)."""

    def as_bytes(value: str | bytes | int) -> bytes:
        if isinstance(value, bytes):
            return value
        if isinstance(value, str):
            return value.encode("utf-8")
        return str(value).encode("ascii")

    digest = hmac.digest(as_bytes(seed), as_bytes(item_id), "sha256")
    return (int.from_bytes(digest[:8], "big") >> 11) / 2**53


# --- keyed_uniform ----------------------------------------------------------------------------

SEEDS = [
    "act",
    b"\x00\xffraw-bytes-seed",
    0,
    20251201,
    -7,
    "s" * 64,  # exactly one SHA-256 block: used as is
    "long-seed-" * 10,  # over 64 bytes: HMAC hashes the key first
    b"\x01" * 200,
    "",
    "ключ-🔑",
]
IDS = ["item-1", "", "ünïcödé ✓", b"\x00\x01\x02", b"", 0, 1, -1, 2**70, "x" * 1000]


@pytest.mark.parametrize("seed", SEEDS)
def test_keyed_uniform_matches_the_standard_library_hmac(seed) -> None:
    expected = [_reference_uniform(item_id, seed) for item_id in IDS]
    np.testing.assert_array_equal(keyed_uniform(IDS, seed), expected)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.one_of(st.text(), st.binary(), st.integers()), max_size=20),
    st.one_of(st.text(), st.binary(max_size=150), st.integers()),
)
def test_keyed_uniform_matches_the_standard_library_for_any_ids(item_ids, seed) -> None:
    u = keyed_uniform(item_ids, seed)
    assert u.dtype == np.float64
    assert u.shape == (len(item_ids),)
    np.testing.assert_array_equal(u, [_reference_uniform(i, seed) for i in item_ids])
    assert np.all((u >= 0.0) & (u < 1.0))


def test_keyed_uniform_accepts_numpy_integers_as_their_decimal_digits() -> None:
    np.testing.assert_array_equal(
        keyed_uniform(np.arange(5, dtype=np.int64), np.int32(3)),
        keyed_uniform(["0", "1", "2", "3", "4"], "3"),
    )


def test_keyed_uniform_is_deterministic_and_independent_of_order_and_batching() -> None:
    ids = [f"doc-{i}" for i in range(1000)]
    whole = keyed_uniform(ids, "seed")
    np.testing.assert_array_equal(whole, keyed_uniform(list(ids), "seed"))
    # Any order: each u depends on its own id and the seed only.
    permutation = np.random.default_rng(0).permutation(1000)
    np.testing.assert_array_equal(
        keyed_uniform([ids[i] for i in permutation], "seed"), whole[permutation]
    )
    # Any batching, including empty and single-item batches, and a generator as input.
    bounds = [0, 0, 1, 7, 250, 251, 999, 1000]
    chunks = [keyed_uniform(ids[a:b], "seed") for a, b in itertools.pairwise(bounds)]
    np.testing.assert_array_equal(np.concatenate(chunks), whole)
    np.testing.assert_array_equal(keyed_uniform((i for i in ids), "seed"), whole)


def test_keyed_uniform_of_no_ids_is_empty() -> None:
    u = keyed_uniform([], "seed")
    assert u.shape == (0,)
    assert u.dtype == np.float64


def test_different_seeds_give_different_draws() -> None:
    ids = [f"doc-{i}" for i in range(500)]
    a, b = keyed_uniform(ids, "seed-a"), keyed_uniform(ids, "seed-b")
    assert not np.any(a == b)
    # ... and unrelated ones: the two seeds' draws are uncorrelated.
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.15
    # A str seed and its bytes are the same key; an int is its decimal digits.
    np.testing.assert_array_equal(keyed_uniform(ids, "42"), keyed_uniform(ids, b"42"))
    np.testing.assert_array_equal(keyed_uniform(ids, 42), keyed_uniform(ids, "42"))


@pytest.mark.parametrize("bad", [1.5, None, True, 2.0, ("a",), object()])
def test_keyed_uniform_rejects_ids_that_are_not_str_bytes_or_int(bad) -> None:
    with pytest.raises(ValueError, match=r"item id must be a str, bytes or int, got"):
        keyed_uniform(["ok", bad], "seed")


@pytest.mark.parametrize("bad", [1.5, None, False])
def test_keyed_uniform_rejects_a_seed_that_is_not_str_bytes_or_int(bad) -> None:
    with pytest.raises(ValueError, match=r"seed must be a str, bytes or int, got"):
        keyed_uniform(["ok"], bad)


def test_keyed_uniform_is_uniform_on_twenty_thousand_ids() -> None:
    u = keyed_uniform(range(20_000), "uniformity")
    counts, _ = np.histogram(u, bins=50, range=(0.0, 1.0))
    chi_square = stats.chisquare(counts)
    assert chi_square.pvalue > 1e-4, chi_square
    ks = stats.kstest(u, "uniform")
    assert ks.pvalue > 1e-4, ks
    assert 0.49 < u.mean() < 0.51


# --- draw: Bernoulli --------------------------------------------------------------------------


def test_bernoulli_selects_exactly_where_u_is_below_pi() -> None:
    rng = np.random.default_rng(1)
    ids = [f"it-{i}" for i in range(2000)]
    pi = rng.uniform(size=2000)
    pi[:100] = 0.0
    pi[100:200] = 1.0
    delta = draw(pi, ids, "seed", "bernoulli")
    assert delta.dtype == np.bool_
    np.testing.assert_array_equal(delta, keyed_uniform(ids, "seed") < pi)
    assert not delta[:100].any()
    assert delta[100:200].all()
    np.testing.assert_array_equal(delta, draw(pi, ids, "seed"))  # bernoulli is the default


def test_bernoulli_draws_are_the_same_on_replay_and_in_any_batching() -> None:
    ids = [f"it-{i}" for i in range(300)]
    pi = np.linspace(0.0, 1.0, 300)
    whole = draw(pi, ids, 9)
    parts = np.concatenate([draw(pi[:120], ids[:120], 9), draw(pi[120:], ids[120:], 9)])
    np.testing.assert_array_equal(parts, whole)


# --- draw: systematic -------------------------------------------------------------------------


@st.composite
def integer_sum_pi(draw_: st.DrawFn) -> np.ndarray:
    """pi in [0, 1]^N summing to an integer K, built by water-filling random weights to K.

    Scaling weights to sum K and clipping at 1 would lose mass; instead the items that reach
    1 are fixed at 1 and the others rescaled until none exceeds 1, then the unsaturated part
    is scaled so that the total is K up to rounding.
    """
    weights = np.array(
        draw_(
            st.lists(
                st.one_of(st.just(0.0), st.floats(min_value=1e-6, max_value=1e3)),
                min_size=1,
                max_size=80,
            )
        )
    )
    positive = int((weights > 0).sum())
    if positive == 0:
        return np.zeros(weights.size)
    target = draw_(st.integers(min_value=0, max_value=positive))
    pi = np.zeros(weights.size)
    saturated = np.zeros(weights.size, dtype=bool)
    while True:
        free = (weights > 0) & ~saturated
        left = target - int(saturated.sum())
        pi[saturated] = 1.0
        if left == 0 or not free.any():
            pi[free] = 0.0
            break
        pi[free] = weights[free] * (left / weights[free].sum())
        over = free & (pi >= 1.0)
        if not over.any():
            break
        saturated |= over
    return pi


@settings(max_examples=300, deadline=None)
@given(integer_sum_pi(), st.integers(min_value=0, max_value=2**32))
def test_systematic_selects_exactly_the_integer_budget(pi, seed) -> None:
    assert np.all((pi >= 0) & (pi <= 1))
    budget = round(pi.sum())
    assert abs(pi.sum() - budget) < 1e-9
    ids = [f"item-{i}" for i in range(pi.size)]
    delta = draw(pi, ids, seed, "systematic")
    assert delta.dtype == np.bool_
    assert int(delta.sum()) == budget
    assert delta[pi == 1.0].all()
    assert not delta[pi == 0.0].any()


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=2, max_size=60),
    st.integers(min_value=1, max_value=60),
    st.integers(min_value=0, max_value=2**32),
)
def test_systematic_spends_an_integer_budget_from_review_probabilities(eps, budget, seed) -> None:
    budget = min(budget, len(eps))
    pi = review_probabilities(eps, budget, "exp", beta=5.0)
    ids = list(range(len(eps)))
    assert int(draw(pi, ids, seed, "systematic").sum()) == budget


def test_systematic_with_a_fractional_total_selects_its_floor_or_ceiling() -> None:
    pi = np.full(10, 0.25)  # sum 2.5
    counts = {int(draw(pi, range(10), seed, "systematic").sum()) for seed in range(200)}
    assert counts == {2, 3}


@settings(max_examples=100, deadline=None)
@given(integer_sum_pi(), st.integers(min_value=0, max_value=2**32), st.data())
def test_systematic_is_invariant_to_the_input_order(pi, seed, data) -> None:
    ids = [f"item-{i}" for i in range(pi.size)]
    selected = {ids[i] for i in np.flatnonzero(draw(pi, ids, seed, "systematic"))}
    permutation = data.draw(st.permutations(list(range(pi.size))))
    permuted_ids = [ids[i] for i in permutation]
    permuted = draw(pi[permutation], permuted_ids, seed, "systematic")
    assert {permuted_ids[i] for i in np.flatnonzero(permuted)} == selected


def test_systematic_rejects_duplicate_ids() -> None:
    with pytest.raises(ValueError, match=r"distinct item ids"):
        draw([0.5, 0.5, 0.5], ["a", "b", "a"], "seed", "systematic")


@pytest.mark.parametrize("method", ["bernoulli", "systematic"])
@pytest.mark.parametrize(
    ("pi", "ids", "message"),
    [
        ([0.5, 0.5], ["a"], r"pi has 2 entries but there are 1 item ids"),
        ([0.5], ["a", "b"], r"pi has 1 entries but there are 2 item ids"),
        ([0.5, 1.2], ["a", "b"], r"pi must lie in \[0, 1\]"),
        ([-0.1, 0.5], ["a", "b"], r"pi must lie in \[0, 1\]"),
        ([float("nan"), 0.5], ["a", "b"], r"pi contains 1 NaN"),
        ([[0.5], [0.5]], ["a", "b"], r"pi must be one-dimensional"),
    ],
)
def test_draw_rejects_bad_input(method, pi, ids, message) -> None:
    with pytest.raises(ValueError, match=message):
        draw(pi, ids, "seed", method)


def test_draw_rejects_an_unknown_method_and_bad_ids() -> None:
    with pytest.raises(ValueError, match=r"unknown draw method 'poisson'"):
        draw([0.5], ["a"], "seed", "poisson")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"item id must be a str, bytes or int"):
        draw([0.5, 0.5], ["a", 1.0], "seed", "systematic")


@pytest.mark.parametrize("method", ["bernoulli", "systematic"])
def test_draw_of_an_empty_batch_is_an_empty_bool_array(method) -> None:
    delta = draw([], [], "seed", method)
    assert delta.shape == (0,)
    assert delta.dtype == np.bool_


# --- inclusion probabilities (Monte Carlo over seeds) -----------------------------------------

_MC_PI = np.r_[  # 30 items, pi from 0 to 1, summing to 13
    [0.0, 1.0, 1.0, 0.001, 0.01, 0.02, 0.05, 0.05, 0.08, 0.1, 0.12, 0.15, 0.2, 0.25, 0.3],
    [0.069, 0.4, 0.45, 0.5, 0.5, 0.55, 0.6, 0.66, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99],
]
_MC_SEEDS = 4000


@pytest.mark.parametrize("method", ["systematic", "bernoulli"])
def test_inclusion_frequency_over_seeds_matches_pi(method) -> None:
    pi = _MC_PI
    assert pi.max() <= 1.0 and pi.sum() == pytest.approx(13.0, abs=1e-12)
    ids = [f"mc-{i}" for i in range(pi.size)]
    counts = np.zeros(pi.size)
    sizes = set()
    for seed in range(_MC_SEEDS):
        delta = draw(pi, ids, f"mc-seed-{seed}", method)
        counts += delta
        sizes.add(int(delta.sum()))
    frequency = counts / _MC_SEEDS
    standard_error = np.sqrt(pi * (1 - pi) / _MC_SEEDS)
    deviation = np.abs(frequency - pi)
    certain = standard_error == 0
    np.testing.assert_array_equal(frequency[certain], pi[certain])
    z = deviation[~certain] / standard_error[~certain]
    assert z.max() < 4.0, (z.max(), frequency, pi)
    chi_square = float((z**2).sum())
    # Under Bernoulli sampling this is chi-square with one degree of freedom per item; the
    # systematic design's negative dependence between items does not change its mean.
    degrees = int((~certain).sum())
    assert chi_square < stats.chi2.isf(1e-4, degrees), chi_square
    if method == "systematic":
        assert sizes == {round(pi.sum())}
    else:
        assert len(sizes) > 3
