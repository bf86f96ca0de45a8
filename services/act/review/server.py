"""The review-queue server: the HTTP API with the web UI (uvicorn) and the gRPC ReviewQueue
service (grpc.aio) in one process, over one `ReviewStore`.

Settings come from `ACT_REVIEW_*` environment variables (`ReviewSettings`; arguments override):
- `ACT_REVIEW_DATABASE_URL` (else `ACT_DATABASE_URL`, else the embedded SQLite file): the
  store's SQLAlchemy URL (`act.review.db.url_from_environment`).
- `ACT_REVIEW_HOST` (`127.0.0.1`): address both servers bind (`0.0.0.0` in a container).
- `ACT_REVIEW_HTTP_PORT` (8080), `ACT_REVIEW_GRPC_PORT` (50061); 0 picks a free port.
- `ACT_REVIEW_DEFAULT_LEASE_SECONDS` (300), `ACT_REVIEW_MAX_LEASE_SECONDS` (3600): claim leases.
- `ACT_REVIEW_MAX_CLAIM_ITEMS` (50): most items one claim may take.
- `ACT_REVIEW_SHOW_MACHINE_LABEL` (false): show reviewers the model's label (anchoring risk).
- `ACT_REVIEW_STATS_REUSE_FACTOR` (10): the API's and gRPC's queue counts are reused for this
  many times as long as counting took (`act.review.shared_stats`: on a large table, not one
  count per reviewer action); 0 counts on every call.
- `ACT_REVIEW_GRACE_SECONDS` (5): how long in-flight calls may finish on stop.

`on_review(review_pb)` is called after every stored review (HTTP and gRPC): plug the publisher
of act.reviews.v1 there. The default does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import Any

import grpc
import uvicorn
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from act.review.db import url_from_environment
from act.review.grpc_service import ReviewQueueServicer, add_review_queue
from act.review.http import ApiOptions, OnReview, create_app
from act.review.store import ReviewStore

log = logging.getLogger("act.review.server")

SERVICE_NAME = "act.v1.ReviewQueue"


class ReviewSettings(BaseSettings):
    """The review server's settings; see the module docstring for the variables."""

    model_config = SettingsConfigDict(
        env_prefix="ACT_REVIEW_", extra="ignore", validate_default=True
    )

    database_url: str = Field(default_factory=url_from_environment)
    host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    grpc_port: int = Field(default=50061, ge=0, le=65535)
    default_lease_seconds: float = Field(default=300.0, gt=0)
    max_lease_seconds: float = Field(default=3600.0, gt=0)
    max_claim_items: int = Field(default=50, ge=1, le=1000)
    show_machine_label: bool = False
    stats_reuse_factor: float = Field(default=10.0, ge=0)
    grace_seconds: float = Field(default=5.0, ge=0)

    def api_options(self) -> ApiOptions:
        return ApiOptions(
            default_lease_seconds=min(self.default_lease_seconds, self.max_lease_seconds),
            max_lease_seconds=self.max_lease_seconds,
            max_claim_items=self.max_claim_items,
            show_machine_label=self.show_machine_label,
            stats_reuse_factor=self.stats_reuse_factor,
        )


class ReviewServer:
    """Runs the HTTP and gRPC servers on an event loop in a background thread.

    `start()` returns once both listen (`http_port` / `grpc_port` are then the bound ports);
    `stop()` shuts both down and closes the store if the server opened it. Usable as a context
    manager.
    """

    def __init__(
        self,
        store_url: str | None = None,
        http_port: int | None = None,
        grpc_port: int | None = None,
        *,
        host: str | None = None,
        settings: ReviewSettings | None = None,
        store: ReviewStore | None = None,
        on_review: OnReview | None = None,
        **overrides: Any,
    ) -> None:
        base = settings or ReviewSettings()
        update: dict[str, Any] = dict(overrides)
        for name, value in (
            ("database_url", store_url),
            ("http_port", http_port),
            ("grpc_port", grpc_port),
            ("host", host),
        ):
            if value is not None:
                update[name] = value
        self.settings = ReviewSettings(**{**base.model_dump(), **update})
        self._own_store = store is None
        self._store = store
        self.on_review = on_review
        self.http_port = 0
        self.grpc_port = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def store(self) -> ReviewStore:
        if self._store is None:
            raise RuntimeError("the server is not started")
        return self._store

    @property
    def running(self) -> bool:
        """True while the server thread runs."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def http_url(self) -> str:
        host = self.settings.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"http://{host}:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        host = self.settings.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"{host}:{self.grpc_port}"

    # ------------------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 30.0) -> ReviewServer:
        if self._thread is not None:
            raise RuntimeError("the server is already started")
        if self._store is None:
            self._store = ReviewStore(self.settings.database_url)
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name="act-review-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise RuntimeError(f"the review server did not start within {timeout:g} s")
        if self._error is not None:
            error = self._error
            self.stop()
            raise RuntimeError(f"the review server failed to start: {error}") from error
        log.info("review server: HTTP %s, gRPC %s", self.http_url, self.grpc_target)
        return self

    def stop(self) -> None:
        thread, loop, stopped = self._thread, self._loop, self._stopped
        if thread is not None:
            if loop is not None and stopped is not None and not loop.is_closed():
                loop.call_soon_threadsafe(stopped.set)
            thread.join(self.settings.grace_seconds + 10)
        self._thread = None
        self._loop = None
        if self._own_store and self._store is not None:
            self._store.close()
            self._store = None

    def wait(self) -> None:
        """Blocks until the server stops."""
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> ReviewServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------- the loop

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to start(), or logged after it
            if not self._ready.is_set():
                self._error = exc
            else:
                log.exception("the review server stopped with an error")
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        settings = self.settings
        options = settings.api_options()
        store = self.store

        grpc_server = grpc.aio.server()
        add_review_queue(grpc_server, ReviewQueueServicer(store, options, self.on_review))
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
        self.grpc_port = grpc_server.add_insecure_port(f"{settings.host}:{settings.grpc_port}")
        if self.grpc_port == 0:
            raise RuntimeError(f"cannot bind gRPC on {settings.host}:{settings.grpc_port}")

        family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((settings.host, settings.http_port))
        sock.listen(128)
        sock.setblocking(False)
        self.http_port = sock.getsockname()[1]

        app = create_app(store, options, self.on_review)
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=int(settings.grace_seconds) or None,
        )
        http_server = uvicorn.Server(config)

        await grpc_server.start()
        for name in ("", SERVICE_NAME):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        # Not in the main thread, so uvicorn installs no signal handlers.
        http_task = asyncio.create_task(http_server.serve(sockets=[sock]))
        while not http_server.started:
            if http_task.done():
                http_task.result()
                raise RuntimeError("the HTTP server exited at startup")
            await asyncio.sleep(0.01)
        self._ready.set()
        try:
            stop_wait = asyncio.create_task(self._stopped.wait())
            await asyncio.wait({http_task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            stop_wait.cancel()
        finally:
            await health_servicer.enter_graceful_shutdown()
            http_server.should_exit = True
            await grpc_server.stop(settings.grace_seconds)
            try:
                await http_task
            finally:
                sock.close()
