"""Drawing the review indicators delta: keyed randomness, batch samplers and the stream pacer.

Randomness is keyed and deterministic (DESIGN.md §2.2): u_i = HMAC-SHA256(seed, item_id)
mapped to [0, 1), and delta_i = 1[u_i < pi_i]. Replays, retries and restarts therefore draw
the same delta, so a crash can never bias the sample by redrawing.

References: Lin et al., NeurIPS 2025 (delta_i ~ Ber(pi_B(eps_i))); Madow 1949 and
Tillé 2006, "Sampling Algorithms" (systematic sampling with unequal probabilities);
Zrnic & Candès 2024 (active inference stays unbiased when pi_t is predictable).
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.special import gammaincinv

from act.core.validation import as_finite_float, as_probability_array

ItemId = str | bytes | int
Seed = str | bytes | int
DRAW_METHODS = ("bernoulli", "systematic")
_DIGEST_SIZE = 32
_SHA256_BLOCK = 64
REPLAN_FACTOR = 0.75  # re-plan once the expected remaining arrivals fell by a quarter
RATE_DRIFT = 0.25  # ... or the arrival-rate estimate moved by a quarter
_UNIT = 2.0**-53  # 53 random bits give every double in [0, 1) on a uniform grid


def _as_bytes(value: ItemId | Seed, what: str) -> bytes:
    """Canonical bytes of an id or seed: UTF-8 of a string, decimal digits of an int."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return str(int(value)).encode("ascii")
    raise ValueError(f"{what} must be a str, bytes or int, got {type(value).__name__}: {value!r}")


def _keyed_digests(item_ids: Iterable[ItemId], seed: Seed) -> np.ndarray:
    """HMAC-SHA256(seed, item_id) for every id, as an (N, 32) uint8 array.

    HMAC(K, m) = H((K' xor opad) || H((K' xor ipad) || m)) (RFC 2104). The two padded-key
    hash states are computed once per seed and copied per item, which is about twice as fast
    as hmac.digest on short ids; tests check equality with the standard library.
    """
    inner_start, outer_start = _padded_key_states(_as_bytes(seed, "seed"))

    def digest(item_id: ItemId) -> bytes:
        inner = inner_start.copy()
        inner.update(item_id.encode() if type(item_id) is str else _as_bytes(item_id, "item id"))
        outer = outer_start.copy()
        outer.update(inner.digest())
        return outer.digest()

    joined = b"".join(map(digest, item_ids))
    return np.frombuffer(joined, dtype=np.uint8).reshape(-1, _DIGEST_SIZE)


@functools.lru_cache(maxsize=64)
def _padded_key_states(key: bytes) -> tuple[Any, Any]:
    """SHA-256 states after K' xor ipad and K' xor opad; cached because a pacer or a backend
    keys every call with the same seed (the states are only ever copied, never updated)."""
    if len(key) > _SHA256_BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_SHA256_BLOCK, b"\0")
    return (
        hashlib.sha256(bytes(byte ^ 0x36 for byte in key)),
        hashlib.sha256(bytes(byte ^ 0x5C for byte in key)),
    )


def _unit_from_bytes(digests: np.ndarray, start: int) -> np.ndarray:
    """Bytes [start, start + 8) of each digest, big-endian, top 53 bits mapped to [0, 1)."""
    words = np.ascontiguousarray(digests[:, start : start + 8]).view(">u8").ravel()
    return (words >> np.uint64(11)).astype(np.float64) * _UNIT


def keyed_uniform(item_ids: Iterable[ItemId], seed: Seed) -> np.ndarray:
    """u_i = first 8 bytes of HMAC-SHA256(key=seed, msg=item_id), top 53 bits / 2^53, in [0, 1).

    Ids and seeds are encoded as UTF-8 (str), as is (bytes) or as decimal digits (int), so
    any language can reproduce the draws. Each u_i depends on its own id and the seed only:
    the result is independent of the order of the ids and of how the stream is batched.
    """
    return _unit_from_bytes(_keyed_digests(item_ids, seed), 0)


