"""The instant (model-free) backend, and creating backends by name."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from act.core.sampling import keyed_uniform
from act.inference.cache import RecordingBackend, ReplayBackend
from act.inference.errors import InvalidInput, UnsupportedStrategy
from act.inference.instant import InstantBackend, hash_label
from act.inference.registry import BACKENDS, backend_names, create_backend
from act.inference.types import Annotation, Criticism, Item, Label, LabelSchema, ModelRef

SCHEMA = LabelSchema(
    schema_id="four", labels=tuple(Label(name=name) for name in ("a", "b", "c", "d"))
)


def _items(n: int, prefix: str = "i") -> list[Item]:
    return [Item(item_id=f"{prefix}{k}", text=f"text {k}") for k in range(n)]


def _annotate_and_criticize(
    backend: InstantBackend, items: list[Item]
) -> tuple[list[Annotation], list[Criticism]]:
    annotations = asyncio.run(backend.annotate(items, SCHEMA, "direct"))
    criticisms = asyncio.run(
        backend.criticize(list(zip(items, annotations, strict=True)), SCHEMA, "direct")
    )
    return annotations, criticisms  # type: ignore[return-value]


def test_labels_and_eps_are_deterministic_functions_of_the_content() -> None:
    items = _items(400)
    annotations, criticisms = _annotate_and_criticize(InstantBackend(), items)
    again_a, again_c = _annotate_and_criticize(InstantBackend(), items[::-1])
    assert again_a[::-1] == annotations and again_c[::-1] == criticisms
    renamed_a, renamed_c = _annotate_and_criticize(InstantBackend(), _items(400, prefix="other"))
    assert [a.label for a in renamed_a] == [a.label for a in annotations]
    assert [c.error_probability for c in renamed_c] == [c.error_probability for c in criticisms]

    for item, annotation, criticism in zip(items, annotations, criticisms, strict=True):
        assert annotation.item_id == criticism.item_id == item.item_id
        assert annotation.label == criticism.label == hash_label(item, SCHEMA)
        assert 0.0 <= criticism.error_probability < 1.0
    expected = keyed_uniform([f"{items[0].content_hash()}:{annotations[0].label}"], "act-instant")
    assert criticisms[0].error_probability == expected[0]

    counts = Counter(a.label for a in annotations)
    assert set(counts) == set(SCHEMA.label_names)
    assert min(counts.values()) > 60  # spread over the labels (400 / 4 = 100 expected)
    eps = [c.error_probability for c in criticisms]
    assert 0.4 < sum(eps) / len(eps) < 0.6


def test_the_seed_changes_eps_but_not_labels() -> None:
    items = _items(50)
    base_a, base_c = _annotate_and_criticize(InstantBackend(), items)
    seeded_a, seeded_c = _annotate_and_criticize(InstantBackend(seed=7), items)
    assert [a.label for a in seeded_a] == [a.label for a in base_a]
    assert [c.error_probability for c in seeded_c] != [c.error_probability for c in base_c]


def test_model_reference_strategies_and_errors() -> None:
    backend = InstantBackend()
    assert backend.model == ModelRef(backend="instant", model="hash", revision="1")
    [item] = _items(1)
    [annotation] = asyncio.run(backend.annotate([item], SCHEMA, "direct"))
    assert annotation.model == backend.model and annotation.prompt.strategy_id == "direct"
    with pytest.raises(UnsupportedStrategy):
        asyncio.run(backend.annotate([item], SCHEMA, "cot"))
    with pytest.raises(UnsupportedStrategy):
        asyncio.run(backend.criticize([(item, annotation)], SCHEMA, "self-confidence"))
    foreign = annotation.model_copy(update={"label": "z"})
    other = annotation.model_copy(update={"item_id": "elsewhere"})
    outcomes = asyncio.run(backend.criticize([(item, foreign), (item, other)], SCHEMA, "direct"))
    assert all(isinstance(outcome, InvalidInput) for outcome in outcomes)
    assert asyncio.run(backend.annotate([], SCHEMA, "direct")) == []
    assert asyncio.run(backend.criticize([], SCHEMA, "direct")) == []


# ----------------------------------------------------------------------------- registry


def test_create_backend_by_name(tmp_path: Path) -> None:
    assert {"embedded", "instant", "replay"} <= set(backend_names())
    assert all(callable(factory) for factory in BACKENDS.values())
    instant = create_backend("instant", seed=3)
    assert isinstance(instant, InstantBackend) and instant.seed == 3

    path = tmp_path / "rec.jsonl"
    recording = create_backend("instant", record_to=path)
    assert isinstance(recording, RecordingBackend) and recording.inner.name == "instant"
    asyncio.run(recording.annotate(_items(2), SCHEMA, "direct"))
    replay = create_backend("replay", path=path)
    assert isinstance(replay, ReplayBackend) and replay.model.backend == "instant"


def test_unknown_backends_and_settings_are_clear_value_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown backend 'gpt5'.*'embedded'.*'instant'"):
        create_backend("gpt5")
    with pytest.raises(ValueError, match="instant"):
        create_backend("instant", temperature=0.2)
    with pytest.raises(ValueError, match="text_temperature"):
        create_backend("embedded", text_temperature=-1)
    with pytest.raises(ValueError, match="extra"):
        create_backend("embedded", no_such_setting=1)
    with pytest.raises(ValueError, match="path"):
        create_backend("replay")


def test_choosing_instant_does_not_import_the_embedded_models() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from act.inference.registry import create_backend; "
        "create_backend('instant'); "
        "print('sentence_transformers' in sys.modules, 'torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.split() == ["False", "False"]
