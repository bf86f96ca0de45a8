"""Queue statistics shared by the clients of one review server.

The reviewer UI asks for `ReviewStore.stats` after every label and while it waits for work.
`SharedStats` reuses a count for `reuse_factor` times as long as it took (one per schema filter;
concurrent callers wait for the count in progress), with one exception: a reviewer who has
just changed the queue (`wrote`: a claim, a review, a release) is never given a count that
started before that change, so they see their own label counted. Reads without a change of
one's own (waiting for work, dashboards on the API) then take at most 1/(1 + reuse_factor) of
the database's time, and each change at most one count more. A count reads the per-window
counts the database keeps: 7.5-9.6 ms at 1,000,000 records on the local PostgreSQL
(docs/operations.md). The Prometheus collector does not use it (a scrape is rare and wants the
current figures).
"""

from __future__ import annotations

import math
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
        reuse_factor: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not reuse_factor >= 0:
            raise ValueError(f"reuse_factor must be >= 0, got {reuse_factor}")
        self.store = store
        self.reuse_factor = reuse_factor
        self._clock = clock
        self._lock = threading.Lock()
        # schema filter -> (when the count started, when it ended, the counts)
        self._latest: dict[str | None, tuple[float, float, QueueStats]] = {}
        # reviewer -> when their latest change of the queue was done (authenticated names)
        self._writes: dict[str, float] = {}

    def wrote(self, reviewer: str) -> None:
        """Notes that `reviewer` has just changed the queue (after the store's call returned)."""
        self._writes[reviewer] = self._clock()

    def get(self, schema_id: str | None = None, reviewer: str | None = None) -> QueueStats:
        """The queue's counts (no windows: `recent_windows=0`), reused as the module says; for
        `reviewer`, only a count that started after their latest change."""
        written = self._writes.get(reviewer, -math.inf) if reviewer is not None else -math.inf
        with self._lock:  # one count at a time; the callers waiting for it then reuse it
            now = self._clock()
            cached = self._latest.get(schema_id)
            if cached is not None:
                started, finished, stats = cached
                if started > written and now - finished < self.reuse_factor * (finished - started):
                    return stats
            started = self._clock()
            stats = self.store.stats(schema_id, recent_windows=0)
            if len(self._latest) >= MAX_FILTERS:
                self._latest.clear()
            self._latest[schema_id] = (started, self._clock(), stats)
            return stats
