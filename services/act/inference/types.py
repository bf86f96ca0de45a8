"""Typed records of the inference layer, validated on the way in, convertible to the protocol.

Items, label schemas, annotations and criticisms are pydantic models here (checked once, at
the boundary) and protobuf messages on the wire (`act.v1.types_pb2`); `to_proto` and
`from_proto` convert between the two, so the services stay thin adapters.
"""

from __future__ import annotations

import functools
import hashlib
import re
import time
from collections.abc import Mapping
from typing import Any, Self

from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from act.v1 import types_pb2

MAX_TEXT_CHARS = 100_000
MAX_IMAGE_BYTES = 8 * 1024 * 1024
# Control characters (Unicode category Cc) other than tab and newlines, and lone surrogates.
_INVALID_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        copied = super().model_copy(update=update, deep=deep)
        if update:  # cached properties derive from the fields: drop them, they are recomputed
            for name in _cached_properties(type(self)):
                copied.__dict__.pop(name, None)
        return copied


@functools.cache
def _cached_properties(cls: type) -> tuple[str, ...]:
    return tuple(
        name
        for klass in cls.__mro__
        for name, value in vars(klass).items()
        if isinstance(value, functools.cached_property)
    )


class Image(_Record):
    """An image, inline (`data`) or by reference (`uri`)."""

    data: bytes = b""
    uri: str = ""
    mime_type: str = ""

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if bool(self.data) == bool(self.uri):
            raise ValueError("an image needs exactly one of inline data or a uri")
        if len(self.data) > MAX_IMAGE_BYTES:
            raise ValueError(
                f"image of {len(self.data)} bytes exceeds the limit of {MAX_IMAGE_BYTES} bytes"
            )
        return self


class Item(_Record):
    """What is annotated: text and/or images, with an optional question (VQA)."""

    item_id: str = Field(min_length=1, max_length=512)
    text: str = Field(default="", max_length=MAX_TEXT_CHARS)
    images: tuple[Image, ...] = ()
    question: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    metadata: dict[str, str] = Field(default_factory=dict)

    @field_validator("text", "question")
    @classmethod
    def _valid_text(cls, value: str | None) -> str | None:
        if value is None:
            return value
        bad = _INVALID_CHARS.findall(value)
        if bad:
            raise ValueError(
                f"text contains {len(bad)} invalid character(s) (first: {bad[0]!r}): "
                "control characters and unpaired surrogates are not accepted"
            )
        return value

    @model_validator(mode="after")
    def _has_content(self) -> Self:
        if not self.text.strip() and not self.images:
            raise ValueError(f"item {self.item_id!r} is empty: it needs text or an image")
        return self

    def content_hash(self) -> str:
        """SHA-256 over the content (not the id): the key of recorded model outputs."""
        return self._content_hash

    # Cached: the annotator, the criticizer and the decision each need it (the item is frozen).
    @functools.cached_property
    def _content_hash(self) -> str:
        digest = hashlib.sha256()
        for part in (self.text, self.question or ""):
            digest.update(part.encode("utf-8", "surrogatepass"))
            digest.update(b"\0")
        for image in self.images:
            digest.update(hashlib.sha256(image.data or image.uri.encode()).digest())
        return digest.hexdigest()


class Label(_Record):
    """One class of the schema; the description is what zero-shot models compare against."""

    name: str = Field(min_length=1, max_length=200)
    description: str = ""


class FewShotExample(_Record):
    """A labelled example shown to the model (few-shot prompting or few-shot fitting)."""

    item: Item
    label: str
    rationale: str = ""


