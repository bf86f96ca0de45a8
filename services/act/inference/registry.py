"""Backends by name: `create_backend("embedded", temperature=...)`.

Each entry is a factory that imports its backend when called, so choosing "instant"
never imports torch or a model server client. `record_to=<path>` wraps any backend in a
`RecordingBackend` (outputs recorded to, and served from, that JSONL file).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from act.inference.base import Backend

BackendFactory = Callable[..., Backend]


def _embedded(**settings: Any) -> Backend:
    from act.inference.embedded import EmbeddedBackend

    return EmbeddedBackend(**settings)


def _instant(**settings: Any) -> Backend:
    from act.inference.instant import InstantBackend

    return InstantBackend(**settings)


def _replay(**settings: Any) -> Backend:
    from act.inference.cache import ReplayBackend

    if "path" not in settings:
        raise ValueError("backend 'replay' needs path=<recording JSONL file>")
    path = settings.pop("path")
    return ReplayBackend(path, **settings)


def _openai(**settings: Any) -> Backend:
    from act.inference.llm import LLMBackend
    from act.inference.openai_backend import OpenAIChatModel

    return LLMBackend(OpenAIChatModel(**settings))


def _hf(**settings: Any) -> Backend:
    from act.inference.hf import HFChatModel
    from act.inference.llm import LLMBackend

    return LLMBackend(HFChatModel(**settings))


def _vllm(**settings: Any) -> Backend:
    from act.inference.llm import LLMBackend
    from act.inference.vllm_backend import VLLMChatModel

    return LLMBackend(VLLMChatModel(**settings))


#: name -> factory(**settings). Add an entry per backend; keep heavy imports inside it.
BACKENDS: dict[str, BackendFactory] = {
    "embedded": _embedded,
    "hf": _hf,
    "instant": _instant,
    "openai": _openai,
    "replay": _replay,
    "vllm": _vllm,
}


def backend_names() -> list[str]:
    return sorted(BACKENDS)


def create_backend(name: str, *, record_to: str | Path | None = None, **settings: Any) -> Backend:
    """The backend registered as `name`, built with `settings`.

    ValueError for an unknown name (listing the known ones) or settings the backend does
    not take.
    """
    factory = BACKENDS.get(name)
    if factory is None:
        raise ValueError(f"unknown backend {name!r}; known backends: {backend_names()}")
    try:
        backend = factory(**settings)
    except TypeError as exc:  # an unexpected keyword for a plain constructor
        raise ValueError(f"backend {name!r}: invalid settings {sorted(settings)}: {exc}") from exc
    if record_to is not None:
        from act.inference.cache import RecordingBackend

        backend = RecordingBackend(backend, record_to)
    return backend
