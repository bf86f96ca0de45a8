"""`vllm`: an in-process vLLM engine (`vllm.LLM`) for GPU nodes.

vLLM is imported lazily, when a `VLLMChatModel` is constructed; the rest of this module
does not need it. The module is split accordingly:

* **request building and output parsing are pure functions** (`build_engine_kwargs`,
  `build_chat_messages`, `build_sampling_kwargs`, `build_score_conversations`,
  `parse_completion`, `parse_score`, `parse_choice_scores`, …) working on plain dicts and on
  anything shaped like vLLM's `RequestOutput` / `CompletionOutput` / `Logprob`;
* **the engine adapter** (`VLLMChatModel`) only turns the kwargs into `SamplingParams` and
  calls `LLM.chat`, in a worker thread, one call at a time.

Structured outputs use the current API: ``SamplingParams(structured_outputs=
StructuredOutputsParams(choice=[...]))`` or ``StructuredOutputsParams(json=schema)``. The
``guided_*`` parameters and ``GuidedDecodingParams`` were removed from vLLM (v0.12) and are
never used here.

Requests with `choices` are answered by constrained decoding (the answer is exactly one
of the choices; `choice_probabilities` stays None: the engine's logprobs are the raw model
logprobs before the grammar mask, not a distribution over the choices). With
`exact_choice_scores=True` every choice is instead scored as a continuation with
`prompt_logprobs`, as the hf backend does, and `choice_probabilities` is the softmax of the
choices' total log-likelihoods.

`score()` renders the conversation twice through `LLM.chat`: the prompt with the
generation prompt, and the prompt with the continuation as the final assistant message
(`continue_final_message=True`) with `prompt_logprobs`; the continuation's tokens are those
after the two token sequences' common prefix. This handles images and any chat template.
Note that vLLM does not *read* the prefix cache for requests with `prompt_logprobs` (it
recomputes the whole prefill), so scoring costs a full prefill per continuation.

Prefix caching (on by default) pays off when the fixed part of the prompt comes first:
messages are passed in order (the prompt builders put the system message, instructions and
few-shot examples first), and within a message the text comes before its images.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from act.inference.base import (
    ChatModel,
    ChatRequest,
    ChatResponse,
    Message,
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
from act.inference.types import Image, ModelRef, Usage

__all__ = [
    "DTYPES",
    "VLLMChatModel",
    "build_chat_messages",
    "build_engine_kwargs",
    "build_sampling_kwargs",
    "build_score_conversations",
    "continuation_start",
    "image_url",
    "make_sampling_params",
    "parse_choice_scores",
    "parse_completion",
    "parse_score",
    "score_prefix_sampling_kwargs",
    "score_sampling_kwargs",
]

DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
INSTALL_HINT = (
    "the vllm backend needs vLLM, which is not installed: install the 'vllm' extra "
    "(pip install 'act-pipeline[vllm]') on a node with a CUDA GPU"
)

Decode = Callable[[int], str]


# ----------------------------------------------------------------------------- engine


def build_engine_kwargs(
    model_path: str | Path,
    *,
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float = 0.9,
    max_model_len: int | None = None,
    dtype: str = "auto",
    enable_prefix_caching: bool = True,
    seed: int = 0,
    max_num_seqs: int | None = None,
    limit_mm_per_prompt: Mapping[str, int] | None = None,
    trust_remote_code: bool = False,
    enforce_eager: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The keyword arguments of `vllm.LLM`, validated. Unset optional settings are left
    out (vLLM's defaults apply)."""
    if tensor_parallel_size < 1:
        raise ValueError(f"tensor_parallel_size must be at least 1, got {tensor_parallel_size}")
    if not 0.0 < gpu_memory_utilization <= 1.0:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    if max_model_len is not None and max_model_len < 1:
        raise ValueError(f"max_model_len must be at least 1, got {max_model_len}")
    if max_num_seqs is not None and max_num_seqs < 1:
        raise ValueError(f"max_num_seqs must be at least 1, got {max_num_seqs}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    kwargs: dict[str, Any] = {
        "model": str(model_path),
        "tensor_parallel_size": tensor_parallel_size,
        "gpu_memory_utilization": gpu_memory_utilization,
        "dtype": dtype,
        "enable_prefix_caching": enable_prefix_caching,
        "seed": seed,
        "trust_remote_code": trust_remote_code,
    }
    if enforce_eager:
        kwargs["enforce_eager"] = True
    if max_model_len is not None:
        kwargs["max_model_len"] = max_model_len
    if max_num_seqs is not None:
        kwargs["max_num_seqs"] = max_num_seqs
    if limit_mm_per_prompt is not None:
        limits = {str(key): int(value) for key, value in limit_mm_per_prompt.items()}
        if any(value < 0 for value in limits.values()):
            raise ValueError(f"limit_mm_per_prompt values must be >= 0, got {limits}")
        kwargs["limit_mm_per_prompt"] = limits
    for key, value in (extra or {}).items():
        if "guided" in key:
            raise ValueError(f"{key!r} is a removed vLLM option; use structured outputs")
        if key in kwargs:
            raise ValueError(f"engine option {key!r} has its own setting")
        kwargs[key] = value
    return kwargs


