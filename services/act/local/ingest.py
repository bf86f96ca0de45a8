"""Items from files for act.items.v1: JSONL, CSV, Parquet, or a folder of images.

Every row is one item, with these fields (docs/local.md has examples):

- `id`: required; a non-empty string (an integer is taken as its decimal text), unique in the
  source; the Kafka key.
- `text`: the text to label (or an image's caption).
- `question`: a question about the content (VQA); optional.
- `image`: a path to an image file, relative to the source file's folder or absolute; in
  Parquet also the image's bytes (a binary column).
- `image_base64`: the image's bytes in base64 (JSONL, CSV).
- `schema_id`: the label schema; optional, and when given it must be the pipeline's (one
  sampler labels every item with one schema).
- `metadata` (JSONL): an object of string, number or boolean values; `metadata.<key>` (any
  format): one metadata entry.

An item needs text or an image (at most one image per row). Images must be a format Pillow
reads (PNG, JPEG, GIF, WebP, BMP, ...) of at most 8 MiB, and the whole item must fit the bus's
payload limit (`ACT_MAX_PAYLOAD_BYTES`, 1 MiB by default). A folder yields one item per image
file (`.png .jpg .jpeg .gif .webp .bmp`, searched recursively), its id the path relative to the
folder; other files are listed as ignored, never dropped silently.

Bad rows: `check` reads the whole source first and reports every bad row with its place
(`file:line` for JSONL and CSV, `file: row N` for Parquet, the file for a folder), and `actctl
ingest` then sends nothing. An unknown field or column is an error too (not silently ignored).
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from act.inference.types import MAX_IMAGE_BYTES, Image, Item, item_to_proto
from act.v1 import types_pb2
from act.validation import validation_problems

SourceFormat = Literal["jsonl", "csv", "parquet", "folder"]
FIELDS = ("id", "text", "question", "image", "image_base64", "schema_id", "metadata")
METADATA_PREFIX = "metadata."
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp"})
SUFFIX_FORMATS: dict[str, SourceFormat] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
PARQUET_BATCH_ROWS = 1024


class IngestError(ValueError):
    """The source as a whole cannot be read (missing, unknown format, bad header)."""


@dataclass(frozen=True)
class RowError:
    """A row that cannot become an item: where it is and why."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(frozen=True)
class Row:
    where: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class IngestItem:
    """An item read from a source, with the label schema it is for."""

    where: str
    item: Item
    schema_id: str

    def to_proto(self) -> types_pb2.Item:
        message = item_to_proto(self.item)
        message.schema_id = self.schema_id
        return message


@dataclass
class CheckReport:
    """What a pass over a whole source found."""

    items: int = 0
    errors: list[RowError] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # folder files that are not images


# ----------------------------------------------------------------------------- reading rows


def source_format(path: Path) -> SourceFormat:
    if path.is_dir():
        return "folder"
    if not path.is_file():
        raise IngestError(f"{path}: no such file or folder")
    fmt = SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(SUFFIX_FORMATS))
        raise IngestError(f"{path}: unknown format {path.suffix!r} (use {known}, or a folder)")
    return fmt


def _unknown_fields(names: Iterable[str]) -> list[str]:
    return [n for n in names if n not in FIELDS and not n.startswith(METADATA_PREFIX)]


def _check_columns(path: Path, columns: list[str]) -> None:
    if "id" not in columns:
        raise IngestError(f"{path}: no 'id' column (columns: {columns})")
    unknown = _unknown_fields(columns)
    if unknown:
        raise IngestError(
            f"{path}: unknown column(s) {unknown}; known: {list(FIELDS)} and {METADATA_PREFIX}<key>"
        )
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise IngestError(f"{path}: repeated column(s) {repeated}")


def _jsonl_rows(path: Path) -> Iterator[Row | RowError]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield RowError(where, f"not UTF-8 ({exc.reason} at byte {exc.start})")
                continue
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                yield RowError(where, f"not valid JSON ({exc.msg}, column {exc.colno})")
                continue
            if not isinstance(value, dict):
                yield RowError(where, f"expected a JSON object, got {type(value).__name__}")
                continue
            unknown = _unknown_fields(value)
            if unknown:
                yield RowError(where, f"unknown field(s) {unknown}; known: {list(FIELDS)}")
                continue
            yield Row(where, value)


