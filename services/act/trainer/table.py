"""The featurized training table: what `actctl train` and the Ray workers read (Parquet).

Columns, one row per item:
- `item_id` (string);
- `features`: list<float32> of a fixed length (or list<int64> token ids for text models);
- `machine_label` (int32 class index), `human_label` (int32 class index, null: no human label);
- `delta` (bool), `pi` (float64).
Schema metadata: `act.train.class_names` (JSON list: index -> name), `act.train.feature_shape`
(JSON list: the shape of one item, e.g. [1, 8, 8]), `act.train.featurizer` (how the features
were made) and `act.train.format_version`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from act.trainer.data import NO_HUMAN_LABEL, EvalData, ReviewColumns, TrainingData

TABLE_FORMAT_VERSION = "1"
LABEL_COLUMNS = ("item_id", "machine_label", "human_label", "delta", "pi")
COLUMNS = (*LABEL_COLUMNS[:1], "features", *LABEL_COLUMNS[1:])
_META = "act.train."


class TableInfo(BaseModel):
    """What a training table's metadata says about it."""

    model_config = ConfigDict(frozen=True)

    class_names: list[str]
    feature_shape: tuple[int, ...]
    featurizer: str
    token_ids: bool  # features are integer token ids (text models), not floats
    n_rows: int

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError(
            f"training tables are Parquet and need pyarrow ({exc}): "
            "pip install 'act-pipeline[train]'"
        ) from exc
    return pa, pq


