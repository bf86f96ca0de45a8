"""Running a model service: the grpc.aio server, health, reflection, metrics, shutdown.

`ModelServer` serves one backend as the annotator or the criticizer:
- gRPC on `ACT_HOST:ACT_PORT` (port 0: a free one, see `.port`), messages up to
  `ACT_MAX_MESSAGE_BYTES` each way (larger: RESOURCE_EXHAUSTED from gRPC itself);
- `grpc.health.v1.Health`: SERVING for "" (the server) and the service's full name
  (`act.v1.Annotator` / `act.v1.Criticizer`) once started, NOT_SERVING from the start of
  shutdown;
- server reflection (`ACT_REFLECTION`);
- Prometheus metrics over HTTP on `ACT_METRICS_PORT` from a registry of its own.

Shutdown (`stop`, or SIGTERM/SIGINT under `serve`): health goes NOT_SERVING, the server keeps
serving for `ACT_SHUTDOWN_DELAY_SECONDS` (so load balancers see it), stops accepting RPCs,
lets in-flight ones finish for up to `ACT_GRACE_SECONDS` (then cancels them), closes the
backend and the metrics server. A second signal cancels in-flight RPCs at once.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal
import time
from types import ModuleType
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from act import __version__
from act.inference.base import Backend
from act.serving.handling import ServiceCore
from act.serving.logs import configure_logging, log_fields
from act.serving.metrics import MetricsHttpServer, ServiceMetrics
from act.serving.settings import ServiceKind, ServingSettings

log = logging.getLogger("act.serving")

SERVICE_MODULES = {"annotator": "act.annotator.servicer", "criticizer": "act.criticizer.servicer"}


def _service_module(service: str) -> ModuleType:
    if service not in SERVICE_MODULES:
        raise ValueError(f"unknown service {service!r}; expected one of {sorted(SERVICE_MODULES)}")
    return importlib.import_module(SERVICE_MODULES[service])


def load_backend(name: str, options: dict[str, Any] | None = None) -> Backend:
    """The backend called `name` in the registry, or made by the factory `module:attribute`."""
    options = dict(options or {})
    if ":" in name:
        module_name, _, attribute = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"backend factory {name!r} cannot be loaded: {exc}") from exc
        backend = factory(**options)
    else:
        try:
            from act.inference.registry import create_backend
        except ModuleNotFoundError as exc:
            if exc.name != "act.inference.registry":
                raise
            raise ValueError(
                "no backend registry (act.inference.registry) in this installation; "
                "name a factory as module:attribute instead"
            ) from exc
        backend = create_backend(name, **options)
    if not isinstance(backend, Backend):
        raise TypeError(f"backend {name!r} made a {type(backend).__name__}, not a Backend")
    return backend


def _bind_address(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


class ModelServer:
    """One annotator or criticizer server over `backend`; use `start`/`stop` or `async with`."""

    def __init__(
        self,
        service: ServiceKind,
        backend: Backend,
        settings: ServingSettings | None = None,
        *,
        close_backend: bool = True,
    ) -> None:
        self.service: ServiceKind = service
        self.backend = backend
        self.settings = settings if settings is not None else ServingSettings()
        self.close_backend = close_backend
        self.module = _service_module(service)
        self.service_name: str = self.module.SERVICE_NAME
        self.metrics = ServiceMetrics(service)
        self.metrics.info.labels(
            backend=backend.model.backend, model=backend.model.model, version=__version__
        ).set(1)
        strategies, check = self.module.strategy_hooks(backend)
        # Raises ValueError at once for a bad default strategy or a backend with no strategy.
        self.core = ServiceCore(
            service,
            backend,
            self.settings,
            self.metrics,
            strategies=strategies,
            check_strategy=check,
        )
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._metrics_http: MetricsHttpServer | None = None
        self._stopping: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()

    @property
    def address(self) -> str:
        """`host:port` to connect to (after `start`)."""
        if self.port is None:
            raise RuntimeError("the server is not started")
        host = self.settings.host
        if host in ("0.0.0.0", "::", "[::]"):
            host = "127.0.0.1"
        return _bind_address(host, self.port)

    @property
    def metrics_url(self) -> str | None:
        if self.metrics_port is None:
            return None
        host = self.settings.prometheus_host()
        if host in ("0.0.0.0", "::", "[::]"):
            host = "127.0.0.1"
        return f"http://{_bind_address(host, self.metrics_port)}/metrics"

    async def start(self) -> None:
        settings = self.settings
        limit = settings.max_message_bytes
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                # Fail on a port in use instead of silently sharing it.
                ("grpc.so_reuseport", 0),
            ]
        )
        self.module.add_to_server(self.core, server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        if settings.reflection:
            reflection.enable_server_reflection(
                (self.service_name, health.SERVICE_NAME, reflection.SERVICE_NAME), server
            )
        requested = settings.grpc_port(self.service)
        address = _bind_address(settings.host, requested)
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {address}: {exc}") from None
        if not port:
            raise OSError(f"cannot listen on {address} (port in use or address not available)")
        self.port = port
        await server.start()
        self._server = server
        if settings.metrics_enabled:
            try:
                self._metrics_http = MetricsHttpServer(
                    self.metrics.registry,
                    settings.prometheus_host(),
                    settings.prometheus_port(self.service),
                )
            except OSError as exc:
                await server.stop(0)
                raise OSError(
                    f"cannot serve metrics on {settings.prometheus_host()}:"
                    f"{settings.prometheus_port(self.service)}: {exc}"
                ) from None
            self.metrics_port = self._metrics_http.port
        serving = health_pb2.HealthCheckResponse.SERVING
        await self._health.set("", serving)
        await self._health.set(self.service_name, serving)
        log.info(
            "serving",
            extra=log_fields(
                service=self.service,
                address=self.address,
                metrics=self.metrics_url,
                backend=self.backend.name or self.backend.model.backend,
                model=self.backend.model.model,
                default_strategy=self.core.default_strategy,
                max_concurrency=settings.max_concurrency,
                max_queue=settings.max_queue,
                max_batch=settings.max_batch,
                version=__version__,
            ),
        )

    async def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown (idempotent; concurrent callers wait for the same one)."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop(grace))
        await asyncio.shield(self._stopping)

    async def _stop(self, grace: float | None) -> None:
        settings = self.settings
        grace = settings.grace_seconds if grace is None else grace
        started = time.perf_counter()
        log.info(
            "stopping",
            extra=log_fields(
                service=self.service,
                inflight=self.core.limiter.inflight,
                queued=self.core.limiter.waiting,
                grace_seconds=grace,
            ),
        )
        try:
            if self._health is not None:
                await self._health.enter_graceful_shutdown()
            if settings.shutdown_delay_seconds > 0:
                await asyncio.sleep(settings.shutdown_delay_seconds)
            if self._server is not None:
                await self._server.stop(grace)
        finally:
            if self.close_backend:
                try:
                    await self.backend.aclose()
                except Exception:
                    log.exception(
                        "closing the backend failed", extra=log_fields(service=self.service)
                    )
            if self._metrics_http is not None:
                await asyncio.to_thread(self._metrics_http.close)
                self._metrics_http = None
            self._stopped.set()
            log.info(
                "stopped",
                extra=log_fields(
                    service=self.service,
                    shutdown_seconds=round(time.perf_counter() - started, 3),
                ),
            )

    async def force_stop(self) -> None:
        """Cancel in-flight RPCs now (a second signal during a graceful shutdown)."""
        if self._server is not None:
            await self._server.stop(0)

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def __aenter__(self) -> ModelServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


async def serve(
    service: ServiceKind,
    settings: ServingSettings | None = None,
    *,
    backend: Backend | None = None,
    install_signal_handlers: bool = True,
) -> None:
    """Serve until SIGTERM/SIGINT (first: graceful shutdown; second: cancel in-flight RPCs)."""
    settings = settings if settings is not None else ServingSettings()
    if backend is None:
        backend = load_backend(settings.backend, settings.backend_options)
    server = ModelServer(service, backend, settings)
    try:
        await server.start()
    except BaseException:
        await backend.aclose()
        raise
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    signals = 0
    background: set[asyncio.Task[None]] = set()

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        log.info(
            "signal",
            extra=log_fields(service=service, signal=signal.Signals(signum).name, count=signals),
        )
        if signals == 1:
            stop_requested.set()
        else:
            task = loop.create_task(server.force_stop())
            background.add(task)
            task.add_done_callback(background.discard)

    installed: list[int] = []
    if install_signal_handlers:
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(signum, on_signal, signum)
                installed.append(signum)
            except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
                pass
    try:
        await stop_requested.wait()
    finally:
        await server.stop()
        for signum in installed:
            loop.remove_signal_handler(signum)


def run(service: ServiceKind, settings: ServingSettings | None = None) -> int:
    """Configure logging and serve in a new event loop; the process exit status."""
    settings = settings if settings is not None else ServingSettings()
    configure_logging(settings.log_level, settings.log_format)
    try:
        asyncio.run(serve(service, settings))
    except Exception as exc:
        expected = isinstance(exc, OSError | ValueError)
        log.error(
            "cannot serve",
            exc_info=None if expected else exc,
            extra=log_fields(service=service, error=str(exc)),
        )
        return 1
    return 0
