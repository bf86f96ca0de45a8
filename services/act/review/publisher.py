"""Publishes every stored review to `act.reviews.v1` (the review server's `on_review` hook).

The review store is the source of truth: a review is stored first, then published and
waited for. If the broker is down, the error is logged by the server and the review stays
stored (the Parquet export reads the store, not the topic).
"""

from __future__ import annotations

import threading
from typing import Any

from act.bus import REVIEWS_TOPIC, BusSettings
from act.bus.clients import make_producer, publish
from act.bus.topics import with_suffix
from act.v1 import bus_pb2


class ReviewPublisher:
    """`publisher(review)` sends one Review keyed by item id and waits until it is durable."""

    def __init__(
        self, bus: BusSettings | None = None, *, topic_suffix: str = "", timeout_s: float = 10.0
    ) -> None:
        self.bus = bus or BusSettings()
        self.topic = with_suffix(REVIEWS_TOPIC, topic_suffix)
        self.timeout_s = timeout_s
        self._producer: Any = None
        self._lock = threading.Lock()

    def __call__(self, review: bus_pb2.Review) -> None:
        with self._lock:
            if self._producer is None:  # connect on first use: the server starts without Kafka
                self._producer = make_producer(self.bus.kafka_bootstrap, settings=self.bus)
            future = publish(self._producer, self.topic, review, source="review")
        future.get(timeout=self.timeout_s)

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.close()
                self._producer = None
