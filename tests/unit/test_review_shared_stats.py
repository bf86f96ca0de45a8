"""act.review.shared_stats: one count of the records per interval, whatever the callers."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from act.review.shared_stats import COUNT_TIME_RATIO, MAX_FILTERS, SharedStats
from act.review.store import QueueStats, ReviewStore


class CountingStore:
    """A ReviewStore's stats, counting the calls (and able to hold one until released)."""

    def __init__(self, store: ReviewStore) -> None:
        self.store = store
        self.calls: list[tuple[str | None, int | None]] = []
        self.hold = threading.Event()
        self.hold.set()
        self.on_count = lambda: None  # e.g. advance a fake clock: a count taking time

    def stats(self, schema_id: str | None = None, *, recent_windows: int | None = None):
        self.calls.append((schema_id, recent_windows))
        self.hold.wait(10)
        self.on_count()
        return self.store.stats(schema_id, recent_windows=recent_windows)


@pytest.fixture
def counting(tmp_path: Path) -> CountingStore:
    return CountingStore(ReviewStore(f"sqlite:///{tmp_path / 'review.db'}"))


def test_callers_within_the_max_age_share_one_count(counting: CountingStore) -> None:
    now = [100.0]
    shared = SharedStats(counting, max_age_s=2.0, clock=lambda: now[0])  # type: ignore[arg-type]

    first = shared.get()
    now[0] += 1.5
    assert shared.get() is first
    assert counting.calls == [(None, 0)]  # the windows are not asked for

    now[0] += 1.0  # 2.5 s after the count: too old
    assert isinstance(shared.get(), QueueStats)
    shared.get("digits")  # another filter: counted on its own
    assert counting.calls == [(None, 0), (None, 0), ("digits", 0)]


def test_a_slow_count_is_reused_for_a_multiple_of_its_duration(counting: CountingStore) -> None:
    """A large table: each count takes 3 s, so it serves for 30 s, not max_age_s."""
    now = [0.0]
    counting.on_count = lambda: now.__setitem__(0, now[0] + 3.0)
    shared = SharedStats(counting, max_age_s=2.0, clock=lambda: now[0])  # type: ignore[arg-type]

    shared.get()  # counted from t=0 to t=3
    now[0] = 3.0 + COUNT_TIME_RATIO * 3.0 - 0.5
    shared.get()
    assert len(counting.calls) == 1
    now[0] += 1.0
    shared.get()
    assert len(counting.calls) == 2


def test_a_max_age_of_zero_counts_on_every_call(counting: CountingStore) -> None:
    now = [5.0]
    shared = SharedStats(counting, max_age_s=0.0, clock=lambda: now[0])  # type: ignore[arg-type]
    for _ in range(3):
        now[0] += 0.001
        shared.get()
    assert len(counting.calls) == 3


def test_concurrent_callers_wait_for_the_count_in_progress(counting: CountingStore) -> None:
    shared = SharedStats(counting, max_age_s=60.0)  # type: ignore[arg-type]
    counting.hold.clear()
    results: list[QueueStats] = []
    callers = [threading.Thread(target=lambda: results.append(shared.get())) for _ in range(8)]
    for caller in callers:
        caller.start()
    counting.hold.set()
    for caller in callers:
        caller.join(10)
    assert len(results) == 8 and all(r is results[0] for r in results)
    assert len(counting.calls) == 1


def test_filters_are_remembered_up_to_a_bound(counting: CountingStore) -> None:
    shared = SharedStats(counting, max_age_s=60.0)  # type: ignore[arg-type]
    for i in range(MAX_FILTERS + 5):
        shared.get(f"schema-{i}")
    assert len(shared._latest) <= MAX_FILTERS


def test_a_negative_max_age_is_refused(counting: CountingStore) -> None:
    with pytest.raises(ValueError, match="max_age_s"):
        SharedStats(counting, max_age_s=-1)  # type: ignore[arg-type]
