"""Budget transforms pi_B(eps): turn criticizer error probabilities into review probabilities.

Every transform maps eps in [0, 1]^N and a budget B (the expected number of human reviews,
0 < B <= N) to pi in [pi_min, 1]^N with sum(pi) = B, monotone non-decreasing in eps
(DESIGN.md §2.1). Where capping pi at 1 would leave budget unspent, the scale is solved so
that the mass is redistributed ("water-filling").

References:
- Lin et al., "ACT as Human: Multimodal LLM Data Annotation with Critical Thinking",
  NeurIPS 2025: the budget-aware sampling delta_i ~ Ber(pi_B(eps_i)), the normalisation,
  exponential-weighting and thresholding transforms, and Theorem 5.2 (the parameter gap
  shrinks as q = min pi over reviewed items grows, hence exp/thre push pi towards 1).
- Zrnic & Candès, "Active Statistical Inference", ICML 2024: pi proportional to the
  uncertainty, mixed with the uniform rule so that no pi is tiny (our `norm`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.optimize import brentq
from scipy.special import expit, logsumexp

from act.core.validation import as_finite_float, as_probability_array

DEFAULT_PI_MIN = 1e-3

# Default hyperparameters of each transform. The paper does not publish its own; these are
# documented defaults, and the experiment harness sweeps them.
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "norm": {"tau": 0.1},
    "norm-paper": {},
    "exp": {"beta": 10.0},
    "thre": {"rho": 0.1, "spread": "uniform"},
    "logistic": {"beta": 10.0},
}
METHODS = tuple(DEFAULT_PARAMS)
THRESHOLD_SPREADS = ("uniform", "eps")


def review_probabilities(
    eps: object,
    budget: float,
    method: str,
    *,
    pi_min: float = DEFAULT_PI_MIN,
    **params: Any,
) -> np.ndarray:
    """Review probabilities pi_B(eps) for a batch of N items with an expected budget of B reviews.

    Methods (DESIGN.md §2.1; hyperparameters in `params`, defaults in `DEFAULT_PARAMS`):

    - ``"norm"``: pi_i = clip(c * ((1 - tau) eps_i + tau * mean(eps)), pi_min, 1), c solved so
      that sum(pi) = B (Zrnic & Candès 2024, mixing with the uniform rule).
    - ``"norm-paper"``: the paper's variant, tau = 0 and no floor: pi_i = min(1, c * eps_i).
      It may go below pi_min (to 0 where eps_i = 0) and collapses at low budgets, because
      reviewed items get small pi and huge weights 1/pi. Where fewer than B items have
      eps > 0, those items get pi = 1 and the items with eps = 0 share the rest equally.
    - ``"exp"``: pi_i = clip(c * exp(beta * eps_i), pi_min, 1) (the paper's exponential
      weighting); beta -> inf tends to top-B selection, beta -> 0 to uniform.
    - ``"thre"``: the top k = floor((1 - rho) B) items by eps get pi = 1 (the paper's
      thresholding); the remaining budget is spread over the others, uniformly
      (``spread="uniform"``) or proportionally to eps (``spread="eps"``), never below pi_min.
      rho is the audit share that keeps every pi > 0; k is lowered if the floor needs it.
      Items tied in eps get equal pi (the mean over the tie), so pi is a function of eps.
    - ``"logistic"``: pi_i = clip(sigmoid(beta * (eps_i - alpha)), pi_min, 1), alpha solved.

    Returns a float64 array with sum(pi) = B (to 1e-6 relative or better).
    Raises ValueError for NaN/inf or eps outside [0, 1], an empty batch, budget <= 0 or
    > N, budget < N * pi_min, an unknown method or an invalid hyperparameter.
    """
    eps_array = as_probability_array(eps, "eps")
    n_items = eps_array.size
    pi_min = _check_pi_min(pi_min)
    budget = _check_budget(budget, n_items, pi_min)
    resolved = resolve_params(method, params)
    floor = 0.0 if method == "norm-paper" else pi_min
    if budget >= n_items:
        return np.ones(n_items)
    if budget <= n_items * floor:
        return np.full(n_items, floor)
    return _TRANSFORMS[method](eps_array, budget, floor, **resolved)


def resolve_params(method: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The method's hyperparameters: `params` over the defaults, each checked."""
    if method not in DEFAULT_PARAMS:
        raise ValueError(f"unknown transform method {method!r}; expected one of {list(METHODS)}")
    unknown = set(params) - set(DEFAULT_PARAMS[method])
    if unknown:
        accepted = sorted(DEFAULT_PARAMS[method]) or "none"
        raise ValueError(
            f"unknown parameter(s) {sorted(unknown)} for transform {method!r}; accepted: {accepted}"
        )
    resolved = {**DEFAULT_PARAMS[method], **params}
    if "tau" in resolved:
        resolved["tau"] = _check_unit_interval(resolved["tau"], "tau")
    if "rho" in resolved:
        resolved["rho"] = _check_unit_interval(resolved["rho"], "rho")
    if "beta" in resolved:
        beta = as_finite_float(resolved["beta"], "beta")
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        resolved["beta"] = beta
    if "spread" in resolved and resolved["spread"] not in THRESHOLD_SPREADS:
        raise ValueError(
            f"spread must be one of {list(THRESHOLD_SPREADS)}, got {resolved['spread']!r}"
        )
    return resolved


