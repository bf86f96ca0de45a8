"""One line from a pydantic ValidationError, for every entry point that reports bad input."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError


def validation_problems(
    exc: ValidationError,
    *,
    whole: str = "",
    name: Callable[[tuple[Any, ...]], str] | None = None,
) -> str:
    """`where: problem; where: problem; ...` for every error of `exc`.

    `where` is the error's dotted location, or `name(location)` (e.g. the CLI option of a
    field); an error of the whole object (no location) is named `whole`, or shown alone when
    `whole` is empty. A validator's own ValueError reads as its message, without pydantic's
    "Value error, " before it.
    """
    parts = []
    for error in exc.errors(include_url=False):
        cause = error.get("ctx", {}).get("error") if error["type"] == "value_error" else None
        message = str(cause) if cause is not None else str(error["msg"])
        location = tuple(error["loc"])
        if location:
            where = name(location) if name is not None else ".".join(map(str, location))
        else:
            where = whole
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)
