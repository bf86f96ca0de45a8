"""act.review.shared_stats: a count is reused for reuse_factor times as long as it took."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from act.review.shared_stats import MAX_FILTERS, SharedStats
from act.review.store import QueueStats, ReviewStore


class CountingStore:
    """A ReviewStore's stats, counting the calls; each count advances a fake clock by
    `count_seconds` (a table that takes that long to count) and can be held until released."""

    def __init__(self, store: ReviewStore) -> None:
        self.store = store
        self.calls: list[tuple[str | None, int | None]] = []
        self.hold = threading.Event()
        self.hold.set()
        self.now = 0.0
        self.count_seconds = 0.0

    def clock(self) -> float:
        return self.now

    def stats(self, schema_id: str | None = None, *, recent_windows: int | None = None):
        self.calls.append((schema_id, recent_windows))
        self.hold.wait(10)
        self.now += self.count_seconds
        return self.store.stats(schema_id, recent_windows=recent_windows)


@pytest.fixture
def counting(tmp_path: Path) -> CountingStore:
    return CountingStore(ReviewStore(f"sqlite:///{tmp_path / 'review.db'}"))


def _shared(counting: CountingStore, reuse_factor: float = 10.0) -> SharedStats:
    return SharedStats(counting, reuse_factor, clock=counting.clock)  # type: ignore[arg-type]


def test_a_count_is_reused_for_the_factor_times_its_duration(counting: CountingStore) -> None:
    counting.count_seconds = 3.0  # a large table
    shared = _shared(counting)

    first = shared.get()  # counted from t=0 to t=3: reused until t=33
    counting.now = 32.5
    assert shared.get() is first
    assert counting.calls == [(None, 0)]  # the windows are not asked for
    counting.now = 33.5
    assert isinstance(shared.get(), QueueStats)
    shared.get("digits")  # another filter: counted on its own
    assert counting.calls == [(None, 0), (None, 0), ("digits", 0)]


def test_a_reviewer_who_changed_the_queue_gets_a_count_started_after_the_change(
    counting: CountingStore,
) -> None:
    counting.count_seconds = 3.0
    shared = _shared(counting)
    before = shared.get()  # counted from t=0 to t=3, reusable until t=33
    counting.now = 5.0
    shared.wrote("alice")  # alice labels an item
    counting.now = 6.0
    assert shared.get(reviewer="bob") is before  # bob changed nothing: reused
    mine = shared.get(reviewer="alice")  # counted again, from t=6: includes her label
    assert mine is not before and len(counting.calls) == 2
    counting.now = 10.0
    assert shared.get(reviewer="alice") is mine  # no change of hers since: reused
    assert shared.get(reviewer="bob") is mine and shared.get() is mine
    assert len(counting.calls) == 2


def test_a_quick_count_is_not_reused_once_time_has_passed(counting: CountingStore) -> None:
    """A small table counts in milliseconds: a moment later the counts are read again."""
    counting.count_seconds = 0.002
    shared = _shared(counting)
    shared.get()
    counting.now += 0.1
    shared.get()
    assert len(counting.calls) == 2


def test_a_factor_of_zero_counts_on_every_call(counting: CountingStore) -> None:
    counting.count_seconds = 5.0
    shared = _shared(counting, reuse_factor=0.0)
    for _ in range(3):
        shared.get()
    assert len(counting.calls) == 3


def test_concurrent_callers_wait_for_the_count_in_progress(counting: CountingStore) -> None:
    counting.count_seconds = 1.0
    shared = _shared(counting)
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
    counting.count_seconds = 1.0
    shared = _shared(counting)
    for i in range(MAX_FILTERS + 5):
        shared.get(f"schema-{i}")
    assert len(shared._latest) <= MAX_FILTERS


def test_a_negative_factor_is_refused(counting: CountingStore) -> None:
    with pytest.raises(ValueError, match="reuse_factor"):
        _shared(counting, reuse_factor=-1)