def _csv_rows(path: Path) -> Iterator[Row | RowError]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
            if header is None:
                raise IngestError(f"{path}: empty file (expected a header line)")
            _check_columns(path, header)
            start = reader.line_num + 1
            for values in reader:
                where = f"{path}:{start}"
                start = reader.line_num + 1
                if not any(v.strip() for v in values):
                    continue
                if len(values) != len(header):
                    yield RowError(where, f"{len(values)} fields, the header has {len(header)}")
                    continue
                yield Row(where, dict(zip(header, values, strict=True)))
        except UnicodeDecodeError as exc:
            raise IngestError(
                f"{path}: not UTF-8 text after line {reader.line_num} ({exc.reason})"
            ) from None
        except csv.Error as exc:
            raise IngestError(f"{path}:{reader.line_num}: {exc}") from None


def _parquet_rows(path: Path) -> Iterator[Row | RowError]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise IngestError(f"{path}: not a readable Parquet file ({exc})") from None
    _check_columns(path, list(parquet.schema_arrow.names))
    number = 0
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
        for values in batch.to_pylist():
            number += 1
            yield Row(f"{path}: row {number}", values)


def _folder_rows(path: Path, ignored: list[str]) -> Iterator[Row | RowError]:
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        relative = file.relative_to(path).as_posix()
        if file.suffix.lower() in IMAGE_SUFFIXES:
            yield Row(str(file), {"id": relative, "image": str(file.resolve())})
        else:
            ignored.append(relative)


def read_rows(path: Path, ignored: list[str] | None = None) -> Iterator[Row | RowError]:
    """The rows of a source, or the errors of rows that are not even records. Folder files
    that are not images are appended to `ignored`."""
    fmt = source_format(path)
    if fmt == "jsonl":
        return _jsonl_rows(path)
    if fmt == "csv":
        return _csv_rows(path)
    if fmt == "parquet":
        return _parquet_rows(path)
    return _folder_rows(path, ignored if ignored is not None else [])


# ----------------------------------------------------------------------------- rows to items


def _present(value: Any) -> bool:
    return value is not None and value != ""


def _image_bytes(fields: dict[str, Any], base_dir: Path) -> bytes | None:
    """The row's image, read or decoded; ValueError saying what is wrong."""
    image, encoded = fields.get("image"), fields.get("image_base64")
    if _present(image) and _present(encoded):
        raise ValueError("give one of image and image_base64, not both")
    if _present(encoded):
        if not isinstance(encoded, str):
            raise ValueError("image_base64 must be a base64 string")
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("image_base64 is not valid base64") from None
    if not _present(image):
        return None
    if isinstance(image, bytes):
        return image
    if not isinstance(image, str):
        raise ValueError(f"image must be a path (or bytes in Parquet), got {type(image).__name__}")
    file = Path(image).expanduser()
    file = file if file.is_absolute() else base_dir / file
    try:
        size = file.stat().st_size
    except OSError:
        raise ValueError(f"image file {file} does not exist") from None
    if size > MAX_IMAGE_BYTES:
        raise ValueError(f"image file {file} has {size} bytes, more than {MAX_IMAGE_BYTES}")
    try:
        return file.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read image file {file}: {exc.strerror}") from None


def _mime_type(data: bytes) -> str:
    """The image's MIME type, from its content; ValueError when Pillow cannot read it."""
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    if len(data) > MAX_IMAGE_BYTES:
        raise ValueError(f"image of {len(data)} bytes exceeds the limit of {MAX_IMAGE_BYTES}")
    try:
        with PILImage.open(io.BytesIO(data)) as image:
            fmt = image.format
            image.verify()
    except UnidentifiedImageError:  # its message names the in-memory buffer, not the file
        raise ValueError("the image is not one Pillow can read (unknown format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"the image is not one Pillow can read ({exc})") from None
    return PILImage.MIME.get(fmt or "", f"image/{(fmt or 'unknown').lower()}")


def _item_id(value: Any) -> str:
    if value is None:  # absent, JSON null, or a CSV/Parquet null
        raise ValueError("id is missing: every item needs one")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"id must be a string or an integer, got {type(value).__name__}")
    text = str(value)
    if not text:
        raise ValueError("id is empty")
    return text


