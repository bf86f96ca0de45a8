"""Prompt strategies for language-model annotators and criticizers, versioned.

Each strategy builds a request for a `ChatModel` and parses the answer; the strategy id and
version are recorded on every annotation and criticism (`PromptRef`). The fixed part of
every prompt (task, labels, examples) comes first so that servers can cache its prefix.
An answer that cannot be parsed is an `UnparsableOutput` carrying the raw text, never a
default value; a label outside the schema is an `OutOfSchemaLabel`.

Strategies follow the paper's study (Lin et al., NeurIPS 2025, §3): annotation `direct`
and `cot`; black-box criticism `direct` (a stated error probability), `cot`, `graded`
(multiple choice from "certainly correct" to "certainly wrong"), `devil` (devil's advocate
over the annotator's rationale) and `self-confidence` (the annotator's own confidence);
white-box criticism `yes-no-logprob` (P(yes) to "is this label wrong?", normalised over
yes/no) and `perplexity` (of the annotator's rationale under the criticizer).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

from act.inference.base import (
    ChatRequest,
    ChatResponse,
    Message,
    ScoreRequest,
    ScoreResponse,
)
from act.inference.errors import InvalidInput, OutOfSchemaLabel, UnparsableOutput
from act.inference.types import Annotation, Item, LabelSchema, PromptRef

VERSION = "1"

# Graded answers and the error probability each stands for (our mapping; the paper does
# not publish one). With a distribution over the grades, eps is its expectation.
GRADES: dict[str, float] = {
    "certainly correct": 0.02,
    "probably correct": 0.25,
    "unsure": 0.5,
    "probably wrong": 0.75,
    "certainly wrong": 0.98,
}
YES_NO = ("yes", "no")


def prompt_ref(strategy: str) -> PromptRef:
    return PromptRef(strategy_id=strategy, version=VERSION)


# ----------------------------------------------------------------------------- rendering


def _task_text(schema: LabelSchema) -> str:
    lines = [schema.instructions.strip() or "Classify the item into exactly one label."]
    lines.append("Labels:")
    for label in schema.labels:
        suffix = f": {label.description}" if label.description else ""
        lines.append(f"- {label.name}{suffix}")
    return "\n".join(lines)


def _item_message(item: Item, extra: str = "") -> Message:
    parts = []
    if item.text:
        parts.append(f"Item:\n{item.text}")
    if item.images:
        parts.append(f"The item includes {len(item.images)} image(s).")
    if item.question:
        parts.append(f"Question: {item.question}")
    if extra:
        parts.append(extra)
    return Message(role="user", text="\n\n".join(parts), images=item.images)


def _examples(schema: LabelSchema, answer_json: bool) -> list[Message]:
    """Few-shot examples as user/assistant turns (part of the fixed, cacheable prefix)."""
    turns: list[Message] = []
    for example in schema.examples:
        turns.append(_item_message(example.item))
        if answer_json:
            answer = json.dumps({"reasoning": example.rationale, "label": example.label})
        else:
            answer = example.label
        turns.append(Message(role="assistant", text=answer))
    return turns


def _proposal(annotation: Annotation, with_rationale: bool) -> str:
    text = f"Proposed label: {annotation.label}"
    if with_rationale and annotation.rationale:
        text += f"\nAnnotator's rationale: {annotation.rationale}"
    return text


def _json_object(properties: dict[str, object], required: Sequence[str]) -> dict[str, object]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


_PROBABILITY = {"type": "number", "minimum": 0, "maximum": 1}
_TEXT = {"type": "string"}


# ----------------------------------------------------------------------------- annotation


def annotation_request(strategy: str, item: Item, schema: LabelSchema) -> ChatRequest:
    """The request for `direct` (answer: one label) or `cot` (JSON with reasoning)."""
    if strategy == "direct":
        system = _task_text(schema) + "\nAnswer with the label only."
        return ChatRequest(
            messages=(
                Message(role="system", text=system),
                *_examples(schema, answer_json=False),
                _item_message(item),
            ),
            choices=schema.label_names,
            logprobs=True,
            top_logprobs=min(20, len(schema.labels) + 2),
            max_tokens=32,
        )
    if strategy == "cot":
        system = (
            _task_text(schema)
            + "\nThink step by step, then answer in JSON with your reasoning, the label and "
            "your confidence (0 to 1) that the label is correct."
        )
        schema_json = _json_object(
            {
                "reasoning": _TEXT,
                "label": {"type": "string", "enum": list(schema.label_names)},
                "confidence": _PROBABILITY,
            },
            ("reasoning", "label", "confidence"),
        )
        return ChatRequest(
            messages=(
                Message(role="system", text=system),
                *_examples(schema, answer_json=True),
                _item_message(item),
            ),
            json_schema=schema_json,
            max_tokens=512,
        )
    raise InvalidInput(f"unknown annotation strategy {strategy!r}")


def parse_annotation(
    strategy: str, response: ChatResponse, schema: LabelSchema
) -> tuple[str, dict[str, float], str, float | None]:
    """(label, label distribution, rationale, stated confidence) from the model's answer."""
    if strategy == "direct":
        label = _check_label(response.text.strip(), schema, response.text)
        distribution = dict(response.choice_probabilities or {})
        confidence = distribution.get(label) if distribution else None
        return label, distribution, "", confidence
    answer = _load_json(response.text)
    label = _check_label(str(answer.get("label", "")), schema, response.text)
    confidence = _probability(answer.get("confidence"), "confidence", response.text)
    return label, {}, str(answer.get("reasoning", "")), confidence


