"""The `act.v1.ReviewQueue` gRPC service over a `ReviewStore` (grpc.aio).

Every call needs the reviewer's token in the metadata (`authorization: Bearer <token>`), else
UNAUTHENTICATED. The caller is the authenticated reviewer: a request's `reviewer` field may be
empty or that name; another name is PERMISSION_DENIED. Store errors answer with their `code`
(INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, PERMISSION_DENIED, ABORTED, ...) and message.

Unless the server shows the machine label (`show_machine_label`), claimed decisions go out
without the annotation and criticism, so that reviewers are not anchored on the model's label.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from act.review.errors import ReviewStoreError
from act.review.http import ApiOptions, OnReview
from act.review.shared_stats import SharedStats
from act.review.store import ClaimedRecord, ReviewStore
from act.v1 import bus_pb2, review_queue_pb2, review_queue_pb2_grpc

log = logging.getLogger("act.review.grpc")

T = TypeVar("T")


def grpc_code(exc: ReviewStoreError) -> grpc.StatusCode:
    """The gRPC status of a store error (its `code` names it)."""
    return getattr(grpc.StatusCode, exc.code, grpc.StatusCode.INTERNAL)


def _token(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key.lower() == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
    return ""


class ReviewQueueServicer(review_queue_pb2_grpc.ReviewQueueServicer):
    """Claim, Submit, Release and Stats of the review queue."""

    def __init__(
        self,
        store: ReviewStore,
        options: ApiOptions | None = None,
        on_review: OnReview | None = None,
    ) -> None:
        self.store = store
        self.options = options or ApiOptions()
        self.on_review = on_review
        self.shared_stats = SharedStats(store, self.options.stats_reuse_factor)

    async def _call(self, context: grpc.aio.ServicerContext, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.to_thread(fn, *args)
        except ReviewStoreError as exc:
            code = grpc_code(exc)
            if code == grpc.StatusCode.INTERNAL:
                log.error("review store error: %s", exc, exc_info=exc)
            await context.abort(code, str(exc))
            raise AssertionError("unreachable: context.abort raises") from None

    async def _reviewer(self, context: grpc.aio.ServicerContext, requested: str) -> str:
        token = _token(context)
        if not token:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing reviewer token: send metadata 'authorization: Bearer <token>'",
            )
        name = await asyncio.to_thread(self.store.authenticate, token)
        if name is None:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, "invalid or deactivated reviewer token"
            )
        assert name is not None
        if requested and requested != name:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the token is reviewer {name!r}'s; it cannot act as {requested!r}",
            )
        return name

    def _claimed_item(self, record: ClaimedRecord) -> review_queue_pb2.ClaimedItem:
        item = review_queue_pb2.ClaimedItem(claim_id=record.claim_id)
        item.decision.CopyFrom(record.decision)
        if not self.options.show_machine_label:
            item.decision.ClearField("annotation")
            item.decision.ClearField("criticism")
        if record.schema is not None:
            item.schema.CopyFrom(record.schema)
        else:
            item.schema.schema_id = record.schema_id
            item.schema.version = record.schema_version
        item.lease_expires_time.FromDatetime(record.lease_expires_at)
        return item

    async def Claim(
        self, request: review_queue_pb2.ClaimRequest, context: grpc.aio.ServicerContext
    ) -> review_queue_pb2.ClaimResponse:
        reviewer = await self._reviewer(context, request.reviewer)
        opts = self.options
        max_items = request.max_items or 1
        if max_items > opts.max_claim_items:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"max_items must be at most {opts.max_claim_items}, got {max_items}",
            )
        if request.HasField("lease"):
            lease = request.lease.ToTimedelta().total_seconds()
            if not 0 < lease <= opts.max_lease_seconds:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"lease must be in (0, {opts.max_lease_seconds:g}] seconds, got {lease:g}",
                )
        else:
            lease = opts.default_lease_seconds
        records = await self._call(
            context, self.store.claim, reviewer, max_items, lease, request.schema_id or None
        )
        self.shared_stats.wrote(reviewer)
        return review_queue_pb2.ClaimResponse(items=[self._claimed_item(r) for r in records])

    async def Submit(
        self, request: review_queue_pb2.SubmitRequest, context: grpc.aio.ServicerContext
    ) -> review_queue_pb2.SubmitResponse:
        reviewer = await self._reviewer(context, request.reviewer)
        if request.claim_id:
            expected = request.expected_revision or None
        else:
            expected = request.expected_revision

        def submit() -> bus_pb2.Review:
            return self.store.submit(
                request.item_id,
                request.claim_id or None,
                reviewer,
                request.label,
                unsure=request.unsure,
                note=request.note,
                expected_revision=expected,
            )

        review = await self._call(context, submit)
        self.shared_stats.wrote(reviewer)
        if self.on_review is not None:
            try:
                result = self.on_review(review)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("on_review failed for item %s (the review is stored)", review.item_id)
        return review_queue_pb2.SubmitResponse(review=review)

    async def Release(
        self, request: review_queue_pb2.ReleaseRequest, context: grpc.aio.ServicerContext
    ) -> review_queue_pb2.ReleaseResponse:
        reviewer = await self._reviewer(context, request.reviewer)
        if not request.claim_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "claim_id is empty")
        released = await self._call(
            context,
            self.store.release,
            request.item_id,
            request.claim_id,
            reviewer,
            request.reason or "released",
        )
        self.shared_stats.wrote(reviewer)
        return review_queue_pb2.ReleaseResponse(released=released)

    async def Stats(
        self, request: review_queue_pb2.StatsRequest, context: grpc.aio.ServicerContext
    ) -> review_queue_pb2.QueueStats:
        reviewer = await self._reviewer(context, "")
        stats = await self._call(
            context, self.shared_stats.get, request.schema_id or None, reviewer
        )
        out = review_queue_pb2.QueueStats(
            decisions=stats.decisions,
            selected=stats.selected,
            pending=stats.pending,
            claimed=stats.claimed,
            reviewed=stats.reviewed,
            unsure=stats.unsure,
            capped=stats.capped,
            active_reviewers=stats.active_reviewers,
        )
        if stats.oldest_pending_age is not None:
            out.oldest_pending_age.FromTimedelta(stats.oldest_pending_age)
        return out


def add_review_queue(server: grpc.aio.Server, servicer: ReviewQueueServicer) -> None:
    review_queue_pb2_grpc.add_ReviewQueueServicer_to_server(servicer, server)
