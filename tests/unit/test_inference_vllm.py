"""The vllm backend: request building and output parsing without vLLM, the adapter over a
stub `vllm` module, and (marked `gpu`) the real engine on a small local model."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import math
import os
import sys
import types
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pytest

from act.inference.base import ChatRequest, ChatResponse, Message, ScoreRequest, ScoreResponse
from act.inference.errors import (
    InferenceError,
    InvalidInput,
    OutOfSchemaLabel,
    UnparsableOutput,
    UnsupportedStrategy,
)
from act.inference.types import Image
from act.inference.vllm_backend import (
    VLLMChatModel,
    build_chat_messages,
    build_engine_kwargs,
    build_sampling_kwargs,
    build_score_conversations,
    continuation_start,
    image_url,
    make_sampling_params,
    parse_choice_scores,
    parse_completion,
    parse_score,
    score_prefix_sampling_kwargs,
    score_sampling_kwargs,
)

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 16


def _messages(text: str = "Label this: the film was wonderful.") -> tuple[Message, ...]:
    return (
        Message(role="system", text="You are a careful annotator. Labels: positive, negative."),
        Message(role="user", text=text),
    )


def _walk_keys(value: Any) -> list[str]:
    keys: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            keys.append(str(key))
            keys.extend(_walk_keys(item))
    elif isinstance(value, list | tuple):
        for item in value:
            keys.extend(_walk_keys(item))
    return keys


# ----------------------------------------------------------------------------- fakes shaped
# like vllm.outputs.RequestOutput / CompletionOutput and vllm.logprobs.Logprob


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = "stop"


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: list[dict[int, Logprob] | None] | None
    outputs: list[CompletionOutput]
    finished: bool = True


# ----------------------------------------------------------------------------- pure parts


def test_engine_kwargs_are_exact(tmp_path: Path) -> None:
    kwargs = build_engine_kwargs(
        tmp_path,
        tensor_parallel_size=2,
        gpu_memory_utilization=0.8,
        max_model_len=4096,
        dtype="bfloat16",
        seed=7,
        max_num_seqs=64,
        limit_mm_per_prompt={"image": 2},
    )
    assert kwargs == {
        "model": str(tmp_path),
        "tensor_parallel_size": 2,
        "gpu_memory_utilization": 0.8,
        "dtype": "bfloat16",
        "enable_prefix_caching": True,
        "seed": 7,
        "trust_remote_code": False,
        "max_model_len": 4096,
        "max_num_seqs": 64,
        "limit_mm_per_prompt": {"image": 2},
    }
    assert build_engine_kwargs(tmp_path) == {
        "model": str(tmp_path),
        "tensor_parallel_size": 1,
        "gpu_memory_utilization": 0.9,
        "dtype": "auto",
        "enable_prefix_caching": True,
        "seed": 0,
        "trust_remote_code": False,
    }


@pytest.mark.parametrize(
    "settings",
    [
        {"tensor_parallel_size": 0},
        {"gpu_memory_utilization": 1.5},
        {"gpu_memory_utilization": 0.0},
        {"max_model_len": 0},
        {"max_num_seqs": 0},
        {"dtype": "int4"},
        {"limit_mm_per_prompt": {"image": -1}},
        {"extra": {"guided_decoding_backend": "xgrammar"}},
        {"extra": {"seed": 3}},
    ],
)
def test_engine_kwargs_reject_bad_settings(tmp_path: Path, settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        build_engine_kwargs(tmp_path, **settings)


def test_sampling_kwargs_for_choices_use_structured_outputs() -> None:
    request = ChatRequest(
        messages=_messages(), choices=("positive", "negative"), logprobs=True, top_logprobs=5
    )
    kwargs = build_sampling_kwargs(request)
    assert kwargs == {
        "n": 1,
        "temperature": 0.0,
        "max_tokens": 512,
        "logprobs": 5,
        "structured_outputs": {"choice": ["positive", "negative"]},
    }
    assert not any("guided" in key for key in _walk_keys(kwargs))


def test_sampling_kwargs_for_json_and_plain_generation() -> None:
    schema = {"type": "object", "properties": {"label": {"enum": ["a", "b"]}}}
    kwargs = build_sampling_kwargs(
        ChatRequest(messages=_messages(), json_schema=schema, max_tokens=64)
    )
    assert kwargs == {
        "n": 1,
        "temperature": 0.0,
        "max_tokens": 64,
        "structured_outputs": {"json": schema},
    }
    plain = build_sampling_kwargs(ChatRequest(messages=_messages(), logprobs=True))
    assert plain == {"n": 1, "temperature": 0.0, "max_tokens": 512, "logprobs": 0}
    for built in (kwargs, plain, score_sampling_kwargs(3), score_prefix_sampling_kwargs()):
        assert not any("guided" in key for key in _walk_keys(built))
    assert score_sampling_kwargs(3) == {
        "n": 1,
        "temperature": 0.0,
        "max_tokens": 1,
        "prompt_logprobs": 3,
    }
    assert score_prefix_sampling_kwargs() == {"n": 1, "temperature": 0.0, "max_tokens": 1}


@pytest.mark.parametrize(
    "request_",
    [
        ChatRequest(messages=_messages(), choices=("a", "b"), json_schema={"type": "object"}),
        ChatRequest(messages=_messages(), choices=()),
        ChatRequest(messages=_messages(), choices=("a", "a")),
        ChatRequest(messages=_messages(), choices=("a", "")),
    ],
)
def test_sampling_kwargs_refuse_bad_requests(request_: ChatRequest) -> None:
    with pytest.raises(InvalidInput):
        build_sampling_kwargs(request_)


def test_make_sampling_params_builds_structured_outputs_params() -> None:
    made = make_sampling_params(
        {"temperature": 0.0, "structured_outputs": {"choice": ["a", "b"]}},
        _SamplingParams,
        _StructuredOutputsParams,
    )
    assert isinstance(made.structured_outputs, _StructuredOutputsParams)
    assert made.structured_outputs.choice == ["a", "b"]
    assert made.temperature == 0.0


def test_chat_messages_text_first_then_data_url_images() -> None:
    messages = (
        Message(role="system", text="fixed instructions"),
        Message(
            role="user",
            text="What is in the picture?",
            images=(
                Image(data=PNG, mime_type="image/png"),
                Image(data=JPEG),
                Image(uri="https://example.org/cat.jpg"),
            ),
        ),
    )
    built = build_chat_messages(messages)
    assert built[0] == {"role": "system", "content": "fixed instructions"}
    parts = built[1]["content"]
    assert built[1]["role"] == "user"
    assert parts[0] == {"type": "text", "text": "What is in the picture?"}
    assert parts[1] == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64," + base64.b64encode(PNG).decode()},
    }
    assert parts[2]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert base64.b64decode(parts[2]["image_url"]["url"].split(",", 1)[1]) == JPEG
    assert parts[3] == {"type": "image_url", "image_url": {"url": "https://example.org/cat.jpg"}}


def test_image_urls_refuse_unknown_content_and_schemes() -> None:
    with pytest.raises(InvalidInput, match="mime type"):
        image_url(Image(data=b"not an image at all"))
    with pytest.raises(InvalidInput, match="not an image type"):
        image_url(Image(data=PNG, mime_type="text/plain"))
    with pytest.raises(InvalidInput, match="http"):
        image_url(Image(uri="file:///etc/passwd"))
    with pytest.raises(InvalidInput):
        build_chat_messages(())


def test_score_conversations_end_with_the_continuation() -> None:
    prefix, full = build_score_conversations(_messages(), "The label is wrong.")
    assert full[:-1] == prefix
    assert full[-1] == {"role": "assistant", "content": "The label is wrong."}


def _completion(text: str, token_ids: list[int], positions: list[dict[int, Logprob]] | None):
    return RequestOutput(
        request_id="0",
        prompt=None,
        prompt_token_ids=[1, 2, 3, 4],
        prompt_logprobs=None,
        outputs=[CompletionOutput(0, text, token_ids, None, positions)],
    )


def test_parse_completion_with_logprobs() -> None:
    positions = [
        {
            11: Logprob(-0.1, 1, "pos"),
            12: Logprob(-2.5, 2, "neg"),
            13: Logprob(-3.0, 3, "neu"),
        },
        # The sampled token is outside the top 2: vLLM adds it with its rank.
        {
            21: Logprob(-0.5, 1, "it"),
            22: Logprob(-1.5, 2, "ive"),
            23: Logprob(-4.0, 7, "x"),
        },
    ]
    request = ChatRequest(messages=_messages(), logprobs=True, top_logprobs=2)
    response = parse_completion(
        request, _completion("positive", [11, 23], positions), latency_seconds=0.5
    )
    assert response.text == "positive"
    assert [token.token for token in response.tokens] == ["pos", "x"]
    assert [token.logprob for token in response.tokens] == [-0.1, -4.0]
    assert response.tokens[0].top == {"pos": -0.1, "neg": -2.5}
    assert response.tokens[1].top == {"it": -0.5, "ive": -1.5}
    assert response.usage.prompt_tokens == 4
    assert response.usage.completion_tokens == 2
    assert response.usage.latency_seconds == 0.5
    assert response.choice_probabilities is None


def test_parse_completion_decodes_when_vllm_did_not() -> None:
    positions = [{5: Logprob(-0.2)}]
    request = ChatRequest(messages=_messages(), logprobs=True)
    response = parse_completion(
        request, _completion("yes", [5], positions), decode=lambda token_id: f"<{token_id}>"
    )
    assert response.tokens[0].token == "<5>"
    assert response.tokens[0].top == {}


def test_parse_completion_checks_choices_and_logprobs() -> None:
    request = ChatRequest(messages=_messages(), choices=("positive", "negative"))
    assert parse_completion(request, _completion("negative", [3], None)).text == "negative"
    with pytest.raises(OutOfSchemaLabel) as caught:
        parse_completion(request, _completion("posi", [3], None))
    assert caught.value.detail == "posi"
    with pytest.raises(UnparsableOutput, match="logprobs"):
        parse_completion(
            ChatRequest(messages=_messages(), logprobs=True), _completion("a", [3], None)
        )


def _scored(prompt_ids: list[int], values: dict[int, float] | None = None) -> RequestOutput:
    values = values or {}
    positions: list[dict[int, Logprob] | None] = [None]
    for token_id in prompt_ids[1:]:
        positions.append(
            {
                token_id: Logprob(values.get(token_id, -1.0), 1, f"t{token_id}"),
                999: Logprob(-9.0, 2),
            }
        )
    return RequestOutput(
        "0", None, prompt_ids, positions, [CompletionOutput(0, "", [0], None, None)]
    )


def test_continuation_start_and_parse_score() -> None:
    assert continuation_start([1, 2, 3], [1, 2, 3, 4, 5]) == 3
    # A merge across the boundary: the differing prompt token is re-scored.
    assert continuation_start([1, 2, 3], [1, 2, 9, 5]) == 2
    assert continuation_start([7], [8, 9]) == 1
    with pytest.raises(InvalidInput):
        continuation_start([1, 2, 3], [1, 2, 3])
    prefix = _scored([1, 2, 3])
    full = _scored([1, 2, 3, 40, 50], {40: -0.25, 50: -1.5})
    response = parse_score(prefix, full, latency_seconds=0.1)
    assert isinstance(response, ScoreResponse)
    assert response.total_logprob == pytest.approx(-1.75)
    assert response.n_tokens == 2
    assert response.usage.prompt_tokens == 3
    broken = _scored([1, 2, 3, 40])
    broken.prompt_logprobs = None
    with pytest.raises(UnparsableOutput):
        parse_score(prefix, broken)


def test_parse_choice_scores_softmax_over_totals() -> None:
    request = ChatRequest(
        messages=_messages(), choices=("yes", "no", "maybe"), logprobs=True, top_logprobs=1
    )
    prefix = _scored([1, 2])
    outputs = [
        _scored([1, 2, 10], {10: -0.5}),
        _scored([1, 2, 20, 21], {20: -0.5, 21: -0.5}),
        _scored([1, 2, 30], {30: -2.0}),
    ]
    response = parse_choice_scores(request, prefix, outputs)
    totals = [-0.5, -1.0, -2.0]
    norm = sum(math.exp(value) for value in totals)
    assert response.text == "yes"
    assert response.choice_probabilities is not None
    for choice, total in zip(request.choices or (), totals, strict=True):
        assert response.choice_probabilities[choice] == pytest.approx(math.exp(total) / norm)
    assert [token.token for token in response.tokens] == ["t10"]
    assert response.tokens[0].top == {"t10": -0.5}


# ----------------------------------------------------------------------------- the adapter
# over a stub `vllm` module: a word-level "model" whose logprobs are a known function of
# the token ids.


@dataclass
class _StructuredOutputsParams:
    json: str | dict | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None


@dataclass
class _SamplingParams:
    n: int = 1
    temperature: float = 1.0
    max_tokens: int | None = 16
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    seed: int | None = None
    structured_outputs: _StructuredOutputsParams | None = None


def _value(token_id: int) -> float:
    return -0.1 * (token_id % 7 + 1)


class _Tokenizer:
    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def encode(self, text: str) -> list[int]:
        return [self.vocab.setdefault(word, len(self.vocab) + 1) for word in text.split()]

    def decode(self, ids: list[int]) -> str:
        words = {index: word for word, index in self.vocab.items()}
        return " ".join(words[token_id] for token_id in ids)


@dataclass
class _LLM:
    kwargs: dict[str, Any]
    calls: list[dict[str, Any]] = field(default_factory=list)
    tokenizer: _Tokenizer = field(default_factory=_Tokenizer)
    fail_on: str | None = None

    def __post_init__(self) -> None:
        self.model_config = types.SimpleNamespace(is_multimodal_model=False)

    def get_tokenizer(self) -> _Tokenizer:
        return self.tokenizer

    def _render(self, conversation: list[dict[str, Any]], flags: dict[str, Any]) -> str:
        lines = []
        for message in conversation:
            content = message["content"]
            if not isinstance(content, str):
                content = " ".join(part.get("text", "<image>") for part in content)
            lines.append(f"<{message['role']}> {content} </end>")
        if flags.get("continue_final_message"):
            lines[-1] = lines[-1].removesuffix(" </end>")
        elif flags.get("add_generation_prompt"):
            lines.append("<assistant>")
        return " ".join(lines)

    def chat(self, conversations, sampling_params, use_tqdm=True, **flags):
        assert use_tqdm is False
        assert isinstance(conversations[0], list)
        assert len(sampling_params) == len(conversations)
        self.calls.append({"n": len(conversations), "params": sampling_params, **flags})
        outputs = []
        for conversation, params in zip(conversations, sampling_params, strict=True):
            text = self._render(conversation, flags)
            if self.fail_on and self.fail_on in text:
                raise ValueError("prompt too long")
            ids = self.tokenizer.encode(text)
            prompt_logprobs = None
            if params.prompt_logprobs is not None:
                prompt_logprobs = [None] + [
                    {token_id: Logprob(_value(token_id), 1, None)} for token_id in ids[1:]
                ]
            structured = params.structured_outputs
            answer = structured.choice[-1] if structured and structured.choice else "some text"
            answer_ids = self.tokenizer.encode(answer)
            logprobs = None
            if params.logprobs is not None:
                logprobs = [{t: Logprob(_value(t), 1, None)} for t in answer_ids]
            outputs.append(
                RequestOutput(
                    "0",
                    text,
                    ids,
                    prompt_logprobs,
                    [CompletionOutput(0, answer, answer_ids, None, logprobs)],
                )
            )
        return outputs


@pytest.fixture
def stub_vllm(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType("vllm")
    sampling = types.ModuleType("vllm.sampling_params")
    module.LLM = lambda **kwargs: _LLM(kwargs)  # type: ignore[attr-defined]
    module.SamplingParams = _SamplingParams  # type: ignore[attr-defined]
    sampling.StructuredOutputsParams = _StructuredOutputsParams  # type: ignore[attr-defined]
    module.sampling_params = sampling  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sampling)
    return module


def test_missing_vllm_gives_install_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ImportError, match="'vllm' extra"):
        VLLMChatModel(tmp_path)


def test_missing_directory_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        VLLMChatModel(tmp_path / "missing")


def test_adapter_generates_in_order_with_structured_outputs(
    stub_vllm: types.ModuleType, tmp_path: Path
) -> None:
    model = VLLMChatModel(tmp_path, max_model_len=2048, model_name="tiny")
    llm = model._llm
    assert llm.kwargs["max_model_len"] == 2048
    assert llm.kwargs["enable_prefix_caching"] is True
    assert model.model.backend == "vllm" and model.model.model == "tiny"
    image = Image(data=PNG, mime_type="image/png")
    requests = [
        ChatRequest(messages=_messages("one"), choices=("positive", "negative"), logprobs=True),
        ChatRequest(messages=(Message(role="user", text="look", images=(image,)),)),
        ChatRequest(messages=_messages("two"), json_schema={"type": "object"}),
        ChatRequest(messages=_messages("three"), choices=("x", "x")),
    ]
    responses = asyncio.run(model.complete(requests))
    assert len(responses) == 4
    assert isinstance(responses[0], ChatResponse) and responses[0].text == "negative"
    assert len(responses[0].tokens) == 1
    assert isinstance(responses[1], UnsupportedStrategy)
    assert isinstance(responses[2], ChatResponse) and responses[2].text == "some text"
    assert isinstance(responses[3], InvalidInput)
    [call] = llm.calls
    assert call["n"] == 2 and call["add_generation_prompt"] is True
    first, second = call["params"]
    assert first.structured_outputs == _StructuredOutputsParams(choice=["positive", "negative"])
    assert first.logprobs == 0 and first.temperature == 0.0
    assert second.structured_outputs == _StructuredOutputsParams(json={"type": "object"})
    assert not any("guided" in item.name for item in fields(_SamplingParams))


def test_adapter_isolates_a_failing_request(stub_vllm: types.ModuleType, tmp_path: Path) -> None:
    model = VLLMChatModel(tmp_path)
    model._llm.fail_on = "poison"
    requests = [
        ChatRequest(messages=_messages("fine")),
        ChatRequest(messages=_messages("poison")),
        ChatRequest(messages=_messages("also fine")),
    ]
    responses = asyncio.run(model.complete(requests))
    assert isinstance(responses[0], ChatResponse)
    assert isinstance(responses[1], InvalidInput) and "too long" in responses[1].message
    assert isinstance(responses[2], ChatResponse)


def _expected_score(llm: _LLM, messages: tuple[Message, ...], continuation: str) -> float:
    prefix, full = build_score_conversations(messages, continuation)
    prefix_ids = llm.tokenizer.encode(llm._render(prefix, {"add_generation_prompt": True}))
    full_ids = llm.tokenizer.encode(llm._render(full, {"continue_final_message": True}))
    start = continuation_start(prefix_ids, full_ids)
    return sum(_value(token_id) for token_id in full_ids[start:])


def test_adapter_scores_continuations(stub_vllm: types.ModuleType, tmp_path: Path) -> None:
    model = VLLMChatModel(tmp_path)
    llm = model._llm
    requests = [
        ScoreRequest(messages=_messages("a"), continuation="the label is wrong"),
        ScoreRequest(messages=_messages("b"), continuation="fine"),
    ]
    responses = asyncio.run(model.score(requests))
    prefix_call, full_call = llm.calls
    assert prefix_call["add_generation_prompt"] is True
    assert full_call["add_generation_prompt"] is False
    assert full_call["continue_final_message"] is True
    assert all(params.prompt_logprobs == 0 for params in full_call["params"])
    for request, response in zip(requests, responses, strict=True):
        assert isinstance(response, ScoreResponse)
        expected = _expected_score(llm, request.messages, request.continuation)
        assert response.total_logprob == pytest.approx(expected)
    assert responses[0].n_tokens == 4
    assert responses[1].n_tokens == 1


def test_adapter_exact_choice_scores(stub_vllm: types.ModuleType, tmp_path: Path) -> None:
    model = VLLMChatModel(tmp_path, exact_choice_scores=True)
    llm = model._llm
    choices = ("positive", "negative", "not sure")
    requests = [
        ChatRequest(messages=_messages("p"), choices=choices),
        ChatRequest(messages=_messages("q")),
    ]
    exact, generated = asyncio.run(model.complete(requests))
    assert isinstance(generated, ChatResponse) and generated.text == "some text"
    assert isinstance(exact, ChatResponse)
    totals = {c: _expected_score(llm, _messages("p"), c) for c in choices}
    assert exact.text == max(totals, key=totals.__getitem__)
    assert exact.choice_probabilities is not None
    norm = sum(math.exp(value) for value in totals.values())
    for choice, total in totals.items():
        assert exact.choice_probabilities[choice] == pytest.approx(math.exp(total) / norm)
    generate_call, prefix_call, full_call = llm.calls
    assert generate_call["n"] == 1
    assert prefix_call["n"] == 1  # one prompt-only pass for the three choices
    assert full_call["n"] == 3


def test_adapter_closed_engine(stub_vllm: types.ModuleType, tmp_path: Path) -> None:
    model = VLLMChatModel(tmp_path)
    asyncio.run(model.aclose())
    [error] = asyncio.run(model.complete([ChatRequest(messages=_messages())]))
    assert isinstance(error, InferenceError) and "closed" in error.message


# ----------------------------------------------------------------------------- real engine


def _gpu_skip_reason() -> str | None:
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed (install the 'vllm' extra on a GPU node)"
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    if not os.environ.get("ACT_VLLM_TEST_MODEL"):
        return "set ACT_VLLM_TEST_MODEL to a small local model directory"
    return None


@pytest.mark.gpu
def test_real_engine_end_to_end() -> None:
    reason = _gpu_skip_reason()
    if reason:
        pytest.skip(reason)
    model = VLLMChatModel(
        os.environ["ACT_VLLM_TEST_MODEL"],
        gpu_memory_utilization=0.5,
        max_model_len=2048,
        enforce_eager=True,
    )
    try:
        choices = ("positive", "negative")
        schema = {
            "type": "object",
            "properties": {"label": {"type": "string", "enum": list(choices)}},
            "required": ["label"],
        }
        requests = [
            ChatRequest(
                messages=_messages("Label this review: 'wonderful film'. Answer with the label."),
                choices=choices,
                logprobs=True,
                top_logprobs=2,
                max_tokens=8,
            ),
            ChatRequest(
                messages=_messages("Answer in JSON with the field label."),
                json_schema=schema,
                max_tokens=64,
            ),
        ]
        labelled, structured = asyncio.run(model.complete(requests))
        assert isinstance(labelled, ChatResponse), labelled
        assert labelled.text in choices
        assert labelled.tokens and all(token.logprob <= 0 for token in labelled.tokens)
        assert isinstance(structured, ChatResponse), structured
        assert json.loads(structured.text)["label"] in choices
        [scored] = asyncio.run(
            model.score([ScoreRequest(messages=_messages(), continuation="positive")])
        )
        assert isinstance(scored, ScoreResponse), scored
        assert scored.n_tokens >= 1 and scored.total_logprob < 0
    finally:
        asyncio.run(model.aclose())
