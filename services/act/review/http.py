"""The review queue's HTTP JSON API and web UI (Starlette), over a `ReviewStore`.

Endpoints (all `/api/*` need `Authorization: Bearer <reviewer token>`, else 401):
- `POST /api/claim` `{max_items, lease_seconds}` -> `{items: [...]}`: leases queued items to the
  caller. Each item carries its text, question, images (data URLs), the schema's labels with
  descriptions and instructions, and the lease; the machine label only when the server shows it
  (`show_machine_label`, off by default so that reviewers are not anchored on it).
- `POST /api/items/{item_id}/review` `{claim_id, label, unsure, note}` -> `{review: {...}}`;
  a correction of a reviewed item passes no claim and `expected_revision` instead.
- `POST /api/items/{item_id}/release` `{claim_id, reason}` -> `{released: bool}`.
- `GET /api/stats` (optional `?schema_id=`) -> queue counts; `GET /api/me` -> the reviewer.
- `GET /healthz` -> `{"status": "ok"}` (no auth); `GET /` the web UI, `/static/*` its files.

Errors are JSON `{"error": {"code", "type", "message"}}`: 401 unauthenticated, 403 another
reviewer's claim, 404 unknown item, 409 a claim or revision conflict (wrong claim, item not
queued, unknown schema), 410 an expired lease, 413 a body too large, 422 invalid input (bad JSON,
a label not in the schema). The store is synchronous: its calls run in a worker thread.
"""

from __future__ import annotations

import base64
import inspect
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from act.review.errors import (
    ClaimExpired,
    ClaimNotYours,
    InvalidArgument,
    ReviewStoreError,
    UnknownItem,
    UnknownReviewer,
)
from act.review.metrics import review_registry
from act.review.shared_stats import SharedStats
from act.review.store import ClaimedRecord, ReviewStore
from act.v1 import bus_pb2
from act.validation import validation_problems

log = logging.getLogger("act.review.http")

STATIC_DIR = Path(__file__).with_name("static")
MAX_BODY_BYTES = 64 * 1024
MAX_NOTE_CHARS = 4000

# A callback run after every stored review (the Kafka publisher of act.reviews.v1 plugs in
# here). It may be sync or async; its failure is logged, never undoes the stored review.
OnReview = Callable[[bus_pb2.Review], Awaitable[None] | None]

CSP = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
}

# Image types shown inline; anything else is sent as application/octet-stream, which the
# browser will not render (no SVG: it can carry script when opened on its own).
_IMAGE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp", "image/avif"}
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)
_HTTP_URI = re.compile(r"^https?://", re.IGNORECASE)


@dataclass(frozen=True)
class ApiOptions:
    """What the API allows and shows; `ReviewSettings` in act.review.server fills it."""

    default_lease_seconds: float = 300.0
    max_lease_seconds: float = 3600.0
    max_claim_items: int = 50
    show_machine_label: bool = False
    stats_reuse_factor: float = 10.0  # act.review.shared_stats; 0: count on every call


# ----------------------------------------------------------------------------- requests


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ClaimBody(_Body):
    max_items: int = Field(default=1, ge=1)
    lease_seconds: float | None = Field(default=None, gt=0)
    schema_id: str | None = Field(default=None, max_length=200)


class ReviewBody(_Body):
    claim_id: str = Field(default="", max_length=200)
    label: str = Field(default="", max_length=200)
    unsure: bool = False
    note: str = Field(default="", max_length=MAX_NOTE_CHARS)
    expected_revision: int | None = Field(default=None, ge=0)


class ReleaseBody(_Body):
    claim_id: str = Field(min_length=1, max_length=200)
    reason: str = Field(default="", max_length=MAX_NOTE_CHARS)


# ----------------------------------------------------------------------------- errors


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, type_: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.type = type_ or code


def http_status(exc: ReviewStoreError) -> int:
    """The HTTP status of a store error."""
    if isinstance(exc, ClaimExpired):
        return 410
    if isinstance(exc, ClaimNotYours):
        return 403
    if isinstance(exc, UnknownItem | UnknownReviewer):
        return 404
    if isinstance(exc, InvalidArgument):
        return 422
    return {
        "NOT_FOUND": 404,
        "PERMISSION_DENIED": 403,
        "INVALID_ARGUMENT": 422,
        "FAILED_PRECONDITION": 409,
        "ABORTED": 409,
        "ALREADY_EXISTS": 409,
    }.get(exc.code, 500)