def draw(
    pi: object,
    item_ids: Sequence[ItemId],
    seed: Seed,
    method: Literal["bernoulli", "systematic"] = "bernoulli",
) -> np.ndarray:
    """Review indicators delta (boolean array) with inclusion probability pi_i for every item.

    - ``"bernoulli"`` (the paper): delta_i = 1[u_i < pi_i], independent across items; the
      number of reviews is sum(pi) in expectation only.
    - ``"systematic"`` (exact budget): items are put in the order of their keyed hash u_i,
      cumulative sums C_j of pi are taken in that order, and item j is selected when an
      integer m has C_{j-1} <= s + m < C_j, with start s uniform on [0, 1) (from a second,
      independent part of the keyed hashes, summed exactly, so it does not depend on the
      order of the input). Selects exactly round(sum(pi)) items when sum(pi) is an integer,
      with inclusion probability exactly pi_i (Madow 1949), so the ACT loss stays unbiased
      under a hard budget.
    """
    pi_array = as_probability_array(pi, "pi", allow_empty=True)
    ids = list(item_ids)
    if len(ids) != pi_array.size:
        raise ValueError(f"pi has {pi_array.size} entries but there are {len(ids)} item ids")
    if method not in DRAW_METHODS:
        raise ValueError(f"unknown draw method {method!r}; expected one of {list(DRAW_METHODS)}")
    if pi_array.size == 0:
        return np.zeros(0, dtype=bool)
    digests = _keyed_digests(ids, seed)
    if method == "bernoulli":
        return _unit_from_bytes(digests, 0) < pi_array
    return _systematic(pi_array, _unit_from_bytes(digests, 0), _unit_from_bytes(digests, 8))


def _systematic(pi: np.ndarray, order_keys: np.ndarray, start_parts: np.ndarray) -> np.ndarray:
    order = np.argsort(order_keys, kind="stable")
    # Equal ids have equal digests; two distinct ids agree on 106 bits with odds ~2^-106.
    same_key = order_keys[order][1:] == order_keys[order][:-1]
    if (same_key & (start_parts[order][1:] == start_parts[order][:-1])).any():
        raise ValueError("systematic sampling needs distinct item ids; the batch repeats some")
    start = math.fsum(start_parts) % 1.0  # exactly rounded, so order-independent
    cumulative = np.cumsum(pi[order])
    total = float(cumulative[-1])
    nearest = round(total)
    # Within the 1e-6 that the transforms guarantee, an integer budget selects exactly
    # `nearest` items (inclusion probabilities move by at most that relative amount).
    if total > 0 and abs(total - nearest) <= 1e-6 * max(1.0, total):
        cumulative *= nearest / total
    upper = np.ceil(cumulative - start)
    lower = np.ceil(np.concatenate(([0.0], cumulative[:-1])) - start)
    selected = np.zeros(pi.size, dtype=bool)
    selected[order] = upper > lower
    return selected


# --------------------------------------------------------------------------------------------
# Stream pacer


