"""Tests of act.core.sampling's stream pacer: predictable pi_t under a per-window hard cap.

DESIGN.md §2.2: the pacer spends a budget per window (a count of items or a span of event
time), never exceeds the hard cap, hits it with probability under cap_probability, fixes pi_t
before drawing delta_t from the keyed uniform, and continues exactly after a restart.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable

import numpy as np
import pytest
from scipy import stats

from act.core.sampling import (
    PacerConfig,
    PacerDecision,
    PacerState,
    StreamPacer,
    keyed_uniform,
    planned_reviews,
)

Item = tuple[str, float, float | None]  # (id, eps, timestamp)


def _count_stream(eps: Iterable[float], prefix: str = "item") -> list[Item]:
    return [(f"{prefix}-{i}", float(e), None) for i, e in enumerate(eps)]


def _poisson_times(rng: np.random.Generator, rate_per_hour: float, hours: float) -> np.ndarray:
    gaps = rng.exponential(3600.0 / rate_per_hour, size=int(rate_per_hour * hours * 1.5) + 100)
    times = np.cumsum(gaps)
    return times[times < hours * 3600.0]


def _time_stream(
    rng: np.random.Generator, times: np.ndarray, eps: np.ndarray | None = None
) -> list[Item]:
    values = rng.beta(0.5, 3.0, size=times.size) if eps is None else eps
    return [
        (f"t-{i}", float(e), float(t)) for i, (e, t) in enumerate(zip(values, times, strict=True))
    ]


def _run(pacer: StreamPacer, items: Iterable[Item]) -> list[PacerDecision]:
    return [pacer.decide(item_id, eps, ts) for item_id, eps, ts in items]


def _reviews_per_window(decisions: list[PacerDecision]) -> Counter[int]:
    spent: Counter[int] = Counter()
    for decision in decisions:
        spent[decision.window] += int(decision.delta)
    return spent


def _windows_capped_early(decisions: list[PacerDecision]) -> set[int]:
    return {decision.window for decision in decisions if decision.capped}


def _check_cap_bookkeeping(decisions: list[PacerDecision], hard_cap: int) -> None:
    """Per window: never more than hard_cap reviews, and capped exactly once the cap is hit."""
    spent: Counter[int] = Counter()
    for decision in decisions:
        reached = spent[decision.window] >= hard_cap
        assert decision.capped == reached, decision
        if reached:
            assert decision.pi == 0.0 and not decision.delta, decision
        spent[decision.window] += int(decision.delta)
    assert max(spent.values()) <= hard_cap


# --- the hard cap -----------------------------------------------------------------------------


ADVERSARIAL_EPS = {
    "beta": lambda rng, n: rng.beta(0.5, 3.0, size=n),
    "all-ones": lambda rng, n: np.ones(n),
    "all-identical": lambda rng, n: np.full(n, 0.37),
    "all-zeros": lambda rng, n: np.zeros(n),
    "rising": lambda rng, n: np.linspace(0.0, 1.0, n),
    "shift-to-high": lambda rng, n: np.r_[rng.uniform(0, 0.05, n // 2), np.ones(n - n // 2)],
}


@pytest.mark.parametrize("stream", sorted(ADVERSARIAL_EPS))
@pytest.mark.parametrize(
    "config",
    [
        PacerConfig(budget_per_window=10, window_items=100),
        PacerConfig(budget_per_window=2.9, window_items=7, cap_probability=0.45),
        PacerConfig(budget_per_window=4, window_items=5, audit_share=0.5, bins=2),
    ],
    ids=["default", "tight", "nearly-all"],
)
def test_hard_cap_is_never_exceeded_in_item_windows(stream, config) -> None:
    rng = np.random.default_rng(5)
    eps = ADVERSARIAL_EPS[stream](rng, 1500)
    decisions = _run(StreamPacer(config), _count_stream(eps))
    _check_cap_bookkeeping(decisions, config.hard_cap)
    assert [d.window for d in decisions] == [i // config.window_items for i in range(1500)]


@pytest.mark.parametrize("stream", ["beta", "all-ones", "all-identical"])
def test_hard_cap_is_never_exceeded_in_time_windows_under_bursts(stream) -> None:
    rng = np.random.default_rng(8)
    config = PacerConfig.for_capacity(12, window_seconds=3600, expected_items_per_window=100)
    assert config.hard_cap == 12
    quiet = _poisson_times(rng, 100, 20)
    # Bursts of 25x the expected rate for a whole window, 200x for six minutes, and
    # 500 items at a single instant.
    burst_window = 30 * 3600.0 + _poisson_times(rng, 2500, 1.0)
    burst_minutes = 35 * 3600.0 + 0.1 * _poisson_times(rng, 20_000, 0.1)
    instant = np.full(500, 40 * 3600.0 + 1800.0)
    after = 41 * 3600.0 + _poisson_times(rng, 100, 5)
    times = np.concatenate([quiet, burst_window, burst_minutes, instant, after])
    eps = ADVERSARIAL_EPS[stream](rng, times.size)
    decisions = _run(StreamPacer(config), _time_stream(rng, times, eps))
    _check_cap_bookkeeping(decisions, config.hard_cap)
    assert [d.window for d in decisions] == list((times // 3600).astype(int))


def test_late_items_count_in_the_open_window_and_cannot_break_the_cap() -> None:
    config = PacerConfig(budget_per_window=3, window_seconds=60, cap_probability=0.45)
    rng = np.random.default_rng(2)
    times = np.sort(rng.uniform(0, 6000, 3000))
    times[::3] -= 500.0  # every third item is late by several windows
    decisions = _run(StreamPacer(config), _time_stream(rng, times, np.ones(times.size)))
    _check_cap_bookkeeping(decisions, config.hard_cap)
    windows = [d.window for d in decisions]
    assert windows == sorted(windows)  # a late item never reopens a closed window


# --- the cap is rarely reached: simulations ---------------------------------------------------


@pytest.mark.slow
def test_item_windows_rarely_hit_the_cap_and_spend_most_of_the_budget(capsys) -> None:
    config = PacerConfig(budget_per_window=10, window_items=100)
    rng = np.random.default_rng(2025)
    n_windows = 1000
    eps = rng.beta(0.5, 3.0, size=100 * n_windows)
    decisions = _run(StreamPacer(config), _count_stream(eps))
    _check_cap_bookkeeping(decisions, config.hard_cap)
    spent = _reviews_per_window(decisions)
    capped_share = len(_windows_capped_early(decisions)) / n_windows
    mean_spend = sum(spent.values()) / n_windows
    figures = (
        f"item windows: {capped_share:.2%} of {n_windows} windows capped early, "
        f"mean spend {mean_spend:.2f} of {config.hard_cap}, max {max(spent.values())}"
    )
    with capsys.disabled():
        print(f"\n{figures}")
    assert capped_share < 0.01, figures
    assert 0.6 * config.hard_cap < mean_spend <= config.hard_cap, figures


@pytest.mark.slow
def test_time_windows_rarely_hit_the_cap_and_spend_most_of_the_budget(capsys) -> None:
    config = PacerConfig.for_capacity(10, window_seconds=3600)
    rng = np.random.default_rng(2026)
    n_windows = 600
    times = _poisson_times(rng, 100, n_windows)
    decisions = _run(StreamPacer(config), _time_stream(rng, times))
    _check_cap_bookkeeping(decisions, config.hard_cap)
    spent = _reviews_per_window(decisions)
    capped_share = len(_windows_capped_early(decisions)) / n_windows
    mean_spend = sum(spent.values()) / n_windows
    figures = (
        f"time windows: {capped_share:.2%} of {n_windows} windows capped early, "
        f"mean spend {mean_spend:.2f} of {config.hard_cap}, max {max(spent.values())}, "
        f"{len(decisions)} items"
    )
    with capsys.disabled():
        print(f"\n{figures}")
    assert capped_share < 0.01, figures
    assert 0.6 * config.hard_cap < mean_spend <= config.hard_cap, figures


def test_a_loose_cap_probability_hits_the_cap_more_often() -> None:
    rng = np.random.default_rng(4)
    eps = rng.beta(0.5, 3.0, size=6000)
    shares = []
    for cap_probability in (0.01, 0.3):
        config = PacerConfig(budget_per_window=5, window_items=50, cap_probability=cap_probability)
        decisions = _run(StreamPacer(config), _count_stream(eps))
        shares.append(len(_windows_capped_early(decisions)) / 120)
    assert shares[0] < 0.02 < shares[1], shares


# --- predictable pi ---------------------------------------------------------------------------


def _pacers_and_streams() -> list[tuple[str, PacerConfig, list[Item]]]:
    rng = np.random.default_rng(12)
    count_items = _count_stream(rng.beta(0.5, 3.0, size=3000))
    time_items = _time_stream(rng, _poisson_times(rng, 200, 15))
    return [
        ("items", PacerConfig(budget_per_window=10, window_items=100), count_items),
        (
            "items-audit",
            PacerConfig(budget_per_window=10, window_items=100, audit_share=0.2),
            count_items,
        ),
        ("time", PacerConfig.for_capacity(20, window_seconds=3600), time_items),
        (
            "time-audit",
            PacerConfig.for_capacity(20, window_seconds=3600, audit_share=0.2),
            time_items,
        ),
    ]


PACERS = _pacers_and_streams()
PACER_IDS = [name for name, _, _ in PACERS]


@pytest.mark.parametrize(("name", "config", "items"), PACERS, ids=PACER_IDS)
def test_probability_computed_before_decide_is_the_decisions_pi(name, config, items) -> None:
    pacer = StreamPacer(config)
    mismatches = []
    for index, (item_id, eps, ts) in enumerate(items[:1500]):
        before = pacer.state() if index % 50 == 0 else None
        predicted = pacer.probability(eps, ts)
        assert before is None or pacer.state() == before  # probability() changes nothing
        decision = pacer.decide(item_id, eps, ts)
        if decision.pi != predicted:
            mismatches.append((index, decision.window, predicted, decision.pi))
    assert not mismatches, f"{len(mismatches)} mismatches, first: {mismatches[:3]}"


def test_probability_for_the_first_item_of_a_new_time_window_matches_decide() -> None:
    config = PacerConfig.for_capacity(10, window_seconds=3600, audit_share=0.2)
    pacer = StreamPacer(config)
    for i in range(50):
        pacer.decide(f"a-{i}", 0.01, 10.0 + 10.0 * i)
    predicted = pacer.probability(0.01, 3605.0)  # opens window 1
    decision = pacer.decide("b", 0.01, 3605.0)
    assert decision.window == 1
    assert decision.pi == predicted


@pytest.mark.parametrize(("name", "config", "items"), PACERS, ids=PACER_IDS)
def test_pi_does_not_depend_on_the_item_id(name, config, items) -> None:
    pacer = StreamPacer(config)
    for index, (item_id, eps, ts) in enumerate(items[:1500]):
        if index % 7 == 0:
            twin = StreamPacer(config, pacer.state())
            other = twin.decide(b"some-other-id-\xff" if index % 2 else 10**12 + index, eps, ts)
            decision = pacer.decide(item_id, eps, ts)
            assert (other.pi, other.capped, other.window, other.planned_rate) == (
                decision.pi,
                decision.capped,
                decision.window,
                decision.planned_rate,
            )
        else:
            pacer.decide(item_id, eps, ts)


@pytest.mark.parametrize(("name", "config", "items"), PACERS, ids=PACER_IDS)
def test_delta_is_the_keyed_uniform_below_pi(name, config, items) -> None:
    decisions = _run(StreamPacer(config), items)
    ids = [item_id for item_id, _, _ in items]
    u = keyed_uniform(ids, config.seed)
    pi = np.array([d.pi for d in decisions])
    np.testing.assert_array_equal([d.delta for d in decisions], u < pi)
    assert [d.item_id for d in decisions] == ids
    assert [d.eps for d in decisions] == [eps for _, eps, _ in items]
    assert 0 < sum(d.delta for d in decisions) < len(decisions)


def test_the_pacer_seed_keys_the_draws() -> None:
    items = _count_stream(np.full(2000, 0.5))
    a = _run(StreamPacer(PacerConfig(budget_per_window=10, window_items=100, seed="a")), items)
    b = _run(StreamPacer(PacerConfig(budget_per_window=10, window_items=100, seed="b")), items)
    assert [d.delta for d in a] != [d.delta for d in b]


# --- restart ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "config", "items"), PACERS, ids=PACER_IDS)
def test_restarting_from_saved_json_state_continues_exactly(name, config, items) -> None:
    items = items[:3000]
    uninterrupted_pacer = StreamPacer(config)
    uninterrupted = _run(uninterrupted_pacer, items)

    resumed: list[PacerDecision] = []
    pacer = StreamPacer(config)
    for start in range(0, len(items), 450):
        resumed += _run(pacer, items[start : start + 450])
        saved = pacer.state().model_dump_json()
        pacer = StreamPacer(config, PacerState.model_validate_json(saved))  # a new process
    assert resumed == uninterrupted
    assert pacer.state() == uninterrupted_pacer.state()


def test_the_state_given_to_a_pacer_is_copied() -> None:
    config = PacerConfig(budget_per_window=10, window_items=100)
    state = PacerState()
    pacer = StreamPacer(config, state)
    _run(pacer, _count_stream([0.9] * 10))
    assert state == PacerState()
    snapshot = pacer.state()
    _run(pacer, _count_stream([0.9] * 10, "more"))
    assert snapshot.items_total == 10 and pacer.state().items_total == 20


# --- after the cap ----------------------------------------------------------------------------


def test_after_the_cap_pi_is_zero_and_capped_until_the_next_window() -> None:
    config = PacerConfig(
        budget_per_window=2, window_items=20, cap_probability=0.45, audit_share=0.3
    )
    rng = np.random.default_rng(0)
    decisions = _run(StreamPacer(config), _count_stream(rng.beta(0.5, 3.0, size=4000)))
    _check_cap_bookkeeping(decisions, config.hard_cap)
    by_window: defaultdict[int, list[PacerDecision]] = defaultdict(list)
    for decision in decisions:
        by_window[decision.window].append(decision)
    capped_windows = sorted(_windows_capped_early(decisions))
    assert len(capped_windows) > 10
    for window in capped_windows:
        inside = by_window[window]
        first_capped = next(i for i, d in enumerate(inside) if d.capped)
        assert sum(d.delta for d in inside[:first_capped]) == config.hard_cap
        assert all(d.capped and d.pi == 0.0 and not d.delta for d in inside[first_capped:])
        if window + 1 in by_window:
            fresh = by_window[window + 1][0]
            assert not fresh.capped
            assert fresh.pi > 0.0  # the audit share keeps every uncapped pi positive


def test_a_restored_state_at_the_cap_gives_pi_zero_until_the_window_ends() -> None:
    config = PacerConfig(budget_per_window=10, window_items=100)
    state = PacerState(window=0, spent=10, arrivals=40, items_total=40, selected_total=10)
    pacer = StreamPacer(config, state)
    assert pacer.probability(1.0) == 0.0
    decisions = _run(pacer, _count_stream(np.ones(61)))
    assert all(d.capped and d.pi == 0.0 and not d.delta for d in decisions[:60])
    assert decisions[-1].window == 1
    assert not decisions[-1].capped and decisions[-1].pi > 0.0
    assert pacer.state().capped_total == 60
    assert pacer.state().spent == int(decisions[-1].delta)


# --- audit slice and threshold ----------------------------------------------------------------


def test_audit_share_keeps_every_uncapped_pi_positive_and_marks_audit_draws() -> None:
    config = PacerConfig(budget_per_window=10, window_items=100, audit_share=0.2)
    rng = np.random.default_rng(21)
    decisions = _run(StreamPacer(config), _count_stream(rng.beta(0.5, 3.0, size=5000)))
    uncapped = [d for d in decisions if not d.capped]
    assert all(d.pi > 0.0 for d in uncapped)
    audits = [d for d in decisions if d.audit]
    assert len(audits) > 20
    for decision in audits:
        assert decision.delta
        assert decision.pi == pytest.approx(0.2 * decision.planned_rate, rel=1e-12)
    flagged = [d for d in decisions if d.delta and not d.audit]
    assert len(flagged) > len(audits)
    assert all(d.pi > 0.2 * d.planned_rate for d in flagged)
    assert np.median([d.eps for d in audits]) < np.median([d.eps for d in flagged])

    no_audit = PacerConfig(budget_per_window=10, window_items=100)
    plain = _run(StreamPacer(no_audit), _count_stream(rng.beta(0.5, 3.0, size=3000)))
    assert not any(d.audit for d in plain)
    assert any(d.pi == 0.0 and not d.capped for d in plain)  # top-B: low eps is never reviewed


def test_warmed_up_pacer_reviews_high_eps_and_skips_low_eps() -> None:
    config = PacerConfig(budget_per_window=10, window_items=100)
    pacer = StreamPacer(config)
    rng = np.random.default_rng(3)
    eps = rng.beta(0.5, 3.0, size=2050)
    _run(pacer, _count_stream(eps))
    grid = np.linspace(0.0, 1.0, 101)
    pi = np.array([pacer.probability(e) for e in grid])
    assert np.all(np.diff(pi) >= 0.0)  # monotone in eps
    assert pi[0] == 0.0 and pi[-1] == 1.0
    # The threshold sits near the quantile of recent eps that spends the planned rate.
    rate = StreamPacer(config, pacer.state()).decide("probe", 0.5).planned_rate
    threshold = grid[np.argmax(pi > 0)]
    assert np.mean(eps[-2000:] >= threshold) == pytest.approx(rate, abs=0.03)
    assert 0.0 < rate < 0.2


# --- configuration and input checks -----------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"budget_per_window": 10}, r"set exactly one of window_items and window_seconds"),
        (
            {"budget_per_window": 10, "window_items": 100, "window_seconds": 60},
            r"set exactly one of window_items and window_seconds",
        ),
        ({"budget_per_window": 0.5, "window_items": 100}, r"at least one review per window"),
        ({"budget_per_window": 0, "window_items": 100}, r"(?s)budget_per_window.*greater than 0"),
        ({"budget_per_window": 5, "window_items": 0}, r"(?s)window_items.*greater than 0"),
        ({"budget_per_window": 5, "window_items": 9, "cap_probability": 0.5}, r"less than 0.5"),
        ({"budget_per_window": 5, "window_items": 9, "audit_share": 1.0}, r"audit_share"),
        ({"budget_per_window": 5, "window_items": 9, "bins": 1}, r"bins"),
    ],
)
def test_invalid_configuration_is_rejected_with_a_helpful_message(settings, message) -> None:
    with pytest.raises(ValueError, match=message):
        PacerConfig(**settings)


def test_capacity_configuration() -> None:
    config = PacerConfig.for_capacity(30, window_seconds=600)
    assert config.budget_per_window == pytest.approx(5.0)
    assert config.window_seconds == 600 and config.window_items is None
    assert config.hard_cap == 5
    with pytest.raises(ValueError, match=r"reviews_per_hour must be > 0"):
        PacerConfig.for_capacity(0)
    with pytest.raises(ValueError, match=r"at least one review per window"):
        PacerConfig.for_capacity(3, window_seconds=600)  # 0.5 reviews per window


def test_bad_items_are_rejected_with_a_helpful_message() -> None:
    time_pacer = StreamPacer(PacerConfig.for_capacity(10))
    with pytest.raises(ValueError, match=r"every item needs a timestamp"):
        time_pacer.decide("a", 0.5)
    with pytest.raises(ValueError, match=r"every item needs a timestamp"):
        time_pacer.probability(0.5)
    with pytest.raises(ValueError, match=r"timestamp must be finite"):
        time_pacer.decide("a", 0.5, float("nan"))

    pacer = StreamPacer(PacerConfig(budget_per_window=10, window_items=100))
    before = pacer.state()
    with pytest.raises(ValueError, match=r"eps contains 1 NaN"):
        pacer.decide("a", float("nan"))
    with pytest.raises(ValueError, match=r"eps must lie in \[0, 1\]"):
        pacer.decide("a", 1.5)
    with pytest.raises(ValueError, match=r"eps must lie in \[0, 1\]"):
        pacer.probability(-0.1)
    assert pacer.state() == before
    with pytest.raises(ValueError, match=r"item id must be a str, bytes or int"):
        pacer.decide(1.5, 0.5)  # type: ignore[arg-type]


def test_a_rejected_item_does_not_change_later_decisions() -> None:
    """decide() must validate the whole item before it touches the state: an item rejected for
    its id must leave the pacer as if it had never arrived (here it would open window 1 and
    cache a plan made at its own time, which later items in that window would reuse)."""
    config = PacerConfig.for_capacity(10, window_seconds=3600, audit_share=0.2)
    clean, dirty = StreamPacer(config), StreamPacer(config)
    for pacer in (clean, dirty):
        _run(pacer, [(f"a-{i}", 0.01, 10.0 + 10.0 * i) for i in range(50)])
    with pytest.raises(ValueError, match=r"item id must be a str, bytes or int"):
        dirty.decide(1.5, 0.01, 3601.0)  # type: ignore[arg-type]
    assert dirty.state() == clean.state()
    later = [(f"b-{i}", 0.01, 3700.0 + 100.0 * i) for i in range(5)]
    assert _run(dirty, later) == _run(clean, later)


@pytest.mark.parametrize(("name", "config", "items"), PACERS, ids=PACER_IDS)
def test_deciding_polls_at_once_matches_deciding_item_by_item(name, config, items) -> None:
    items = items[:2000]
    pacer, reference = StreamPacer(config), StreamPacer(config)
    polled: list[PacerDecision] = []
    start = 0
    for size in [0, 1, 7, 500, 333, 1] * 10:  # polls of irregular sizes, some empty
        poll = items[start : start + size]
        polled += pacer.decide_many(
            [item_id for item_id, _, _ in poll], [eps for _, eps, _ in poll], [t for *_, t in poll]
        )
        start += size
    assert start >= len(items)
    assert polled == _run(reference, items)
    assert pacer.state() == reference.state()


def test_a_rejected_poll_leaves_the_state_as_it_was() -> None:
    """decide_many() checks every item before it decides any: a bad item anywhere in the poll
    leaves the pacer as if the poll had never arrived, and the error says which item."""
    config = PacerConfig.for_capacity(10, window_seconds=3600)
    pacer = StreamPacer(config)
    _run(pacer, [(f"a-{i}", 0.2, 10.0 * i) for i in range(20)])
    before = pacer.state()
    ids = [f"b-{i}" for i in range(5)]
    times = [300.0 + i for i in range(5)]
    with pytest.raises(ValueError, match=r"eps contains 1 NaN .*first at index 3"):
        pacer.decide_many(ids, [0.1, 0.2, 0.3, float("nan"), 0.5], times)
    with pytest.raises(ValueError, match=r"item id must be a str, bytes or int"):
        pacer.decide_many([*ids[:4], 1.5], [0.1] * 5, times)  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"every item needs a timestamp"):
        pacer.decide_many(ids, [0.1] * 5, [*times[:2], None, *times[3:]])
    with pytest.raises(ValueError, match=r"5 item ids, 4 eps and 5 timestamps"):
        pacer.decide_many(ids, [0.1] * 4, times)
    assert pacer.state() == before


def test_a_saved_state_with_other_bins_is_rejected() -> None:
    state = StreamPacer(PacerConfig(budget_per_window=10, window_items=100, bins=50)).state()
    with pytest.raises(ValueError, match=r"50 histogram bins but the configuration asks for 200"):
        StreamPacer(PacerConfig(budget_per_window=10, window_items=100), state)


# --- planned_reviews --------------------------------------------------------------------------


@pytest.mark.parametrize("cap_probability", [0.001, 0.01, 0.05, 0.3, 0.49])
@pytest.mark.parametrize("reviews_left", [1, 2, 5, 10, 37, 200])
def test_planned_reviews_reaches_the_cap_with_the_given_probability(
    reviews_left, cap_probability
) -> None:
    x = planned_reviews(reviews_left, cap_probability)
    assert 0.0 < x < reviews_left
    assert stats.poisson.sf(reviews_left - 1, x) == pytest.approx(cap_probability, rel=1e-8)


def test_planned_reviews_grows_with_the_reviews_left_and_is_zero_without_any() -> None:
    assert planned_reviews(0, 0.01) == 0.0
    assert planned_reviews(-3, 0.01) == 0.0
    plans = [planned_reviews(h, 0.01) for h in range(1, 50)]
    assert np.all(np.diff(plans) > 0)
    assert planned_reviews(10, 0.01) < planned_reviews(10, 0.1)


# -- partitions: each paces its share of the stream ------------------------------------------


def test_a_partition_share_keeps_the_stream_rate_and_caps_adding_up_to_the_budget() -> None:
    items = PacerConfig(budget_per_window=60, window_items=300, seed="s").partition_share(3)
    assert (items.window_items, items.budget_per_window, items.hard_cap) == (100, 20, 20)
    assert items.seed == "s"

    uneven = PacerConfig(budget_per_window=10, window_items=100).partition_share(3)
    assert uneven.window_items == 34 and uneven.hard_cap == 3  # 3 x 3 <= 10, rate <= 10/100

    hourly = PacerConfig.for_capacity(120, expected_items_per_window=9000)
    timed = hourly.partition_share(4)
    assert timed.window_seconds == 3600 and timed.window_items is None
    assert timed.budget_per_window == 30 and timed.expected_items_per_window == 2250

    one = PacerConfig(budget_per_window=10, window_items=100)
    assert one.partition_share(1) == one


def test_a_partition_share_under_one_review_per_window_is_refused() -> None:
    with pytest.raises(ValueError, match=r"leaves 0\.667 per partition window"):
        PacerConfig(budget_per_window=2, window_items=100).partition_share(3)
    with pytest.raises(ValueError, match="positive integer"):
        PacerConfig(budget_per_window=2, window_items=100).partition_share(0)


def test_partitions_pacing_their_shares_spend_about_the_stream_budget() -> None:
    """Three partitions (items dealt round robin) together review about as much as the
    budget allows the whole stream: budget/window_items of the items, never more."""
    config = PacerConfig(budget_per_window=60, window_items=300, seed="split")
    rng = np.random.default_rng(7)
    stream = _count_stream(rng.beta(0.5, 3.0, size=30_000))
    pacers = [StreamPacer(config.partition_share(3)) for _ in range(3)]
    reviews = sum(
        int(pacers[i % 3].decide(item_id, eps, ts).delta)
        for i, (item_id, eps, ts) in enumerate(stream)
    )
    budget = len(stream) / config.window_items * config.budget_per_window
    assert 0.75 * budget < reviews <= budget, f"{reviews} reviews for a budget of {budget:.0f}"
