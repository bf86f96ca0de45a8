"""Queue statistics shared by the clients of one review server.

The reviewer UI asks for `ReviewStore.stats` after every label and while it waits for work, so
with many reviewers the server would read the counts once per reviewer action. `SharedStats`
reuses a count for `reuse_factor` times as long as it took (one per schema filter; concurrent
callers wait for the count in progress): reading counts then takes at most 1/(1 + reuse_factor)
of the database's time, however many reviewers. The counts come from the per-window counts
the database keeps (milliseconds: 7.5 ms at 1,000,000 records on the local PostgreSQL,
docs/operations.md), so the figures stay current (a reviewer sees their own label
counted). The Prometheus collector does not use it (a scrape is rare and wants the current
figures).
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
        reuse_factor: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not reuse_factor >= 0:
            raise ValueError(f"reuse_factor must be >= 0, got {reuse_factor}")
        self.store = store
        self.reuse_factor = reuse_factor
        self._clock = clock
        self._lock = threading.Lock()
        # schema filter -> (when counted, how long it took, the counts)
        self._latest: dict[str | None, tuple[float, float, QueueStats]] = {}

    def get(self, schema_id: str | None = None) -> QueueStats:
        """The queue's counts (no windows: `recent_windows=0`), reused as the module says."""
        with self._lock:  # one count at a time; the callers waiting for it then reuse it
            started = self._clock()
            cached = self._latest.get(schema_id)
            if cached is not None:
                counted_at, took, stats = cached
                if started - counted_at < self.reuse_factor * took:
                    return stats
            stats = self.store.stats(schema_id, recent_windows=0)
            if len(self._latest) >= MAX_FILTERS:
                self._latest.clear()
            finished = self._clock()
            self._latest[schema_id] = (finished, finished - started, stats)
            return stats