class PacerConfig(BaseModel):
    """Settings of the online sampler (DESIGN.md §2.2).

    A window is either a number of items (`window_items`) or a span of event time
    (`window_seconds`, aligned to multiples of it since the Unix epoch); `budget_per_window`
    is its hard cap of reviews. `for_capacity` turns a reviewer capacity (reviews/hour)
    into this form.
    """

    model_config = ConfigDict(frozen=True)

    budget_per_window: float = Field(gt=0)
    window_items: int | None = Field(default=None, gt=0)
    window_seconds: float | None = Field(default=None, gt=0)
    expected_items_per_window: float | None = Field(default=None, gt=0)
    seed: str = "act"
    cap_probability: float = Field(default=0.01, gt=0, lt=0.5)
    audit_share: float = Field(default=0.0, ge=0, lt=1)
    bins: int = Field(default=200, ge=2, le=100_000)
    half_life_items: float = Field(default=2000.0, gt=0)
    prior_items: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _one_window_kind(self) -> PacerConfig:
        if (self.window_items is None) == (self.window_seconds is None):
            raise ValueError("set exactly one of window_items and window_seconds")
        if math.floor(self.budget_per_window) < 1:
            raise ValueError("budget_per_window must allow at least one review per window")
        return self

    @classmethod
    def for_capacity(
        cls, reviews_per_hour: float, window_seconds: float = 3600.0, **settings: object
    ) -> PacerConfig:
        """Pacing for reviewers who can do `reviews_per_hour`, over windows of event time."""
        rate = as_finite_float(reviews_per_hour, "reviews_per_hour")
        if rate <= 0:
            raise ValueError(f"reviews_per_hour must be > 0, got {rate}")
        return cls(
            budget_per_window=rate * window_seconds / 3600.0,
            window_seconds=window_seconds,
            **settings,  # type: ignore[arg-type]
        )

    @property
    def hard_cap(self) -> int:
        """Reviews per window that are never exceeded."""
        return math.floor(self.budget_per_window)

    def partition_share(self, partitions: int) -> PacerConfig:
        """The pacer of one of `partitions` partitions, each seeing about 1/partitions of the
        stream and paced on its own, so that together they keep this pacer's budget:

        - time windows: the same windows, each with budget/partitions (the partitions' caps
          add up to at most this cap in every window);
        - item windows: windows of ceil(window_items/partitions) of the partition's own items,
          each with budget/partitions: about window_items items of the stream pass while
          every partition fills one window, so the stream's rate stays budget/window_items
          (a little under when partitions does not divide window_items).

        ValueError when a partition's share is under one review per window.
        """
        if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
            raise ValueError(f"partitions must be a positive integer, got {partitions!r}")
        share = self.budget_per_window / partitions
        if math.floor(share) < 1:
            raise ValueError(
                f"a budget of {self.budget_per_window:g} reviews per window split over "
                f"{partitions} partitions leaves {share:.3g} per partition window, under one "
                f"review: give at least {partitions} per window, or use fewer partitions"
            )
        update: dict[str, object] = {"budget_per_window": share}
        if self.window_items is not None:
            update["window_items"] = math.ceil(self.window_items / partitions)
        if self.expected_items_per_window is not None:
            update["expected_items_per_window"] = self.expected_items_per_window / partitions
        return PacerConfig(**{**self.model_dump(), **update})


class PacerState(BaseModel):
    """Everything the pacer remembers; saved after each decision so a restart continues."""

    window: int | None = None
    spent: int = 0
    arrivals: int = 0
    window_start: float = 0.0
    last_time: float | None = None
    previous_rate_per_second: float | None = None
    planned_rate: float | None = None
    planned_at_spent: int = 0
    planned_arrival_rate: float | None = None
    planned_remaining: float = 0.0
    eps_histogram: list[float] = Field(default_factory=list)
    items_total: int = 0
    selected_total: int = 0
    capped_total: int = 0


@dataclass(frozen=True, slots=True)
class PacerDecision:
    """One item's outcome: pi_t was fixed before delta_t was drawn (a plain record: the pacer
    makes one per item, and a validated model cost a tenth of its time)."""

    item_id: str
    eps: float
    pi: float
    delta: bool
    capped: bool
    audit: bool
    window: int
    planned_rate: float


def planned_reviews(reviews_left: int, cap_probability: float) -> float:
    """Mean x of a Poisson count that reaches `reviews_left` with probability cap_probability.

    P(Poisson(x) >= H) = P(H, x), the regularised lower incomplete gamma function, so
    x = P^-1(H, p). A binomial count with the same mean has a lighter upper tail, so the
    plan is conservative for item windows too.
    """
    if reviews_left <= 0:
        return 0.0
    return float(gammaincinv(reviews_left, cap_probability))


