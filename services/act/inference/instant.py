"""A model-free backend that answers at once, for load tests and plumbing tests.

Label = the schema's label at position (first 64 bits of the item's content hash) mod the
number of labels; eps = the keyed uniform (HMAC-SHA256, `act.core.sampling.keyed_uniform`)
of "<content hash>:<label>" under `seed`, in [0, 1). Both depend on the content only (not
the item id), so the same content always gets the same answers, in any batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from act.core.sampling import Seed, keyed_uniform
from act.inference.base import AnnotationOutcome, Backend, CriticismOutcome
from act.inference.errors import InvalidInput
from act.inference.types import (
    Annotation,
    Criticism,
    Item,
    LabelSchema,
    ModelRef,
    PromptRef,
)

VERSION = "1"
DEFAULT_SEED = "act-instant"


def hash_label(item: Item, schema: LabelSchema) -> str:
    """The label the instant backend gives `item`."""
    labels = schema.label_names
    return labels[int(item.content_hash()[:16], 16) % len(labels)]


class InstantBackend(Backend):
    """Deterministic labels and eps from content hashes; no model, no waiting."""

    name = "instant"
    annotation_strategies = ("direct",)
    criticism_strategies = ("direct",)
    supports_images = True

    def __init__(self, seed: Seed = DEFAULT_SEED) -> None:
        self.seed = seed
        self._model = ModelRef(backend="instant", model="hash", revision=VERSION)

    @property
    def model(self) -> ModelRef:
        return self._model

    def prompt_ref(self, task: Literal["annotation", "criticism"], strategy: str) -> PromptRef:
        return PromptRef(strategy_id=strategy, version=f"instant-{VERSION}")

    async def annotate(
        self, items: Sequence[Item], schema: LabelSchema, strategy: str
    ) -> list[AnnotationOutcome]:
        self.check_annotation_strategy(strategy)
        prompt = self.prompt_ref("annotation", strategy)
        return [
            Annotation(
                item_id=item.item_id,
                label=hash_label(item, schema),
                model=self._model,
                prompt=prompt,
                schema_id=schema.schema_id,
                schema_version=schema.version,
            )
            for item in items
        ]

    async def criticize(
        self,
        annotated: Sequence[tuple[Item, Annotation]],
        schema: LabelSchema,
        strategy: str,
    ) -> list[CriticismOutcome]:
        self.check_criticism_strategy(strategy)
        prompt = self.prompt_ref("criticism", strategy)
        eps = keyed_uniform(
            [f"{item.content_hash()}:{annotation.label}" for item, annotation in annotated],
            self.seed,
        )
        outcomes: list[CriticismOutcome] = []
        for (item, annotation), value in zip(annotated, eps, strict=True):
            if annotation.item_id != item.item_id:
                outcomes.append(
                    InvalidInput(
                        f"item {item.item_id!r}: the annotation is for item {annotation.item_id!r}",
                        item_id=item.item_id,
                    )
                )
            elif annotation.label not in schema.label_names:
                outcomes.append(
                    InvalidInput(
                        f"item {item.item_id!r}: label {annotation.label!r} is not in schema "
                        f"{schema.schema_id!r} v{schema.version} "
                        f"(labels: {list(schema.label_names)})",
                        item_id=item.item_id,
                    )
                )
            else:
                outcomes.append(
                    Criticism(
                        item_id=item.item_id,
                        label=annotation.label,
                        error_probability=float(value),
                        model=self._model,
                        prompt=prompt,
                    )
                )
        return outcomes
