"""The embedded models, for real, through the annotator and criticizer gRPC services.

Text (MiniLM, moderation set, 5 examples per label) and images (few-shot digits) go through
the batch RPCs of two running servers; accuracy and the criticizer's AUROC are printed and
checked against what the same backend gives in process.
"""

from __future__ import annotations

import asyncio

import pytest

from act.client import AnnotatorClient, CriticizerClient, ServiceError
from act.core.metrics import accuracy, auroc
from act.data import (
    digits_count,
    digits_example_indices,
    digits_item,
    digits_label,
    digits_schema,
    moderation_items,
    text_schema,
)
from act.inference.embedded import EmbeddedBackend
from act.inference.types import Annotation, Criticism, Image, Item, LabelSchema
from act.serving.server import ModelServer
from act.serving.settings import ServingSettings


def _evaluation_sets() -> list[tuple[str, LabelSchema, list[Item], list[str]]]:
    text = text_schema(n_shots=5, seed=0)
    shown = {example.item.item_id for example in text.examples}
    rows = [row for row in moderation_items() if row.item.item_id not in shown]
    digits = digits_schema(n_shots=5, seed=0)
    held_out = sorted(set(range(digits_count())) - set(digits_example_indices(5, 0)))[:200]
    return [
        ("moderation text", text, [row.item for row in rows], [row.label for row in rows]),
        (
            "digits images",
            digits,
            [digits_item(i) for i in held_out],
            [digits_label(i) for i in held_out],
        ),
    ]


async def _through_grpc(backend: EmbeddedBackend) -> list[tuple[str, float, float, int]]:
    settings = ServingSettings(port=0, metrics_port=0, max_batch=512)
    annotator = ModelServer("annotator", backend, settings)
    criticizer = ModelServer("criticizer", backend, settings)
    await annotator.start()
    await criticizer.start()
    results = []
    try:
        annotate = AnnotatorClient(annotator.address, timeout=120)
        criticize = CriticizerClient(criticizer.address, timeout=120)
        for name, schema, items, truth in _evaluation_sets():
            annotations = await annotate.annotate(items, schema, "direct")
            assert all(isinstance(a, Annotation) for a in annotations), annotations[:3]
            criticisms = await criticize.criticize(
                list(zip(items, annotations, strict=True)), schema, "direct"
            )
            assert all(isinstance(c, Criticism) for c in criticisms), criticisms[:3]
            labels = [a.label for a in annotations]
            errors = [label != true for label, true in zip(labels, truth, strict=True)]
            eps = [c.error_probability for c in criticisms]
            results.append((name, accuracy(labels, truth), auroc(eps, errors), len(items)))
            in_process = await backend.annotate(items, schema, "direct")
            assert [a.label for a in in_process] == labels  # the service adds nothing
        await annotate.close()
        await criticize.close()
    finally:
        await annotator.stop(grace=0)
        await criticizer.stop(grace=0)
    return results


def test_embedded_models_annotate_and_criticize_through_the_grpc_services(
    capsys: pytest.CaptureFixture[str],
) -> None:
    results = asyncio.run(_through_grpc(EmbeddedBackend()))
    with capsys.disabled():
        for name, acc, area, n_items in results:
            print(
                f"\n{name} through gRPC: annotator accuracy {acc:.3f}, "
                f"criticizer AUROC {area:.3f} ({n_items} items)"
            )
    for _, acc, area, _ in results:
        assert 0.5 < acc < 1.0  # real models making real mistakes
        assert area > 0.7


def test_a_corrupt_image_is_invalid_argument_and_the_service_keeps_serving() -> None:
    async def scenario() -> tuple[ServiceError, str]:
        settings = ServingSettings(port=0, metrics_port=0)
        server = ModelServer("annotator", EmbeddedBackend(), settings)
        await server.start()
        client = AnnotatorClient(server.address, timeout=60)
        try:
            corrupt = Item(item_id="bad", images=(Image(data=b"\x89PNG-not-really"),))
            schema = digits_schema(n_shots=5, seed=0)
            with pytest.raises(ServiceError) as info:
                await client.annotate_one(corrupt, schema)
            fine = await client.annotate_one(digits_item(0), schema)
            return info.value, fine.label
        finally:
            await client.close()
            await server.stop(grace=0)

    error, label = asyncio.run(scenario())
    assert error.code.name == "INVALID_ARGUMENT"
    assert "bad" in error.message
    assert label in [str(digit) for digit in range(10)]
