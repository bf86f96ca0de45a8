"""Recorded model outputs: record any backend's outputs to JSONL, and replay them offline.

`RecordingBackend(inner, path)` serves outputs already in the file and calls `inner` only
for the misses (each distinct key once per batch), appending the new outputs, never the
errors, with one write and an fsync per batch. `ReplayBackend(path)` serves from the file
alone: a miss is `NotRecorded` (gRPC NOT_FOUND) naming the missing key. Experiments can so
be rerun without the models, and a paid API is called once per item.

**Keys.** An output is keyed by everything that determines it:
- task ("annotation" or "criticism"); the backend, model and revision (`Backend.model`);
- the prompt strategy and its version (`Backend.prompt_ref`, known before the call);
- the schema id and version;
- the item's content hash (`Item.content_hash`: text, question, images; not the item id,
  so the same content under another id is a hit, served with the new id);
- for criticism also the annotated label, and a digest of the parts of the annotation a
  criticism prompt may read besides the label (its rationale and stated confidence), so
  that devil's-advocate or self-confidence criticism is never served for another argument.

**File format.** One JSON object a line, appended only:
``{"v": 1, "task": ..., "key": {...}, "output": {...}, "recorded_at": "..."}``.
`output` is the Annotation or Criticism as pydantic dumps it. A crash can leave the last
line cut short: a last line without its newline that does not parse is tolerated, reported
(`load_report`, a warning in the log) and dropped; a recorder removes it before its first
append. Any other unreadable line is an error naming the line. The first record of a key
wins. One process writes a file at a time.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from act.inference.base import (
    ANNOTATION_STRATEGIES,
    CRITICISM_STRATEGIES,
    AnnotationOutcome,
    Backend,
    CriticismOutcome,
)
from act.inference.errors import InferenceError, InvalidInput, NotRecorded
from act.inference.types import Annotation, Criticism, Item, LabelSchema, ModelRef, PromptRef

logger = logging.getLogger(__name__)

RECORD_VERSION = 1
Task = Literal["annotation", "criticism"]
Output = Annotation | Criticism
_OUTPUT_TYPES: dict[str, type[Annotation] | type[Criticism]] = {
    "annotation": Annotation,
    "criticism": Criticism,
}


class RecordingFileError(ValueError):
    """A recording file that cannot be read: a corrupt line, an unknown record version."""


class LoadReport(BaseModel):
    """What loading a recording file found."""

    model_config = ConfigDict(frozen=True)

    path: str
    records: int = 0
    duplicates: int = 0
    truncated_tail: bool = False
    dropped_bytes: int = 0


# ----------------------------------------------------------------------------- keys


def _annotation_digest(annotation: Annotation) -> str:
    confidence = annotation.stated_confidence
    payload = json.dumps(
        [annotation.rationale, None if confidence is None else round(confidence, 6)],
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()


def record_key(
    task: Task,
    model: ModelRef,
    prompt: PromptRef,
    schema: LabelSchema,
    item: Item,
    annotation: Annotation | None = None,
) -> dict[str, str | int]:
    """The key of one output (see the module docstring)."""
    key: dict[str, str | int] = {
        "task": task,
        "backend": model.backend,
        "model": model.model,
        "revision": model.revision,
        "strategy": prompt.strategy_id,
        "prompt_version": prompt.version,
        "schema_id": schema.schema_id,
        "schema_version": schema.version,
        "content_sha256": item.content_hash(),
    }
    if task == "criticism":
        if annotation is None:
            raise ValueError("a criticism key needs the annotation")
        key["label"] = annotation.label
        key["annotation_sha256"] = _annotation_digest(annotation)
    return key


def key_text(key: Mapping[str, Any]) -> str:
    """Canonical JSON of a key: the index of a recording file."""
    return json.dumps(key, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# ----------------------------------------------------------------------------- the file


class RecordingFile:
    """An append-only JSONL file of outputs, indexed by key (thread-safe)."""

    def __init__(self, path: str | Path, *, must_exist: bool = False) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._index: dict[str, Output] = {}
        self._keys: dict[str, dict[str, Any]] = {}
        self._repair: tuple[Literal["newline", "truncate"], int] | None = None
        if must_exist and not self.path.exists():
            raise FileNotFoundError(f"recording file {self.path} does not exist")
        self.load_report = self._load()

    def _load(self) -> LoadReport:
        if not self.path.exists():
            return LoadReport(path=str(self.path))
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        complete, tail = lines[:-1], lines[-1]
        records = duplicates = 0
        for number, raw in enumerate(complete, start=1):
            if not raw.strip():
                continue
            new = self._add(self._parse(raw, number))
            records += new
            duplicates += not new
        truncated = False
        dropped = 0
        if tail.strip():
            try:
                parsed = self._parse(tail, len(complete) + 1)
            except RecordingFileError as error:
                truncated, dropped = True, len(tail)
                self._repair = ("truncate", len(data) - len(tail))
                logger.warning(
                    "recording %s: dropped a truncated last line of %d bytes (%s)",
                    self.path,
                    dropped,
                    error,
                )
            else:
                new = self._add(parsed)
                records += new
                duplicates += not new
                self._repair = ("newline", len(data))
        elif tail:
            self._repair = ("newline", len(data))
        return LoadReport(
            path=str(self.path),
            records=records,
            duplicates=duplicates,
            truncated_tail=truncated,
            dropped_bytes=dropped,
        )

    def _parse(self, raw: bytes, number: int) -> tuple[dict[str, Any], Output]:
        where = f"{self.path}:{number}"
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RecordingFileError(f"{where}: not a JSON line ({exc})") from None
        if not isinstance(record, dict):
            raise RecordingFileError(f"{where}: a record must be a JSON object")
        if record.get("v") != RECORD_VERSION:
            raise RecordingFileError(
                f"{where}: record version {record.get('v')!r} is not supported "
                f"(this code reads version {RECORD_VERSION})"
            )
        task = record.get("task")
        key = record.get("key")
        if task not in _OUTPUT_TYPES or not isinstance(key, dict) or key.get("task") != task:
            raise RecordingFileError(f"{where}: a record needs a task and a key of that task")
        try:
            output = _OUTPUT_TYPES[task].model_validate(record.get("output"))
        except ValidationError as exc:
            raise RecordingFileError(f"{where}: invalid {task} output: {exc}") from None
        return key, output

    def _add(self, parsed: tuple[dict[str, Any], Output]) -> bool:
        key, output = parsed
        text = key_text(key)
        if text in self._index:
            return False
        self._index[text] = output
        self._keys[text] = key
        return True

    def __len__(self) -> int:
        return len(self._index)

    def get(self, key: Mapping[str, Any]) -> Output | None:
        return self._index.get(key_text(key))

    def keys(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._keys.values())

    def append(self, task: Task, records: Sequence[tuple[Mapping[str, Any], Output]]) -> None:
        """Append outputs as one write, flushed and fsynced, then index them."""
        if not records:
            return
        now = datetime.now(UTC).isoformat()
        lines = [
            json.dumps(
                {
                    "v": RECORD_VERSION,
                    "task": task,
                    "key": dict(key),
                    "output": output.model_dump(mode="json"),
                    "recorded_at": now,
                },
                ensure_ascii=False,
                separators=(",", ":"),
            )
            for key, output in records
        ]
        payload = ("\n".join(lines) + "\n").encode("utf-8")
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "r+b" if self.path.exists() else "wb") as handle:
                if self._repair is not None:
                    action, offset = self._repair
                    if action == "truncate":
                        handle.truncate(offset)
                    handle.seek(offset)
                    if action == "newline":
                        handle.write(b"\n")
                else:
                    handle.seek(0, os.SEEK_END)
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            self._repair = None
            for key, output in records:
                self._add((dict(key), output))


# ----------------------------------------------------------------------------- backends


def _with_item_id(output: Output, item_id: str) -> Output:
    return output if output.item_id == item_id else output.model_copy(update={"item_id": item_id})


class RecordingBackend(Backend):
    """Serves recorded outputs; calls `inner` for the misses and records what it returns."""

    def __init__(self, inner: Backend, path: str | Path) -> None:
        self.inner = inner
        self.name = inner.name
        self.annotation_strategies = inner.annotation_strategies
        self.criticism_strategies = inner.criticism_strategies
        self.supports_images = inner.supports_images
        self.supports_logprobs = inner.supports_logprobs
        self.file = RecordingFile(path)
        self.hits = 0
        self.misses = 0
        self._warned_prompt = False

    @property
    def load_report(self) -> LoadReport:
        return self.file.load_report

    @property
    def model(self) -> ModelRef:
        return self.inner.model

    def prompt_ref(self, task: Task, strategy: str) -> PromptRef:
        return self.inner.prompt_ref(task, strategy)

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def annotate(
        self, items: Sequence[Item], schema: LabelSchema, strategy: str
    ) -> list[AnnotationOutcome]:
        self.check_annotation_strategy(strategy)
        prompt = self.inner.prompt_ref("annotation", strategy)
        keys = [record_key("annotation", self.model, prompt, schema, item) for item in items]

        async def call(positions: list[int]) -> Sequence[AnnotationOutcome]:
            return await self.inner.annotate([items[i] for i in positions], schema, strategy)

        outcomes = await self._serve("annotation", [item.item_id for item in items], keys, call)
        return outcomes  # type: ignore[return-value]

    async def criticize(
        self,
        annotated: Sequence[tuple[Item, Annotation]],
        schema: LabelSchema,
        strategy: str,
    ) -> list[CriticismOutcome]:
        self.check_criticism_strategy(strategy)
        prompt = self.inner.prompt_ref("criticism", strategy)
        keys = [
            record_key("criticism", self.model, prompt, schema, item, annotation)
            for item, annotation in annotated
        ]

        async def call(positions: list[int]) -> Sequence[CriticismOutcome]:
            return await self.inner.criticize([annotated[i] for i in positions], schema, strategy)

        item_ids = [item.item_id for item, _ in annotated]
        outcomes = await self._serve("criticism", item_ids, keys, call)
        return outcomes  # type: ignore[return-value]

    async def _serve(
        self,
        task: Task,
        item_ids: list[str],
        keys: list[dict[str, str | int]],
        call: Any,
    ) -> list[Output | InferenceError]:
        outcomes: list[Output | InferenceError | None] = [None] * len(item_ids)
        missing: dict[str, list[int]] = {}
        for position, key in enumerate(keys):
            recorded = self.file.get(key)
            if recorded is not None:
                outcomes[position] = _with_item_id(recorded, item_ids[position])
            else:
                missing.setdefault(key_text(key), []).append(position)
        hits = len(item_ids) - sum(len(positions) for positions in missing.values())
        self.hits += hits
        if missing:
            firsts = [positions[0] for positions in missing.values()]
            self.misses += len(firsts)
            results = list(await call(firsts))
            if len(results) != len(firsts):
                raise InferenceError(
                    f"backend {self.inner.name!r} returned {len(results)} outcomes for "
                    f"{len(firsts)} inputs"
                )
            new: list[tuple[Mapping[str, Any], Output]] = []
            for positions, result in zip(missing.values(), results, strict=True):
                for position in positions:
                    if isinstance(result, InferenceError):
                        outcomes[position] = result.for_item(item_ids[position])
                    else:
                        outcomes[position] = _with_item_id(result, item_ids[position])
                if not isinstance(result, InferenceError):
                    new.append((keys[positions[0]], result))
                    self._check_prompt(keys[positions[0]], result)
            await asyncio.to_thread(self.file.append, task, new)
        assert all(outcome is not None for outcome in outcomes)
        return outcomes  # type: ignore[return-value]

    def _check_prompt(self, key: Mapping[str, Any], output: Output) -> None:
        if self._warned_prompt or output.prompt.version == key["prompt_version"]:
            return
        self._warned_prompt = True
        logger.warning(
            "backend %r answered with prompt version %r but declares %r (Backend.prompt_ref): "
            "recorded outputs are keyed by the declared version",
            self.inner.name,
            output.prompt.version,
            key["prompt_version"],
        )


class ReplayBackend(Backend):
    """Serves only recorded outputs; anything else is `NotRecorded` (NOT_FOUND).

    The model replayed is `model`, or the only model in the file. A prompt strategy's
    version is `prompt_versions["<task>:<strategy>"]` (e.g. "criticism:cot"), or the only
    version recorded for it.
    """

    name = "replay"
    annotation_strategies = ANNOTATION_STRATEGIES
    criticism_strategies = CRITICISM_STRATEGIES
    supports_images = True

    def __init__(
        self,
        path: str | Path,
        *,
        model: ModelRef | Mapping[str, str] | None = None,
        prompt_versions: Mapping[str, str] | None = None,
    ) -> None:
        self.file = RecordingFile(path, must_exist=True)
        self.prompt_versions = dict(prompt_versions or {})
        for name in self.prompt_versions:
            task, _, strategy = name.partition(":")
            if task not in _OUTPUT_TYPES or not strategy:
                raise ValueError(
                    f"prompt_versions key {name!r} must read '<task>:<strategy>' with task "
                    "'annotation' or 'criticism'"
                )
        recorded = sorted(
            {(key["backend"], key["model"], key["revision"]) for key in self.file.keys()}
        )
        if model is not None:
            self._model = model if isinstance(model, ModelRef) else ModelRef.model_validate(model)
        elif len(recorded) == 1:
            backend, name, revision = recorded[0]
            self._model = ModelRef(backend=backend, model=name, revision=revision)
        elif not recorded:
            raise ValueError(f"recording file {self.file.path} holds no records; pass model=")
        else:
            choices = [f"{backend}/{name}@{revision}" for backend, name, revision in recorded]
            raise ValueError(
                f"recording file {self.file.path} holds several models {choices}; choose one "
                "with model={'backend': ..., 'model': ..., 'revision': ...}"
            )

    @property
    def load_report(self) -> LoadReport:
        return self.file.load_report

    @property
    def model(self) -> ModelRef:
        return self._model

    def prompt_ref(self, task: Task, strategy: str) -> PromptRef:
        chosen = self.prompt_versions.get(f"{task}:{strategy}")
        if chosen is not None:
            return PromptRef(strategy_id=strategy, version=chosen)
        model = self._model
        versions = sorted(
            {
                key["prompt_version"]
                for key in self.file.keys()
                if key["task"] == task
                and key["strategy"] == strategy
                and (key["backend"], key["model"], key["revision"])
                == (model.backend, model.model, model.revision)
            }
        )
        if len(versions) > 1:
            raise InvalidInput(
                f"recording {self.file.path} holds {task} strategy {strategy!r} in several "
                f"prompt versions {versions}; choose one with prompt_versions"
                f"={{'{task}:{strategy}': ...}}"
            )
        return PromptRef(strategy_id=strategy, version=versions[0] if versions else "")

    async def annotate(
        self, items: Sequence[Item], schema: LabelSchema, strategy: str
    ) -> list[AnnotationOutcome]:
        self.check_annotation_strategy(strategy)
        prompt = self.prompt_ref("annotation", strategy)
        return [
            self._lookup(record_key("annotation", self._model, prompt, schema, item), item)
            for item in items
        ]  # type: ignore[misc]

    async def criticize(
        self,
        annotated: Sequence[tuple[Item, Annotation]],
        schema: LabelSchema,
        strategy: str,
    ) -> list[CriticismOutcome]:
        self.check_criticism_strategy(strategy)
        prompt = self.prompt_ref("criticism", strategy)
        return [
            self._lookup(
                record_key("criticism", self._model, prompt, schema, item, annotation), item
            )
            for item, annotation in annotated
        ]  # type: ignore[misc]

    def _lookup(self, key: dict[str, str | int], item: Item) -> Output | InferenceError:
        recorded = self.file.get(key)
        if recorded is None:
            return NotRecorded(
                f"no recorded {key['task']} for item {item.item_id!r} in {self.file.path}: "
                f"missing key {key_text(key)}",
                item_id=item.item_id,
            )
        return _with_item_id(recorded, item.item_id)