class TransformSpec(BaseModel):
    """A configured transform: what services record on every decision as its transform id."""

    model_config = ConfigDict(frozen=True)

    method: str = "thre"
    params: dict[str, Any] = Field(default_factory=dict)
    pi_min: float = DEFAULT_PI_MIN

    @property
    def id(self) -> str:
        """Stable identifier, e.g. ``thre(rho=0.1,spread=uniform;pi_min=0.001)``."""
        resolved = resolve_params(self.method, self.params)
        inner = ",".join(f"{key}={value}" for key, value in sorted(resolved.items()))
        return f"{self.method}({inner};pi_min={self.pi_min})"

    def apply(self, eps: object, budget: float) -> np.ndarray:
        """pi_B(eps) with this method, its parameters and floor."""
        return review_probabilities(eps, budget, self.method, pi_min=self.pi_min, **self.params)


def _check_pi_min(pi_min: float) -> float:
    value = as_finite_float(pi_min, "pi_min")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"pi_min must be in [0, 1), got {value}")
    return value


def _check_budget(budget: float, n_items: int, pi_min: float) -> float:
    value = as_finite_float(budget, "budget")
    if value <= 0:
        raise ValueError(f"budget must be > 0 (expected number of reviews), got {value}")
    if value > n_items * (1 + 1e-12):
        raise ValueError(f"budget {value} exceeds the number of items N = {n_items}")
    if value < n_items * pi_min * (1 - 1e-12):
        raise ValueError(
            f"budget {value} is below N * pi_min = {n_items} * {pi_min} = {n_items * pi_min}: "
            "every item needs at least pi_min; lower pi_min or raise the budget"
        )
    return min(value, float(n_items))


def _check_unit_interval(value: object, name: str) -> float:
    number = as_finite_float(value, name)
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {number}")
    return number


def water_fill(log_weights: np.ndarray, budget: float, floor: float) -> np.ndarray:
    """Solve pi_i = clip(exp(t + s_i), floor, 1) with sum(pi) = budget, for s = log weights.

    The spend f(t) is continuous, non-decreasing and piecewise smooth in t, with breakpoints
    where an item saturates at 1 (t = -s_i) or leaves the floor (t = log(floor) - s_i).
    A binary search over the sorted breakpoints finds the piece holding the solution, where
    the saturated and floored sets are fixed and t has a closed form. Working in log space
    keeps very sharp weights (exp with large beta) exact. Items with weight 0 (s = -inf)
    stay at the floor; if the positive-weight items cannot absorb the budget even at pi = 1,
    they all get 1 and the weight-0 items share the remainder equally.
    """
    n_items = log_weights.size
    positive = np.isfinite(log_weights)
    n_positive = int(positive.sum())
    n_zero = n_items - n_positive
    if budget >= n_positive + n_zero * floor:
        share = (budget - n_positive) / n_zero if n_zero else 1.0
        return np.where(positive, 1.0, share)
    if budget <= n_items * floor:
        return np.full(n_items, floor)

    scores = log_weights[positive]
    log_floor = math.log(floor) if floor > 0 else -math.inf
    breakpoints = -scores if floor == 0 else np.concatenate([-scores, log_floor - scores])
    breakpoints = np.unique(breakpoints)

    def spend(t: float) -> float:
        return n_zero * floor + float(_pi_from_log(t + scores, floor).sum())

    # Largest index j with spend(breakpoints[j]) <= budget (-1: the solution is left of all).
    lo, hi = -1, breakpoints.size - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if spend(float(breakpoints[mid])) <= budget:
            lo = mid
        else:
            hi = mid - 1
    left = float(breakpoints[max(lo, 0)])
    inside = left - 1.0 if lo < 0 else 0.5 * (left + float(breakpoints[lo + 1]))
    z_inside = inside + scores
    saturated = z_inside >= 0
    floored = z_inside <= log_floor
    free = ~(saturated | floored)
    fixed_spend = n_zero * floor + int(saturated.sum()) + int(floored.sum()) * floor
    free_budget = budget - fixed_spend
    # exp(t) * sum(exp(scores[free])) = free_budget, solved in log space: the free weights
    # may span more than a double holds (exp with a large beta).
    if free.any() and free_budget > 0:
        t = math.log(free_budget) - float(logsumexp(scores[free]))
    else:
        t = left  # the free items' share is below rounding: leave them at the breakpoint
    pi = np.full(n_items, floor)
    pi[positive] = _pi_from_log(t + scores, floor)
    return pi