def _error(status: int, code: str, message: str, type_: str = "", **headers: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "type": type_ or code, "message": message}},
        status_code=status,
        headers=headers or None,
    )


async def _api_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    extra = {"www-authenticate": 'Bearer realm="act-review"'} if exc.status == 401 else {}
    return _error(exc.status, exc.code, exc.message, exc.type, **extra)


async def _store_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ReviewStoreError)
    status = http_status(exc)
    if status >= 500:
        log.error("review store error: %s", exc, exc_info=exc)
    return _error(status, exc.code, str(exc), type(exc).__name__)


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    names = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "PAYLOAD_TOO_LARGE"}
    return _error(exc.status_code, names.get(exc.status_code, "HTTP_ERROR"), str(exc.detail))


async def _internal_error(_request: Request, exc: Exception) -> Response:
    log.exception("unexpected error in the review API", exc_info=exc)
    return _error(500, "INTERNAL", "internal error; see the server log")


# ----------------------------------------------------------------------------- rendering


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def image_mime(data: bytes, declared: str) -> str:
    """The MIME type to show an inline image with: the declared one when it is an allowed image
    type, else one sniffed from the bytes, else application/octet-stream."""
    declared = (declared or "").strip().lower()
    if declared in _IMAGE_TYPES:
        return declared
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def claimed_item_json(record: ClaimedRecord, show_machine_label: bool) -> dict[str, Any]:
    """The JSON of a claimed item shown to a reviewer. Content is data, never markup: the page
    puts it in with textContent."""
    decision = record.decision
    item = decision.item
    images: list[dict[str, str]] = []
    for image in item.images:
        if image.data:
            mime = image_mime(image.data, image.mime_type)
            encoded = base64.b64encode(image.data).decode("ascii")
            images.append({"src": f"data:{mime};base64,{encoded}", "mime_type": mime})
        elif image.uri:
            # Not loaded by the page (the CSP allows only same-origin and data: images); shown
            # as a link text for the reviewer to open deliberately.
            images.append({"uri": image.uri if _HTTP_URI.match(image.uri) else "", "mime_type": ""})
    schema = record.schema
    body: dict[str, Any] = {
        "item_id": record.item_id,
        "claim_id": record.claim_id,
        "lease_expires_at": _iso(record.lease_expires_at),
        "decided_at": _iso(record.decided_at),
        "text": item.text,
        "question": item.question if item.HasField("question") else None,
        "images": images,
        "metadata": dict(item.metadata),
        "schema": {
            "schema_id": record.schema_id,
            "version": record.schema_version,
            "registered": schema is not None,
            "instructions": schema.instructions if schema is not None else "",
            "labels": (
                [{"name": lb.name, "description": lb.description} for lb in schema.labels]
                if schema is not None
                else []
            ),
        },
    }
    if show_machine_label:
        body["machine_label"] = decision.annotation.label
        body["eps"] = decision.eps
    return body


def review_json(review: bus_pb2.Review) -> dict[str, Any]:
    return {
        "item_id": review.item_id,
        "label": review.label,
        "unsure": review.unsure,
        "reviewer": review.reviewer,
        "reviewed_at": review.reviewed_time.ToDatetime().isoformat() + "Z",
        "revision": review.revision,
        "previous_label": review.previous_label or None,
        "note": review.note,
    }


# ----------------------------------------------------------------------------- middleware