def _metadata(fields: dict[str, Any]) -> dict[str, str]:
    entries: dict[str, Any] = {}
    nested = fields.get("metadata")
    if nested is not None:
        if not isinstance(nested, dict):
            raise ValueError("metadata must be an object of string values")
        entries.update(nested)
    for name, value in fields.items():
        if name.startswith(METADATA_PREFIX) and _present(value):  # an empty CSV cell: no entry
            entries[name[len(METADATA_PREFIX) :]] = value
    metadata: dict[str, str] = {}
    for key, value in entries.items():
        if isinstance(value, dict | list | bytes):
            raise ValueError(f"metadata {key!r} must be a string, number or boolean")
        metadata[str(key)] = value if isinstance(value, str) else json.dumps(value)
    return metadata


def to_item(row: Row, base_dir: Path, schema_id: str) -> IngestItem | RowError:
    """The item of one row, for the pipeline's label schema `schema_id`, or why not."""
    fields = row.fields
    try:
        item_id = _item_id(fields.get("id"))
        row_schema = fields.get("schema_id")
        if _present(row_schema) and row_schema != schema_id:
            raise ValueError(
                f"schema_id {row_schema!r} is not the pipeline's schema {schema_id!r} "
                "(one sampler labels every item with one schema)"
            )
        for name in ("text", "question"):
            if fields.get(name) is not None and not isinstance(fields[name], str):
                raise ValueError(f"{name} must be a string, got {type(fields[name]).__name__}")
        data = _image_bytes(fields, base_dir)
        images = () if data is None else (Image(data=data, mime_type=_mime_type(data)),)
        item = Item(
            item_id=item_id,
            text=fields.get("text") or "",
            question=fields.get("question") or None,
            images=images,
            metadata=_metadata(fields),
        )
    except ValidationError as exc:
        return RowError(row.where, validation_problems(exc))
    except ValueError as exc:
        return RowError(row.where, str(exc))
    return IngestItem(row.where, item, schema_id)


def items(
    path: Path, schema_id: str, ignored: list[str] | None = None
) -> Iterator[IngestItem | RowError]:
    """Every row of the source as an item or an error, in source order."""
    base_dir = path if path.is_dir() else path.parent
    for row in read_rows(path, ignored):
        yield row if isinstance(row, RowError) else to_item(row, base_dir, schema_id)


def check(
    path: Path,
    schema_id: str,
    max_payload_bytes: int | None = None,
    on_row: Callable[[], None] | None = None,
) -> CheckReport:
    """Reads the whole source: counts the items and collects every bad row (including a
    repeated id, and an item too large for the bus)."""
    from act.bus import MalformedMessage, encode

    report = CheckReport()
    first_seen: dict[str, str] = {}
    for outcome in items(path, schema_id, report.ignored):
        if on_row is not None:
            on_row()
        if isinstance(outcome, RowError):
            report.errors.append(outcome)
            continue
        item_id = outcome.item.item_id
        if item_id in first_seen:
            report.errors.append(
                RowError(outcome.where, f"id {item_id!r} repeats (first at {first_seen[item_id]})")
            )
            continue
        first_seen[item_id] = outcome.where
        try:
            encode(outcome.to_proto(), max_payload_bytes=max_payload_bytes)
        except MalformedMessage as exc:
            report.errors.append(RowError(outcome.where, str(exc)))
            continue
        report.items += 1
    return report


# ----------------------------------------------------------------------------- sending


def send(
    records: Iterable[IngestItem | RowError],
    producer: Any,
    topic: str,
    on_delivered: Callable[[int], None],
    chunk: int = 2000,
) -> int:
    """Publishes every item (key: its id) and waits until the broker has them all; returns
    how many. Progress (`on_delivered`) counts acknowledged records, in chunks. A row error
    here means the source changed since `check`: IngestError, after what was sent."""
    from act.bus.clients import flush_and_check, publish

    delivered = 0
    futures: list[Any] = []

    def settle() -> None:
        nonlocal delivered, futures
        flush_and_check(futures, producer=producer, timeout_s=120.0)
        delivered += len(futures)
        on_delivered(len(futures))
        futures = []

    for record in records:
        if isinstance(record, RowError):
            if futures:
                settle()
            raise IngestError(
                f"{record} (the source changed since it was checked; {delivered} items were "
                "sent before this row)"
            )
        futures.append(publish(producer, topic, record.to_proto(), source="actctl-ingest"))
        if len(futures) >= chunk:
            settle()
    if futures:
        settle()
    return delivered
