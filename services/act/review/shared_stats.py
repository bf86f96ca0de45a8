"""Queue statistics shared by the clients of one review server.

`ReviewStore.stats` counts over the whole records table. The reviewer UI asks for it after every
label and while it waits for work, so with many reviewers the server would scan the table once
per reviewer action. `SharedStats` hands every caller a result at most `max_age_s` old (one
per schema filter), computed by one caller while the others wait for it: N reviewers cost one
scan per interval. The Prometheus collector does not use it (a scrape is rare and wants the
current figures).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from act.review.store import QueueStats, ReviewStore

# Schema filters remembered at most (a filter comes from the request: bounded against abuse).
MAX_FILTERS = 64


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
        self._latest: dict[str | None, tuple[float, QueueStats]] = {}

    def get(self, schema_id: str | None = None) -> QueueStats:
        """The queue's counts (no windows: `recent_windows=0`), at most `max_age_s` old."""
        with self._lock:  # one computation at a time; the waiting callers then reuse it
            now = self._clock()
            cached = self._latest.get(schema_id)
            if cached is not None and now - cached[0] <= self.max_age_s:
                return cached[1]
            stats = self.store.stats(schema_id, recent_windows=0)
            if len(self._latest) >= MAX_FILTERS:
                self._latest.clear()
            self._latest[schema_id] = (self._clock(), stats)
            return stats