class _WindowView(NamedTuple):
    window: int
    spent: int
    arrivals: int
    start: float
    now: float | None
    previous_rate: float | None

    @property
    def elapsed(self) -> float:
        """Event time since the window opened (0 for item windows)."""
        return max((self.now or self.start) - self.start, 0.0)


class StreamPacer:
    """Online sampler: predictable pi_t under a per-window hard cap of reviews.

    For each item, the pacer knows the reviews left under the cap, H = cap - spent, and the
    arrivals expected in the rest of the window, R (exact for item windows, rate times time
    left for time windows). It plans x remaining reviews with P(Poisson(x) >= H) =
    cap_probability (`planned_reviews`) and a per-item rate rho = x / R. The plan is held
    until a review is spent, R falls by a quarter or the arrival-rate estimate drifts by a
    quarter: re-planning on every item would compound the risk of reaching the cap, and
    re-planning on those events spends more of the cap as the window closes. The rate rho
    is split into an audit rate a = audit_share * rho (uniform over items, a small known
    pi) and a threshold rate r = (rho - a) / (1 - a), so that
    pi_t = p_thr(eps_t) + (1 - p_thr) * a
    has mean rho. p_thr is the streaming form of top-B: 1 above the (1 - r) quantile of
    recent eps, 0 below, and the fraction that spends r exactly inside the boundary bin of
    a decaying histogram of eps. pi_t uses only the state before item t and eps_t, so it is
    predictable and the ACT loss stays unbiased. Once the cap is reached, pi = 0 and the
    decision is marked capped. delta_t = 1[u_t < pi_t] with the keyed uniform u_t.
    """

    def __init__(self, config: PacerConfig, state: PacerState | None = None) -> None:
        self.config = config
        self._decay = 0.5 ** (1.0 / config.half_life_items)
        self._state = state.model_copy(deep=True) if state is not None else PacerState()
        if not self._state.eps_histogram:
            self._state.eps_histogram = [config.prior_items / config.bins] * config.bins
        if len(self._state.eps_histogram) != config.bins:
            raise ValueError(
                f"saved pacer state has {len(self._state.eps_histogram)} histogram bins but "
                f"the configuration asks for {config.bins}"
            )
        self._histogram = np.asarray(self._state.eps_histogram, dtype=np.float64)

    def state(self) -> PacerState:
        """A copy of the state, to save (e.g. as JSON) and pass back to the constructor."""
        snapshot = self._state.model_copy(deep=True)
        snapshot.eps_histogram = self._histogram.tolist()
        return snapshot

    def probability(self, eps: float, timestamp: float | None = None) -> float:
        """pi for an item with this eps arriving now, without changing the state."""
        eps_value = float(as_probability_array([eps], "eps")[0])
        view = self._window_view(self._event_time(self._checked_time(timestamp)))
        return self._probability(eps_value, view, self._plan(view)[0])[0]

    def decide(self, item_id: ItemId, eps: float, timestamp: float | None = None) -> PacerDecision:
        """Fix pi_t from the state, draw delta_t with the keyed uniform, then update the state."""
        return self.decide_many([item_id], [eps], [timestamp])[0]

    def decide_many(
        self,
        item_ids: Sequence[ItemId],
        eps: Sequence[float],
        timestamps: Sequence[float | None] | None = None,
    ) -> list[PacerDecision]:
        """`decide` for consecutive items, in order; the same decisions and state as one call
        per item. The whole input is checked first, so a rejected batch leaves the state as it
        was, and the keyed uniforms of all items are drawn at once (u_t depends on its own id
        only)."""
        eps_values = as_probability_array(eps, "eps", allow_empty=True).tolist()
        times = [None] * len(eps_values) if timestamps is None else list(timestamps)
        if not len(item_ids) == len(eps_values) == len(times):
            raise ValueError(
                f"{len(item_ids)} item ids, {len(eps_values)} eps and {len(times)} timestamps: "
                "each item needs one of each"
            )
        checked_times = [self._checked_time(timestamp) for timestamp in times]
        uniforms = keyed_uniform(item_ids, self.config.seed).tolist()
        return [
            self._decide_checked(*item)
            for item in zip(item_ids, eps_values, checked_times, uniforms, strict=True)
        ]

    # -- internals ---------------------------------------------------------------------------

    def _decide_checked(
        self, item_id: ItemId, eps: float, timestamp: float | None, u: float
    ) -> PacerDecision:
        """`decide` for checked input and the item's keyed uniform u."""
        view = self._window_view(self._event_time(timestamp))
        rate, arrival_rate, remaining = self._plan(view)
        pi, threshold_part = self._probability(eps, view, rate)
        capped = view.spent >= self.config.hard_cap
        delta = u < pi
        if view.window != self._state.window:
            self._close_window(view)
        state = self._state
        # Assigning a pydantic field costs about a microsecond: fields that keep their value
        # (a held plan, no review, item windows without a clock) are not assigned.
        if state.planned_rate != rate or state.planned_at_spent != view.spent:
            state.planned_rate = rate
            state.planned_at_spent = view.spent
        if state.planned_arrival_rate != arrival_rate:
            state.planned_arrival_rate = arrival_rate
        if state.planned_remaining != remaining:
            state.planned_remaining = remaining
        if view.now is not None:
            state.last_time = view.now
        state.arrivals += 1
        state.items_total += 1
        if delta:
            state.spent += 1
            state.selected_total += 1
        if capped:
            state.capped_total += 1
        self._histogram *= self._decay
        self._histogram[self._bin(eps)] += 1.0
        return PacerDecision(
            item_id=item_id
            if type(item_id) is str  # already encoded by keyed_uniform, so valid UTF-8
            else _as_bytes(item_id, "item id").decode("utf-8", errors="replace"),
            eps=eps,
            pi=pi,
            delta=delta,
            capped=capped,
            audit=delta and threshold_part == 0.0,
            window=view.window,
            planned_rate=rate,
        )

    def _checked_time(self, timestamp: float | None) -> float | None:
        """The item's event time as a finite float (None for item windows)."""
        if self.config.window_seconds is None:
            return None
        if timestamp is None:
            raise ValueError("this pacer paces over time windows: every item needs a timestamp")
        return as_finite_float(timestamp, "timestamp")

    def _event_time(self, now: float | None) -> float | None:
        """The event time an item counts at, from its checked time (None: item windows)."""
        if now is None:
            return None
        last = self._state.last_time
        return now if last is None else max(now, last)  # late items count in the open window

    def _window_view(self, now: float | None) -> _WindowView:
        """The open window's counts as they are for an item arriving now (no state change)."""
        state = self._state
        if now is None:  # item windows
            window = state.items_total // (self.config.window_items or 1)
            start = 0.0
        else:
            length = self.config.window_seconds or 1.0
            window = math.floor(now / length)
            start = window * length
        if window == state.window:
            return _WindowView(
                window,
                state.spent,
                state.arrivals,
                state.window_start,
                now,
                state.previous_rate_per_second,
            )
        return _WindowView(window, 0, 0, start, now, self._rate_after_closing())

    def _rate_after_closing(self) -> float | None:
        """Arrival rate remembered once the open window closes: the mean with the last one."""
        state = self._state
        if state.window is None or self.config.window_seconds is None:
            return state.previous_rate_per_second
        observed = state.arrivals / self.config.window_seconds
        previous = state.previous_rate_per_second
        return observed if previous is None else 0.5 * (observed + previous)

    def _close_window(self, view: _WindowView) -> None:
        state = self._state
        state.previous_rate_per_second = view.previous_rate
        state.window = view.window
        state.window_start = view.start
        state.spent = 0
        state.arrivals = 0
        state.planned_rate = None

    def _arrival_rate(self, view: _WindowView) -> float | None:
        """Estimated arrivals per second in the open window (None for item windows)."""
        config = self.config
        if config.window_seconds is None:
            return None
        length = config.window_seconds
        elapsed = view.elapsed
        prior_rate = view.previous_rate
        if prior_rate is None and config.expected_items_per_window is not None:
            prior_rate = config.expected_items_per_window / length
        if prior_rate is None:
            # No idea of the rate yet: assume it is high, so the first window under-spends
            # rather than running into the cap.
            return (view.arrivals + 1) / max(elapsed, 1e-3 * length)
        prior_seconds = 0.1 * length
        return (view.arrivals + prior_rate * prior_seconds) / (elapsed + prior_seconds)

    def _expected_remaining(self, view: _WindowView, arrival_rate: float | None) -> float:
        if self.config.window_items is not None:
            return float(max(self.config.window_items - view.arrivals, 1))
        length = self.config.window_seconds or 1.0
        return max((arrival_rate or 0.0) * (length - view.elapsed), 1.0)

    def _plan(self, view: _WindowView) -> tuple[float, float | None, float]:
        """(per-item review rate, arrival rate and remaining arrivals it assumed).

        The held plan is reused unless a review was spent since, the expected remaining
        arrivals fell below REPLAN_FACTOR of the planned ones, or the arrival-rate estimate
        moved by more than RATE_DRIFT (see the class docstring for why).
        """
        state = self._state
        arrival_rate = self._arrival_rate(view)
        remaining = self._expected_remaining(view, arrival_rate)
        still_valid = (
            state.planned_rate is not None
            and view.window == state.window
            and view.spent == state.planned_at_spent
            and remaining > REPLAN_FACTOR * state.planned_remaining
            and (
                arrival_rate is None
                or abs(arrival_rate - (state.planned_arrival_rate or 0.0))
                <= RATE_DRIFT * (state.planned_arrival_rate or 0.0)
            )
        )
        if still_valid:
            return state.planned_rate or 0.0, state.planned_arrival_rate, state.planned_remaining
        reviews_left = self.config.hard_cap - view.spent
        planned = planned_reviews(reviews_left, self.config.cap_probability)
        return min(1.0, planned / remaining), arrival_rate, remaining

    def _probability(self, eps: float, view: _WindowView, rate: float) -> tuple[float, float]:
        """(pi, threshold part of pi) for this eps at the planned per-item review rate."""
        if view.spent >= self.config.hard_cap:
            return 0.0, 0.0
        audit_rate = self.config.audit_share * rate
        threshold_rate = (rate - audit_rate) / (1.0 - audit_rate)
        threshold_part = self._threshold_probability(eps, threshold_rate)
        pi = threshold_part + (1.0 - threshold_part) * audit_rate
        return min(pi, 1.0), threshold_part

    def _threshold_probability(self, eps: float, rate: float) -> float:
        """P(select) for this eps so that the recent eps distribution is selected at `rate`."""
        if rate <= 0.0:
            return 0.0
        counts = self._histogram
        tail = counts[::-1].cumsum()  # tail[j]: mass of the top j + 1 bins
        target = rate * float(tail[-1])
        top = int(tail.searchsorted(target, side="left"))
        if top >= counts.size:
            return 1.0
        boundary = counts.size - 1 - top
        above = float(tail[top]) - float(counts[boundary])
        fraction = min(1.0, max(0.0, (target - above) / float(counts[boundary])))
        item_bin = self._bin(eps)
        if item_bin > boundary:
            return 1.0
        return fraction if item_bin == boundary else 0.0

    def _bin(self, eps: float) -> int:
        return min(int(eps * self.config.bins), self.config.bins - 1)