# ----------------------------------------------------------------------------- criticism


def criticism_request(
    strategy: str, item: Item, annotation: Annotation, schema: LabelSchema
) -> ChatRequest | ScoreRequest | None:
    """The request for a criticism strategy (None: `self-confidence` needs no model call)."""
    reviewer = (
        _task_text(schema)
        + "\nYou review labels proposed by another annotator and judge whether they are wrong."
    )
    system = Message(role="system", text=reviewer)
    if strategy == "direct":
        ask = "What is the probability (0 to 1) that the proposed label is wrong? Answer in JSON."
        return ChatRequest(
            messages=(system, _item_message(item, _proposal(annotation, False) + "\n" + ask)),
            json_schema=_json_object({"error_probability": _PROBABILITY}, ("error_probability",)),
            max_tokens=64,
        )
    if strategy in ("cot", "devil"):
        if strategy == "cot":
            ask = (
                "Think step by step about whether the proposed label is wrong, then give the "
                "probability (0 to 1) that it is wrong. Answer in JSON."
            )
        else:
            ask = (
                "Play devil's advocate: make the strongest case that the proposed label and "
                "the annotator's rationale are wrong. Then weigh that case fairly and give the "
                "probability (0 to 1) that the label is wrong. Answer in JSON."
            )
        return ChatRequest(
            messages=(system, _item_message(item, _proposal(annotation, True) + "\n" + ask)),
            json_schema=_json_object(
                {"reasoning": _TEXT, "error_probability": _PROBABILITY},
                ("reasoning", "error_probability"),
            ),
            max_tokens=512,
        )
    if strategy == "graded":
        ask = "How likely is the proposed label to be wrong? Answer with one option: " + ", ".join(
            GRADES
        )
        return ChatRequest(
            messages=(system, _item_message(item, _proposal(annotation, True) + "\n" + ask)),
            choices=tuple(GRADES),
            logprobs=True,
            top_logprobs=10,
            max_tokens=16,
        )
    if strategy == "yes-no-logprob":
        ask = "Is the proposed label wrong? Answer yes or no."
        return ChatRequest(
            messages=(system, _item_message(item, _proposal(annotation, False) + "\n" + ask)),
            choices=YES_NO,
            logprobs=True,
            top_logprobs=20,
            max_tokens=4,
        )
    if strategy == "perplexity":
        if not annotation.rationale:
            raise InvalidInput(
                "perplexity criticism needs the annotator's rationale (annotate with 'cot')"
            )
        return ScoreRequest(
            messages=(
                Message(role="system", text=_task_text(schema)),
                _item_message(item, f"Explain why the label is {annotation.label}."),
            ),
            continuation=annotation.rationale,
        )
    if strategy == "self-confidence":
        return None
    raise InvalidInput(f"unknown criticism strategy {strategy!r}")


