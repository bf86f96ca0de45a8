"""Back-pressure: a bounded number of backend calls in flight and a bounded queue of waiters.

A call that finds every slot taken waits in the queue; a call that finds the queue full too
fails at once with `Overloaded` (RESOURCE_EXHAUSTED), so a saturated service sheds load
instead of piling up work it cannot finish before the callers' deadlines.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from act.inference.errors import Overloaded


class ConcurrencyLimiter:
    """At most `max_concurrency` holders of a slot, at most `max_queue` waiting for one."""

    def __init__(
        self,
        max_concurrency: int,
        max_queue: int,
        *,
        on_change: Callable[[int, int], None] | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        if max_queue < 0:
            raise ValueError(f"max_queue must be non-negative, got {max_queue}")
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._inflight = 0
        self._waiting = 0
        self._on_change = on_change

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def waiting(self) -> int:
        return self._waiting

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self._inflight, self._waiting)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the body; raises `Overloaded` when slots and queue are full."""
        if self._inflight + self._waiting >= self.max_concurrency:
            if self._waiting >= self.max_queue:
                raise Overloaded(
                    f"server overloaded: {self._inflight} backend calls in flight and "
                    f"{self._waiting} waiting (max concurrency {self.max_concurrency}, "
                    f"max queue {self.max_queue}); retry later with backoff"
                )
            self._waiting += 1
            self._changed()
            try:
                await self._semaphore.acquire()
            finally:
                self._waiting -= 1
                self._changed()
        else:
            await self._semaphore.acquire()
        self._inflight += 1
        self._changed()
        try:
            yield
        finally:
            self._inflight -= 1
            self._semaphore.release()
            self._changed()