# ----------------------------------------------------------------------------- requests

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)


def _sniff_mime(data: bytes) -> str:
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    raise InvalidInput(
        "image has no mime type and is not PNG, JPEG, GIF, WEBP or BMP by its content"
    )


def image_url(image: Image) -> str:
    """The URL vLLM fetches the image from: a base64 data URL for inline bytes; an http(s)
    or data URI as given. Other schemes (file paths) are refused."""
    if image.data:
        mime = image.mime_type or _sniff_mime(image.data)
        if not mime.startswith("image/"):
            raise InvalidInput(f"image mime type {mime!r} is not an image type")
        return f"data:{mime};base64,{base64.b64encode(image.data).decode('ascii')}"
    if image.uri.startswith(("http://", "https://", "data:image/")):
        return image.uri
    raise InvalidInput(
        f"image uri {image.uri[:80]!r} is not an http(s) or data URL; send the bytes inline"
    )


def build_chat_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """OpenAI-style chat messages for `LLM.chat`, in the given order. A message without
    images has string content; with images, content parts: the text first (it usually
    holds the fixed instructions, which prefix caching can then share), then one
    ``image_url`` part per image."""
    if not messages:
        raise InvalidInput("a request needs at least one message")
    built: list[dict[str, Any]] = []
    for message in messages:
        if not message.images:
            built.append({"role": message.role, "content": message.text})
            continue
        parts: list[dict[str, Any]] = []
        if message.text:
            parts.append({"type": "text", "text": message.text})
        for image in message.images:
            parts.append({"type": "image_url", "image_url": {"url": image_url(image)}})
        built.append({"role": message.role, "content": parts})
    return built


def check_choices(request: ChatRequest) -> None:
    if request.choices is not None and request.json_schema is not None:
        raise InvalidInput("a request cannot have both choices and a JSON schema")
    if request.choices is None:
        return
    if not request.choices:
        raise InvalidInput("choices must not be empty")
    if len(set(request.choices)) != len(request.choices):
        raise InvalidInput(f"choices repeat a string: {list(request.choices)}")
    if any(not choice for choice in request.choices):
        raise InvalidInput("a choice is the empty string")


def build_sampling_kwargs(request: ChatRequest) -> dict[str, Any]:
    """`SamplingParams` keyword arguments for a generation: greedy, `max_tokens`, logprobs
    (`logprobs=k` returns the top k and the sampled token), and the structured output as a
    plain dict (``{"choice": [...]}`` or ``{"json": schema}``) that `make_sampling_params`
    turns into `StructuredOutputsParams`."""
    check_choices(request)
    kwargs: dict[str, Any] = {"n": 1, "temperature": 0.0, "max_tokens": request.max_tokens}
    if request.logprobs:
        kwargs["logprobs"] = request.top_logprobs
    if request.choices is not None:
        kwargs["structured_outputs"] = {"choice": list(request.choices)}
    elif request.json_schema is not None:
        kwargs["structured_outputs"] = {"json": dict(request.json_schema)}
    return kwargs