class LabelSchema(_Record):
    """The labelling task: its labels, instructions and examples, versioned."""

    schema_id: str = Field(min_length=1, max_length=200)
    version: int = Field(default=1, ge=1)
    labels: tuple[Label, ...]
    instructions: str = ""
    examples: tuple[FewShotExample, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        names = [label.name for label in self.labels]
        if len(names) < 2:
            raise ValueError(f"schema {self.schema_id!r} needs at least two labels")
        if len(set(names)) != len(names):
            raise ValueError(f"schema {self.schema_id!r} repeats label names")
        unknown = sorted({example.label for example in self.examples} - set(names))
        if unknown:
            raise ValueError(
                f"schema {self.schema_id!r} has examples with unknown labels {unknown}"
            )
        return self

    @property
    def label_names(self) -> tuple[str, ...]:
        return self._label_names

    # Cached: backends check every item's label against it (the schema is frozen).
    @functools.cached_property
    def _label_names(self) -> tuple[str, ...]:
        return tuple(label.name for label in self.labels)

    def check_label(self, label: str) -> str:
        """The label if it is in the schema, else ValueError naming the schema's labels."""
        if label not in self.label_names:
            raise ValueError(
                f"label {label!r} is not in schema {self.schema_id!r} v{self.version} "
                f"(labels: {list(self.label_names)})"
            )
        return label


# Provenance is stored with every decision (act.review.tables uses these as column widths):
# a backend whose names do not fit fails when it describes itself, not at every record.
BACKEND_NAME_MAX_CHARS = 64
MODEL_NAME_MAX_CHARS = 500
REVISION_MAX_CHARS = 200
PROMPT_STRATEGY_MAX_CHARS = 200
PROMPT_VERSION_MAX_CHARS = 64


class ModelRef(_Record):
    backend: str = Field(max_length=BACKEND_NAME_MAX_CHARS)
    model: str = Field(max_length=MODEL_NAME_MAX_CHARS)
    revision: str = Field(default="", max_length=REVISION_MAX_CHARS)


class PromptRef(_Record):
    strategy_id: str = Field(max_length=PROMPT_STRATEGY_MAX_CHARS)
    version: str = Field(max_length=PROMPT_VERSION_MAX_CHARS)


class Usage(_Record):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_seconds: float = 0.0


class Annotation(_Record):
    """The annotator's label y_m for one item, with its distribution when the model gives one."""

    item_id: str
    label: str
    label_probabilities: dict[str, float] = Field(default_factory=dict)
    rationale: str = ""
    stated_confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    model: ModelRef
    prompt: PromptRef
    schema_id: str
    schema_version: int
    usage: Usage = Usage()


class Criticism(_Record):
    """The criticizer's eps = P(label is wrong) for one annotated item."""

    item_id: str
    label: str
    error_probability: float = Field(ge=0.0, le=1.0)
    rationale: str = ""
    model: ModelRef
    prompt: PromptRef
    usage: Usage = Usage()


# ----------------------------------------------------------------------------- protocol


def item_from_proto(message: types_pb2.Item) -> Item:
    # Empty repeated and map fields are tested first: copying an empty one costs a microsecond.
    return Item(
        item_id=message.item_id,
        text=message.text,
        images=tuple(
            Image(data=image.data, uri=image.uri, mime_type=image.mime_type)
            for image in message.images
        )
        if message.images
        else (),
        question=message.question if message.HasField("question") else None,
        metadata=dict(message.metadata) if message.metadata else {},
    )


def item_to_proto(item: Item, message: types_pb2.Item | None = None) -> types_pb2.Item:
    """The item as a message; with `message` (e.g. a field of an enclosing message, empty),
    fills that one in place instead of building one to be copied."""
    message = types_pb2.Item() if message is None else message
    message.item_id = item.item_id
    message.text = item.text
    if item.metadata:
        message.metadata.update(item.metadata)
    for image in item.images:
        if image.data:
            message.images.add(data=image.data, mime_type=image.mime_type)
        else:
            message.images.add(uri=image.uri, mime_type=image.mime_type)
    if item.question is not None:
        message.question = item.question
    message.content_hash = item.content_hash()
    return message


def schema_from_proto(message: types_pb2.LabelSchema) -> LabelSchema:
    return LabelSchema(
        schema_id=message.schema_id,
        version=message.version or 1,
        labels=tuple(
            Label(name=label.name, description=label.description) for label in message.labels
        ),
        instructions=message.instructions,
        examples=tuple(
            FewShotExample(
                item=item_from_proto(example.item), label=example.label, rationale=example.rationale
            )
            for example in message.examples
        ),
    )


def schema_to_proto(schema: LabelSchema) -> types_pb2.LabelSchema:
    message = types_pb2.LabelSchema(
        schema_id=schema.schema_id, version=schema.version, instructions=schema.instructions
    )
    for label in schema.labels:
        message.labels.add(name=label.name, description=label.description)
    for example in schema.examples:
        message.examples.add(
            item=item_to_proto(example.item), label=example.label, rationale=example.rationale
        )
    return message


# Sub-messages are filled field by field in place: building them from keyword dicts and
# copying them into the enclosing message cost twice as much (a decision holds six).


def _fill_model(message: types_pb2.ModelRef, model: ModelRef) -> None:
    message.backend = model.backend
    message.model = model.model
    message.revision = model.revision


def _fill_prompt(message: types_pb2.PromptRef, prompt: PromptRef) -> None:
    message.strategy_id = prompt.strategy_id
    message.version = prompt.version


def _fill_usage(message: types_pb2.Usage, usage: Usage) -> None:
    message.prompt_tokens = usage.prompt_tokens
    message.completion_tokens = usage.completion_tokens
    message.latency_seconds = usage.latency_seconds


def _now(timestamp: Timestamp) -> None:
    """Sets `timestamp` to now, to the microsecond as `Timestamp.GetCurrentTime` does, without
    the datetime round trip that makes that cost three times as much."""
    timestamp.FromMicroseconds(time.time_ns() // 1000)


def _usage_from_proto(message: types_pb2.Usage) -> Usage:
    return Usage(
        prompt_tokens=message.prompt_tokens,
        completion_tokens=message.completion_tokens,
        latency_seconds=message.latency_seconds,
    )


def annotation_to_proto(
    annotation: Annotation, message: types_pb2.Annotation | None = None
) -> types_pb2.Annotation:
    """The annotation as a message (stamped now); `message`: fill that one, as `item_to_proto`."""
    message = types_pb2.Annotation() if message is None else message
    message.item_id = annotation.item_id
    message.label = annotation.label
    message.rationale = annotation.rationale
    _fill_model(message.model, annotation.model)
    _fill_prompt(message.prompt, annotation.prompt)
    message.schema_id = annotation.schema_id
    message.schema_version = annotation.schema_version
    _fill_usage(message.usage, annotation.usage)
    for label, probability in annotation.label_probabilities.items():
        message.distribution.add(label=label, probability=probability)
    if annotation.stated_confidence is not None:
        message.stated_confidence = annotation.stated_confidence
    _now(message.annotated_time)
    return message


def annotation_from_proto(message: types_pb2.Annotation) -> Annotation:
    return Annotation(
        item_id=message.item_id,
        label=message.label,
        label_probabilities={score.label: score.probability for score in message.distribution},
        rationale=message.rationale,
        stated_confidence=(
            message.stated_confidence if message.HasField("stated_confidence") else None
        ),
        model=ModelRef(
            backend=message.model.backend,
            model=message.model.model,
            revision=message.model.revision,
        ),
        prompt=PromptRef(strategy_id=message.prompt.strategy_id, version=message.prompt.version),
        schema_id=message.schema_id,
        schema_version=message.schema_version,
        usage=_usage_from_proto(message.usage),
    )


def criticism_to_proto(
    criticism: Criticism, message: types_pb2.Criticism | None = None
) -> types_pb2.Criticism:
    """The criticism as a message (stamped now); `message`: fill that one, as `item_to_proto`."""
    message = types_pb2.Criticism() if message is None else message
    message.item_id = criticism.item_id
    message.label = criticism.label
    message.error_probability = criticism.error_probability
    message.rationale = criticism.rationale
    _fill_model(message.model, criticism.model)
    _fill_prompt(message.prompt, criticism.prompt)
    _fill_usage(message.usage, criticism.usage)
    _now(message.criticized_time)
    return message


def criticism_from_proto(message: types_pb2.Criticism) -> Criticism:
    return Criticism(
        item_id=message.item_id,
        label=message.label,
        error_probability=message.error_probability,
        rationale=message.rationale,
        model=ModelRef(
            backend=message.model.backend,
            model=message.model.model,
            revision=message.model.revision,
        ),
        prompt=PromptRef(strategy_id=message.prompt.strategy_id, version=message.prompt.version),
        usage=_usage_from_proto(message.usage),
    )
