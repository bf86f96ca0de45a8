"""Scoring micro-batches: in process and through the gRPC services, failures kept per item."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from act.client import AnnotatorClient, CriticizerClient
from act.data import text_schema
from act.inference.errors import BackendUnavailable, InferenceError
from act.inference.instant import InstantBackend
from act.inference.types import Annotation, Item, LabelSchema
from act.sampler.cli import SettingsError, build_scorer
from act.sampler.scoring import Failed, Scored, Scorer
from act.serving.server import ModelServer
from act.serving.settings import ServingSettings

SCHEMA = text_schema()
ITEMS = [Item(item_id=f"i{i}", text=f"message number {i}") for i in range(40)]


class DownCriticizer:
    async def criticize(
        self, annotated: Sequence[tuple[Item, Annotation]], schema: LabelSchema, strategy: str
    ) -> list[InferenceError]:
        raise BackendUnavailable("criticizer is down")


def test_in_process_scoring_gives_one_outcome_per_item_in_order() -> None:
    backend = InstantBackend()
    scorer = Scorer(backend, backend, SCHEMA, max_concurrency=2)
    batches = [ITEMS[:15], ITEMS[15:30], ITEMS[30:]]
    results = asyncio.run(scorer.score_many(batches))
    flat = [outcome for batch in results for outcome in batch]
    assert [outcome.item.item_id for outcome in flat] == [item.item_id for item in ITEMS]
    assert all(isinstance(outcome, Scored) for outcome in flat)


def test_a_failing_stage_fails_each_item_with_a_reason_for_the_dead_letter_queue() -> None:
    scorer = Scorer(InstantBackend(), DownCriticizer(), SCHEMA)
    outcomes = asyncio.run(scorer.score(ITEMS[:3]))
    assert all(isinstance(outcome, Failed) for outcome in outcomes)
    assert outcomes[0].reason == "criticism failed (UNAVAILABLE): criticizer is down"
    assert [outcome.item.item_id for outcome in outcomes] == ["i0", "i1", "i2"]


def test_scoring_through_the_grpc_services_equals_in_process_scoring() -> None:
    async def scenario() -> tuple[list, list]:
        settings = ServingSettings(port=0, metrics_port=0)
        annotator = ModelServer("annotator", InstantBackend(), settings)
        criticizer = ModelServer("criticizer", InstantBackend(), settings)
        await annotator.start()
        await criticizer.start()
        try:
            remote = Scorer(
                AnnotatorClient(annotator.address), CriticizerClient(criticizer.address), SCHEMA
            )
            through_grpc = await remote.score(ITEMS)
            backend = InstantBackend()
            in_process = await Scorer(backend, backend, SCHEMA).score(ITEMS)
            return through_grpc, in_process
        finally:
            await annotator.stop(grace=0)
            await criticizer.stop(grace=0)

    through_grpc, in_process = asyncio.run(scenario())

    def key(outcomes: list) -> list[tuple[str, str, float]]:
        return [
            (o.item.item_id, o.annotation.label, o.criticism.error_probability) for o in outcomes
        ]

    assert key(through_grpc) == key(in_process)


def _scorer_for(annotator: str) -> Scorer:
    return build_scorer(
        annotator=annotator,
        criticizer="criticizer:50052",
        backend=None,
        backend_option=(),
        schema_id="act-moderation",
        schema_version=1,
        annotation_strategy="direct",
        criticism_strategy="direct",
        max_concurrency=4,
        rpc_timeout=5.0,
    )


@pytest.mark.parametrize(
    "address", ["localhost", "localhost:", ":50051", "localhost:port", "localhost:70000"]
)
def test_the_sampler_refuses_a_model_service_address_that_is_not_host_port(address: str) -> None:
    with pytest.raises(SettingsError, match=r"--annotator expects HOST:PORT"):
        _scorer_for(address)


@pytest.mark.parametrize("address", ["annotator:50051", "10.0.0.7:50051", "[::1]:50051"])
def test_the_sampler_accepts_host_port_and_bracketed_ipv6_addresses(address: str) -> None:
    assert _scorer_for(address).schema.schema_id == "act-moderation"
