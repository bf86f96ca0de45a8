"""Settings of the model services, from `ACT_*` environment variables (CLI flags override them).

- `ACT_BACKEND` (`embedded`): backend name for `act.inference.registry.create_backend`, or a
  factory as `module:attribute`.
- `ACT_BACKEND_OPTIONS` (`{}`): JSON object of keyword arguments for the backend.
- `ACT_HOST` (`127.0.0.1`): address the gRPC server binds (`0.0.0.0` in a container).
- `ACT_PORT` (50051 annotator, 50052 criticizer): gRPC port; 0 picks a free one.
- `ACT_METRICS_ENABLED` (`true`): serve Prometheus metrics over HTTP.
- `ACT_METRICS_HOST` (`ACT_HOST`), `ACT_METRICS_PORT` (9101 annotator, 9102 criticizer; 0
  picks a free one): where `/metrics` is served.
- `ACT_MAX_MESSAGE_BYTES` (32 MiB): largest request or response message; gRPC refuses larger
  ones with RESOURCE_EXHAUSTED.
- `ACT_MAX_IMAGE_BYTES` (8 MiB): largest inline image; larger ones get INVALID_ARGUMENT (the
  record types cap images at 8 MiB whatever this says).
- `ACT_MAX_BATCH` (256): most items in one batch request (more: INVALID_ARGUMENT); also the
  largest micro-batch of a stream.
- `ACT_MAX_CONCURRENCY` (4): backend calls in flight at once.
- `ACT_MAX_QUEUE` (64): backend calls waiting for a slot; beyond it a call fails at once with
  RESOURCE_EXHAUSTED.
- `ACT_STREAM_WINDOW` (4): backend calls in flight per stream; then the stream stops reading
  (HTTP/2 flow control pushes back on the client).
- `ACT_DEFAULT_STRATEGY` (unset): strategy of requests that name none; unset means `direct`
  if the backend runs it, else the backend's first.
- `ACT_REQUEST_TIMEOUT_SECONDS` (300): cap on a backend call when the client's deadline is
  longer or unset.
- `ACT_GRACE_SECONDS` (10): on shutdown, how long in-flight RPCs may finish before they are
  cancelled.
- `ACT_SHUTDOWN_DELAY_SECONDS` (0): on shutdown, how long to keep serving while health says
  NOT_SERVING (so load balancers stop sending first).
- `ACT_REFLECTION` (`true`): enable gRPC server reflection.
- `ACT_LOG_LEVEL` (`INFO`), `ACT_LOG_FORMAT` (`json` or `text`): the logs on stderr.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from act.inference.types import MAX_IMAGE_BYTES

ServiceKind = Literal["annotator", "criticizer"]

DEFAULT_PORTS: dict[str, int] = {"annotator": 50051, "criticizer": 50052}
DEFAULT_METRICS_PORTS: dict[str, int] = {"annotator": 9101, "criticizer": 9102}


class ServingSettings(BaseSettings):
    """Everything a model service needs to start; see the module docstring for the variables."""

    model_config = SettingsConfigDict(env_prefix="ACT_", extra="ignore", validate_default=True)

    backend: str = Field(default="embedded", min_length=1)
    backend_options: dict[str, Any] = Field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int | None = Field(default=None, ge=0, le=65535)
    metrics_enabled: bool = True
    metrics_host: str | None = None
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    max_message_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    max_image_bytes: int = Field(default=MAX_IMAGE_BYTES, ge=1)
    max_batch: int = Field(default=256, ge=1)
    max_concurrency: int = Field(default=4, ge=1)
    max_queue: int = Field(default=64, ge=0)
    stream_window: int = Field(default=4, ge=1)
    default_strategy: str | None = None
    schemas_dir: str | None = None  # *.json label schemas that requests may name by id
    request_timeout_seconds: float = Field(default=300.0, gt=0)
    grace_seconds: float = Field(default=10.0, ge=0)
    shutdown_delay_seconds: float = Field(default=0.0, ge=0)
    reflection: bool = True
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"

    def grpc_port(self, service: ServiceKind) -> int:
        return DEFAULT_PORTS[service] if self.port is None else self.port

    def prometheus_port(self, service: ServiceKind) -> int:
        return DEFAULT_METRICS_PORTS[service] if self.metrics_port is None else self.metrics_port

    def prometheus_host(self) -> str:
        return self.host if self.metrics_host is None else self.metrics_host


def parse_backend_options(pairs: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` pairs as a dict; a VALUE that is valid JSON is decoded (numbers, booleans,
    lists), anything else stays a string."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"backend option expects KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def settings_with_overrides(
    overrides: dict[str, Any], backend_options: dict[str, Any] | None = None
) -> ServingSettings:
    """Settings from the environment with `overrides` (e.g. CLI flags; None means unset)
    on top; `backend_options` are merged over ACT_BACKEND_OPTIONS key by key."""
    given = {key: value for key, value in overrides.items() if value is not None}
    if backend_options:
        base = ServingSettings(**given)
        given["backend_options"] = {**base.backend_options, **backend_options}
    return ServingSettings(**given)
