"""Parking bad records on the dead-letter topic, with a reason and a metric.

A consumer that cannot process a record neither crashes nor drops it: it hands the record
and the error to `DeadLetterQueue.send`, which publishes an `act.v1.DeadLetter` (the
record's topic, partition, offset, key and value, the reason, the failing service) to
`act.dlq.v1`, keyed by the record's own key, and counts it in
`act_bus_dead_letters_total{topic,reason}` (`topic`: where the record was read; `reason`: a
`codec.Reason` value for malformed records, `processing_error` or a caller's code for
others). The record also carries an `act-dlq-reason` header with that code.

Like any publish, the dead letter is durable only once `flush_and_check` has seen its future;
commit the input offset after that, and the bad record is parked exactly where the stream
moved past it.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter

from act.bus import codec
from act.bus.clients import publish
from act.bus.topics import DLQ_TOPIC

HEADER_DLQ_REASON = "act-dlq-reason"
PROCESSING_ERROR = "processing_error"
DEAD_LETTERS_METRIC = "act_bus_dead_letters_total"

_counters: weakref.WeakKeyDictionary[CollectorRegistry, Counter] = weakref.WeakKeyDictionary()
_counters_lock = threading.Lock()


def dead_letters_counter(registry: CollectorRegistry | None = None) -> Counter:
    """The `act_bus_dead_letters_total{topic,reason}` counter of `registry` (one per registry)."""
    registry = registry if registry is not None else REGISTRY
    with _counters_lock:
        counter = _counters.get(registry)
        if counter is None:
            counter = Counter(
                DEAD_LETTERS_METRIC,
                "Records sent to the dead-letter topic, by source topic and reason.",
                ("topic", "reason"),
                registry=registry,
            )
            _counters[registry] = counter
        return counter


class DeadLetterQueue:
    """Publishes a DeadLetter for each bad record and counts it.

    `service` names the consumer in the dead letters (e.g. `sampler`); `topic` is the
    dead-letter topic (`act.dlq.v1`, or a suffixed one); `registry` the Prometheus registry
    of the counter (the default registry when None).
    """

    def __init__(
        self,
        producer: Any,
        service: str,
        *,
        topic: str = DLQ_TOPIC,
        registry: CollectorRegistry | None = None,
        max_copy_bytes: int | None = None,
    ) -> None:
        if not service:
            raise ValueError("a service name is required: dead letters say who failed")
        self.producer = producer
        self.service = service
        self.topic = topic
        self.max_copy_bytes = max_copy_bytes
        self.counter = dead_letters_counter(registry)
        self._lock = threading.Lock()
        self.sent = 0

    def send(
        self, record: codec.RecordLike, error: BaseException | str, *, reason: str | None = None
    ) -> Any:
        """Parks `record` with why it failed; returns the send's future.

        `error` is a `MalformedMessage` (its reason is the code), another exception (code
        `processing_error`, or `reason`) or a text (code `reason`, else `rejected`).
        """
        if isinstance(error, codec.MalformedMessage):
            code = reason or error.reason.value
            text = str(error)
            error_type = type(error).__name__
        elif isinstance(error, BaseException):
            code = reason or PROCESSING_ERROR
            text = f"{code}: {type(error).__name__}: {error}"
            error_type = type(error).__name__
        else:
            code = reason or "rejected"
            text = f"{code}: {error}"
            error_type = code
        letter = codec.dead_letter(
            record, text, error_type, self.service, max_copy_bytes=self.max_copy_bytes
        )
        future = publish(
            self.producer,
            self.topic,
            letter,
            source=self.service,
            headers=[(HEADER_DLQ_REASON, code.encode("utf-8"))],
        )
        self.counter.labels(topic=record.topic, reason=code).inc()
        with self._lock:
            self.sent += 1
        return future
