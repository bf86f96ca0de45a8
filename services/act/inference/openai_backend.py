"""A chat model behind any OpenAI-compatible endpoint: `vllm serve`, OpenAI (GPT-4o), gateways.

Requests go through the official `openai` client (`AsyncOpenAI.chat.completions.create`) with
its own retries switched off: this module retries connection errors, timeouts, 429 and 5xx
with exponential backoff and jitter, a bounded number of times, and maps what is left to the
errors of `act.inference.errors`. Every answer is checked before it is returned; nothing is
mapped to a nearest label.

Restricting the answer (structured output) depends on the server:

- `vllm_extensions=True` (a vLLM server): `choices` go as
  `extra_body={"structured_outputs": {"choice": [...]}}` and the text is the choice itself.
  (The `guided_*` parameters were removed from vLLM in v0.12 and are ignored silently; they
  are never sent.)
- otherwise (OpenAI proper, gateways): `choices` go as a strict JSON schema
  `{"answer": <enum of choices>}` in `response_format`, and the answer is unwrapped.
- `json_schema` goes as `response_format={"type": "json_schema", ..., "strict": true}` in both.

Use one instance from one event loop (the connection pool and the concurrency limit belong
to the loop that first uses them).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import random
import re
import time
from collections.abc import Sequence
from typing import Any

import openai

from act.inference.base import ChatModel, ChatRequest, ChatResponse, Message, TokenLogprob
from act.inference.errors import (
    BackendTimeout,
    BackendUnavailable,
    InferenceError,
    InvalidInput,
    OutOfSchemaLabel,
    Overloaded,
    UnparsableOutput,
)
from act.inference.types import Image, ModelRef, Usage

API_KEY_ENV_VARS = ("ACT_OPENAI_API_KEY", "OPENAI_API_KEY")
#: Sent when no key is configured: local servers (`vllm serve` without --api-key) need none,
#: and the client refuses to start without one.
PLACEHOLDER_API_KEY = "EMPTY"

_CHOICE_SCHEMA_NAME = "choice"
_JSON_SCHEMA_NAME = "response"
_ANSWER_PREFIX = re.compile(r'\s*\{\s*"answer"\s*:\s*"')
#: Misconfiguration of the backend, not of the request: not retried, not the caller's fault.
_CONFIG_STATUSES = frozenset({401, 403, 404})
_RETRY_STATUSES = frozenset({408, 409, 429})

_IMAGE_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)


class OpenAIChatModel(ChatModel):
    """`ChatModel` over an OpenAI-compatible chat-completions endpoint."""

    supports_images = True
    supports_logprobs = True
    supports_scoring = False

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        vllm_extensions: bool = False,
        timeout_seconds: float = 60.0,
        max_retries: int = 3,
        max_concurrency: int = 16,
        temperature: float = 0.0,
        seed: int | None = None,
        backoff_base_seconds: float = 0.5,
        backoff_max_seconds: float = 20.0,
        revision: str = "",
        backend_name: str = "openai",
    ) -> None:
        if not model:
            raise ValueError("a model name is required")
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if backoff_base_seconds < 0 or backoff_max_seconds < 0:
            raise ValueError("backoff times must be >= 0")
        self._model_name = model
        self._ref = ModelRef(backend=backend_name, model=model, revision=revision)
        self.vllm_extensions = vllm_extensions
        self.timeout_seconds = timeout_seconds
        self.max_retries = max_retries
        self.max_concurrency = max_concurrency
        self.temperature = temperature
        self.seed = seed
        self.backoff_base_seconds = backoff_base_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._client = openai.AsyncOpenAI(
            api_key=_resolve_api_key(api_key),
            base_url=base_url,
            timeout=timeout_seconds,
            max_retries=0,  # retried here, with our backoff and error mapping
        )
        self.base_url = str(self._client.base_url)

    @property
    def model(self) -> ModelRef:
        return self._ref

    async def complete(
        self, requests: Sequence[ChatRequest]
    ) -> list[ChatResponse | InferenceError]:
        return list(await asyncio.gather(*(self._complete_one(r) for r in requests)))

    async def aclose(self) -> None:
        await self._client.close()

    # ------------------------------------------------------------------------- one request

    async def _complete_one(self, request: ChatRequest) -> ChatResponse | InferenceError:
        try:
            kwargs = self._create_kwargs(request)
        except InferenceError as error:
            return error
        try:
            completion, latency = await self._call_with_retries(kwargs)
        except InferenceError as error:
            return error
        try:
            return self._parse(request, completion, latency)
        except InferenceError as error:
            return error
        except (AttributeError, TypeError, ValueError, KeyError, IndexError) as error:
            return UnparsableOutput(
                f"malformed chat completion from {self.base_url}: {error}",
                detail=_safe_dump(completion),
            )

    def _create_kwargs(self, request: ChatRequest) -> dict[str, Any]:
        if request.choices is not None and request.json_schema is not None:
            raise InvalidInput("a request restricts its answer by choices or by a JSON schema")
        if request.choices is not None and not request.choices:
            raise InvalidInput("choices must not be empty")
        kwargs: dict[str, Any] = {
            "model": self._model_name,
            "messages": [_message_param(message) for message in request.messages],
            "temperature": self.temperature,
            "max_completion_tokens": request.max_tokens,
        }
        if self.seed is not None:
            kwargs["seed"] = self.seed
        if request.logprobs or request.top_logprobs:
            kwargs["logprobs"] = True
            if request.top_logprobs:
                kwargs["top_logprobs"] = request.top_logprobs
        if request.choices is not None:
            if self.vllm_extensions:
                kwargs["extra_body"] = {"structured_outputs": {"choice": list(request.choices)}}
            else:
                kwargs["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {
                        "name": _CHOICE_SCHEMA_NAME,
                        "schema": _choice_schema(request.choices),
                        "strict": True,
                    },
                }
        elif request.json_schema is not None:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": _JSON_SCHEMA_NAME,
                    "schema": request.json_schema,
                    "strict": True,
                },
            }
        return kwargs

    async def _call_with_retries(self, kwargs: dict[str, Any]) -> tuple[Any, float]:
        """The completion and the seconds from the first attempt's start (after waiting for a
        concurrency slot) to the answer, retries included."""
        attempts = self.max_retries + 1
        last: openai.APIError | None = None
        started: float | None = None
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(self._backoff(attempt, last))
            try:
                async with self._semaphore:
                    if started is None:
                        started = time.monotonic()
                    completion = await self._client.chat.completions.create(**kwargs)
                    return completion, time.monotonic() - started
            except openai.APITimeoutError as error:  # before APIConnectionError: a subclass
                last = error
            except openai.APIConnectionError as error:
                last = error
            except openai.APIStatusError as error:
                status = error.status_code
                if status in _CONFIG_STATUSES:
                    raise BackendUnavailable(
                        f"{self.base_url} refused model {self._model_name!r} "
                        f"(HTTP {status}): {_status_message(error)}"
                    ) from error
                if status < 500 and status not in _RETRY_STATUSES:
                    raise InvalidInput(
                        f"{self.base_url} rejected the request (HTTP {status}): "
                        f"{_status_message(error)}",
                        detail=_body_text(error),
                    ) from error
                last = error
            except openai.APIResponseValidationError as error:
                raise UnparsableOutput(
                    f"malformed response from {self.base_url}: {error.message}",
                    detail=_body_text(error),
                ) from error
            except ValueError as error:  # a 200 whose body is not JSON
                raise UnparsableOutput(
                    f"malformed response from {self.base_url}: {error}"
                ) from error
            except Exception as error:  # one request never fails its batch
                raise BackendUnavailable(
                    f"{self.base_url}: {type(error).__name__}: {error}"
                ) from error
        assert last is not None
        where = f"{self.base_url} after {attempts} attempt(s)"
        if isinstance(last, openai.APITimeoutError):
            raise BackendTimeout(
                f"{where}: no answer within {self.timeout_seconds:g} s ({last.message})"
            )
        if isinstance(last, openai.APIStatusError):
            message = f"{where}: HTTP {last.status_code}: {_status_message(last)}"
            if last.status_code == 429:
                raise Overloaded(message, detail=_body_text(last))
            if last.status_code == 408:
                raise BackendTimeout(message, detail=_body_text(last))
            raise BackendUnavailable(message, detail=_body_text(last))
        raise BackendUnavailable(f"{where}: {last.message} ({last.__cause__ or 'no detail'})")

    def _backoff(self, attempt: int, last: openai.APIError | None) -> float:
        """Exponential backoff with jitter; a server's Retry-After wins, up to the maximum."""
        ceiling = min(self.backoff_max_seconds, self.backoff_base_seconds * 2 ** (attempt - 1))
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        if isinstance(last, openai.APIStatusError):
            retry_after = _retry_after_seconds(last)
            if retry_after is not None:
                delay = max(delay, min(retry_after, self.backoff_max_seconds))
        return delay

    # ------------------------------------------------------------------------- answers

    def _parse(self, request: ChatRequest, completion: Any, latency: float) -> ChatResponse:
        if not completion.choices:
            raise UnparsableOutput(
                f"{self.base_url} returned no choices", detail=_safe_dump(completion)
            )
        choice = completion.choices[0]
        message = choice.message
        raw = message.content if message is not None else None
        if raw is None:
            refusal = getattr(message, "refusal", None) or ""
            raise UnparsableOutput(
                f"the answer has no content (finish_reason={choice.finish_reason!r}"
                + (", refused" if refusal else "")
                + ")",
                detail=refusal,
            )
        tokens = _parse_tokens(choice.logprobs)
        usage = Usage(
            prompt_tokens=getattr(completion.usage, "prompt_tokens", 0) or 0,
            completion_tokens=getattr(completion.usage, "completion_tokens", 0) or 0,
            latency_seconds=latency,
        )
        truncated = " (truncated: finish_reason=length)" if choice.finish_reason == "length" else ""
        probabilities = None
        text = raw
        if request.choices is not None:
            wrapped = not self.vllm_extensions
            text = _unwrap_answer(raw, truncated) if wrapped else raw
            if text not in request.choices:
                raise OutOfSchemaLabel(
                    f"the model answered {text!r}, which is not one of the choices "
                    f"{list(request.choices)}{truncated}",
                    detail=raw,
                )
            if tokens:
                start = _answer_offset(raw, wrapped)
                probabilities = _choice_probabilities(raw, tokens, request.choices, start, wrapped)
                if wrapped:
                    tokens = _answer_tokens(raw, tokens, text, start)
        elif request.json_schema is not None:
            _check_json(raw, request.json_schema, truncated)
        return ChatResponse(
            text=text, tokens=tokens, choice_probabilities=probabilities, usage=usage
        )


