"""Queue statistics shared by the clients of one review server.

`ReviewStore.stats` counts over the whole records table. The reviewer UI asks for it after every
label and while it waits for work, so with many reviewers the server would scan the table once
per reviewer action. `SharedStats` hands every caller a result computed at most
`max(max_age_s, COUNT_TIME_RATIO * the count's duration)` ago (one per schema filter), counted
by one caller while the others wait for it: N reviewers cost one count per interval, and
counting takes at most 1/COUNT_TIME_RATIO of the database's time however large the table
grows (measured on PostgreSQL here: 0.9-1.6 s per count at 1,000,000 records, so the figures
are then up to ~10 s old). The Prometheus collector does not use it (a scrape is rare and
wants the current figures).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from act.review.store import QueueStats, ReviewStore

# Schema filters remembered at most (a filter comes from the request: bounded against abuse).
MAX_FILTERS = 64
# A count is reused for at least this many times its own duration.
COUNT_TIME_RATIO = 10.0


class SharedStats:
    def __init__(
        self,
        store: ReviewStore,
        max_age_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_age_s < 0:
            raise ValueError(f"max_age_s must be >= 0, got {max_age_s}")
        self.store = store
        self.max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        # schema filter -> (when counted, how long it took, the counts)
        self._latest: dict[str | None, tuple[float, float, QueueStats]] = {}

    def get(self, schema_id: str | None = None) -> QueueStats:
        """The queue's counts (no windows: `recent_windows=0`), as old as the module says."""
        with self._lock:  # one computation at a time; the waiting callers then reuse it
            started = self._clock()
            cached = self._latest.get(schema_id)
            if cached is not None:
                counted_at, took, stats = cached
                if started - counted_at <= max(self.max_age_s, COUNT_TIME_RATIO * took):
                    return stats
            stats = self.store.stats(schema_id, recent_windows=0)
            if len(self._latest) >= MAX_FILTERS:
                self._latest.clear()
            finished = self._clock()
            self._latest[schema_id] = (finished, finished - started, stats)
            return stats
