"""Export of the ACT dataset to Parquet: one row per record, readable by Ray Data.

Columns (nullable only where said):
- `item_id`, `schema_id`, `schema_version` (int32), `content_ref`, `content_hash`;
- the machine side: `machine_label`, `machine_distribution` (list of {label, probability};
  empty when the annotator gave none), `eps`, `pi` (float64), `delta`, `capped`, `audit` (bool);
- the draw's provenance: `sampler`, `transform_id`, `budget_id`, `seed_id`, `window_id`;
- the models and prompts: `annotator_backend`, `annotator_model`, `annotator_model_revision`,
  `annotator_prompt`, `annotator_prompt_version`, and the same five for `criticizer_`;
- the human side: `state` (not_selected | pending | claimed | reviewed; expired claims read as
  pending), `human_label` (null unless reviewed with a label), `unsure` (null unless reviewed),
  `reviewer` (null unless reviewed), `revision` (int32, 0 unless reviewed);
- times, timestamp[us, UTC]: `decided_at`, `received_at`, `first_reviewed_at` and
  `reviewed_at` (null unless reviewed; the latter is the latest revision's);
- with `include_items=True`, `item`: the serialized act.v1.Item (binary, null when the decision
  did not embed it).

The trainer weights reviewed rows by delta/pi; rows with delta = 1 that are not reviewed yet have
no human label, which the trainer must handle (wait, drop with a warning, or count as missing).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from act.review.tables import records

if TYPE_CHECKING:
    from act.review.store import ReviewStore

EXPORT_FORMAT_VERSION = "1"

_STRING_COLUMNS = (
    "sampler",
    "transform_id",
    "budget_id",
    "seed_id",
    "window_id",
    "annotator_backend",
    "annotator_model",
    "annotator_model_revision",
    "annotator_prompt",
    "annotator_prompt_version",
    "criticizer_backend",
    "criticizer_model",
    "criticizer_model_revision",
    "criticizer_prompt",
    "criticizer_prompt_version",
)


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError(
            f"exporting to Parquet needs pyarrow ({exc}); install it: pip install pyarrow"
        ) from exc
    return pa, pq


def arrow_schema(*, include_items: bool = False) -> Any:
    """The export's Arrow schema."""
    pa, _ = _pyarrow()
    timestamp = pa.timestamp("us", tz="UTC")
    fields = [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("schema_id", pa.string(), nullable=False),
        pa.field("schema_version", pa.int32(), nullable=False),
        pa.field("content_ref", pa.string(), nullable=False),
        pa.field("content_hash", pa.string(), nullable=False),
        pa.field("machine_label", pa.string(), nullable=False),
        pa.field(
            "machine_distribution",
            pa.list_(
                pa.struct(
                    [
                        pa.field("label", pa.string(), nullable=False),
                        pa.field("probability", pa.float64(), nullable=False),
                    ]
                )
            ),
            nullable=False,
        ),
        pa.field("eps", pa.float64(), nullable=False),
        pa.field("pi", pa.float64(), nullable=False),
        pa.field("delta", pa.bool_(), nullable=False),
        pa.field("capped", pa.bool_(), nullable=False),
        pa.field("audit", pa.bool_(), nullable=False),
        *(pa.field(name, pa.string(), nullable=False) for name in _STRING_COLUMNS),
        pa.field("state", pa.string(), nullable=False),
        pa.field("human_label", pa.string()),
        pa.field("unsure", pa.bool_()),
        pa.field("reviewer", pa.string()),
        pa.field("revision", pa.int32(), nullable=False),
        pa.field("decided_at", timestamp, nullable=False),
        pa.field("received_at", timestamp, nullable=False),
        pa.field("first_reviewed_at", timestamp),
        pa.field("reviewed_at", timestamp),
    ]
    if include_items:
        fields.append(pa.field("item", pa.binary()))
    return pa.schema(
        fields,
        metadata={
            "act.export.format_version": EXPORT_FORMAT_VERSION,
            "act.export.created_at": datetime.now(UTC).isoformat(),
        },
    )


def export_parquet(
    store: ReviewStore,
    path: str | Path,
    *,
    schema_id: str | None = None,
    include_items: bool = False,
    batch_size: int = 50_000,
) -> int:
    """Streams every record (of `schema_id`, or all) into a Parquet file; returns the row count."""
    pa, pq = _pyarrow()
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    schema = arrow_schema(include_items=include_items)
    now = store._now()
    c = records.c
    columns = [
        c.item_id,
        c.schema_id,
        c.schema_version,
        c.content_ref,
        c.content_hash,
        c.machine_label,
        c.distribution,
        c.eps,
        c.pi,
        c.delta,
        c.capped,
        c.audit,
        *(c[name] for name in _STRING_COLUMNS),
        c.state,
        c.lease_expires_at,
        c.human_label,
        c.unsure,
        c.reviewer,
        c.revision,
        c.decided_at,
        c.received_at,
        c.first_reviewed_at,
        c.reviewed_at,
    ]
    if include_items:
        columns.append(c.item_pb)
    query = sa.select(*columns).order_by(c.decided_at, c.item_id)
    if schema_id:
        query = query.where(c.schema_id == schema_id)
    total = 0
    try:
        with (
            store._read() as conn,
            pq.ParquetWriter(str(temporary), schema, compression="zstd") as writer,
        ):
            result = conn.execution_options(stream_results=True, yield_per=batch_size).execute(
                query
            )
            for rows in result.partitions():
                writer.write_table(_table(pa, schema, rows, now, include_items))
                total += len(rows)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return total


def _table(pa: Any, schema: Any, rows: list[Any], now: datetime, include_items: bool) -> Any:
    data: dict[str, list[Any]] = {name: [] for name in schema.names}
    for row in rows:
        m = row._mapping
        for name in schema.names:
            if name in ("machine_distribution", "state", "item"):
                continue
            data[name].append(m[name])
        data["machine_distribution"].append(m["distribution"])
        state = m["state"]
        if state == "claimed" and m["lease_expires_at"] <= now:
            state = "pending"
        data["state"].append(state)
        if include_items:
            data["item"].append(m["item_pb"])
    return pa.Table.from_pydict(data, schema=schema)