def _pi_from_log(log_pi: np.ndarray, floor: float) -> np.ndarray:
    """clip(exp(log_pi), floor, 1), capping before exp so large arguments cannot overflow."""
    return np.maximum(np.exp(np.minimum(log_pi, 0.0)), floor)


def _norm(eps: np.ndarray, budget: float, floor: float, *, tau: float) -> np.ndarray:
    mixed = (1.0 - tau) * eps + tau * eps.mean()
    with np.errstate(divide="ignore"):
        return water_fill(np.log(mixed), budget, floor)


def _norm_paper(eps: np.ndarray, budget: float, floor: float) -> np.ndarray:
    return _norm(eps, budget, floor, tau=0.0)


def _exp(eps: np.ndarray, budget: float, floor: float, *, beta: float) -> np.ndarray:
    return water_fill(beta * eps, budget, floor)


def _logistic(eps: np.ndarray, budget: float, floor: float, *, beta: float) -> np.ndarray:
    def excess(alpha: float) -> float:
        return float(np.clip(expit(beta * (eps - alpha)), floor, 1.0).sum()) - budget

    # At alpha_low every sigmoid rounds to 1 (spend N >= B); at alpha_high every one is
    # below the floor or ~1e-18 (spend < B): the root is bracketed.
    alpha_low = float(eps.min()) - 40.0 / beta
    alpha_high = float(eps.max()) + 40.0 / beta
    alpha = brentq(excess, alpha_low, alpha_high, xtol=1e-15, rtol=1e-15, maxiter=500)
    return np.clip(expit(beta * (eps - alpha)), floor, 1.0)


def _threshold(
    eps: np.ndarray, budget: float, floor: float, *, rho: float, spread: str
) -> np.ndarray:
    n_items = eps.size
    order = np.argsort(-eps, kind="stable")
    # The floor of the other N - k items must fit: k + (N - k) * floor <= B.
    k_floor_fits = math.floor((budget - n_items * floor) / (1.0 - floor) + 1e-9)
    k = max(0, min(math.floor((1.0 - rho) * budget + 1e-9), k_floor_fits, n_items - 1))
    remaining = budget - k
    pi_sorted = np.ones(n_items)
    if spread == "uniform":
        pi_sorted[k:] = remaining / (n_items - k)
    else:
        with np.errstate(divide="ignore"):
            pi_sorted[k:] = water_fill(np.log(eps[order[k:]]), remaining, floor)
    pi_sorted = np.maximum(_mean_over_ties(eps[order], pi_sorted), floor)  # rounding
    pi = np.empty(n_items)
    pi[order] = pi_sorted
    return pi


def _mean_over_ties(sorted_eps: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Replace each run of equal eps by the mean of its values (keeps sum and monotonicity)."""
    starts = np.flatnonzero(np.r_[True, sorted_eps[1:] != sorted_eps[:-1]])
    if starts.size == sorted_eps.size:
        return values
    sizes = np.diff(np.r_[starts, sorted_eps.size])
    means = np.add.reduceat(values, starts) / sizes
    return np.repeat(means, sizes)


_TRANSFORMS: dict[str, Callable[..., np.ndarray]] = {
    "norm": _norm,
    "norm-paper": _norm_paper,
    "exp": _exp,
    "thre": _threshold,
    "logistic": _logistic,
}
