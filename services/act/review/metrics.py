"""Prometheus metrics of the review queue, read from the store at scrape time.

A custom collector queries `ReviewStore.stats()` on each scrape, so the figures are never
stale and nothing is cached between scrapes: queue depth by state, the age of the oldest
pending item (the time-to-review backlog), the time from decision to first review of the last
hour's reviews (quantiles), human–machine agreement on reviewed items, and for each of the
latest sampling windows its budget use (reviews drawn against the expected spend sum(pi), the
decisions made after its hard cap was reached) and its reviews' agreement. The store reads
per-window counts, so a scrape does not count the records (docs/operations.md).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from act.review.store import REVIEW_DELAYS_LIMIT, ReviewStore, time_to_review

# Windows reported per scrape: those with the latest decisions, so label cardinality stays
# bounded.
MAX_WINDOWS = 50

# The gauges of each reported window: (metric, help, WindowSpend attribute).
WINDOW_GAUGES = (
    ("act_review_budget_selected", "Reviews drawn in a sampling window", "selected"),
    ("act_review_budget_expected", "Expected spend sum(pi) of a sampling window", "expected"),
    ("act_review_budget_reviewed", "Reviews done in a sampling window", "reviewed"),
    # Decided after the window's hard cap was hit (pi forced to 0): the budget ran out early,
    # which the pacer aims to make rarer than its cap probability.
    (
        "act_review_budget_capped",
        "Decisions of a sampling window made after its hard cap was reached (pi = 0)",
        "capped",
    ),
    # Agreement per window: a trend over the stream that the all-time ratio hides.
    (
        "act_review_budget_labelled",
        "Reviews of a sampling window that gave a human label",
        "labelled",
    ),
    (
        "act_review_budget_agreeing",
        "Reviews of a sampling window whose human label equals the machine label",
        "agree",
    ),
)


class ReviewStoreCollector(Collector):
    def __init__(self, store: ReviewStore) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = self.store.stats(recent_windows=MAX_WINDOWS)
        depth = GaugeMetricFamily(
            "act_review_queue_depth", "Records by review state", labels=["state"]
        )
        for state in ("pending", "claimed", "reviewed", "not_selected"):
            depth.add_metric([state], getattr(stats, state))
        yield depth
        yield CounterMetricFamily(
            "act_review_decisions_stored", "Decisions stored (one per item)", value=stats.decisions
        )
        age = stats.oldest_pending_age.total_seconds() if stats.oldest_pending_age else 0.0
        yield GaugeMetricFamily(
            "act_review_oldest_pending_age_seconds",
            "Age of the oldest item waiting for a reviewer (0 when none waits)",
            value=age,
        )
        if stats.agreement_rate is not None:
            yield GaugeMetricFamily(
                "act_review_agreement_ratio",
                "Share of reviewed items where the human label equals the machine label",
                value=stats.agreement_rate,
            )
        delays = self.store.review_delays()
        quantiles = time_to_review(delays)
        if quantiles:
            family = GaugeMetricFamily(
                "act_review_time_to_review_seconds",
                "Time from decision to first review, quantiles over the items first reviewed "
                f"in the last hour (at most the latest {REVIEW_DELAYS_LIMIT:,})",
                labels=["quantile"],
            )
            for quantile, value in quantiles.items():
                family.add_metric([f"{quantile:g}"], value)
            yield family
        yield GaugeMetricFamily(
            "act_review_first_reviews_last_hour",
            f"Items first reviewed in the last hour (at most {REVIEW_DELAYS_LIMIT:,} counted)",
            value=len(delays),
        )
        for name, description, attribute in WINDOW_GAUGES:
            family = GaugeMetricFamily(name, description, labels=["budget_id", "window_id"])
            for window in stats.windows:
                family.add_metric([window.budget_id, window.window_id], getattr(window, attribute))
            yield family


def review_registry(store: ReviewStore) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(ReviewStoreCollector(store))
    return registry
