"""`LLMBackend`: annotation and criticism by prompting a language model (`ChatModel`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from act.inference import prompts
from act.inference.base import (
    ANNOTATION_STRATEGIES,
    CRITICISM_STRATEGIES,
    AnnotationOutcome,
    Backend,
    ChatModel,
    ChatRequest,
    ChatResponse,
    CriticismOutcome,
    ScoreRequest,
    ScoreResponse,
)
from act.inference.errors import InferenceError, InvalidInput
from act.inference.types import (
    Annotation,
    Criticism,
    Item,
    LabelSchema,
    ModelRef,
    PromptRef,
    Usage,
)


class LLMBackend(Backend):
    """Runs the prompt strategies of `act.inference.prompts` on a chat model, a batch at a time."""

    annotation_strategies = ANNOTATION_STRATEGIES

    def __init__(self, chat: ChatModel) -> None:
        self.chat = chat
        self.name = chat.model.backend
        self.supports_images = chat.supports_images
        self.supports_logprobs = chat.supports_logprobs
        unsupported = set()
        if not chat.supports_scoring:
            unsupported.add("perplexity")
        if not chat.supports_logprobs:
            unsupported.add("yes-no-logprob")
        self.criticism_strategies = tuple(s for s in CRITICISM_STRATEGIES if s not in unsupported)

    @property
    def model(self) -> ModelRef:
        return self.chat.model

    def prompt_ref(self, task: Literal["annotation", "criticism"], strategy: str) -> PromptRef:
        return prompts.prompt_ref(strategy)

    async def annotate(
        self, items: Sequence[Item], schema: LabelSchema, strategy: str
    ) -> list[AnnotationOutcome]:
        self.check_annotation_strategy(strategy)
        outcomes: list[AnnotationOutcome | None] = [None] * len(items)
        requests: list[ChatRequest] = []
        positions: list[int] = []
        for position, item in enumerate(items):
            try:
                self._check_images(item)
                requests.append(prompts.annotation_request(strategy, item, schema))
                positions.append(position)
            except InferenceError as error:
                outcomes[position] = error.for_item(item.item_id)
        responses = await self.chat.complete(requests) if requests else []
        for position, response in zip(positions, responses, strict=True):
            item = items[position]
            outcomes[position] = self._annotation(item, schema, strategy, response)
        return [outcome for outcome in outcomes if outcome is not None]

    async def criticize(
        self,
        annotated: Sequence[tuple[Item, Annotation]],
        schema: LabelSchema,
        strategy: str,
    ) -> list[CriticismOutcome]:
        self.check_criticism_strategy(strategy)
        outcomes: list[CriticismOutcome | None] = [None] * len(annotated)
        chat_requests: list[tuple[int, ChatRequest]] = []
        score_requests: list[tuple[int, ScoreRequest]] = []
        for position, (item, annotation) in enumerate(annotated):
            try:
                self._check_images(item)
                schema.check_label(annotation.label)
                request = prompts.criticism_request(strategy, item, annotation, schema)
            except ValueError as error:
                outcomes[position] = InvalidInput(str(error), item_id=item.item_id)
                continue
            except InferenceError as error:
                outcomes[position] = error.for_item(item.item_id)
                continue
            if isinstance(request, ChatRequest):
                chat_requests.append((position, request))
            elif isinstance(request, ScoreRequest):
                score_requests.append((position, request))
            else:
                outcomes[position] = self._criticism(annotated[position], strategy, None)
        if chat_requests:
            answers = await self.chat.complete([request for _, request in chat_requests])
            for (position, _), answer in zip(chat_requests, answers, strict=True):
                outcomes[position] = self._criticism(annotated[position], strategy, answer)
        if score_requests:
            scores = await self.chat.score([request for _, request in score_requests])
            for (position, _), score in zip(score_requests, scores, strict=True):
                outcomes[position] = self._criticism(annotated[position], strategy, score)
        return [outcome for outcome in outcomes if outcome is not None]

    async def aclose(self) -> None:
        await self.chat.aclose()

    def _check_images(self, item: Item) -> None:
        if item.images and not self.supports_images:
            raise InvalidInput(
                f"item {item.item_id!r} has images, but model {self.model.model!r} "
                f"({self.model.backend}) reads text only",
                item_id=item.item_id,
            )

    def _annotation(
        self,
        item: Item,
        schema: LabelSchema,
        strategy: str,
        response: ChatResponse | InferenceError,
    ) -> AnnotationOutcome:
        if isinstance(response, InferenceError):
            return response.for_item(item.item_id)
        try:
            label, distribution, rationale, confidence = prompts.parse_annotation(
                strategy, response, schema
            )
        except InferenceError as error:
            return error.for_item(item.item_id)
        return Annotation(
            item_id=item.item_id,
            label=label,
            label_probabilities=distribution,
            rationale=rationale,
            stated_confidence=confidence,
            model=self.model,
            prompt=prompts.prompt_ref(strategy),
            schema_id=schema.schema_id,
            schema_version=schema.version,
            usage=response.usage,
        )

    def _criticism(
        self,
        pair: tuple[Item, Annotation],
        strategy: str,
        response: ChatResponse | ScoreResponse | InferenceError | None,
    ) -> CriticismOutcome:
        item, annotation = pair
        if isinstance(response, InferenceError):
            return response.for_item(item.item_id)
        try:
            eps, rationale = prompts.parse_criticism(strategy, response, annotation)
        except InferenceError as error:
            return error.for_item(item.item_id)
        return Criticism(
            item_id=item.item_id,
            label=annotation.label,
            error_probability=eps,
            rationale=rationale,
            model=self.model,
            prompt=prompts.prompt_ref(strategy),
            usage=response.usage if response is not None else Usage(),
        )