def score_prefix_sampling_kwargs() -> dict[str, Any]:
    """For the prompt-only pass of scoring: one greedy token (only the prompt's token ids
    are used)."""
    return {"n": 1, "temperature": 0.0, "max_tokens": 1}


def score_sampling_kwargs(top_logprobs: int = 0) -> dict[str, Any]:
    """For the prompt + continuation pass: `prompt_logprobs=k` returns, at every prompt
    position, the actual token's logprob and the top k."""
    return {"n": 1, "temperature": 0.0, "max_tokens": 1, "prompt_logprobs": top_logprobs}


def build_score_conversations(
    messages: Sequence[Message], continuation: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the prompt, rendered with the generation prompt; the prompt with the continuation
    as the final assistant message, rendered with `continue_final_message=True`)."""
    if not continuation:
        raise InvalidInput("the continuation is empty")
    prefix = build_chat_messages(messages)
    full = [*prefix, {"role": "assistant", "content": continuation}]
    return prefix, full


def make_sampling_params(
    kwargs: Mapping[str, Any], sampling_params: type, structured_outputs_params: type
) -> Any:
    """`SamplingParams(**kwargs)`, the structured-output dict as `StructuredOutputsParams`."""
    values = dict(kwargs)
    structured = values.pop("structured_outputs", None)
    if structured is not None:
        values["structured_outputs"] = structured_outputs_params(**structured)
    return sampling_params(**values)


# ----------------------------------------------------------------------------- outputs


def _entry(position: Any, token_id: int) -> Any:
    if position is None:
        return None
    return position.get(token_id) if hasattr(position, "get") else None


def _token_text(token_id: int, entry: Any, decode: Decode | None) -> str:
    decoded = getattr(entry, "decoded_token", None)
    if decoded is not None:
        return str(decoded)
    if decode is not None:
        return decode(token_id)
    return str(token_id)


def _top(position: Any, k: int, decode: Decode | None) -> dict[str, float]:
    """The top k alternatives at a position (by rank), decoded token → logprob."""
    if not k or position is None:
        return {}
    ranked = sorted(position.items(), key=lambda item: getattr(item[1], "rank", None) or math.inf)
    top: dict[str, float] = {}
    for token_id, entry in ranked:
        rank = getattr(entry, "rank", None)
        if rank is not None and rank > k:
            continue
        top.setdefault(_token_text(token_id, entry, decode), float(entry.logprob))
        if len(top) >= k:
            break
    return top


def _token_logprobs(
    token_ids: Sequence[int],
    positions: Sequence[Any],
    top_k: int,
    decode: Decode | None,
) -> tuple[TokenLogprob, ...]:
    tokens = []
    for token_id, position in zip(token_ids, positions, strict=True):
        entry = _entry(position, token_id)
        if entry is None:
            raise UnparsableOutput(f"vLLM returned no logprob for token id {token_id}")
        tokens.append(
            TokenLogprob(
                token=_token_text(token_id, entry, decode),
                logprob=float(entry.logprob),
                top=_top(position, top_k, decode),
            )
        )
    return tuple(tokens)


def parse_completion(
    request: ChatRequest,
    output: Any,
    *,
    decode: Decode | None = None,
    latency_seconds: float = 0.0,
) -> ChatResponse:
    """A `ChatResponse` from a `RequestOutput` of a generation. With choices, the text must
    be one of them exactly (else `OutOfSchemaLabel`, e.g. when `max_tokens` cut it)."""
    if not output.outputs:
        raise UnparsableOutput("vLLM returned no completion")
    completion = output.outputs[0]
    text = completion.text
    token_ids = list(completion.token_ids)
    tokens: tuple[TokenLogprob, ...] = ()
    if request.logprobs:
        if completion.logprobs is None:
            raise UnparsableOutput("logprobs were requested but vLLM returned none")
        tokens = _token_logprobs(token_ids, list(completion.logprobs), request.top_logprobs, decode)
    if request.choices is not None and text not in request.choices:
        raise OutOfSchemaLabel(
            f"the model answered {text[:80]!r}, which is not one of the choices "
            f"(finish reason {getattr(completion, 'finish_reason', None)!r})",
            detail=text,
        )
    return ChatResponse(
        text=text,
        tokens=tokens,
        usage=Usage(
            prompt_tokens=len(output.prompt_token_ids or ()),
            completion_tokens=len(token_ids),
            latency_seconds=latency_seconds,
        ),
    )


def continuation_start(prefix_ids: Sequence[int], full_ids: Sequence[int]) -> int:
    """Index of the continuation's first token in `full_ids`: the end of the common prefix
    of the prompt's and the prompt + continuation's token ids (never 0: the first token of
    a sequence has no logprob)."""
    start = 0
    for left, right in zip(prefix_ids, full_ids, strict=False):
        if left != right:
            break
        start += 1
    start = max(start, 1)
    if start >= len(full_ids):
        raise InvalidInput("the continuation has no tokens after the prompt")
    return start


def _continuation(
    prefix_output: Any, full_output: Any, top_k: int, decode: Decode | None
) -> tuple[float, tuple[TokenLogprob, ...], int]:
    """(total logprob, tokens, prompt length) of the continuation."""
    full_ids = list(full_output.prompt_token_ids or ())
    start = continuation_start(list(prefix_output.prompt_token_ids or ()), full_ids)
    positions = full_output.prompt_logprobs
    if positions is None or len(positions) != len(full_ids):
        raise UnparsableOutput(
            "vLLM returned no prompt logprobs, or not one per prompt token "
            f"({None if positions is None else len(positions)} for {len(full_ids)} tokens)"
        )
    tokens = _token_logprobs(
        full_ids[start:], [positions[i] for i in range(start, len(full_ids))], top_k, decode
    )
    total = math.fsum(token.logprob for token in tokens)
    return total, tokens, len(prefix_output.prompt_token_ids or ())


def parse_score(
    prefix_output: Any, full_output: Any, *, latency_seconds: float = 0.0
) -> ScoreResponse:
    """A `ScoreResponse` from the prompt-only and the prompt + continuation outputs."""
    total, tokens, n_prompt = _continuation(prefix_output, full_output, 0, None)
    return ScoreResponse(
        total_logprob=total,
        n_tokens=len(tokens),
        usage=Usage(
            prompt_tokens=n_prompt,
            completion_tokens=len(tokens),
            latency_seconds=latency_seconds,
        ),
    )


def parse_choice_scores(
    request: ChatRequest,
    prefix_output: Any,
    choice_outputs: Sequence[Any],
    *,
    decode: Decode | None = None,
    latency_seconds: float = 0.0,
) -> ChatResponse:
    """Exact choice scoring: the argmax choice and the softmax over the choices' total
    log-likelihoods, from one prompt + choice output per choice (in the choices' order)."""
    assert request.choices is not None
    top_k = request.top_logprobs if request.logprobs else 0
    scored = [_continuation(prefix_output, output, top_k, decode) for output in choice_outputs]
    totals = [total for total, _, _ in scored]
    peak = max(totals)
    weights = [math.exp(total - peak) for total in totals]
    norm = math.fsum(weights)
    best = max(range(len(totals)), key=totals.__getitem__)
    _, tokens, n_prompt = scored[best]
    return ChatResponse(
        text=request.choices[best],
        tokens=tokens if request.logprobs else (),
        choice_probabilities={
            choice: weight / norm for choice, weight in zip(request.choices, weights, strict=True)
        },
        usage=Usage(
            prompt_tokens=n_prompt,
            completion_tokens=len(tokens),
            latency_seconds=latency_seconds,
        ),
    )


# ----------------------------------------------------------------------------- adapter


def _import_vllm() -> tuple[Any, type, type]:
    try:
        import vllm
        from vllm.sampling_params import StructuredOutputsParams
    except ImportError as exc:
        raise ImportError(f"{INSTALL_HINT} ({exc})") from exc
    return vllm, vllm.SamplingParams, StructuredOutputsParams


def _as_error(exc: Exception) -> InferenceError:
    if isinstance(exc, InferenceError):
        return exc
    if isinstance(exc, ValueError | TypeError):
        # vLLM rejects bad prompts (too long, unrenderable, bad image) with ValueError.
        return InvalidInput(f"vLLM refused the request: {exc}")
    return InferenceError(f"vLLM failed: {type(exc).__name__}: {exc}")


class VLLMChatModel(ChatModel):
    """An in-process vLLM engine on a local model directory.

    Args:
        model_path: a local model directory.
        tensor_parallel_size, gpu_memory_utilization, max_model_len, dtype,
        enable_prefix_caching, seed, max_num_seqs, trust_remote_code, enforce_eager:
            passed to `vllm.LLM` (see `build_engine_kwargs`).
        limit_mm_per_prompt: e.g. ``{"image": 4}``: multimodal items per prompt.
        exact_choice_scores: score every choice with prompt logprobs (gives
            `choice_probabilities`) instead of constrained decoding.
        model_name, revision: recorded in `ModelRef`; the name defaults to the directory's.
        engine_kwargs: further `vllm.LLM` keyword arguments.

    Raises:
        ValueError: the directory is missing or a setting is invalid.
        ImportError: vLLM is not installed (install the ``vllm`` extra).
    """

    supports_logprobs = True
    supports_scoring = True

    def __init__(
        self,
        model_path: str | Path,
        *,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        dtype: str = "auto",
        enable_prefix_caching: bool = True,
        seed: int = 0,
        max_num_seqs: int | None = None,
        limit_mm_per_prompt: Mapping[str, int] | None = None,
        trust_remote_code: bool = False,
        enforce_eager: bool = False,
        exact_choice_scores: bool = False,
        model_name: str | None = None,
        revision: str = "",
        engine_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        path = Path(model_path).expanduser()
        if not path.is_dir():
            raise ValueError(
                f"vllm model directory {str(path)!r} does not exist or is not a directory"
            )
        self.engine_kwargs = build_engine_kwargs(
            path,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            dtype=dtype,
            enable_prefix_caching=enable_prefix_caching,
            seed=seed,
            max_num_seqs=max_num_seqs,
            limit_mm_per_prompt=limit_mm_per_prompt,
            trust_remote_code=trust_remote_code,
            enforce_eager=enforce_eager,
            extra=engine_kwargs,
        )
        vllm, self._sampling_params, self._structured_outputs_params = _import_vllm()
        self._llm: Any = vllm.LLM(**self.engine_kwargs)
        model_config = getattr(self._llm, "model_config", None) or getattr(
            getattr(self._llm, "llm_engine", None), "model_config", None
        )
        self.supports_images = bool(getattr(model_config, "is_multimodal_model", False))
        self._exact_choice_scores = exact_choice_scores
        self._ref = ModelRef(backend="vllm", model=model_name or path.name, revision=revision)
        self._lock = threading.Lock()
        self._tokenizer: Any = None

    @property
    def model(self) -> ModelRef:
        return self._ref

    async def complete(
        self, requests: Sequence[ChatRequest]
    ) -> list[ChatResponse | InferenceError]:
        if not requests:
            return []
        return await asyncio.to_thread(self._complete_sync, list(requests))

    async def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResponse | InferenceError]:
        if not requests:
            return []
        return await asyncio.to_thread(self._score_sync, list(requests))

    async def aclose(self) -> None:
        await asyncio.to_thread(self._close_sync)

    def _close_sync(self) -> None:
        with self._lock:
            llm, self._llm = self._llm, None
        if llm is None:
            return
        # Best effort: stop the engine core (its worker processes hold the GPU memory).
        shutdown = getattr(getattr(llm, "llm_engine", None), "shutdown", None)
        if callable(shutdown):
            try:
                shutdown()
            except Exception:  # closing must not fail
                pass
        del llm
        gc.collect()

    # ------------------------------------------------------------------------ engine calls

    def _decode(self, token_id: int) -> str:
        if self._tokenizer is None and self._llm is not None:
            self._tokenizer = self._llm.get_tokenizer()
        return str(self._tokenizer.decode([token_id])) if self._tokenizer else str(token_id)

    def _params(self, kwargs: Mapping[str, Any]) -> Any:
        return make_sampling_params(kwargs, self._sampling_params, self._structured_outputs_params)

    def _chat(
        self,
        conversations: list[list[dict[str, Any]]],
        params: list[Any],
        **flags: Any,
    ) -> list[Any]:
        """`LLM.chat` over a batch; when the batch fails, each conversation alone, so one
        bad request gets its error and the others their outputs."""
        if not conversations:
            return []
        if self._llm is None:
            return [InferenceError("the vllm engine was closed") for _ in conversations]
        try:
            outputs = self._llm.chat(conversations, sampling_params=params, use_tqdm=False, **flags)
            if len(outputs) != len(conversations):
                raise RuntimeError(f"{len(outputs)} outputs for {len(conversations)} requests")
            return list(outputs)
        except Exception as exc:
            if len(conversations) == 1:
                return [_as_error(exc)]
        results: list[Any] = []
        for conversation, param in zip(conversations, params, strict=True):
            results.extend(self._chat([conversation], [param], **flags))
        return results

    def _check_images(self, messages: Sequence[Message]) -> None:
        if not self.supports_images and any(message.images for message in messages):
            raise UnsupportedStrategy(
                f"model {self._ref.model!r} is not multimodal: it cannot read images"
            )

    def _complete_sync(self, requests: list[ChatRequest]) -> list[ChatResponse | InferenceError]:
        results: list[ChatResponse | InferenceError | None] = [None] * len(requests)
        generate: list[tuple[int, list[dict[str, Any]], dict[str, Any]]] = []
        exact: list[tuple[int, ChatRequest]] = []
        for index, request in enumerate(requests):
            try:
                self._check_images(request.messages)
                if self._exact_choice_scores and request.choices is not None:
                    check_choices(request)
                    exact.append((index, request))
                else:
                    kwargs = build_sampling_kwargs(request)
                    generate.append((index, build_chat_messages(request.messages), kwargs))
            except Exception as exc:
                results[index] = _as_error(exc)

        with self._lock:
            started = time.perf_counter()
            outputs = self._chat(
                [conversation for _, conversation, _ in generate],
                [self._params(kwargs) for _, _, kwargs in generate],
                add_generation_prompt=True,
            )
            share = (time.perf_counter() - started) / max(len(generate), 1)
            for (index, _, _), output in zip(generate, outputs, strict=True):
                results[index] = self._parse(
                    lambda output=output, index=index: parse_completion(
                        requests[index], output, decode=self._decode, latency_seconds=share
                    ),
                    output,
                )
            if exact:
                for index, response in self._exact_sync(exact).items():
                    results[index] = response
        return _filled(results)

    def _exact_sync(
        self, exact: list[tuple[int, ChatRequest]]
    ) -> dict[int, ChatResponse | InferenceError]:
        pairs: list[tuple[int, Sequence[Message], str, int]] = []
        for index, request in exact:
            assert request.choices is not None
            top_k = request.top_logprobs if request.logprobs else 0
            pairs.extend((index, request.messages, choice, top_k) for choice in request.choices)
        started = time.perf_counter()
        scored = self._score_pairs(pairs)
        share = (time.perf_counter() - started) / max(len(exact), 1)
        results: dict[int, ChatResponse | InferenceError] = {}
        cursor = 0
        for index, request in exact:
            assert request.choices is not None
            owned = scored[cursor : cursor + len(request.choices)]
            cursor += len(request.choices)
            error = next((item for item in owned if isinstance(item, InferenceError)), None)
            if error is not None:
                results[index] = error
                continue
            prefix = owned[0][0]
            results[index] = self._parse(
                lambda request=request, prefix=prefix, owned=owned: parse_choice_scores(
                    request,
                    prefix,
                    [full for _, full in owned],
                    decode=self._decode,
                    latency_seconds=share,
                ),
                None,
            )
        return results

    def _score_pairs(
        self, pairs: list[tuple[int, Sequence[Message], str, int]]
    ) -> list[tuple[Any, Any] | InferenceError]:
        """(prompt-only output, prompt + continuation output) per pair, or its error. The
        prompt-only pass runs once per distinct owner."""
        built: list[tuple[list[dict[str, Any]], list[dict[str, Any]]] | InferenceError] = []
        for _, messages, continuation, _ in pairs:
            try:
                built.append(build_score_conversations(messages, continuation))
            except Exception as exc:
                built.append(_as_error(exc))
        owners: dict[int, int] = {}  # owner -> index in the prefix batch
        prefix_batch: list[list[dict[str, Any]]] = []
        full_batch: list[tuple[int, list[dict[str, Any]], int]] = []
        for position, ((owner, _, _, top_k), conversations) in enumerate(
            zip(pairs, built, strict=True)
        ):
            if isinstance(conversations, InferenceError):
                continue
            if owner not in owners:
                owners[owner] = len(prefix_batch)
                prefix_batch.append(conversations[0])
            full_batch.append((position, conversations[1], top_k))
        prefix_outputs = self._chat(
            prefix_batch,
            [self._params(score_prefix_sampling_kwargs()) for _ in prefix_batch],
            add_generation_prompt=True,
        )
        full_outputs = self._chat(
            [conversation for _, conversation, _ in full_batch],
            [self._params(score_sampling_kwargs(top_k)) for _, _, top_k in full_batch],
            add_generation_prompt=False,
            continue_final_message=True,
        )
        results: list[tuple[Any, Any] | InferenceError] = [
            item if isinstance(item, InferenceError) else InferenceError("not scored")
            for item in built
        ]
        for (position, _, _), full in zip(full_batch, full_outputs, strict=True):
            prefix = prefix_outputs[owners[pairs[position][0]]]
            if isinstance(prefix, InferenceError):
                results[position] = prefix
            elif isinstance(full, InferenceError):
                results[position] = full
            else:
                results[position] = (prefix, full)
        return results

    def _score_sync(self, requests: list[ScoreRequest]) -> list[ScoreResponse | InferenceError]:
        results: list[ScoreResponse | InferenceError | None] = [None] * len(requests)
        pairs: list[tuple[int, Sequence[Message], str, int]] = []
        for index, request in enumerate(requests):
            try:
                self._check_images(request.messages)
                pairs.append((index, request.messages, request.continuation, 0))
            except Exception as exc:
                results[index] = _as_error(exc)
        with self._lock:
            started = time.perf_counter()
            scored = self._score_pairs(pairs)
            share = (time.perf_counter() - started) / max(len(pairs), 1)
        for (index, _, _, _), item in zip(pairs, scored, strict=True):
            if isinstance(item, InferenceError):
                results[index] = item
            else:
                prefix, full = item
                results[index] = self._parse(
                    lambda prefix=prefix, full=full: parse_score(
                        prefix, full, latency_seconds=share
                    ),
                    None,
                )
        return _filled(results)

    @staticmethod
    def _parse(parse: Callable[[], Any], output: Any) -> Any:
        if isinstance(output, InferenceError):
            return output
        try:
            return parse()
        except Exception as exc:
            return _as_error(exc)


def _filled(results: Sequence[Any]) -> list[Any]:
    return [
        InferenceError("internal error: no result for this request") if result is None else result
        for result in results
    ]