# ----------------------------------------------------------------------------- requests


def _resolve_api_key(api_key: str | None) -> str:
    if api_key:
        return api_key
    for name in API_KEY_ENV_VARS:
        value = os.environ.get(name)
        if value:
            return value
    return PLACEHOLDER_API_KEY


def _choice_schema(choices: Sequence[str]) -> dict[str, object]:
    return {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": list(choices)}},
        "required": ["answer"],
        "additionalProperties": False,
    }


def _message_param(message: Message) -> dict[str, Any]:
    if not message.images:
        return {"role": message.role, "content": message.text}
    parts: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": _image_url(image)}} for image in message.images
    ]
    if message.text:
        parts.append({"type": "text", "text": message.text})
    return {"role": message.role, "content": parts}


def _image_url(image: Image) -> str:
    if image.uri:
        return image.uri
    mime = image.mime_type or _sniff_mime(image.data)
    if not mime:
        raise InvalidInput("image has no mime_type and its format is not recognised")
    if not mime.startswith("image/"):
        raise InvalidInput(f"image mime_type {mime!r} is not an image type")
    return f"data:{mime};base64,{base64.b64encode(image.data).decode('ascii')}"


def _sniff_mime(data: bytes) -> str:
    for magic, mime in _IMAGE_MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return ""