def parse_criticism(
    strategy: str,
    response: ChatResponse | ScoreResponse | None,
    annotation: Annotation,
) -> tuple[float, str]:
    """(eps, rationale) from the model's answer to `criticism_request`."""
    if strategy == "self-confidence":
        if annotation.stated_confidence is None:
            raise InvalidInput(
                "self-confidence criticism needs the annotator's stated confidence "
                "(annotate with 'cot', or with a model that reports label probabilities)"
            )
        return 1.0 - annotation.stated_confidence, ""
    if isinstance(response, ScoreResponse):
        perplexity = math.exp(-response.total_logprob / response.n_tokens)
        # Perplexity >= 1 maps to [0, 1): a rationale the criticizer finds implausible
        # (high perplexity) signals a likely error.
        return 1.0 - 1.0 / perplexity, f"rationale perplexity {perplexity:.3f}"
    if response is None:
        raise UnparsableOutput(f"strategy {strategy!r} received no model answer")
    if strategy == "graded":
        return _graded_eps(response), ""
    if strategy == "yes-no-logprob":
        return _yes_probability(response), ""
    answer = _load_json(response.text)
    eps = _probability(answer.get("error_probability"), "error_probability", response.text)
    if eps is None:
        raise UnparsableOutput("the answer has no error_probability", detail=response.text)
    return eps, str(answer.get("reasoning", ""))


def _graded_eps(response: ChatResponse) -> float:
    if response.choice_probabilities:
        return sum(GRADES[grade] * p for grade, p in response.choice_probabilities.items())
    answer = response.text.strip().lower()
    if answer not in GRADES:
        raise UnparsableOutput(
            f"graded answer {answer!r} is not one of {list(GRADES)}", detail=response.text
        )
    return GRADES[answer]


def _yes_probability(response: ChatResponse) -> float:
    """P(yes) / (P(yes) + P(no)) from exact choice scores or the first token's logprobs."""
    if response.choice_probabilities:
        yes = response.choice_probabilities.get("yes", 0.0)
        no = response.choice_probabilities.get("no", 0.0)
    elif response.tokens:
        first = response.tokens[0]
        candidates = {first.token: first.logprob, **first.top}
        yes = sum(math.exp(lp) for tok, lp in candidates.items() if tok.strip().lower() == "yes")
        no = sum(math.exp(lp) for tok, lp in candidates.items() if tok.strip().lower() == "no")
    else:
        raise UnparsableOutput(
            "yes-no-logprob needs token logprobs, and the model returned none",
            detail=response.text,
        )
    if yes + no <= 0.0:
        raise UnparsableOutput(
            "neither 'yes' nor 'no' is among the first token's top logprobs", detail=response.text
        )
    return yes / (yes + no)


# ----------------------------------------------------------------------------- parsing


def _check_label(label: str, schema: LabelSchema, raw: str) -> str:
    if label not in schema.label_names:
        raise OutOfSchemaLabel(
            f"the model answered {label!r}, which is not a label of schema "
            f"{schema.schema_id!r} (labels: {list(schema.label_names)})",
            detail=raw,
        )
    return label


def _load_json(text: str) -> dict[str, object]:
    try:
        answer = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UnparsableOutput(f"the answer is not valid JSON: {exc.msg}", detail=text) from None
    if not isinstance(answer, dict):
        raise UnparsableOutput("the answer is JSON but not an object", detail=text)
    return answer


def _probability(value: object, name: str, raw: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UnparsableOutput(f"{name} {value!r} is not a number", detail=raw)
    number = float(value)
    if not (math.isfinite(number) and 0.0 <= number <= 1.0):
        raise UnparsableOutput(f"{name} {number} is not a probability in [0, 1]", detail=raw)
    return number
