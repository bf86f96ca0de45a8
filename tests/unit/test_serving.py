"""The annotator and criticizer services: real grpc.aio servers on 127.0.0.1, real channels.

Most tests run a small deterministic backend defined here (`FakeBackend`), whose behaviour
is steered by the item text: "slow" sleeps, "wait" blocks on a gate, "unavailable" raises
BackendUnavailable, "boom" raises an unexpected error, "bad-output" fails that item alone.
Coroutines run under `asyncio.run` (no pytest-asyncio).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from act.client import AnnotatorClient, CriticizerClient, ServiceError
from act.data import text_schema
from act.inference.base import Backend
from act.inference.errors import BackendUnavailable, InferenceError, UnparsableOutput
from act.inference.types import (
    Annotation,
    Criticism,
    Image,
    Item,
    Label,
    LabelSchema,
    ModelRef,
    PromptRef,
    Usage,
    item_to_proto,
    schema_to_proto,
)
from act.serving.limits import ConcurrencyLimiter
from act.serving.logs import JsonFormatter
from act.serving.server import ModelServer, load_backend
from act.serving.settings import ServingSettings, parse_backend_options, settings_with_overrides
from act.v1 import annotator_pb2, annotator_pb2_grpc, types_pb2

T = TypeVar("T")
REPO_ROOT = Path(__file__).resolve().parents[2]
CODE = grpc.StatusCode
SCHEMA = LabelSchema(
    schema_id="toxicity",
    labels=(Label(name="ok"), Label(name="toxic"), Label(name="spam")),
    instructions="Label the message.",
)
OTHER_SCHEMA = LabelSchema(schema_id="sentiment", labels=(Label(name="neg"), Label(name="pos")))


class FakeBackend(Backend):
    """Deterministic: label = labels[len(text) % n]; eps = 0.1 * len(label) capped at 1."""

    name = "fake"
    annotation_strategies = ("direct", "cot")
    criticism_strategies = ("direct",)
    supports_images = True

    def __init__(self, delay: float = 1.0) -> None:
        self.delay = delay
        self.gate: asyncio.Event | None = None
        self.calls: list[int] = []
        self.closed = False

    @property
    def model(self) -> ModelRef:
        return ModelRef(backend="fake", model="fake-1")

    async def _behave(self, items: Sequence[Item]) -> None:
        self.calls.append(len(items))
        texts = " ".join(item.text for item in items)
        if "slow" in texts:
            await asyncio.sleep(self.delay)
        if "wait" in texts and self.gate is not None:
            await self.gate.wait()
        if "unavailable" in texts:
            raise BackendUnavailable("model server unreachable after 3 retries")
        if "boom" in texts:
            raise RuntimeError("kaboom")

    async def annotate(
        self, items: Sequence[Item], schema: LabelSchema, strategy: str
    ) -> list[Annotation | InferenceError]:
        self.check_annotation_strategy(strategy)
        await self._behave(items)
        out: list[Annotation | InferenceError] = []
        for item in items:
            if "bad-output" in item.text:
                out.append(UnparsableOutput("no label in the answer", detail="RAW: hmm"))
                continue
            label = schema.labels[len(item.text) % len(schema.labels)].name
            out.append(
                Annotation(
                    item_id=item.item_id,
                    label=label,
                    rationale=f"{strategy} says {label}",
                    model=self.model,
                    prompt=PromptRef(strategy_id=f"annotate.{strategy}", version="1"),
                    schema_id=schema.schema_id,
                    schema_version=schema.version,
                    usage=Usage(prompt_tokens=len(item.text), completion_tokens=1),
                )
            )
        return out

    async def criticize(
        self,
        annotated: Sequence[tuple[Item, Annotation]],
        schema: LabelSchema,
        strategy: str,
    ) -> list[Criticism | InferenceError]:
        self.check_criticism_strategy(strategy)
        await self._behave([item for item, _ in annotated])
        return [
            Criticism(
                item_id=item.item_id,
                label=annotation.label,
                error_probability=min(1.0, 0.1 * len(annotation.label)),
                model=self.model,
                prompt=PromptRef(strategy_id=f"criticize.{strategy}", version="1"),
                usage=Usage(prompt_tokens=2, completion_tokens=3),
            )
            for item, annotation in annotated
        ]

    async def aclose(self) -> None:
        self.closed = True


def make_fake_backend(**options: Any) -> FakeBackend:
    """Factory for `--backend test_serving:make_fake_backend`."""
    return FakeBackend(**options)


def run(coroutine: Awaitable[T], timeout: float = 20.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coroutine, timeout)

    return asyncio.run(bounded())


def item(item_id: str, text: str = "hello world", **kwargs: Any) -> Item:
    return Item(item_id=item_id, text=text, **kwargs)


def expected_label(text: str, schema: LabelSchema = SCHEMA) -> str:
    return schema.labels[len(text) % len(schema.labels)].name


@asynccontextmanager
async def serving(
    service: str = "annotator", backend: Backend | None = None, **overrides: Any
) -> AsyncIterator[tuple[ModelServer, Any]]:
    settings = ServingSettings(port=0, metrics_port=0, **overrides)
    server = ModelServer(service, backend or FakeBackend(), settings)  # type: ignore[arg-type]
    await server.start()
    client_type = AnnotatorClient if service == "annotator" else CriticizerClient
    client = client_type(server.address, timeout=10)
    try:
        yield server, client
    finally:
        await client.close()
        await server.stop(grace=0)


def scrape(server: ModelServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    assert server.metrics_url is not None
    with urllib.request.urlopen(server.metrics_url, timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def expect_error(awaitable: Awaitable[Any], code: grpc.StatusCode) -> ServiceError:
    with pytest.raises(ServiceError) as info:
        await awaitable
    assert info.value.code == code, info.value
    return info.value


# ----------------------------------------------------------------------------- round trips


def test_annotator_unary_batch_and_stream_round_trip() -> None:
    async def scenario() -> None:
        async with serving() as (server, client):
            one = await client.annotate_one(item("a", "short"), SCHEMA, "cot")
            assert one.item_id == "a"
            assert one.label == expected_label("short")
            assert one.prompt.strategy_id == "annotate.cot"
            assert one.model == ModelRef(backend="fake", model="fake-1")
            assert one.schema_id == "toxicity"
            assert one.usage.prompt_tokens == len("short")

            texts = [f"text number {i}" + "x" * i for i in range(10)]
            batch = await client.annotate([item(f"b{i}", t) for i, t in enumerate(texts)], SCHEMA)
            assert [a.item_id for a in batch] == [f"b{i}" for i in range(10)]
            assert [a.label for a in batch] == [expected_label(t) for t in texts]
            assert all(a.prompt.strategy_id == "annotate.direct" for a in batch)  # default

            streamed = [
                result
                async for result in client.stream_annotate(
                    [item(f"s{i}", t) for i, t in enumerate(texts)], SCHEMA
                )
            ]
            assert sorted(a.item_id for a in streamed) == sorted(f"s{i}" for i in range(10))
            by_id = {a.item_id: a.label for a in streamed}
            assert by_id == {f"s{i}": expected_label(t) for i, t in enumerate(texts)}

            samples = scrape(server)
            assert metric(samples, "act_annotator_items_total", outcome="ok") == 21
            assert metric(samples, "act_annotator_requests_total", method="Annotate", code="OK")
            assert metric(samples, "act_annotator_tokens_total", kind="completion") == 21

    run(scenario())


def test_criticizer_unary_batch_and_stream_round_trip() -> None:
    async def scenario() -> None:
        async with serving("criticizer") as (server, client):
            x = item("a", "some text")
            annotation = Annotation(
                item_id="a",
                label="toxic",
                model=ModelRef(backend="m", model="m"),
                prompt=PromptRef(strategy_id="annotate.direct", version="1"),
                schema_id="toxicity",
                schema_version=1,
            )
            one = await client.criticize_one(x, annotation, SCHEMA)
            assert one.item_id == "a" and one.label == "toxic"
            assert one.error_probability == pytest.approx(0.5)
            assert one.prompt.strategy_id == "criticize.direct"

            pairs = [
                (item(f"i{k}"), annotation.model_copy(update={"item_id": f"i{k}", "label": lab}))
                for k, lab in enumerate(["ok", "spam", "toxic"])
            ]
            batch = await client.criticize(pairs, SCHEMA)
            assert [c.error_probability for c in batch] == pytest.approx([0.2, 0.4, 0.5])

            streamed = [c async for c in client.stream_criticize(pairs, SCHEMA)]
            assert {c.item_id: c.label for c in streamed} == {
                "i0": "ok",
                "i1": "spam",
                "i2": "toxic",
            }

            info = await client.info()
            assert info.service == "criticizer"
            assert info.prompt_strategies == ("direct",)
            samples = scrape(server)
            assert metric(samples, "act_criticizer_items_total", outcome="ok") == 7

    run(scenario())


def test_get_info_describes_backend_and_limits() -> None:
    async def scenario() -> None:
        async with serving(max_batch=32, default_strategy="cot") as (_, client):
            info = await client.info()
            assert info.service == "annotator"
            assert info.model == ModelRef(backend="fake", model="fake-1")
            assert info.prompt_strategies == ("direct", "cot")
            assert info.default_prompt_strategy == "cot"
            assert info.supports_images and not info.supports_logprobs
            assert info.max_batch_size == 32
            assert info.server_version
            annotation = await client.annotate_one(item("a"), SCHEMA)
            assert annotation.prompt.strategy_id == "annotate.cot"

    run(scenario())


def test_stream_keeps_schema_and_strategy_until_changed() -> None:
    async def scenario() -> None:
        async with serving() as (_, client):
            stub = annotator_pb2_grpc.AnnotatorStub(client.channel)
            schema = schema_to_proto(SCHEMA)
            other = schema_to_proto(OTHER_SCHEMA)
            bad = schema_to_proto(SCHEMA)
            del bad.labels[1:]
            requests = [
                annotator_pb2.AnnotateRequest(item=item_to_proto(item("no-schema"))),
                annotator_pb2.AnnotateRequest(
                    item=item_to_proto(item("s1", "abc")), schema=schema, prompt_strategy="cot"
                ),
                annotator_pb2.AnnotateRequest(item=item_to_proto(item("s2", "abcd"))),
                annotator_pb2.AnnotateRequest(item=item_to_proto(item("o1", "abc")), schema=other),
                annotator_pb2.AnnotateRequest(item=item_to_proto(item("o2", "abcd"))),
                annotator_pb2.AnnotateRequest(item=item_to_proto(item("x1", "abc")), schema=bad),
                annotator_pb2.AnnotateRequest(item=item_to_proto(item("x2", "abc"))),
                annotator_pb2.AnnotateRequest(
                    item=item_to_proto(item("u1", "abc")), schema=schema, prompt_strategy="nope"
                ),
                annotator_pb2.AnnotateRequest(item=item_to_proto(item("u2", "abc"))),
                annotator_pb2.AnnotateRequest(
                    item=item_to_proto(item("c1", "abcde")), prompt_strategy="direct"
                ),
                annotator_pb2.AnnotateRequest(item=types_pb2.Item(item_id="empty")),
            ]
            results = {}
            async for result in stub.AnnotateStream(iter(requests), timeout=10):
                kind = result.WhichOneof("result")
                value = getattr(result, kind)
                results[value.item_id] = (kind, value)
            assert set(results) == {
                *("no-schema", "s1", "s2", "o1", "o2", "x1", "x2", "u1", "u2", "c1", "empty")
            }
            kind, error = results["no-schema"]
            assert kind == "error" and error.code == CODE.INVALID_ARGUMENT.value[0]
            assert "first message" in error.message
            assert results["s1"][1].label == expected_label("abc")
            assert results["s2"][1].label == expected_label("abcd")
            assert results["s2"][1].prompt.strategy_id == "annotate.cot"  # kept
            assert results["o1"][1].label == expected_label("abc", OTHER_SCHEMA)
            assert results["o2"][1].schema_id == "sentiment"
            for key in ("x1", "x2"):
                kind, error = results[key]
                assert kind == "error" and "at least two labels" in error.message
            for key in ("u1", "u2"):  # a bad strategy stays in force until replaced
                kind, error = results[key]
                assert kind == "error" and "unknown prompt strategy" in error.message
            assert results["c1"][1].prompt.strategy_id == "annotate.direct"
            assert results["c1"][1].label == expected_label("abcde")
            kind, error = results["empty"]
            assert kind == "error" and error.code == CODE.INVALID_ARGUMENT.value[0]

    run(scenario())


def test_stream_micro_batches_many_items() -> None:
    async def scenario() -> None:
        backend = FakeBackend()
        async with serving(backend=backend, max_batch=64) as (server, client):

            async def items() -> AsyncIterator[Item]:
                for i in range(500):
                    yield item(f"m{i}", f"message {i}")

            results = [r async for r in client.stream_annotate(items(), SCHEMA)]
            assert len(results) == 500
            assert all(isinstance(r, Annotation) for r in results)
            assert len({r.item_id for r in results}) == 500
            assert sum(backend.calls) == 500
            assert max(backend.calls) <= 64
            samples = scrape(server)
            assert metric(samples, "act_annotator_batch_size_count") == len(backend.calls)
            assert metric(samples, "act_annotator_batch_size_sum") == 500

    run(scenario())


# ----------------------------------------------------------------------------- errors


def test_batch_reports_bad_items_in_place_and_the_rpc_succeeds() -> None:
    async def scenario() -> None:
        async with serving() as (server, client):
            stub = annotator_pb2_grpc.AnnotatorStub(client.channel)
            request = annotator_pb2.AnnotateBatchRequest(
                items=[
                    item_to_proto(item("good", "fine text")),
                    types_pb2.Item(item_id="empty", text="   "),
                    item_to_proto(item("broken", "bad-output here")),
                    types_pb2.Item(item_id="ctrl", text="bell \x07"),
                ],
                schema=schema_to_proto(SCHEMA),
            )
            response = await stub.AnnotateBatch(request, timeout=10)
            kinds = [r.WhichOneof("result") for r in response.results]
            assert kinds == ["annotation", "error", "error", "error"]
            empty, broken, ctrl = (r.error for r in response.results[1:])
            assert empty.item_id == "empty" and empty.code == CODE.INVALID_ARGUMENT.value[0]
            assert "items[1]" in empty.message and "is empty" in empty.message
            assert broken.item_id == "broken" and broken.code == CODE.INTERNAL.value[0]
            assert broken.detail == "RAW: hmm"
            assert "invalid character" in ctrl.message

            # The client returns them in place as ServiceErrors.
            outcomes = await client.annotate([item("a"), item("b", "bad-output")], SCHEMA)
            assert isinstance(outcomes[0], Annotation)
            assert isinstance(outcomes[1], ServiceError)
            assert outcomes[1].code == CODE.INTERNAL and outcomes[1].item_id == "b"

            samples = scrape(server)
            assert metric(samples, "act_annotator_errors_total", code="INVALID_ARGUMENT") == 2
            assert metric(samples, "act_annotator_errors_total", code="INTERNAL") == 2
            assert metric(samples, "act_annotator_items_total", outcome="ok") == 2
            assert metric(samples, "act_annotator_items_total", outcome="error") == 4
            assert (
                metric(samples, "act_annotator_requests_total", method="AnnotateBatch", code="OK")
                == 2
            )

    run(scenario())


def test_invalid_requests_fail_with_invalid_argument_and_the_service_keeps_serving() -> None:
    async def scenario() -> None:
        async with serving(max_batch=4) as (server, client):
            stub = annotator_pb2_grpc.AnnotatorStub(client.channel)
            one_label = LabelSchema.model_construct(
                schema_id="bad",
                version=1,
                labels=(Label(name="only"),),
                instructions="",
                examples=(),
            )
            error = await expect_error(
                client.annotate_one(item("a"), one_label), CODE.INVALID_ARGUMENT
            )
            assert "invalid schema" in error.message and "at least two labels" in error.message
            error = await expect_error(
                client.annotate([item("a")], one_label), CODE.INVALID_ARGUMENT
            )
            no_schema = annotator_pb2.AnnotateRequest(item=item_to_proto(item("a")))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Annotate(no_schema, timeout=5)
            assert info.value.code() == CODE.INVALID_ARGUMENT
            assert "schema is required" in (info.value.details() or "")
            empty = annotator_pb2.AnnotateRequest(
                item=types_pb2.Item(item_id="e"), schema=schema_to_proto(SCHEMA)
            )
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Annotate(empty, timeout=5)
            assert info.value.code() == CODE.INVALID_ARGUMENT
            assert "is empty" in (info.value.details() or "")
            error = await expect_error(
                client.annotate([item(f"i{i}") for i in range(5)], SCHEMA), CODE.INVALID_ARGUMENT
            )
            assert "ACT_MAX_BATCH" in error.message
            # Still serving.
            assert (await client.annotate_one(item("ok"), SCHEMA)).item_id == "ok"
            samples = scrape(server)
            assert metric(samples, "act_annotator_errors_total", code="INVALID_ARGUMENT") == 5

    run(scenario())


def test_unknown_and_unsupported_strategies() -> None:
    async def scenario() -> None:
        async with serving() as (_, client):
            error = await expect_error(
                client.annotate_one(item("a"), SCHEMA, "telepathy"), CODE.INVALID_ARGUMENT
            )
            assert "unknown prompt strategy 'telepathy'" in error.message
        async with serving("criticizer") as (_, client):
            annotation = Annotation(
                item_id="a",
                label="ok",
                model=ModelRef(backend="m", model="m"),
                prompt=PromptRef(strategy_id="annotate.direct", version="1"),
                schema_id="toxicity",
                schema_version=1,
            )
            error = await expect_error(
                client.criticize([(item("a"), annotation)], SCHEMA, "graded"),
                CODE.FAILED_PRECONDITION,
            )
            assert "cannot run strategy 'graded'" in error.message
            # Annotation checks are per item.
            wrong_label = annotation.model_copy(update={"label": "nope", "item_id": "b"})
            wrong_id = annotation.model_copy(update={"item_id": "zzz"})
            outcomes = await client.criticize(
                [(item("a"), annotation), (item("b"), wrong_label), (item("c"), wrong_id)], SCHEMA
            )
            assert isinstance(outcomes[0], Criticism)
            assert isinstance(outcomes[1], ServiceError) and "not in schema" in outcomes[1].message
            assert isinstance(outcomes[2], ServiceError) and "does not match" in outcomes[2].message
            assert outcomes[2].code == CODE.INVALID_ARGUMENT

    run(scenario())


def test_deadline_exceeded_with_a_slow_backend() -> None:
    async def scenario() -> None:
        async with serving(backend=FakeBackend(delay=3.0)) as (server, client):
            started = time.perf_counter()
            await expect_error(
                client.annotate_one(item("a", "slow"), SCHEMA, timeout=0.3),
                CODE.DEADLINE_EXCEEDED,
            )
            assert time.perf_counter() - started < 1.5
            assert (await client.annotate_one(item("b"), SCHEMA)).item_id == "b"
            await asyncio.sleep(0.05)
            samples = scrape(server)
            assert metric(
                samples,
                "act_annotator_requests_total",
                method="Annotate",
                code="DEADLINE_EXCEEDED",
            )
            assert metric(samples, "act_annotator_errors_total", code="DEADLINE_EXCEEDED") == 1
            assert metric(samples, "act_annotator_inflight") == 0

    run(scenario())


def test_back_pressure_answers_resource_exhausted_when_slots_and_queue_are_full() -> None:
    async def scenario() -> None:
        backend = FakeBackend()
        backend.gate = asyncio.Event()
        async with serving(backend=backend, max_concurrency=1, max_queue=1) as (server, client):
            first = asyncio.create_task(client.annotate_one(item("a", "wait"), SCHEMA))
            second = asyncio.create_task(client.annotate_one(item("b", "wait"), SCHEMA))
            while server.core.limiter.inflight + server.core.limiter.waiting < 2:
                await asyncio.sleep(0.01)
            samples = scrape(server)
            assert metric(samples, "act_annotator_inflight") == 1
            assert metric(samples, "act_annotator_queued") == 1
            started = time.perf_counter()
            error = await expect_error(
                client.annotate_one(item("c"), SCHEMA), CODE.RESOURCE_EXHAUSTED
            )
            assert time.perf_counter() - started < 1.0
            assert "overloaded" in error.message
            backend.gate.set()
            assert (await first).item_id == "a"
            assert (await second).item_id == "b"
            assert (await client.annotate_one(item("d"), SCHEMA)).item_id == "d"
            samples = scrape(server)
            assert metric(samples, "act_annotator_errors_total", code="RESOURCE_EXHAUSTED") == 1

    run(scenario())


def test_oversized_messages_and_images_are_refused() -> None:
    async def scenario() -> None:
        async with serving(max_message_bytes=64 * 1024, max_image_bytes=1000) as (server, client):
            error = await expect_error(
                client.annotate_one(item("big", "a" * 90_000), SCHEMA), CODE.RESOURCE_EXHAUSTED
            )
            assert "larger than max" in error.message.lower() or "exceed" in error.message.lower()
            picture = Image(data=b"\x89PNG" + b"\0" * 2000, mime_type="image/png")
            error = await expect_error(
                client.annotate_one(item("img", images=(picture,)), SCHEMA),
                CODE.INVALID_ARGUMENT,
            )
            assert "2004 bytes" in error.message and "ACT_MAX_IMAGE_BYTES" in error.message
            small = Image(data=b"\x89PNG" + b"\0" * 10, mime_type="image/png")
            outcomes = await client.annotate(
                [item("img", images=(picture,)), item("small", images=(small,))], SCHEMA
            )
            assert isinstance(outcomes[0], ServiceError)
            assert outcomes[0].code == CODE.INVALID_ARGUMENT
            assert isinstance(outcomes[1], Annotation)
            samples = scrape(server)
            assert metric(samples, "act_annotator_errors_total", code="INVALID_ARGUMENT") == 2

    run(scenario())


def test_backend_unavailable_and_unexpected_errors() -> None:
    async def scenario() -> None:
        async with serving() as (server, client):
            error = await expect_error(
                client.annotate_one(item("a", "unavailable"), SCHEMA), CODE.UNAVAILABLE
            )
            assert "unreachable" in error.message
            await expect_error(
                client.annotate([item("a", "unavailable")], SCHEMA), CODE.UNAVAILABLE
            )
            streamed = [r async for r in client.stream_annotate([item("s", "unavailable")], SCHEMA)]
            assert isinstance(streamed[0], ServiceError)
            assert streamed[0].code == CODE.UNAVAILABLE and streamed[0].item_id == "s"

            error = await expect_error(
                client.annotate_one(item("b", "boom"), SCHEMA), CODE.INTERNAL
            )
            assert "RuntimeError" in error.message and "kaboom" in error.message
            error = await expect_error(
                client.annotate_one(item("c", "bad-output"), SCHEMA), CODE.INTERNAL
            )
            assert error.detail == "RAW: hmm"  # detail travels in the trailing metadata

            assert (await client.annotate_one(item("d"), SCHEMA)).item_id == "d"
            samples = scrape(server)
            assert metric(samples, "act_annotator_errors_total", code="UNAVAILABLE") == 3
            assert metric(samples, "act_annotator_errors_total", code="INTERNAL") == 2
            assert (
                metric(samples, "act_annotator_requests_total", method="Annotate", code="INTERNAL")
                == 2
            )

    run(scenario())


# ----------------------------------------------------------------------------- operations


def test_health_serving_then_not_serving_during_shutdown_and_in_flight_work_drains() -> None:
    async def scenario() -> None:
        backend = FakeBackend(delay=1.0)
        settings = ServingSettings(port=0, metrics_port=0, shutdown_delay_seconds=0.8)
        server = ModelServer("annotator", backend, settings)
        await server.start()
        client = AnnotatorClient(server.address, timeout=10)
        try:
            assert await client.health() == "SERVING"
            assert await client.health("") == "SERVING"
            in_flight = asyncio.create_task(client.annotate_one(item("a", "slow"), SCHEMA))
            while server.core.limiter.inflight == 0:
                await asyncio.sleep(0.01)
            stopping = asyncio.create_task(server.stop(grace=5))
            await asyncio.sleep(0.05)
            assert await client.health() == "NOT_SERVING"
            assert await client.health("") == "NOT_SERVING"
            assert (await in_flight).item_id == "a"  # drained, not cancelled
            await stopping
            assert backend.closed
            await expect_error(client.annotate_one(item("b"), SCHEMA, timeout=1), CODE.UNAVAILABLE)
        finally:
            await client.close()
            await server.stop()

    run(scenario())


def test_shutdown_cancels_work_still_running_after_the_grace_period() -> None:
    async def scenario() -> None:
        backend = FakeBackend(delay=5.0)
        server = ModelServer("annotator", backend, ServingSettings(port=0, metrics_enabled=False))
        await server.start()
        client = AnnotatorClient(server.address, timeout=10)
        try:
            in_flight = asyncio.create_task(client.annotate_one(item("a", "slow"), SCHEMA))
            while server.core.limiter.inflight == 0:
                await asyncio.sleep(0.01)
            started = time.perf_counter()
            await server.stop(grace=0.2)
            assert time.perf_counter() - started < 2.9  # the backend alone would take 3 s
            with pytest.raises(ServiceError) as info:
                await in_flight
            assert info.value.code in (CODE.CANCELLED, CODE.UNAVAILABLE)
            assert backend.closed
            assert server.core.limiter.inflight == 0
        finally:
            await client.close()

    run(scenario())


def test_streams_survive_client_cancellation_and_honour_deadlines() -> None:
    async def scenario() -> None:
        async with serving(backend=FakeBackend(delay=3.0)) as (server, client):

            async def endless() -> AsyncIterator[Item]:
                for i in range(100_000):
                    yield item(f"e{i}", f"endless {i}")
                    await asyncio.sleep(0)

            results = client.stream_annotate(endless(), SCHEMA)
            first = await anext(results)
            assert isinstance(first, Annotation)
            await results.aclose()  # the client walks away mid-stream

            # A slow item under the stream's deadline: its result is a DEADLINE_EXCEEDED error
            # (or, on a loaded machine, the stream itself ends with DEADLINE_EXCEEDED).
            started = time.perf_counter()
            try:
                outcomes = [
                    r
                    async for r in client.stream_annotate([item("s", "slow")], SCHEMA, timeout=0.5)
                ]
            except ServiceError as exc:
                assert exc.code == CODE.DEADLINE_EXCEEDED
            else:
                assert isinstance(outcomes[0], ServiceError)
                assert outcomes[0].code == CODE.DEADLINE_EXCEEDED and outcomes[0].item_id == "s"
            assert time.perf_counter() - started < 2.9  # the backend alone would take 3 s

            # A stream held open past its deadline fails as a whole.
            async def idle() -> AsyncIterator[Item]:
                yield item("i", "quick")
                await asyncio.sleep(5)

            with pytest.raises(ServiceError) as info:
                async for _ in client.stream_annotate(idle(), SCHEMA, timeout=0.3):
                    pass
            assert info.value.code == CODE.DEADLINE_EXCEEDED

            assert (await client.annotate_one(item("ok"), SCHEMA)).item_id == "ok"
            # The walked-away stream and the idle one each end as CANCELLED or
            # DEADLINE_EXCEEDED on the server: which one depends on timing (the client's
            # deadline may reach the server as a cancellation), so both codes count.
            failed_streams = 0.0
            # The server notices the cancellations asynchronously: on a loaded 2-core machine
            # that took more than 10 s once, so the wait is bounded by time, not by scrapes.
            noticed_by = time.monotonic() + 60
            while time.monotonic() < noticed_by:
                samples = scrape(server)
                stream_codes = {
                    dict(labels)["code"]: value
                    for (name, labels), value in samples.items()
                    if name == "act_annotator_requests_total"
                    and dict(labels)["method"] == "AnnotateStream"
                    and value
                }
                failed_streams = stream_codes.get("CANCELLED", 0) + stream_codes.get(
                    "DEADLINE_EXCEEDED", 0
                )
                if failed_streams >= 2 and not metric(samples, "act_annotator_inflight"):
                    break
                await asyncio.sleep(0.02)
            assert failed_streams >= 2, stream_codes
            assert set(stream_codes) <= {"CANCELLED", "DEADLINE_EXCEEDED", "OK"}
            assert metric(samples, "act_annotator_inflight") == 0

    run(scenario(), timeout=90.0)


def test_reflection_lists_the_services() -> None:
    async def scenario() -> None:
        async with serving("criticizer") as (_, client):
            stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            names = []
            async for response in stub.ServerReflectionInfo(iter([request]), timeout=5):
                names += [s.name for s in response.list_services_response.service]
            assert "act.v1.Criticizer" in names
            assert "grpc.health.v1.Health" in names

    run(scenario())


def test_metrics_endpoint_exposes_the_documented_families() -> None:
    async def scenario() -> None:
        async with serving() as (server, client):
            await client.annotate([item("a"), item("b")], SCHEMA)
            samples = scrape(server)
        names = {name for name, _ in samples}
        for expected in (
            "act_annotator_requests_total",
            "act_annotator_request_duration_seconds_bucket",
            "act_annotator_items_total",
            "act_annotator_batch_size_bucket",
            "act_annotator_tokens_total",
            "act_annotator_inflight",
            "act_annotator_queued",
            "act_annotator_info",
        ):
            assert expected in names, expected
        assert metric(samples, "act_annotator_tokens_total", kind="prompt") == 22
        assert metric(
            samples, "act_annotator_request_duration_seconds_count", method="AnnotateBatch"
        )

    run(scenario())


def test_two_servers_in_one_process_have_separate_metrics() -> None:
    async def scenario() -> None:
        async with serving() as (first, client), serving() as (second, _):
            await client.annotate_one(item("a"), SCHEMA)
            assert metric(scrape(first), "act_annotator_items_total", outcome="ok") == 1
            assert metric(scrape(second), "act_annotator_items_total", outcome="ok") == 0

    run(scenario())


def test_access_log_is_one_json_line_per_request(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with serving() as (_, client):
            await client.annotate([item("a"), item("b", "bad-output")], SCHEMA)
            await expect_error(client.annotate_one(item("c", "boom"), SCHEMA), CODE.INTERNAL)

    act_logger = logging.getLogger("act")
    propagate = act_logger.propagate
    act_logger.propagate = True  # in case configure_logging ran in this process
    try:
        with caplog.at_level(logging.INFO, logger="act"):
            run(scenario())
    finally:
        act_logger.propagate = propagate
    records = [r for r in caplog.records if r.name == "act.serving.access"]
    lines = [json.loads(JsonFormatter().format(r)) for r in records]
    assert [(x["method"], x["code"], x["items"]) for x in lines] == [
        ("AnnotateBatch", "OK", 2),
        ("Annotate", "INTERNAL", 1),
    ]
    assert lines[0]["item_errors"] == 1 and lines[0]["duration_ms"] >= 0
    assert lines[1]["level"] == "error" and "kaboom" in lines[1]["message"]
    assert any(r.name == "act.annotator" and r.exc_info for r in caplog.records)


def test_concurrency_limiter_counts_and_rejects() -> None:
    async def scenario() -> None:
        limiter = ConcurrencyLimiter(2, 1)
        gate = asyncio.Event()

        async def hold() -> None:
            async with limiter.slot():
                await gate.wait()

        tasks = [asyncio.create_task(hold()) for _ in range(3)]
        await asyncio.sleep(0.01)
        assert (limiter.inflight, limiter.waiting) == (2, 1)
        with pytest.raises(InferenceError) as info:
            async with limiter.slot():
                pass
        assert info.value.code == CODE.RESOURCE_EXHAUSTED
        gate.set()
        await asyncio.gather(*tasks)
        assert (limiter.inflight, limiter.waiting) == (0, 0)

    run(scenario())


def test_settings_from_env_and_flag_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACT_BACKEND", "instant")
    monkeypatch.setenv("ACT_PORT", "6000")
    monkeypatch.setenv("ACT_MAX_CONCURRENCY", "7")
    monkeypatch.setenv("ACT_BACKEND_OPTIONS", '{"seed": 3, "model": "m"}')
    settings = ServingSettings()
    assert (settings.backend, settings.port, settings.max_concurrency) == ("instant", 6000, 7)
    assert settings.backend_options == {"seed": 3, "model": "m"}
    assert settings.host == "127.0.0.1"
    assert settings.grpc_port("criticizer") == 6000
    merged = settings_with_overrides(
        {"port": 7000, "host": None}, parse_backend_options(["seed=5", "name=x", "flag=true"])
    )
    assert merged.port == 7000 and merged.max_concurrency == 7
    assert merged.backend_options == {"seed": 5, "model": "m", "name": "x", "flag": True}
    monkeypatch.delenv("ACT_PORT")
    assert ServingSettings().grpc_port("criticizer") == 50052
    with pytest.raises(ValueError):
        parse_backend_options(["novalue"])
    with pytest.raises(ValueError):
        ServingSettings(max_concurrency=0)


def test_bad_backend_names_and_default_strategies_fail_clearly() -> None:
    with pytest.raises(ValueError, match="cannot be loaded"):
        load_backend("act.nothing_here:factory")
    backend = load_backend("test_serving:make_fake_backend", {"delay": 0.5})
    assert isinstance(backend, FakeBackend) and backend.delay == 0.5
    with pytest.raises(ValueError, match="ACT_DEFAULT_STRATEGY"):
        ModelServer("annotator", FakeBackend(), ServingSettings(default_strategy="telepathy"))
    with pytest.raises(ValueError, match="ACT_DEFAULT_STRATEGY"):
        ModelServer("criticizer", FakeBackend(), ServingSettings(default_strategy="cot"))


def _registry_has(name: str) -> bool:
    try:
        from act.inference.registry import create_backend
    except ImportError:
        return False
    try:
        backend = create_backend(name)
    except Exception:
        return False
    asyncio.run(backend.aclose())
    return True


@pytest.mark.skipif(not _registry_has("instant"), reason="no instant backend in the registry yet")
def test_instant_backend_gives_the_same_answers_through_both_services_as_in_process() -> None:
    from act.inference.registry import create_backend

    async def scenario() -> None:
        local = create_backend("instant")
        items = [item(f"i{k}", f"message number {k}") for k in range(20)]
        expected = await local.annotate(items, SCHEMA, "direct")
        async with (
            serving(backend=create_backend("instant")) as (_, annotator),
            serving("criticizer", backend=create_backend("instant")) as (_, criticizer),
        ):
            annotations = await annotator.annotate(items, SCHEMA)
            assert [a.label for a in annotations] == [a.label for a in expected]  # type: ignore[union-attr]
            pairs = [(x, a) for x, a in zip(items, annotations, strict=True)]
            criticisms = await criticizer.criticize(pairs, SCHEMA)  # type: ignore[arg-type]
            local_criticisms = await local.criticize(pairs, SCHEMA, "direct")  # type: ignore[arg-type]
            assert [c.error_probability for c in criticisms] == pytest.approx(  # type: ignore[union-attr]
                [c.error_probability for c in local_criticisms]  # type: ignore[union-attr]
            )
            streamed = [a async for a in annotator.stream_annotate(items, SCHEMA)]
            assert {a.item_id: a.label for a in streamed} == {  # type: ignore[union-attr]
                a.item_id: a.label
                for a in expected  # type: ignore[union-attr]
            }

    run(scenario())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_actctl_serve_annotator_answers_and_stops_cleanly_on_sigterm() -> None:
    backend = "instant" if _registry_has("instant") else "test_serving:make_fake_backend"
    port, metrics_port = _free_port(), _free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).parent), env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    env.pop("ACT_BACKEND_OPTIONS", None)
    command = [
        sys.executable,
        "-m",
        "act.cli",
        "serve",
        "annotator",
        "--backend",
        backend,
        "--port",
        str(port),
        "--metrics-port",
        str(metrics_port),
        "--grace-seconds",
        "2",
    ]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:

        async def talk() -> None:
            async with AnnotatorClient(f"127.0.0.1:{port}", timeout=5) as client:
                await client.wait_ready(timeout=15)
                annotation = await client.annotate_one(item("a", "hello there"), SCHEMA)
                assert annotation.label in SCHEMA.label_names
                assert (await client.info()).service == "annotator"

        run(talk())
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            assert "act_annotator_requests_total" in r.read().decode()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    names = [event["event"] for event in events]
    assert names[0] == "serving" and names[-1] == "stopped", names
    assert any(e["event"] == "rpc" and e["method"] == "Annotate" for e in events)
    assert any(e["event"] == "signal" and e["signal"] == "SIGTERM" for e in events)


def test_a_schema_named_by_id_is_looked_up_and_an_unknown_one_is_not_found() -> None:
    async def scenario() -> None:
        async with serving() as (server, client):
            stub = annotator_pb2_grpc.AnnotatorStub(client.channel)
            by_id = annotator_pb2.AnnotateRequest(
                item=item_to_proto(item("a", "a friendly note")),
                schema=types_pb2.LabelSchema(schema_id="act-moderation"),
            )
            response = await stub.Annotate(by_id, timeout=5)
            assert response.annotation.schema_id == "act-moderation"
            assert response.annotation.label in text_schema().label_names
            unknown = annotator_pb2.AnnotateRequest(
                item=item_to_proto(item("b")), schema=types_pb2.LabelSchema(schema_id="nope")
            )
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Annotate(unknown, timeout=5)
            assert info.value.code() == CODE.NOT_FOUND
            assert "unknown label schema 'nope'" in (info.value.details() or "")
            assert (await client.annotate_one(item("ok"), SCHEMA)).item_id == "ok"
            assert metric(scrape(server), "act_annotator_errors_total", code="NOT_FOUND") == 1

    run(scenario())
