"""The inference records: cached derived values and conversion to the protocol."""

from __future__ import annotations

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
    annotation_from_proto,
    annotation_to_proto,
    criticism_from_proto,
    criticism_to_proto,
    item_from_proto,
    item_to_proto,
)
from act.v1 import bus_pb2


def _annotation() -> Annotation:
    return Annotation(
        item_id="a-1",
        label="spam",
        label_probabilities={"spam": 0.75, "ham": 0.25},
        rationale="a link and a price",
        stated_confidence=0.8,
        model=ModelRef(backend="vllm", model="qwen", revision="r1"),
        prompt=PromptRef(strategy_id="cot", version="v2"),
        schema_id="moderation",
        schema_version=2,
        usage=Usage(prompt_tokens=120, completion_tokens=7, latency_seconds=0.25),
    )


def _criticism() -> Criticism:
    return Criticism(
        item_id="a-1",
        label="spam",
        error_probability=0.125,
        rationale="the price is a quote",
        model=ModelRef(backend="vllm", model="qwen-critic", revision="r3"),
        prompt=PromptRef(strategy_id="direct", version="v1"),
        usage=Usage(prompt_tokens=80, completion_tokens=3, latency_seconds=0.5),
    )


def test_content_hash_follows_copies_that_change_the_content() -> None:
    item = Item(item_id="a-1", text="hello", question="spam?")
    original = item.content_hash()
    assert item.model_copy().content_hash() == original
    changed = item.model_copy(update={"text": "goodbye"})
    fresh = Item(item_id="a-1", text="goodbye", question="spam?")
    assert changed.content_hash() == fresh.content_hash()
    assert changed.content_hash() != original
    # The id is not content; the cached value is not part of equality or of the dump.
    assert item.model_copy(update={"item_id": "a-2"}).content_hash() == original
    assert item == Item(item_id="a-1", text="hello", question="spam?")
    assert "_content_hash" not in item.model_dump()
    assert [name for name, _ in item] == list(Item.model_fields)


def test_label_names_follow_copies_that_change_the_labels() -> None:
    schema = LabelSchema(schema_id="s", labels=(Label(name="a"), Label(name="b")))
    assert schema.label_names == ("a", "b")
    same = LabelSchema(schema_id="s", labels=(Label(name="a"), Label(name="b")))
    assert schema == same and hash(schema) == hash(same)  # the cache is not part of either
    relabelled = schema.model_copy(update={"labels": (Label(name="x"), Label(name="y"))})
    assert relabelled.label_names == ("x", "y")
    assert schema.label_names == ("a", "b")


def test_records_filled_inside_a_decision_equal_standalone_conversions() -> None:
    item = Item(
        item_id="a-1",
        text="buy now",
        images=(Image(data=b"\x89PNG", mime_type="image/png"), Image(uri="s3://b/k.jpg")),
        question="spam?",
        metadata={"source": "test"},
    )
    annotation, criticism = _annotation(), _criticism()
    decision = bus_pb2.Decision(item_id="a-1")
    item_to_proto(item, decision.item)
    annotation_to_proto(annotation, decision.annotation)
    criticism_to_proto(criticism, decision.criticism)

    assert decision.item == item_to_proto(item)
    assert item_from_proto(decision.item) == item
    assert decision.item.content_hash == item.content_hash()
    assert annotation_from_proto(decision.annotation) == annotation
    assert criticism_from_proto(decision.criticism) == criticism
    assert decision.annotation.annotated_time.seconds > 0
    assert decision.criticism.criticized_time.seconds > 0
    # Zero usage is still present, as the keyword-built messages had it.
    bare = annotation.model_copy(update={"usage": Usage()})
    assert annotation_to_proto(bare).HasField("usage")
