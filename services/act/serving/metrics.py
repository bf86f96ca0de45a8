"""Prometheus metrics of one model service, in a registry of its own.

Each server instance owns a `CollectorRegistry`, so several servers (an annotator and a
criticizer, or many in one test process) never collide. Names, with `<service>` being
`annotator` or `criticizer`:

- `act_<service>_requests_total{method,code}`: finished RPCs by method and gRPC status name.
- `act_<service>_request_duration_seconds{method}`: RPC duration (histogram).
- `act_<service>_items_total{outcome}`: items received, `ok` (a result) or `error` (an error
  result, or the RPC failed).
- `act_<service>_errors_total{code}`: error answers by status name: failed RPCs plus
  per-item errors inside batch and stream results.
- `act_<service>_batch_size`: items per backend call (histogram; unary calls count 1, stream
  micro-batches their size).
- `act_<service>_tokens_total{kind}`: `prompt` and `completion` tokens reported by the backend.
- `act_<service>_inflight`: backend calls in flight (gauge).
- `act_<service>_queued`: backend calls waiting for a concurrency slot (gauge).
- `act_<service>_info{backend,model,version}`: constant 1, describing the server.
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

DURATION_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServiceMetrics:
    """The metric families of one service, registered in `self.registry`."""

    def __init__(self, service: str, registry: CollectorRegistry | None = None) -> None:
        self.service = service
        self.registry = registry if registry is not None else CollectorRegistry()
        prefix = f"act_{service}"
        self.requests = Counter(
            f"{prefix}_requests_total",
            "Finished RPCs by method and gRPC status code.",
            ("method", "code"),
            registry=self.registry,
        )
        self.duration = Histogram(
            f"{prefix}_request_duration_seconds",
            "RPC duration in seconds.",
            ("method",),
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.items = Counter(
            f"{prefix}_items_total",
            "Items received, by outcome (ok or error).",
            ("outcome",),
            registry=self.registry,
        )
        self.errors = Counter(
            f"{prefix}_errors_total",
            "Error answers by gRPC status code: failed RPCs and per-item errors.",
            ("code",),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            f"{prefix}_batch_size",
            "Items per backend call.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            f"{prefix}_tokens_total",
            "Model tokens reported by the backend, by kind (prompt or completion).",
            ("kind",),
            registry=self.registry,
        )
        self.inflight = Gauge(
            f"{prefix}_inflight", "Backend calls in flight.", registry=self.registry
        )
        self.queued = Gauge(
            f"{prefix}_queued",
            "Backend calls waiting for a concurrency slot.",
            registry=self.registry,
        )
        self.info = Gauge(
            f"{prefix}_info",
            "Constant 1, labelled with the backend, model and server version.",
            ("backend", "model", "version"),
            registry=self.registry,
        )
        for outcome in ("ok", "error"):
            self.items.labels(outcome=outcome)
        for kind in ("prompt", "completion"):
            self.tokens.labels(kind=kind)

    def set_limiter_state(self, inflight: int, waiting: int) -> None:
        self.inflight.set(inflight)
        self.queued.set(waiting)


class MetricsHttpServer:
    """The registry served over HTTP (`/metrics`) on a port of its own, in a daemon thread."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._httpd: Any
        self._thread: threading.Thread
        self._httpd, self._thread = start_http_server(port, addr=host, registry=registry)
        self.host = host
        self.port: int = self._httpd.server_port

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
