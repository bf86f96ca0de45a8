"""Structured logs: one JSON object per line on stderr.

Library code logs with `logger.info(event, extra={"fields": {...}})`; the JSON formatter puts
the fields at the top level of the object next to `time`, `level`, `logger` and `event`.
The access log (`act.serving.access`) has one line per RPC with service, method, items,
item_errors, code, duration_ms and peer.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

ACCESS_LOGGER = "act.serving.access"


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON; exceptions go to an `exception` field."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            payload.update(fields)
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Human-readable variant: `time level logger event key=value ...`."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None) or {}
        extra = " ".join(f"{key}={value}" for key, value in fields.items())
        line = f"{self.formatTime(record)} {record.levelname} {record.name} {record.getMessage()}"
        if extra:
            line += " " + extra
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Send the `act` loggers to stderr in the chosen format (idempotent)."""
    logger = logging.getLogger("act")
    for handler in list(logger.handlers):
        if getattr(handler, "_act_handler", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler._act_handler = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False


def log_fields(**fields: Any) -> dict[str, Any]:
    """The `extra` argument that carries structured fields to the formatters."""
    return {"fields": fields}
