"""Annotate and criticize micro-batches of items, with bounded concurrency.

The annotator and the criticizer are anything with the batch methods of `Backend`: an
in-process backend (the embedded single-process mode) or the gRPC clients of
`act.client` (the microservices), which return per-item errors the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from act.inference.errors import InferenceError
from act.inference.types import Annotation, Criticism, Item, LabelSchema

T = TypeVar("T")


class Annotates(Protocol):
    async def annotate(
        self, items: Sequence[Item], schema: LabelSchema, strategy: str
    ) -> Sequence[Annotation | InferenceError]: ...


class Criticizes(Protocol):
    async def criticize(
        self,
        annotated: Sequence[tuple[Item, Annotation]],
        schema: LabelSchema,
        strategy: str,
    ) -> Sequence[Criticism | InferenceError]: ...


@dataclass(frozen=True)
class Scored:
    item: Item
    annotation: Annotation
    criticism: Criticism


@dataclass(frozen=True)
class Failed:
    """An item that could not be scored: it goes to the dead-letter queue with the reason."""

    item: Item
    stage: str
    error: InferenceError

    @property
    def reason(self) -> str:
        return f"{self.stage} failed ({self.error.code.name}): {self.error.message}"


class Scorer:
    """Runs annotation then criticism for micro-batches, at most `max_concurrency` at once."""

    def __init__(
        self,
        annotator: Annotates,
        criticizer: Criticizes,
        schema: LabelSchema,
        *,
        annotation_strategy: str = "direct",
        criticism_strategy: str = "direct",
        max_concurrency: int = 4,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.annotator = annotator
        self.criticizer = criticizer
        self.schema = schema
        self.annotation_strategy = annotation_strategy
        self.criticism_strategy = criticism_strategy
        self._slots = asyncio.Semaphore(max_concurrency)

    async def score(self, items: Sequence[Item]) -> list[Scored | Failed]:
        """One outcome per item, in order. A whole-batch failure fails each of its items."""
        async with self._slots:
            annotations = await self._call(
                "annotation",
                items,
                self.annotator.annotate(items, self.schema, self.annotation_strategy),
            )
            outcomes: list[Scored | Failed | None] = [None] * len(items)
            annotated: list[tuple[Item, Annotation]] = []
            positions: list[int] = []
            for position, (item, annotation) in enumerate(zip(items, annotations, strict=True)):
                if isinstance(annotation, InferenceError):
                    outcomes[position] = Failed(item, "annotation", annotation)
                else:
                    annotated.append((item, annotation))
                    positions.append(position)
            if annotated:
                criticisms = await self._call(
                    "criticism",
                    [item for item, _ in annotated],
                    self.criticizer.criticize(annotated, self.schema, self.criticism_strategy),
                )
                for position, (item, annotation), criticism in zip(
                    positions, annotated, criticisms, strict=True
                ):
                    if isinstance(criticism, InferenceError):
                        outcomes[position] = Failed(item, "criticism", criticism)
                    else:
                        outcomes[position] = Scored(item, annotation, criticism)
        return [outcome for outcome in outcomes if outcome is not None]

    async def score_many(self, batches: Sequence[Sequence[Item]]) -> list[list[Scored | Failed]]:
        """Several micro-batches concurrently (bounded), results in batch order."""
        return list(await asyncio.gather(*(self.score(batch) for batch in batches)))

    @staticmethod
    async def _call(stage: str, items: Sequence[Item], call: Awaitable[Sequence[T]]) -> list[T]:
        try:
            results = list(await call)
        except InferenceError as error:
            return [error.for_item(item.item_id) for item in items]  # type: ignore[misc]
        if len(results) != len(items):
            raise RuntimeError(f"{stage} returned {len(results)} results for {len(items)} items")
        return results