class SecurityHeaders:
    """Adds the CSP and friends to every response, and no-store to the API's."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        no_store = scope["path"].startswith("/api/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                for name, value in SECURITY_HEADERS.items():
                    if name.encode() not in present:
                        headers.append((name.encode(), value.encode()))
                if no_store:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


# ----------------------------------------------------------------------------- the app


class ReviewApi:
    """The request handlers, bound to a store, options and the on_review callback."""

    def __init__(
        self, store: ReviewStore, options: ApiOptions, on_review: OnReview | None = None
    ) -> None:
        self.store = store
        self.options = options
        self.on_review = on_review
        self.metrics_registry = review_registry(store)
        self.shared_stats = SharedStats(store, options.stats_reuse_factor)

    async def reviewer(self, request: Request) -> str:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                401, "UNAUTHENTICATED", "missing reviewer token: send Authorization: Bearer <token>"
            )
        name = await run_in_threadpool(self.store.authenticate, token.strip())
        if name is None:
            raise ApiError(401, "UNAUTHENTICATED", "invalid or deactivated reviewer token")
        return name

    @staticmethod
    async def body(request: Request, model: type[BaseModel]) -> Any:
        raw = await request.body()
        try:
            return model.model_validate_json(raw or b"{}")
        except ValidationError as exc:
            problems = validation_problems(exc, whole="body")
            raise ApiError(422, "INVALID_ARGUMENT", f"invalid request body: {problems}") from None

    async def publish(self, review: bus_pb2.Review) -> None:
        if self.on_review is None:
            return
        try:
            result = self.on_review(review)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("on_review failed for item %s (the review is stored)", review.item_id)

    async def healthz(self, _request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics(self, _request: Request) -> Response:
        """Prometheus text format, read from the store now (no reviewer token needed)."""
        body = await run_in_threadpool(generate_latest, self.metrics_registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def index(self, _request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8")

    async def me(self, request: Request) -> Response:
        name = await self.reviewer(request)
        return JSONResponse(
            {"reviewer": name, "show_machine_label": self.options.show_machine_label}
        )

    async def claim(self, request: Request) -> Response:
        reviewer = await self.reviewer(request)
        body: ClaimBody = await self.body(request, ClaimBody)
        opts = self.options
        if body.max_items > opts.max_claim_items:
            raise ApiError(
                422, "INVALID_ARGUMENT", f"max_items must be at most {opts.max_claim_items}"
            )
        lease = body.lease_seconds or opts.default_lease_seconds
        if lease > opts.max_lease_seconds:
            raise ApiError(
                422,
                "INVALID_ARGUMENT",
                f"lease_seconds must be at most {opts.max_lease_seconds:g}",
            )
        records = await run_in_threadpool(
            self.store.claim, reviewer, body.max_items, lease, body.schema_id or None
        )
        self.shared_stats.wrote(reviewer)
        items = [claimed_item_json(r, opts.show_machine_label) for r in records]
        return JSONResponse({"items": items})

    async def review(self, request: Request) -> Response:
        reviewer = await self.reviewer(request)
        body: ReviewBody = await self.body(request, ReviewBody)
        item_id = request.path_params["item_id"]
        if not body.claim_id and body.expected_revision is None:
            raise ApiError(
                422,
                "INVALID_ARGUMENT",
                "give the claim_id from /api/claim (or expected_revision for a correction)",
            )

        def submit() -> bus_pb2.Review:
            return self.store.submit(
                item_id,
                body.claim_id or None,
                reviewer,
                body.label,
                unsure=body.unsure,
                note=body.note,
                expected_revision=body.expected_revision,
            )

        review = await run_in_threadpool(submit)
        self.shared_stats.wrote(reviewer)
        await self.publish(review)
        return JSONResponse({"review": review_json(review)})

    async def release(self, request: Request) -> Response:
        reviewer = await self.reviewer(request)
        body: ReleaseBody = await self.body(request, ReleaseBody)
        item_id = request.path_params["item_id"]
        released = await run_in_threadpool(
            self.store.release, item_id, body.claim_id, reviewer, body.reason or "released"
        )
        self.shared_stats.wrote(reviewer)
        return JSONResponse({"released": released})

    async def stats(self, request: Request) -> Response:
        reviewer = await self.reviewer(request)
        schema_id = request.query_params.get("schema_id") or None
        stats = await run_in_threadpool(self.shared_stats.get, schema_id, reviewer)
        return JSONResponse(stats.as_json())


def create_app(
    store: ReviewStore,
    options: ApiOptions | None = None,
    on_review: OnReview | None = None,
) -> Starlette:
    """The ASGI app of the review API and web UI over `store`."""
    api = ReviewApi(store, options or ApiOptions(), on_review)
    routes = [
        Route("/", api.index, methods=["GET"]),
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        Route("/api/me", api.me, methods=["GET"]),
        Route("/api/claim", api.claim, methods=["POST"]),
        Route("/api/items/{item_id:path}/review", api.review, methods=["POST"]),
        Route("/api/items/{item_id:path}/release", api.release, methods=["POST"]),
        Route("/api/stats", api.stats, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            ApiError: _api_error,
            ReviewStoreError: _store_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
        max_body_size=MAX_BODY_BYTES,
    )
    app.add_middleware(SecurityHeaders)
    app.state.api = api
    return app