# ----------------------------------------------------------------------------- errors


def _status_message(error: openai.APIStatusError) -> str:
    body = error.body
    if isinstance(body, dict):
        message = body.get("message")
        if isinstance(message, str) and message:
            return message
    if isinstance(body, str) and body:
        return body[:1000]
    return error.message


def _body_text(error: openai.APIError) -> str:
    if error.body is None:
        return ""
    if isinstance(error.body, str):
        return error.body
    try:
        return json.dumps(error.body, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(error.body)


def _retry_after_seconds(error: openai.APIStatusError) -> float | None:
    headers = error.response.headers
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            continue  # an HTTP date: ignored, the backoff applies
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    return None


def _safe_dump(completion: Any) -> str:
    try:
        return completion.model_dump_json()
    except Exception:
        return repr(completion)


# ----------------------------------------------------------------------------- parsing


def _parse_tokens(logprobs: Any) -> tuple[TokenLogprob, ...]:
    content = getattr(logprobs, "content", None) if logprobs is not None else None
    if not content:
        return ()
    tokens = []
    for entry in content:
        top: dict[str, float] = {}
        for alternative in entry.top_logprobs or ():
            previous = top.get(alternative.token)
            lp = float(alternative.logprob)
            # Two token ids can decode to the same string: their probabilities add up.
            top[alternative.token] = lp if previous is None else _logaddexp(previous, lp)
        tokens.append(TokenLogprob(token=entry.token, logprob=float(entry.logprob), top=top))
    return tuple(tokens)


def _logaddexp(a: float, b: float) -> float:
    high, low = max(a, b), min(a, b)
    return high + math.log1p(math.exp(low - high))


def _unwrap_answer(raw: str, truncated: str) -> str:
    """The choice inside {"answer": ...}; UnparsableOutput when the wrapper is broken."""
    try:
        value = json.loads(raw)
    except ValueError:
        raise UnparsableOutput(
            f'the answer is not JSON {{"answer": ...}}{truncated}', detail=raw
        ) from None
    if not (isinstance(value, dict) and set(value) == {"answer"}):
        raise UnparsableOutput(
            f'the answer is not the JSON object {{"answer": ...}}{truncated}', detail=raw
        )
    answer = value["answer"]
    if not isinstance(answer, str):
        raise UnparsableOutput(f"the answer is {answer!r}, not a string{truncated}", detail=raw)
    return answer


def _check_json(raw: str, schema: dict[str, object], truncated: str) -> None:
    """Valid JSON of the schema's top-level type with its required keys (no full validation)."""
    try:
        value = json.loads(raw)
    except ValueError as error:
        raise UnparsableOutput(
            f"the answer is not valid JSON: {error}{truncated}", detail=raw
        ) from None
    expected = schema.get("type")
    if expected == "object":
        if not isinstance(value, dict):
            raise UnparsableOutput(f"the answer is not a JSON object{truncated}", detail=raw)
        required = schema.get("required")
        missing = (
            [key for key in required if key not in value] if isinstance(required, list) else []
        )
        if missing:
            raise UnparsableOutput(
                f"the answer lacks required key(s) {missing}{truncated}", detail=raw
            )
    elif expected == "array" and not isinstance(value, list):
        raise UnparsableOutput(f"the answer is not a JSON array{truncated}", detail=raw)


def _answer_offset(raw: str, wrapped: bool) -> int | None:
    """Where the choice starts in the raw text (after `{"answer": "` when wrapped)."""
    if not wrapped:
        return 0
    match = _ANSWER_PREFIX.match(raw)
    return match.end() if match else None


def _token_index_at(raw: str, tokens: Sequence[TokenLogprob], offset: int) -> int | None:
    """The token starting exactly at `offset` of the text, if the tokens spell the text."""
    if "".join(token.token for token in tokens) != raw:
        return None
    position = 0
    for index, token in enumerate(tokens):
        if position == offset:
            return index
        position += len(token.token)
        if position > offset:
            return None
    return None


def _choice_probabilities(
    raw: str,
    tokens: Sequence[TokenLogprob],
    choices: Sequence[str],
    start: int | None,
    wrapped: bool,
) -> dict[str, float] | None:
    """P(choice) from the top logprobs of the answer's first token, normalised over choices.

    A candidate token counts for the one choice whose text it begins; None when a candidate
    begins several choices (their first token is shared), when some choice has no candidate
    among the top logprobs, or when the tokens cannot be aligned with the text.
    """
    if start is None:
        return None
    index = _token_index_at(raw, tokens, start)
    if index is None:
        return None
    first = tokens[index]
    candidates = dict(first.top)
    candidates.setdefault(first.token, first.logprob)
    # What follows the answer's start in the text: the choice, JSON-escaped and closed when
    # wrapped, so a candidate like `no"` still belongs to "no".
    spelled = {
        choice: (json.dumps(choice, ensure_ascii=False)[1:] if wrapped else choice)
        for choice in choices
    }
    mass = dict.fromkeys(choices, 0.0)
    for candidate, logprob in candidates.items():
        if not candidate:
            continue
        owners = [choice for choice, text in spelled.items() if text.startswith(candidate)]
        if len(owners) > 1:
            return None
        if owners:
            mass[owners[0]] += math.exp(logprob)
    if any(value <= 0.0 for value in mass.values()):
        return None
    total = sum(mass.values())
    return {choice: value / total for choice, value in mass.items()}


def _answer_tokens(
    raw: str, tokens: tuple[TokenLogprob, ...], answer: str, start: int | None
) -> tuple[TokenLogprob, ...]:
    """The tokens covering the unwrapped answer, so `tokens[0]` is the answer's first token;
    all tokens when they cannot be aligned with the text."""
    if start is None:
        return tokens
    index = _token_index_at(raw, tokens, start)
    if index is None:
        return tokens
    end = start + len(json.dumps(answer, ensure_ascii=False)) - 2
    position = start
    last = index
    for last in range(index, len(tokens)):
        position += len(tokens[last].token)
        if position >= end:
            break
    return tokens[index : last + 1]