def as_paths(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """One or more Parquet files (a directory stands for the *.parquet files in it)."""
    given = [paths] if isinstance(paths, str | Path) else list(paths)
    files: list[Path] = []
    for entry in map(Path, given):
        if entry.is_dir():
            files.extend(sorted(entry.glob("*.parquet")))
        elif entry.is_file():
            files.append(entry)
        else:
            raise FileNotFoundError(f"{entry}: no such file or directory")
    if not files:
        raise ValueError(f"no Parquet files in {', '.join(map(str, given))}")
    return files


def write_training_table(
    data: TrainingData,
    path: str | Path,
    *,
    featurizer: str = "",
    feature_shape: tuple[int, ...] | None = None,
) -> Path:
    """Writes `data` as a training table; feature_shape defaults to the features' own shape."""
    pa, pq = _pyarrow()
    target = Path(path)
    n = data.n_items
    flat = data.features.reshape(n, -1)
    shape = feature_shape or tuple(int(size) for size in data.features.shape[1:])
    if int(np.prod(shape)) != flat.shape[1]:
        raise ValueError(f"feature_shape {shape} does not hold {flat.shape[1]} features per item")
    token_ids = np.issubdtype(flat.dtype, np.integer)
    value_type = pa.int64() if token_ids else pa.float32()
    features = pa.ListArray.from_arrays(
        pa.array(np.arange(0, flat.size + 1, flat.shape[1], dtype=np.int32)),
        pa.array(flat.reshape(-1), type=value_type),
    )
    class_names = data.class_names or [str(index) for index in range(data.n_classes)]
    schema = pa.schema(
        [
            pa.field("item_id", pa.string(), nullable=False),
            pa.field("features", pa.list_(value_type), nullable=False),
            pa.field("machine_label", pa.int32(), nullable=False),
            pa.field("human_label", pa.int32()),
            pa.field("delta", pa.bool_(), nullable=False),
            pa.field("pi", pa.float64(), nullable=False),
        ],
        metadata={
            f"{_META}format_version": TABLE_FORMAT_VERSION,
            f"{_META}class_names": json.dumps(class_names),
            f"{_META}feature_shape": json.dumps(list(shape)),
            f"{_META}featurizer": featurizer,
        },
    )
    human = data.human_labels
    table = pa.Table.from_arrays(
        [
            pa.array(data.item_ids or [f"row-{index}" for index in range(n)], pa.string()),
            features,
            pa.array(data.machine_labels.astype(np.int32)),
            pa.array(human.astype(np.int32), mask=human == NO_HUMAN_LABEL),
            pa.array(data.delta),
            pa.array(data.pi),
        ],
        schema=schema,
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, target, compression="zstd")
    return target


def read_table_info(paths: str | Path | Sequence[str | Path]) -> TableInfo:
    """The metadata of a training table (one or more files that must agree); ValueError naming
    what is missing when a file is not a training table."""
    _, pq = _pyarrow()
    infos = []
    for path in as_paths(paths):
        schema = pq.read_schema(path)
        missing = [name for name in COLUMNS if name not in schema.names]
        metadata = {key.decode(): value.decode() for key, value in (schema.metadata or {}).items()}
        if missing:
            hint = (
                " (this is a review export: featurize it first, `actctl featurize`)"
                if "state" in schema.names
                else ""
            )
            raise ValueError(f"{path}: missing column(s) {missing}{hint}")
        if f"{_META}class_names" not in metadata:
            raise ValueError(f"{path}: no {_META}class_names metadata: not a training table")
        value_type = schema.field("features").type.value_type
        infos.append(
            TableInfo(
                class_names=json.loads(metadata[f"{_META}class_names"]),
                feature_shape=tuple(json.loads(metadata[f"{_META}feature_shape"])),
                featurizer=metadata.get(f"{_META}featurizer", ""),
                token_ids=str(value_type).startswith("int"),
                n_rows=pq.ParquetFile(path).metadata.num_rows,
            )
        )
    first = infos[0]
    for info in infos[1:]:
        if (info.class_names, info.feature_shape, info.token_ids) != (
            first.class_names,
            first.feature_shape,
            first.token_ids,
        ):
            raise ValueError("the training table's files disagree on classes or feature shape")
    return first.model_copy(update={"n_rows": sum(info.n_rows for info in infos)})


def _read(paths: list[Path], columns: Sequence[str]) -> Any:
    pa, pq = _pyarrow()
    return pa.concat_tables([pq.read_table(path, columns=list(columns)) for path in paths])


def _review_arrays(table: Any) -> dict[str, Any]:
    return {
        "item_ids": table.column("item_id").to_pylist(),
        "machine_labels": table.column("machine_label").to_numpy().astype(np.int64),
        "human_labels": table.column("human_label")
        .fill_null(NO_HUMAN_LABEL)
        .to_numpy()
        .astype(np.int64),
        "delta": table.column("delta").to_numpy(zero_copy_only=False),
        "pi": table.column("pi").to_numpy(),
    }


def read_review_columns(paths: str | Path | Sequence[str | Path]) -> ReviewColumns:
    """Every column but the features, checked (what the Ray driver validates up front)."""
    info = read_table_info(paths)
    table = _read(as_paths(paths), LABEL_COLUMNS)
    return ReviewColumns(
        **_review_arrays(table), n_classes=info.n_classes, class_names=info.class_names
    )


def read_training_table(paths: str | Path | Sequence[str | Path]) -> tuple[TrainingData, TableInfo]:
    """The whole table in memory, checked, with features in their item shape."""
    info = read_table_info(paths)
    table = _read(as_paths(paths), COLUMNS)
    flat = np.asarray(table.column("features").combine_chunks().flatten().to_numpy())
    lengths = table.column("features").combine_chunks().value_lengths().to_numpy()
    expected = int(np.prod(info.feature_shape))
    if (lengths != expected).any():
        first = int(np.flatnonzero(lengths != expected)[0])
        raise ValueError(
            f"row {first} has {int(lengths[first])} features; the table's feature shape "
            f"{info.feature_shape} needs {expected} in every row"
        )
    data = TrainingData(
        features=flat.reshape(table.num_rows, *info.feature_shape),
        **_review_arrays(table),
        n_classes=info.n_classes,
        class_names=info.class_names,
    )
    return data, info


def read_eval_table(paths: str | Path | Sequence[str | Path]) -> EvalData:
    """A training table as held-out data: the reference label is the human label, or the
    machine label where there is none (so a fully human-labelled table is the truth)."""
    data, _ = read_training_table(paths)
    labels = np.where(data.human_labels == NO_HUMAN_LABEL, data.machine_labels, data.human_labels)
    return EvalData(features=data.features, labels=labels)
