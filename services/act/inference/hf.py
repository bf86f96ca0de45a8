"""`hf`: a causal language model from a local directory, run in process with transformers.

What it does with a `ChatRequest`:

* **choices** (constrained classification): every choice is scored exactly as the
  continuation of the prompt, its total log-likelihood being the sum of its tokens'
  log-probabilities. All (request, choice) sequences of a call go through the model in
  padded batches. The answer is the argmax; `choice_probabilities` is the softmax over the
  choices' total log-likelihoods, i.e. the model's full label distribution restricted to
  the label set (sequence probabilities, not length-normalised).
* **no choices**: greedy generation up to `max_tokens`. A `json_schema` is *not* enforced
  here (transformers has no grammar-constrained decoding); the text is generated as usual
  and the caller validates it against the schema.

`score()` gives the log-likelihood of a continuation after the prompt (total log-prob and
token count), which the perplexity criticism uses.

Prompt rendering: the tokenizer's chat template when it has one (with the generation
prompt appended); otherwise the plain-text template below, continuations following the
final ``Assistant:`` after one space::

    System: <text>

    User: <text>

    Assistant:

Continuations are located by tokenizing the prompt and prompt + continuation and taking the
tokens after their common prefix, so a BPE merge across the boundary cannot misalign them.

Images are not supported: these are text-only language models.

The model runs in a worker thread (`asyncio.to_thread`), one call at a time (a lock guards
the model); the event loop is never blocked.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
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
from act.inference.errors import InferenceError, InvalidInput, UnsupportedStrategy
from act.inference.types import ModelRef, Usage

__all__ = [
    "PLAIN_CONTINUATION_SEPARATOR",
    "PLAIN_GENERATION_PROMPT",
    "HFChatModel",
    "render_plain",
]

#: Where the answer starts in the plain-text template.
PLAIN_GENERATION_PROMPT = "Assistant:"
#: What joins the plain-text prompt and a continuation (choice or scored text).
PLAIN_CONTINUATION_SEPARATOR = " "

_ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}
_DTYPES = ("auto", "float32", "float16", "bfloat16")


def render_plain(messages: Sequence[Message]) -> str:
    """The plain-text template for tokenizers without a chat template."""
    parts = [f"{_ROLE_NAMES[message.role]}: {message.text}" for message in messages]
    parts.append(PLAIN_GENERATION_PROMPT)
    return "\n\n".join(parts)


@dataclass
class _Sequence:
    """One prompt + continuation to score: `ids[start:]` are the continuation's tokens."""

    owner: int
    ids: list[int]
    start: int
    top_k: int = 0
    # Filled in by the forward pass.
    token_logprobs: list[float] = field(default_factory=list)
    top: list[dict[int, float]] = field(default_factory=list)

    @property
    def total(self) -> float:
        return math.fsum(self.token_logprobs)


