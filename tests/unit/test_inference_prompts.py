"""Prompt strategies through LLMBackend: requests built, answers parsed, bad answers refused.

The chat model here is a scripted stand-in for the interface (the real openai, hf and vllm
models have their own tests); what is checked is the strategies' own logic.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Sequence

import pytest

from act.inference.base import (
    ChatModel,
    ChatRequest,
    ChatResponse,
    ScoreRequest,
    ScoreResponse,
    TokenLogprob,
)
from act.inference.errors import (
    InferenceError,
    InvalidInput,
    OutOfSchemaLabel,
    UnparsableOutput,
    UnsupportedStrategy,
)
from act.inference.llm import LLMBackend
from act.inference.prompts import GRADES
from act.inference.types import (
    Annotation,
    FewShotExample,
    Image,
    Item,
    Label,
    LabelSchema,
    ModelRef,
    PromptRef,
)

SCHEMA = LabelSchema(
    schema_id="moderation",
    labels=(Label(name="safe", description="fine"), Label(name="spam", description="ads")),
    instructions="Moderate the post.",
    examples=(FewShotExample(item=Item(item_id="ex", text="buy now"), label="spam"),),
)
ITEM = Item(item_id="i1", text="hello friends")


class ScriptedChat(ChatModel):
    """Answers each request with `answer(request)`; records what it was asked."""

    def __init__(
        self,
        answer: Callable[[ChatRequest], ChatResponse | InferenceError],
        *,
        logprobs: bool = True,
        scoring: bool = False,
    ) -> None:
        self.answer = answer
        self.supports_logprobs = logprobs
        self.supports_scoring = scoring
        self.requests: list[ChatRequest | ScoreRequest] = []

    @property
    def model(self) -> ModelRef:
        return ModelRef(backend="scripted", model="test")

    async def complete(
        self, requests: Sequence[ChatRequest]
    ) -> list[ChatResponse | InferenceError]:
        self.requests.extend(requests)
        return [self.answer(request) for request in requests]

    async def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResponse | InferenceError]:
        self.requests.extend(requests)
        return [ScoreResponse(total_logprob=-2.0 * 4, n_tokens=4) for _ in requests]


def _annotation(**changes: object) -> Annotation:
    base = Annotation(
        item_id="i1",
        label="safe",
        rationale="a friendly greeting",
        stated_confidence=0.8,
        model=ModelRef(backend="scripted", model="annotator"),
        prompt=PromptRef(strategy_id="cot", version="1"),
        schema_id="moderation",
        schema_version=1,
    )
    return base.model_copy(update=changes)


def _text(text: str) -> Callable[[ChatRequest], ChatResponse]:
    return lambda request: ChatResponse(text=text)


def test_direct_annotation_restricts_the_answer_to_the_labels_and_puts_the_fixed_part_first():
    chat = ScriptedChat(
        lambda r: ChatResponse(text="spam", choice_probabilities={"safe": 0.3, "spam": 0.7})
    )
    [annotation] = asyncio.run(LLMBackend(chat).annotate([ITEM], SCHEMA, "direct"))
    request = chat.requests[0]
    assert isinstance(request, ChatRequest)
    assert request.choices == ("safe", "spam")
    assert [m.role for m in request.messages] == ["system", "user", "assistant", "user"]
    assert "spam: ads" in request.messages[0].text
    assert request.messages[-1].text.endswith("hello friends")
    assert isinstance(annotation, Annotation)
    assert (annotation.label, annotation.stated_confidence) == ("spam", 0.7)
    assert annotation.prompt == PromptRef(strategy_id="direct", version="1")


def test_out_of_schema_and_unparsable_answers_are_errors_with_the_raw_text_per_item():
    answers = iter(["maybe spam", "safe"])
    chat = ScriptedChat(lambda r: ChatResponse(text=next(answers)))
    items = [ITEM, Item(item_id="i2", text="another")]
    first, second = asyncio.run(LLMBackend(chat).annotate(items, SCHEMA, "direct"))
    assert isinstance(first, OutOfSchemaLabel)
    assert (first.item_id, first.detail) == ("i1", "maybe spam")
    assert isinstance(second, Annotation) and second.label == "safe"

    chat = ScriptedChat(_text("{not json"))
    [error] = asyncio.run(LLMBackend(chat).annotate([ITEM], SCHEMA, "cot"))
    assert isinstance(error, UnparsableOutput) and error.detail == "{not json"


def test_cot_annotation_reads_reasoning_label_and_confidence():
    answer = json.dumps({"reasoning": "greeting", "label": "safe", "confidence": 0.9})
    chat = ScriptedChat(_text(answer))
    [annotation] = asyncio.run(LLMBackend(chat).annotate([ITEM], SCHEMA, "cot"))
    assert isinstance(annotation, Annotation)
    assert (annotation.label, annotation.rationale, annotation.stated_confidence) == (
        "safe",
        "greeting",
        0.9,
    )
    request = chat.requests[0]
    assert request.json_schema["properties"]["label"]["enum"] == ["safe", "spam"]


@pytest.mark.parametrize("strategy", ["direct", "cot", "devil"])
def test_verbal_criticism_reads_the_error_probability(strategy: str):
    chat = ScriptedChat(_text(json.dumps({"reasoning": "r", "error_probability": 0.35})))
    [criticism] = asyncio.run(LLMBackend(chat).criticize([(ITEM, _annotation())], SCHEMA, strategy))
    assert criticism.error_probability == 0.35
    assert criticism.prompt.strategy_id == strategy
    prompt_text = chat.requests[0].messages[-1].text
    assert "Proposed label: safe" in prompt_text
    assert ("a friendly greeting" in prompt_text) == (strategy != "direct")


@pytest.mark.parametrize(
    "answer", ['{"error_probability": "high"}', '{"error_probability": 1.5}', "{}", "0.3"]
)
def test_a_verbal_answer_that_is_not_a_probability_is_an_error(answer: str):
    chat = ScriptedChat(_text(answer))
    [error] = asyncio.run(LLMBackend(chat).criticize([(ITEM, _annotation())], SCHEMA, "direct"))
    assert isinstance(error, UnparsableOutput)
    assert error.detail == answer


def test_graded_criticism_maps_grades_and_takes_the_expectation_of_a_distribution():
    chat = ScriptedChat(_text("probably wrong"))
    [criticism] = asyncio.run(LLMBackend(chat).criticize([(ITEM, _annotation())], SCHEMA, "graded"))
    assert criticism.error_probability == GRADES["probably wrong"]
    assert chat.requests[0].choices == tuple(GRADES)

    scores = {"certainly correct": 0.5, "certainly wrong": 0.5}
    chat = ScriptedChat(lambda r: ChatResponse(text="unsure", choice_probabilities=scores))
    [criticism] = asyncio.run(LLMBackend(chat).criticize([(ITEM, _annotation())], SCHEMA, "graded"))
    assert criticism.error_probability == pytest.approx(0.5 * 0.02 + 0.5 * 0.98)

    chat = ScriptedChat(_text("no idea"))
    [error] = asyncio.run(LLMBackend(chat).criticize([(ITEM, _annotation())], SCHEMA, "graded"))
    assert isinstance(error, UnparsableOutput)


def test_yes_no_logprob_normalises_p_yes_over_yes_and_no():
    first = TokenLogprob(
        token="no", logprob=math.log(0.6), top={"Yes": math.log(0.3), "maybe": math.log(0.1)}
    )
    chat = ScriptedChat(lambda r: ChatResponse(text="no", tokens=(first,)))
    [criticism] = asyncio.run(
        LLMBackend(chat).criticize([(ITEM, _annotation())], SCHEMA, "yes-no-logprob")
    )
    assert criticism.error_probability == pytest.approx(0.3 / 0.9)

    chat = ScriptedChat(_text("no"))  # no logprobs returned
    [error] = asyncio.run(
        LLMBackend(chat).criticize([(ITEM, _annotation())], SCHEMA, "yes-no-logprob")
    )
    assert isinstance(error, UnparsableOutput)


def test_perplexity_scores_the_rationale_and_needs_one():
    chat = ScriptedChat(_text(""), scoring=True)
    [criticism] = asyncio.run(
        LLMBackend(chat).criticize([(ITEM, _annotation())], SCHEMA, "perplexity")
    )
    assert criticism.error_probability == pytest.approx(1 - 1 / math.exp(2.0))
    assert chat.requests[0].continuation == "a friendly greeting"
    [error] = asyncio.run(
        LLMBackend(chat).criticize([(ITEM, _annotation(rationale=""))], SCHEMA, "perplexity")
    )
    assert isinstance(error, InvalidInput)


def test_self_confidence_uses_the_annotators_confidence_without_a_model_call():
    chat = ScriptedChat(_text("unused"))
    [criticism, error] = asyncio.run(
        LLMBackend(chat).criticize(
            [(ITEM, _annotation()), (ITEM, _annotation(stated_confidence=None))],
            SCHEMA,
            "self-confidence",
        )
    )
    assert criticism.error_probability == pytest.approx(0.2)
    assert isinstance(error, InvalidInput)
    assert chat.requests == []


def test_strategies_the_model_cannot_run_and_unknown_ones_are_refused():
    backend = LLMBackend(ScriptedChat(_text(""), logprobs=False, scoring=False))
    with pytest.raises(UnsupportedStrategy, match="perplexity"):
        asyncio.run(backend.criticize([(ITEM, _annotation())], SCHEMA, "perplexity"))
    with pytest.raises(UnsupportedStrategy, match="yes-no-logprob"):
        asyncio.run(backend.criticize([(ITEM, _annotation())], SCHEMA, "yes-no-logprob"))
    with pytest.raises(InvalidInput, match="unknown prompt strategy"):
        asyncio.run(backend.annotate([ITEM], SCHEMA, "telepathy"))


def test_images_for_a_text_only_model_and_labels_outside_the_schema_fail_per_item():
    chat = ScriptedChat(_text("safe"))
    image_item = Item(item_id="img", images=(Image(data=b"png", mime_type="image/png"),))
    error, annotation = asyncio.run(LLMBackend(chat).annotate([image_item, ITEM], SCHEMA, "direct"))
    assert isinstance(error, InvalidInput) and error.item_id == "img"
    assert isinstance(annotation, Annotation)

    chat = ScriptedChat(_text(json.dumps({"error_probability": 0.1})))
    [error] = asyncio.run(
        LLMBackend(chat).criticize([(ITEM, _annotation(label="eggs"))], SCHEMA, "direct")
    )
    assert isinstance(error, InvalidInput) and "eggs" in error.message
