"""Recording and replaying backend outputs (JSONL), around the instant backend.

Coroutines run under `asyncio.run` (no pytest-asyncio).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import grpc
import pytest

from act.inference.cache import (
    RECORD_VERSION,
    RecordingBackend,
    RecordingFileError,
    ReplayBackend,
)
from act.inference.errors import InvalidInput, NotRecorded, UnsupportedStrategy
from act.inference.instant import InstantBackend
from act.inference.types import (
    Annotation,
    Criticism,
    FewShotExample,
    Image,
    Item,
    Label,
    LabelSchema,
    ModelRef,
    PromptRef,
)

SCHEMA = LabelSchema(
    schema_id="toy",
    labels=(Label(name="cat"), Label(name="dog"), Label(name="bird")),
    examples=(FewShotExample(item=Item(item_id="ex", text="meow"), label="cat"),),
)


class CountingInstant(InstantBackend):
    """The instant backend, counting the items it is asked about."""

    def __init__(self, prompt_version: str = "instant-1") -> None:
        super().__init__()
        self.annotated: list[str] = []
        self.criticized: list[str] = []
        self.version = prompt_version

    def prompt_ref(self, task: Literal["annotation", "criticism"], strategy: str) -> PromptRef:
        return PromptRef(strategy_id=strategy, version=self.version)

    async def annotate(self, items: Sequence[Item], schema: LabelSchema, strategy: str) -> list:
        self.annotated.extend(item.item_id for item in items)
        outcomes = await super().annotate(items, schema, strategy)
        return [
            outcome.model_copy(update={"prompt": self.prompt_ref("annotation", strategy)})
            for outcome in outcomes
        ]

    async def criticize(
        self, annotated: Sequence[tuple[Item, Annotation]], schema: LabelSchema, strategy: str
    ) -> list:
        self.criticized.extend(item.item_id for item, _ in annotated)
        return await super().criticize(annotated, schema, strategy)


def _items(n: int, prefix: str = "item") -> list[Item]:
    return [Item(item_id=f"{prefix}-{i}", text=f"message {i}") for i in range(n)]


def _run(coroutine):  # type: ignore[no-untyped-def]
    return asyncio.run(coroutine)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_second_run_is_served_from_the_file_without_calling_the_model(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    items = [*_items(20), Item(item_id="img", images=(Image(data=b"\x89PNG..."),))]

    first_inner = CountingInstant()
    first = RecordingBackend(first_inner, path)
    annotations = _run(first.annotate(items, SCHEMA, "direct"))
    criticisms = _run(first.criticize(list(zip(items, annotations, strict=True)), SCHEMA, "direct"))
    assert len(first_inner.annotated) == len(first_inner.criticized) == 21
    assert (first.hits, first.misses) == (0, 42)
    assert len(_lines(path)) == 42

    second_inner = CountingInstant()
    second = RecordingBackend(second_inner, path)
    assert second.load_report.records == 42 and not second.load_report.truncated_tail
    again = _run(second.annotate(items, SCHEMA, "direct"))
    criticized_again = _run(
        second.criticize(list(zip(items, again, strict=True)), SCHEMA, "direct")
    )
    assert second_inner.annotated == [] and second_inner.criticized == []
    assert (second.hits, second.misses) == (42, 0)
    assert again == annotations and criticized_again == criticisms
    assert len(_lines(path)) == 42  # nothing new to append

    replay = ReplayBackend(path)
    assert replay.model == ModelRef(backend="instant", model="hash", revision="1")
    assert _run(replay.annotate(items, SCHEMA, "direct")) == annotations
    assert (
        _run(replay.criticize(list(zip(items, annotations, strict=True)), SCHEMA, "direct"))
        == criticisms
    )


def test_records_are_versioned_json_lines_keyed_by_model_prompt_schema_and_content(
    tmp_path: Path,
) -> None:
    path = tmp_path / "rec.jsonl"
    backend = RecordingBackend(CountingInstant(), path)
    [item] = _items(1)
    [annotation] = _run(backend.annotate([item], SCHEMA, "direct"))
    _run(backend.criticize([(item, annotation)], SCHEMA, "direct"))
    annotation_line, criticism_line = _lines(path)
    assert annotation_line["v"] == criticism_line["v"] == RECORD_VERSION
    assert annotation_line["key"] == {
        "task": "annotation",
        "backend": "instant",
        "model": "hash",
        "revision": "1",
        "strategy": "direct",
        "prompt_version": "instant-1",
        "schema_id": "toy",
        "schema_version": 1,
        "content_sha256": item.content_hash(),
    }
    assert criticism_line["key"]["label"] == annotation.label
    assert Annotation.model_validate(annotation_line["output"]) == annotation
    assert Criticism.model_validate(criticism_line["output"]).label == annotation.label


def test_same_content_under_another_id_is_a_hit_served_with_that_id(tmp_path: Path) -> None:
    inner = CountingInstant()
    backend = RecordingBackend(inner, tmp_path / "rec.jsonl")
    original = _run(backend.annotate(_items(3, "a"), SCHEMA, "direct"))
    renamed = _run(backend.annotate(_items(3, "b"), SCHEMA, "direct"))
    assert inner.annotated == ["a-0", "a-1", "a-2"]
    assert [a.item_id for a in renamed] == ["b-0", "b-1", "b-2"]
    assert [a.label for a in renamed] == [a.label for a in original]


def test_a_batch_asks_the_model_once_per_distinct_key_and_keeps_its_order(tmp_path: Path) -> None:
    inner = CountingInstant()
    backend = RecordingBackend(inner, tmp_path / "rec.jsonl")
    _run(backend.annotate(_items(2), SCHEMA, "direct"))  # item-0, item-1 recorded
    batch = [
        Item(item_id="x", text="message 5"),
        Item(item_id="item-1", text="message 1"),  # recorded
        Item(item_id="y", text="message 5"),  # same content as x
        Item(item_id="z", text="message 6"),
    ]
    outcomes = _run(backend.annotate(batch, SCHEMA, "direct"))
    assert inner.annotated == ["item-0", "item-1", "x", "z"]
    assert [o.item_id for o in outcomes] == ["x", "item-1", "y", "z"]
    assert outcomes[0].label == outcomes[2].label


def test_a_new_prompt_version_schema_version_or_label_is_a_miss(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    items = _items(4)
    annotations = _run(RecordingBackend(CountingInstant(), path).annotate(items, SCHEMA, "direct"))

    newer_prompt = CountingInstant(prompt_version="instant-2")
    _run(RecordingBackend(newer_prompt, path).annotate(items, SCHEMA, "direct"))
    assert len(newer_prompt.annotated) == 4

    newer_schema = CountingInstant()
    schema_v2 = SCHEMA.model_copy(update={"version": 2})
    _run(RecordingBackend(newer_schema, path).annotate(items, schema_v2, "direct"))
    assert len(newer_schema.annotated) == 4

    critic = CountingInstant()
    recorder = RecordingBackend(critic, path)
    pairs = list(zip(items, annotations, strict=True))
    _run(recorder.criticize(pairs, SCHEMA, "direct"))
    relabelled = [
        (item, a.model_copy(update={"label": "bird" if a.label != "bird" else "cat"}))
        for item, a in pairs
    ]
    _run(recorder.criticize(relabelled, SCHEMA, "direct"))
    assert len(critic.criticized) == 8


def test_errors_are_passed_on_and_not_recorded(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    inner = CountingInstant()
    backend = RecordingBackend(inner, path)
    [item] = _items(1)
    [annotation] = _run(backend.annotate([item], SCHEMA, "direct"))
    bad = annotation.model_copy(update={"label": "fish"})
    [error] = _run(backend.criticize([(item, bad)], SCHEMA, "direct"))
    assert isinstance(error, InvalidInput) and error.item_id == item.item_id
    assert [line["key"]["task"] for line in _lines(path)] == ["annotation"]
    _run(backend.criticize([(item, bad)], SCHEMA, "direct"))
    assert inner.criticized == [item.item_id, item.item_id]  # asked again, not served
    with pytest.raises(UnsupportedStrategy):
        _run(backend.annotate([item], SCHEMA, "cot"))


def test_replay_misses_are_not_found_errors_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    recorded = _items(2)
    _run(RecordingBackend(CountingInstant(), path).annotate(recorded, SCHEMA, "direct"))
    replay = ReplayBackend(path)
    unseen = Item(item_id="new", text="never seen")
    outcomes = _run(replay.annotate([recorded[0], unseen], SCHEMA, "direct"))
    assert isinstance(outcomes[0], Annotation)
    miss = outcomes[1]
    assert isinstance(miss, NotRecorded)
    assert miss.code == grpc.StatusCode.NOT_FOUND
    assert miss.item_id == "new"
    assert unseen.content_hash() in miss.message and '"schema_id":"toy"' in miss.message
    [criticism_miss] = _run(replay.criticize([(recorded[0], outcomes[0])], SCHEMA, "direct"))
    assert isinstance(criticism_miss, NotRecorded)
    with pytest.raises(FileNotFoundError):
        ReplayBackend(tmp_path / "absent.jsonl")


def test_a_truncated_last_line_is_tolerated_reported_and_repaired_on_append(
    tmp_path: Path,
) -> None:
    path = tmp_path / "rec.jsonl"
    items = _items(3)
    _run(RecordingBackend(CountingInstant(), path).annotate(items, SCHEMA, "direct"))
    whole = path.read_bytes()
    cut = whole[: len(whole) - 40]  # a crash in the middle of the last record
    path.write_bytes(cut)

    replay = ReplayBackend(path)
    assert replay.load_report.truncated_tail
    assert replay.load_report.records == 2
    assert replay.load_report.dropped_bytes == len(cut.split(b"\n")[-1])
    assert path.read_bytes() == cut  # replay never writes
    served = _run(replay.annotate(items, SCHEMA, "direct"))
    assert [type(o) for o in served] == [Annotation, Annotation, NotRecorded]

    inner = CountingInstant()
    recorder = RecordingBackend(inner, path)
    assert recorder.load_report.truncated_tail
    _run(recorder.annotate(items, SCHEMA, "direct"))
    assert inner.annotated == ["item-2"]
    assert len(_lines(path)) == 3  # every line parses again
    assert not RecordingBackend(CountingInstant(), path).load_report.truncated_tail


def test_a_complete_last_line_without_newline_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    _run(RecordingBackend(CountingInstant(), path).annotate(_items(2), SCHEMA, "direct"))
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    inner = CountingInstant()
    recorder = RecordingBackend(inner, path)
    assert recorder.load_report.records == 2 and not recorder.load_report.truncated_tail
    _run(recorder.annotate(_items(3), SCHEMA, "direct"))
    assert inner.annotated == ["item-2"]
    assert len(_lines(path)) == 3


def test_a_corrupt_line_in_the_middle_or_an_unknown_version_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    _run(RecordingBackend(CountingInstant(), path).annotate(_items(3), SCHEMA, "direct"))
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "{not json", lines[2]]) + "\n")
    with pytest.raises(RecordingFileError, match=r"rec\.jsonl:2"):
        ReplayBackend(path)
    newer = json.loads(lines[1]) | {"v": RECORD_VERSION + 1}
    path.write_text("\n".join([lines[0], json.dumps(newer), lines[2]]) + "\n")
    with pytest.raises(RecordingFileError, match="version"):
        RecordingBackend(CountingInstant(), path)


def test_replay_chooses_the_model_and_prompt_version_or_asks(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    items = _items(2)
    _run(RecordingBackend(CountingInstant(), path).annotate(items, SCHEMA, "direct"))
    _run(RecordingBackend(CountingInstant("instant-2"), path).annotate(items, SCHEMA, "direct"))
    replay = ReplayBackend(path)
    with pytest.raises(InvalidInput, match="several prompt versions"):
        _run(replay.annotate(items, SCHEMA, "direct"))
    chosen = ReplayBackend(path, prompt_versions={"annotation:direct": "instant-2"})
    outcomes = _run(chosen.annotate(items, SCHEMA, "direct"))
    assert all(isinstance(o, Annotation) and o.prompt.version == "instant-2" for o in outcomes)

    other = RecordingBackend(CountingInstant(), path)
    other.inner._model = ModelRef(backend="instant", model="hash", revision="2")  # type: ignore[attr-defined]
    _run(other.annotate(items, SCHEMA, "direct"))
    with pytest.raises(ValueError, match="several models"):
        ReplayBackend(path)
    pinned = ReplayBackend(
        path,
        model={"backend": "instant", "model": "hash", "revision": "2"},
        prompt_versions={"annotation:direct": "instant-1"},
    )
    assert all(isinstance(o, Annotation) for o in _run(pinned.annotate(items, SCHEMA, "direct")))