class HFChatModel(ChatModel):
    """A local causal LM with transformers: exact choice scoring, greedy generation, scoring.

    Args:
        model_path: a local model directory (config, weights, tokenizer); nothing is
            downloaded (`local_files_only=True`), no remote code is run.
        device: a torch device ("cpu", "cuda", "cuda:1").
        dtype: "auto" (float32 on CPU, the checkpoint's dtype on CUDA), "float32",
            "float16" or "bfloat16".
        max_batch_size: sequences per forward pass when scoring choices.
        model_name: recorded in `ModelRef.model`; defaults to the directory name.
        revision: recorded in `ModelRef.revision`.

    Raises:
        ValueError: the directory is missing or does not hold a loadable causal LM and
            tokenizer, the device is unavailable, or a setting is invalid.
    """

    supports_images = False
    supports_logprobs = True
    supports_scoring = True

    def __init__(
        self,
        model_path: str | Path,
        *,
        device: str = "cpu",
        dtype: str = "auto",
        max_batch_size: int = 16,
        model_name: str | None = None,
        revision: str = "",
    ) -> None:
        import torch

        path = Path(model_path).expanduser()
        if not path.exists():
            raise ValueError(f"hf model directory {str(path)!r} does not exist")
        if not path.is_dir():
            raise ValueError(f"hf model path {str(path)!r} is not a directory")
        if dtype not in _DTYPES:
            raise ValueError(f"hf dtype must be one of {list(_DTYPES)}, got {dtype!r}")
        if max_batch_size < 1:
            raise ValueError(f"hf max_batch_size must be at least 1, got {max_batch_size}")
        try:
            torch_device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"hf device {device!r} is not a torch device: {exc}") from exc
        if torch_device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"hf device {device!r} requested but CUDA is not available")

        self._torch = torch
        self._device = torch_device
        self._max_batch_size = max_batch_size
        self._tokenizer, self._model = _load(path, torch_device, dtype)
        self._has_template = bool(getattr(self._tokenizer, "chat_template", None))
        self._pad_id = _pad_token_id(self._tokenizer)
        forward = inspect.signature(self._model.forward).parameters
        self._takes_position_ids = "position_ids" in forward
        self._takes_logits_to_keep = "logits_to_keep" in forward
        config = self._model.config
        self._context = getattr(config, "max_position_embeddings", None) or getattr(
            config, "n_positions", None
        )
        self._ref = ModelRef(backend="hf", model=model_name or path.name, revision=revision)
        self._lock = threading.Lock()

    @property
    def model(self) -> ModelRef:
        return self._ref

    # ------------------------------------------------------------------------ public API

    async def complete(
        self, requests: Sequence[ChatRequest]
    ) -> list[ChatResponse | InferenceError]:
        if not requests:
            return []
        return await asyncio.to_thread(self._locked, self._complete_sync, list(requests))

    async def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResponse | InferenceError]:
        if not requests:
            return []
        return await asyncio.to_thread(self._locked, self._score_sync, list(requests))

    async def aclose(self) -> None:
        with self._lock:
            self._model = None
            if self._device.type == "cuda":
                self._torch.cuda.empty_cache()

    # ------------------------------------------------------------------------ rendering

    def render(self, messages: Sequence[Message]) -> str:
        """The prompt text, ending where the assistant's answer starts."""
        for message in messages:
            if message.images:
                raise UnsupportedStrategy(
                    f"the hf backend runs text-only language models: a {message.role} "
                    f"message carries {len(message.images)} image(s); use the vllm or "
                    "openai backend with a multimodal model"
                )
        if not messages:
            raise InvalidInput("a request needs at least one message")
        if not self._has_template:
            return render_plain(messages)
        chat = [{"role": message.role, "content": message.text} for message in messages]
        try:
            return self._apply_template(chat)
        except Exception as exc:
            # Some templates (e.g. Gemma's) refuse a system role: fold it into the next turn.
            if chat[0]["role"] == "system" and len(chat) > 1 and chat[1]["role"] == "user":
                merged = [
                    {"role": "user", "content": f"{chat[0]['content']}\n\n{chat[1]['content']}"},
                    *chat[2:],
                ]
                try:
                    return self._apply_template(merged)
                except Exception:
                    pass
            raise InvalidInput(
                f"the model's chat template cannot render the messages: {exc}"
            ) from exc

    def _apply_template(self, chat: list[dict[str, str]]) -> str:
        text = self._tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        if not isinstance(text, str):
            raise TypeError(f"chat template returned {type(text).__name__}, not text")
        return text

    def _encode(self, text: str) -> list[int]:
        # Chat templates write their own special tokens (BOS …); plain text gets the
        # tokenizer's usual ones.
        ids = self._tokenizer(text, add_special_tokens=not self._has_template)["input_ids"]
        return list(ids)

    def _continuation(self, prompt: str, continuation: str) -> tuple[list[int], int, int]:
        """(ids of prompt + continuation, index of the first continuation token, prompt
        length in tokens)."""
        joiner = "" if self._has_template else PLAIN_CONTINUATION_SEPARATOR
        prompt_ids = self._encode(prompt)
        full_ids = self._encode(prompt + joiner + continuation)
        start = _common_prefix(prompt_ids, full_ids)
        if start >= len(full_ids):
            raise InvalidInput(f"continuation {continuation!r} has no tokens after the prompt")
        start = max(start, 1)  # the first token of a sequence has no log-probability
        if start >= len(full_ids):
            raise InvalidInput("nothing to score: the text is a single token")
        self._check_length(len(full_ids))
        return full_ids, start, len(prompt_ids)

    def _check_length(self, n_tokens: int) -> None:
        if self._context is not None and n_tokens > self._context:
            raise InvalidInput(
                f"input of {n_tokens} tokens exceeds the model's context of {self._context}"
            )

    # ------------------------------------------------------------------------ sync work

    def _locked(self, function: Any, requests: list[Any]) -> list[Any]:
        with self._lock:
            if self._model is None:
                error = InferenceError("the hf model was closed")
                return [error for _ in requests]
            with self._torch.inference_mode():
                return function(requests)

    def _complete_sync(self, requests: list[ChatRequest]) -> list[ChatResponse | InferenceError]:
        results: list[ChatResponse | InferenceError | None] = [None] * len(requests)
        sequences: list[_Sequence] = []
        prompts: dict[int, tuple[str, int]] = {}
        for index, request in enumerate(requests):
            try:
                if request.choices is not None and request.json_schema is not None:
                    raise InvalidInput("a request cannot have both choices and a JSON schema")
                prompt = self.render(request.messages)
                if request.choices is None:
                    continue
                _check_choices(request.choices)
                top_k = request.top_logprobs if request.logprobs else 0
                owned = []
                for choice in request.choices:
                    ids, start, n_prompt = self._continuation(prompt, choice)
                    owned.append(_Sequence(index, ids, start, top_k))
                sequences.extend(owned)
                prompts[index] = (prompt, n_prompt)
            except InferenceError as exc:
                results[index] = exc
            except Exception as exc:
                results[index] = InvalidInput(f"cannot prepare the request: {exc}")

        started = time.perf_counter()
        failed = self._forward_all(sequences)
        for index, error in failed.items():
            results[index] = error
        by_owner: dict[int, list[_Sequence]] = {}
        for sequence in sequences:
            by_owner.setdefault(sequence.owner, []).append(sequence)
        share = (time.perf_counter() - started) / max(len(by_owner), 1)
        for index, owned in by_owner.items():
            if results[index] is None:
                results[index] = self._choice_response(
                    requests[index], owned, prompts[index][1], share
                )

        for index, request in enumerate(requests):
            if results[index] is None:
                try:
                    results[index] = self._generate(request)
                except InferenceError as exc:
                    results[index] = exc
                except Exception as exc:
                    results[index] = InferenceError(f"hf generation failed: {exc}")
        return _filled(results)

    def _choice_response(
        self, request: ChatRequest, owned: list[_Sequence], n_prompt: int, latency: float
    ) -> ChatResponse:
        assert request.choices is not None
        totals = [sequence.total for sequence in owned]
        peak = max(totals)
        weights = [math.exp(total - peak) for total in totals]
        norm = math.fsum(weights)
        probabilities = {
            choice: weight / norm for choice, weight in zip(request.choices, weights, strict=True)
        }
        best = max(range(len(totals)), key=totals.__getitem__)
        chosen = owned[best]
        tokens: tuple[TokenLogprob, ...] = ()
        if request.logprobs:
            tokens = tuple(
                self._token(token_id, logprob, top)
                for token_id, logprob, top in zip(
                    chosen.ids[chosen.start :], chosen.token_logprobs, chosen.top, strict=True
                )
            )
        return ChatResponse(
            text=request.choices[best],
            tokens=tokens,
            choice_probabilities=probabilities,
            usage=Usage(
                prompt_tokens=n_prompt,
                completion_tokens=len(chosen.ids) - chosen.start,
                latency_seconds=latency,
            ),
        )

    def _score_sync(self, requests: list[ScoreRequest]) -> list[ScoreResponse | InferenceError]:
        results: list[ScoreResponse | InferenceError | None] = [None] * len(requests)
        sequences: list[_Sequence] = []
        n_prompts: dict[int, int] = {}
        for index, request in enumerate(requests):
            try:
                prompt = self.render(request.messages)
                ids, start, n_prompt = self._continuation(prompt, request.continuation)
                sequences.append(_Sequence(index, ids, start))
                n_prompts[index] = n_prompt
            except InferenceError as exc:
                results[index] = exc
            except Exception as exc:
                results[index] = InvalidInput(f"cannot prepare the request: {exc}")
        started = time.perf_counter()
        failed = self._forward_all(sequences)
        share = (time.perf_counter() - started) / max(len(sequences), 1)
        for index, error in failed.items():
            results[index] = error
        for sequence in sequences:
            if results[sequence.owner] is None:
                n_tokens = len(sequence.ids) - sequence.start
                results[sequence.owner] = ScoreResponse(
                    total_logprob=sequence.total,
                    n_tokens=n_tokens,
                    usage=Usage(
                        prompt_tokens=n_prompts[sequence.owner],
                        completion_tokens=n_tokens,
                        latency_seconds=share,
                    ),
                )
        return _filled(results)

    # ------------------------------------------------------------------------ the model

    def _forward_all(self, sequences: list[_Sequence]) -> dict[int, InferenceError]:
        """Fill in every sequence's continuation log-probs; errors by owning request."""
        failed: dict[int, InferenceError] = {}
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i].ids))
        for offset in range(0, len(order), self._max_batch_size):
            batch = [sequences[i] for i in order[offset : offset + self._max_batch_size]]
            try:
                self._forward(batch)
            except Exception as exc:
                error = InferenceError(f"hf forward pass failed: {exc}")
                for sequence in batch:
                    failed[sequence.owner] = error
        return failed

    def _forward(self, batch: list[_Sequence]) -> None:
        """One padded forward pass. Sequences are left-padded so every continuation ends
        the row, and only the logits that predict continuation tokens are kept."""
        torch = self._torch
        width = max(len(sequence.ids) for sequence in batch)
        keep = max(len(sequence.ids) - sequence.start for sequence in batch) + 1
        input_ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, sequence in enumerate(batch):
            input_ids[row, width - len(sequence.ids) :] = torch.tensor(sequence.ids)
            mask[row, width - len(sequence.ids) :] = 1
        kwargs: dict[str, Any] = {
            "input_ids": input_ids.to(self._device),
            "attention_mask": mask.to(self._device),
        }
        if self._takes_position_ids:
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).to(self._device)
        if self._takes_logits_to_keep:
            kwargs["logits_to_keep"] = keep
        logits = self._model(**kwargs).logits[:, -keep:, :]
        logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
        for row, sequence in enumerate(batch):
            n = len(sequence.ids) - sequence.start
            # Position j of the kept window predicts the token at window position j + 1.
            predicted = logprobs[row, keep - 1 - n : keep - 1, :]
            targets = torch.tensor(sequence.ids[sequence.start :])
            chosen = predicted.gather(1, targets.unsqueeze(1)).squeeze(1)
            sequence.token_logprobs = [float(value) for value in chosen]
            if sequence.top_k:
                values, indices = predicted.topk(sequence.top_k, dim=-1)
                sequence.top = [
                    dict(zip(ids.tolist(), vals.tolist(), strict=True))
                    for vals, ids in zip(values, indices, strict=True)
                ]
            else:
                sequence.top = [{} for _ in range(n)]

    def _generate(self, request: ChatRequest) -> ChatResponse:
        torch = self._torch
        prompt = self.render(request.messages)
        prompt_ids = self._encode(prompt)
        self._check_length(len(prompt_ids) + 1)
        max_new_tokens = request.max_tokens
        if self._context is not None:
            max_new_tokens = min(max_new_tokens, self._context - len(prompt_ids))
        started = time.perf_counter()
        input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=self._device)
        output = self._model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=self._pad_id,
            output_logits=True,
            return_dict_in_generate=True,
        )
        latency = time.perf_counter() - started
        generated = output.sequences[0, len(prompt_ids) :].tolist()
        stops = _eos_ids(self._model, self._tokenizer)
        kept = []
        for token_id in generated:
            if token_id in stops:
                break
            kept.append(token_id)
        tokens: tuple[TokenLogprob, ...] = ()
        if request.logprobs:
            built = []
            for step, token_id in enumerate(kept):
                logprobs = torch.log_softmax(output.logits[step][0].float(), dim=-1).cpu()
                top: dict[int, float] = {}
                if request.top_logprobs:
                    values, indices = logprobs.topk(request.top_logprobs)
                    top = dict(zip(indices.tolist(), values.tolist(), strict=True))
                built.append(self._token(token_id, float(logprobs[token_id]), top))
            tokens = tuple(built)
        text = self._tokenizer.decode(kept, skip_special_tokens=True).strip()
        return ChatResponse(
            text=text,
            tokens=tokens,
            usage=Usage(
                prompt_tokens=len(prompt_ids),
                completion_tokens=len(generated),
                latency_seconds=latency,
            ),
        )

    def _token(self, token_id: int, logprob: float, top: dict[int, float]) -> TokenLogprob:
        decoded: dict[str, float] = {}
        for candidate, value in top.items():
            decoded.setdefault(self._tokenizer.decode([candidate]), value)
        return TokenLogprob(token=self._tokenizer.decode([token_id]), logprob=logprob, top=decoded)


