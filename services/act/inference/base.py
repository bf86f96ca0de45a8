"""The backend interface shared by every annotator and criticizer backend.

A backend takes a batch and returns one outcome per input, in order: the record, or an
`InferenceError` for that input alone (one bad item never fails its batch). Backends that
wrap a language model implement `ChatModel` instead and get annotation and criticism from
`act.inference.prompts` through `LLMBackend`; the embedded models implement `Backend`
directly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from act.inference.errors import InferenceError, InvalidInput, UnsupportedStrategy
from act.inference.types import (
    Annotation,
    Criticism,
    Image,
    Item,
    LabelSchema,
    ModelRef,
    PromptRef,
    Usage,
)

AnnotationOutcome = Annotation | InferenceError
CriticismOutcome = Criticism | InferenceError

ANNOTATION_STRATEGIES = ("direct", "cot")
CRITICISM_STRATEGIES = (
    "direct",
    "cot",
    "graded",
    "devil",
    "self-confidence",
    "yes-no-logprob",
    "perplexity",
)


class Backend(ABC):
    """Annotates items and criticizes annotations, a batch at a time."""

    #: Registry name, e.g. "embedded", "openai".
    name: str = ""
    #: Strategies this backend can run (a subset of the module constants).
    annotation_strategies: tuple[str, ...] = ()
    criticism_strategies: tuple[str, ...] = ()
    supports_images: bool = False
    supports_logprobs: bool = False

    @property
    @abstractmethod
    def model(self) -> ModelRef:
        """The model behind this backend, recorded on every output."""

    @abstractmethod
    async def annotate(
        self, items: Sequence[Item], schema: LabelSchema, strategy: str
    ) -> list[AnnotationOutcome]:
        """One annotation (or error) per item, in order."""

    @abstractmethod
    async def criticize(
        self,
        annotated: Sequence[tuple[Item, Annotation]],
        schema: LabelSchema,
        strategy: str,
    ) -> list[CriticismOutcome]:
        """One criticism (or error) per annotated item, in order."""

    async def aclose(self) -> None:
        """Release models, connections and files."""
        return None

    def prompt_ref(self, task: Literal["annotation", "criticism"], strategy: str) -> PromptRef:
        """The prompt (strategy and version) this backend runs for `strategy`, known before
        any call: recorded outputs are keyed by it (`act.inference.cache`). Override it
        whenever outputs carry a prompt version, so that a new version is a cache miss."""
        return PromptRef(strategy_id=strategy, version="")

    def check_annotation_strategy(self, strategy: str) -> None:
        _check_strategy(strategy, ANNOTATION_STRATEGIES, self.annotation_strategies, self.name)

    def check_criticism_strategy(self, strategy: str) -> None:
        _check_strategy(strategy, CRITICISM_STRATEGIES, self.criticism_strategies, self.name)


def _check_strategy(
    strategy: str, known: Sequence[str], supported: Sequence[str], name: str
) -> None:
    if strategy not in known:
        raise InvalidInput(f"unknown prompt strategy {strategy!r}; known: {list(known)}")
    if strategy not in supported:
        raise UnsupportedStrategy(
            f"backend {name!r} cannot run strategy {strategy!r}; it supports {list(supported)}"
        )


# ----------------------------------------------------------------------------- chat models


class Message(BaseModel):
    """One chat message: text and, for multimodal models, images."""

    model_config = ConfigDict(frozen=True)

    role: Literal["system", "user", "assistant"]
    text: str
    images: tuple[Image, ...] = ()


class ChatRequest(BaseModel):
    """A generation request. `choices` restricts the answer to one of those strings exactly;
    `json_schema` restricts it to JSON matching the schema (structured output)."""

    model_config = ConfigDict(frozen=True)

    messages: tuple[Message, ...]
    choices: tuple[str, ...] | None = None
    json_schema: dict[str, object] | None = None
    logprobs: bool = False
    top_logprobs: int = Field(default=0, ge=0, le=20)
    max_tokens: int = Field(default=512, ge=1)


class TokenLogprob(BaseModel):
    model_config = ConfigDict(frozen=True)

    token: str
    logprob: float
    top: dict[str, float] = Field(default_factory=dict)


class ChatResponse(BaseModel):
    """The answer. `choice_probabilities` is set when the model scored every choice exactly
    (e.g. log-likelihoods of each label), normalised over the choices."""

    model_config = ConfigDict(frozen=True)

    text: str
    tokens: tuple[TokenLogprob, ...] = ()
    choice_probabilities: dict[str, float] | None = None
    usage: Usage = Usage()


class ScoreRequest(BaseModel):
    """Log-likelihood of `continuation` as the assistant's answer after `messages`."""

    model_config = ConfigDict(frozen=True)

    messages: tuple[Message, ...]
    continuation: str = Field(min_length=1)


class ScoreResponse(BaseModel):
    model_config = ConfigDict(frozen=True)

    total_logprob: float
    n_tokens: int = Field(ge=1)
    usage: Usage = Usage()


class ChatModel(ABC):
    """A language model behind an API or in process (openai, vllm, hf)."""

    supports_images: bool = False
    supports_logprobs: bool = False
    supports_scoring: bool = False

    @property
    @abstractmethod
    def model(self) -> ModelRef:
        """The model, recorded on every output."""

    @abstractmethod
    async def complete(
        self, requests: Sequence[ChatRequest]
    ) -> list[ChatResponse | InferenceError]:
        """One response (or error) per request, in order."""

    async def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResponse | InferenceError]:
        """Log-likelihoods of continuations; only models that expose prompt logprobs can."""
        error = UnsupportedStrategy(f"{self.model.backend} cannot score text (no prompt logprobs)")
        return [error for _ in requests]

    async def aclose(self) -> None:
        """Release the model or the connection pool."""
        return None
