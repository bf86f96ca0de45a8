"""The record of a system that `actctl up` brought up, kept in `<state dir>/run.json`.

`up` writes it after every step (so that a `down` after an interrupted `up` still finds every
process started so far), `down` reads it to stop exactly those processes and removes it. The
file holds the store's URL, password included, so it is readable by its owner only.

The state dir is `--state-dir`, else `ACT_STATE_DIR`, else `$ACT_LOCAL_STATE/up` (the
deploy/local scripts' state root), else `~/.cache/act-local/up`.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

RUN_FILE = "run.json"
LOCK_FILE = ".lock"
FORMAT_VERSION = 1


class StateError(RuntimeError):
    """The state dir cannot be used (unreadable record, another command holds it)."""


def default_state_dir() -> Path:
    """`ACT_STATE_DIR`, else `$ACT_LOCAL_STATE/up`, else `~/.cache/act-local/up`."""
    explicit = os.environ.get("ACT_STATE_DIR", "").strip()
    if explicit:
        return Path(explicit).expanduser()
    root = os.environ.get("ACT_LOCAL_STATE", "").strip() or "~/.cache/act-local"
    return Path(root).expanduser() / "up"


def resolve_state_dir(given: Path | None) -> Path:
    """The state dir to use: `given` (a --state-dir option), else `default_state_dir()`."""
    return (given or default_state_dir()).expanduser().resolve()


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServiceProcess(_Model):
    """One detached service process; `start_ticks` tells it apart from a later process that
    reuses its pid (None where the platform does not say)."""

    name: str
    command: list[str]
    pid: int
    start_ticks: int | None
    log: str
    address: str = ""  # what clients connect to (host:port or URL); empty for the stream heads
    ports: dict[str, int] = Field(default_factory=dict)


class StackPart(_Model):
    """The broker or the database: reused as found, or started by `up` with a deploy/local
    script (which `down` then runs again with `stop` and the same environment)."""

    name: Literal["kafka", "postgres"]
    address: str
    started_by_up: bool
    script: str | None = None
    env: dict[str, str] = Field(default_factory=dict)


class LocalRun(_Model):
    """What one `actctl up` started, and how to reach it."""

    format: int = FORMAT_VERSION
    started_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    state_dir: str
    kafka_bootstrap: str = ""
    database_url: str = ""
    topic_suffix: str = ""
    schema_id: str = ""
    backend: str = ""
    reviewer: str = ""
    review_url: str = ""
    complete: bool = False  # every service started and answered
    stack: list[StackPart] = Field(default_factory=list)
    services: list[ServiceProcess] = Field(default_factory=list)

    def service(self, name: str) -> ServiceProcess | None:
        return next((s for s in self.services if s.name == name), None)


def run_file(state_dir: Path) -> Path:
    return state_dir / RUN_FILE


def load(state_dir: Path) -> LocalRun | None:
    """The record in `state_dir`, or None when nothing is up there."""
    path = run_file(state_dir)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc}") from None
    try:
        return LocalRun.model_validate_json(text)
    except ValidationError as exc:
        raise StateError(
            f"{path} is not a run record this version understands ({exc.error_count()} "
            f"problem(s), first: {exc.errors()[0]['msg']}); stop its processes by hand and "
            "delete the file"
        ) from None


def save(run: LocalRun) -> None:
    """Writes the record atomically (a reader sees the old or the new one, never a part)."""
    state_dir = Path(run.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    path = run_file(state_dir)
    partial = path.with_suffix(".json.partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(run.model_dump_json(indent=2))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def remove(state_dir: Path) -> None:
    run_file(state_dir).unlink(missing_ok=True)


@contextmanager
def locked(state_dir: Path) -> Iterator[None]:
    """Holds the state dir's lock, so two `up`/`down` commands never interleave on it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / LOCK_FILE).open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateError(
                f"another actctl up/down is working on {state_dir}; wait for it to finish"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
