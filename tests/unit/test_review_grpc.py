"""Tests of the gRPC ReviewQueue service (act.review.grpc_service) over a real grpc.aio server and
a SQLite store: Claim/Submit/Release/Stats round trip, UNAUTHENTICATED without a valid token,
store errors mapped to their status codes. Coroutines run under `asyncio.run`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from act.inference.types import (
    Annotation,
    Item,
    Label,
    LabelSchema,
    ModelRef,
    PromptRef,
    annotation_to_proto,
    item_to_proto,
    schema_to_proto,
)
from act.review import ReviewStore
from act.review.grpc_service import ReviewQueueServicer, add_review_queue
from act.review.http import ApiOptions
from act.v1 import bus_pb2, review_queue_pb2, review_queue_pb2_grpc

SCHEMA_ID = "moderation"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def decision(i: int, *, delta: bool = True) -> bus_pb2.Decision:
    item_id = f"item-{i}"
    item = item_to_proto(Item(item_id=item_id, text=f"text {i}"))
    annotation = annotation_to_proto(
        Annotation(
            item_id=item_id,
            label="spam",
            model=ModelRef(backend="embedded", model="m"),
            prompt=PromptRef(strategy_id="annotate.direct", version="1"),
            schema_id=SCHEMA_ID,
            schema_version=1,
        )
    )
    out = bus_pb2.Decision(
        item_id=item_id, eps=0.3, pi=0.5 if delta else 0.1, delta=delta, annotation=annotation
    )
    out.item.CopyFrom(item)
    out.decided_time.FromDatetime(T0 + timedelta(seconds=i))
    return out


@pytest.fixture
def store(tmp_path: Path):
    with ReviewStore(f"sqlite:///{tmp_path / 'review.db'}") as store:
        schema = LabelSchema(
            schema_id=SCHEMA_ID,
            labels=(Label(name="ok"), Label(name="spam")),
            instructions="Moderate.",
        )
        store.register_schema(schema_to_proto(schema))
        for i, delta in ((1, True), (2, True), (3, False)):
            store.upsert_decision(decision(i, delta=delta))
        yield store


Stub = review_queue_pb2_grpc.ReviewQueueStub


def serve(
    store: ReviewStore,
    body: Callable[[Stub], Awaitable[None]],
    options: ApiOptions | None = None,
    on_review: Any = None,
) -> None:
    async def main() -> None:
        server = grpc.aio.server()
        add_review_queue(server, ReviewQueueServicer(store, options, on_review))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await asyncio.wait_for(body(Stub(channel)), 30)
        finally:
            await server.stop(None)

    asyncio.run(main())


def md(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def test_round_trip(store: ReviewStore) -> None:
    token = store.add_reviewer("alice")
    published: list[bus_pb2.Review] = []

    async def body(stub: Stub) -> None:
        stats = await stub.Stats(review_queue_pb2.StatsRequest(), metadata=md(token))
        assert (stats.pending, stats.claimed) == (2, 0)
        claimed = await stub.Claim(
            review_queue_pb2.ClaimRequest(max_items=5, lease=Duration(seconds=60)),
            metadata=md(token),
        )
        assert [i.decision.item_id for i in claimed.items] == ["item-1", "item-2"]
        first, second = claimed.items
        assert first.schema.instructions == "Moderate."
        assert [lb.name for lb in first.schema.labels] == ["ok", "spam"]
        assert first.decision.item.text == "text 1"
        assert not first.decision.HasField("annotation")  # machine label hidden by default
        assert first.lease_expires_time.seconds > 0

        stats = await stub.Stats(review_queue_pb2.StatsRequest(), metadata=md(token))
        assert (stats.decisions, stats.selected, stats.claimed, stats.pending) == (3, 2, 2, 0)
        assert stats.active_reviewers == 1

        submitted = await stub.Submit(
            review_queue_pb2.SubmitRequest(
                item_id="item-1", claim_id=first.claim_id, label="ok", note="fine"
            ),
            metadata=md(token),
        )
        assert (submitted.review.label, submitted.review.reviewer) == ("ok", "alice")
        assert submitted.review.revision == 1

        released = await stub.Release(
            review_queue_pb2.ReleaseRequest(
                item_id="item-2", claim_id=second.claim_id, reason="later"
            ),
            metadata=md(token),
        )
        assert released.released

        corrected = await stub.Submit(
            review_queue_pb2.SubmitRequest(item_id="item-1", label="spam", expected_revision=1),
            metadata=md(token),
        )
        assert (corrected.review.previous_label, corrected.review.revision) == ("ok", 2)

        stats = await stub.Stats(review_queue_pb2.StatsRequest(), metadata=md(token))
        assert (stats.reviewed, stats.pending, stats.claimed) == (1, 1, 0)
        assert stats.HasField("oldest_pending_age")

    # Counts are reused for ever, except past the caller's own changes: each read here
    # follows a change of the caller's.
    serve(store, body, ApiOptions(stats_reuse_factor=1e12), on_review=published.append)
    assert store.get_record("item-1").human_label == "spam"
    assert [(e.action, e.label) for e in store.audit_trail("item-1")] == [
        ("review", "ok"),
        ("correction", "spam"),
    ]
    assert [(e.action, e.note) for e in store.audit_trail("item-2")] == [("release", "later")]
    assert [r.revision for r in published] == [1, 2]


def test_unauthenticated(store: ReviewStore) -> None:
    store.add_reviewer("alice")

    async def body(stub: Stub) -> None:
        for metadata in ((), md("actr_wrong"), (("authorization", "Basic x"),)):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Claim(review_queue_pb2.ClaimRequest(), metadata=metadata)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Stats(review_queue_pb2.StatsRequest(), metadata=metadata)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED

    serve(store, body)
    assert store.get_record("item-1").state == "pending"


def test_errors_map_to_status_codes(store: ReviewStore) -> None:
    alice = store.add_reviewer("alice")
    bob = store.add_reviewer("bob")

    async def code(call: Awaitable[Any]) -> grpc.StatusCode:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.details()
        return info.value.code()

    async def body(stub: Stub) -> None:
        claimed = await stub.Claim(review_queue_pb2.ClaimRequest(), metadata=md(alice))
        claim_id = claimed.items[0].claim_id
        submit = review_queue_pb2.SubmitRequest
        assert await code(
            stub.Submit(submit(item_id="item-1", claim_id=claim_id, label="x"), metadata=md(alice))
        ) == (grpc.StatusCode.INVALID_ARGUMENT)
        assert await code(
            stub.Submit(submit(item_id="item-1", claim_id="bad", label="ok"), metadata=md(alice))
        ) == (grpc.StatusCode.FAILED_PRECONDITION)
        assert await code(
            stub.Submit(submit(item_id="item-1", claim_id=claim_id, label="ok"), metadata=md(bob))
        ) == (grpc.StatusCode.PERMISSION_DENIED)
        assert await code(
            stub.Submit(submit(item_id="nope", claim_id=claim_id, label="ok"), metadata=md(alice))
        ) == (grpc.StatusCode.NOT_FOUND)
        assert await code(
            stub.Claim(review_queue_pb2.ClaimRequest(reviewer="bob"), metadata=md(alice))
        ) == (grpc.StatusCode.PERMISSION_DENIED)
        assert await code(
            stub.Claim(review_queue_pb2.ClaimRequest(max_items=10_000), metadata=md(alice))
        ) == (grpc.StatusCode.INVALID_ARGUMENT)
        assert await code(
            stub.Claim(
                review_queue_pb2.ClaimRequest(lease=Duration(seconds=-5)), metadata=md(alice)
            )
        ) == (grpc.StatusCode.INVALID_ARGUMENT)

    serve(store, body)
    assert store.get_record("item-1").state == "claimed"


def test_machine_label_when_configured(store: ReviewStore) -> None:
    token = store.add_reviewer("alice")

    async def body(stub: Stub) -> None:
        claimed = await stub.Claim(review_queue_pb2.ClaimRequest(), metadata=md(token))
        assert claimed.items[0].decision.annotation.label == "spam"

    serve(store, body, options=ApiOptions(show_machine_label=True))