# ----------------------------------------------------------------------------- helpers


def _load(path: Path, device: Any, dtype: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, local_files_only=True, trust_remote_code=False
        )
    except Exception as exc:
        raise ValueError(f"no usable tokenizer in hf model directory {str(path)!r}: {exc}") from exc
    if dtype == "auto":
        torch_dtype: Any = torch.float32 if device.type == "cpu" else "auto"
    else:
        torch_dtype = getattr(torch, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, trust_remote_code=False, dtype=torch_dtype
        )
    except Exception as exc:
        raise ValueError(
            f"hf model directory {str(path)!r} does not hold a loadable causal language "
            f"model: {exc}"
        ) from exc
    model.to(device)
    model.eval()
    return tokenizer, model


def _filled(results: Sequence[Any]) -> list[Any]:
    """The results in order, an internal error where one is missing (never a gap)."""
    return [
        InferenceError("internal error: no result for this request") if result is None else result
        for result in results
    ]


def _pad_token_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id):
        if candidate is not None:
            return int(candidate)
    return 0  # masked out anyway


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(item) for item in value)
    return ids


def _common_prefix(left: Sequence[int], right: Sequence[int]) -> int:
    n = 0
    for a, b in zip(left, right, strict=False):
        if a != b:
            break
        n += 1
    return n


def _check_choices(choices: Sequence[str]) -> None:
    if not choices:
        raise InvalidInput("choices must not be empty")
    if len(set(choices)) != len(choices):
        raise InvalidInput(f"choices repeat a string: {list(choices)}")
    if any(not choice for choice in choices):
        raise InvalidInput("a choice is the empty string")
