"""The arrays a training run reads, checked once at the boundary with messages that say why.

`TrainingData` holds one row per item: features, the machine label, the human label (-1 where
there is none), the review decision delta and its probability pi. `EvalData` holds held-out
features with reference labels. Features are float (vectors or C×H×W images) or, for text
models, integer token ids.
"""

from __future__ import annotations

import logging
from typing import Any, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from act.core.validation import as_probability_array
from act.trainer.config import TrainConfig

logger = logging.getLogger(__name__)

NO_HUMAN_LABEL = -1


def _first_index(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))[0])


def check_features(value: Any, name: str = "features") -> np.ndarray:
    """Features as float32 (finite) or int64 token ids (non-negative), at least 2-D, non-empty."""
    array = np.asarray(value)
    if array.ndim < 2:
        raise ValueError(
            f"{name} must have one row per item, shape (N, D) or (N, C, H, W); got shape "
            f"{array.shape}"
        )
    if array.shape[0] == 0:
        raise ValueError(f"{name} is empty: there are no items to train or evaluate on")
    if np.issubdtype(array.dtype, np.integer):
        if (array < 0).any():
            raise ValueError(
                f"{name}: token ids must be >= 0 (first negative at row {_first_index(array < 0)})"
            )
        return array.astype(np.int64, copy=False)
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(
            f"{name} must be numeric (float features or integer token ids), got dtype {array.dtype}"
        )
    features = array.astype(np.float32, copy=False)
    bad = ~np.isfinite(features)
    if bad.any():
        rows = bad.reshape(bad.shape[0], -1).any(axis=1)
        raise ValueError(
            f"{name}: {int(rows.sum())} row(s) hold NaN or infinite values (first at row "
            f"{_first_index(bad)}); clean or drop them before training"
        )
    return features


def check_labels(
    value: Any, name: str, n_classes: int | None, *, allow_missing: bool
) -> np.ndarray:
    """Class indices as int64, in [0, n_classes) (or -1 for 'no label' when allowed)."""
    array = np.asarray(value)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one label per item), got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype {array.dtype}")
    labels = array.astype(np.int64, copy=False)
    lowest = NO_HUMAN_LABEL if allow_missing else 0
    outside = (labels < lowest) | (labels >= (n_classes or np.iinfo(np.int64).max))
    if outside.any():
        first = int(np.flatnonzero(outside)[0])
        allowed = f"[0, {n_classes or 'n_classes'})" + (
            " or -1 (no label)" if allow_missing else ""
        )
        raise ValueError(
            f"{name}: {int(outside.sum())} label(s) outside the schema's classes "
            f"(first: {name}[{first}] = {int(labels[first])}; allowed {allowed})"
        )
    return labels


class ReviewColumns(BaseModel):
    """The label side of the data, one entry per item: what the Ray driver checks up front
    without reading the features."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    machine_labels: Any
    human_labels: Any
    delta: Any
    pi: Any
    n_classes: int = Field(ge=2)
    class_names: list[str] | None = None
    item_ids: list[str] | None = None

    @field_validator("delta")
    @classmethod
    def _delta(cls, value: Any) -> np.ndarray:
        array = np.asarray(value)
        if array.ndim != 1:
            raise ValueError(f"delta must be 1-D, got shape {array.shape}")
        if array.dtype != np.bool_ and not np.isin(array, (0, 1)).all():
            raise ValueError("delta must hold only 0/1 or booleans (reviewed or not)")
        return array.astype(bool)

    @field_validator("pi")
    @classmethod
    def _pi(cls, value: Any) -> np.ndarray:
        return as_probability_array(value, "pi", allow_empty=True)

    @model_validator(mode="after")
    def _consistent_columns(self) -> Self:
        lengths = {
            "machine_labels": len(np.asarray(self.machine_labels).reshape(-1)),
            "human_labels": len(np.asarray(self.human_labels).reshape(-1)),
            "delta": len(self.delta),
            "pi": len(self.pi),
        }
        if self.item_ids is not None:
            lengths["item_ids"] = len(self.item_ids)
        if len(set(lengths.values())) > 1:
            raise ValueError(
                ", ".join(f"{name} has {length}" for name, length in lengths.items())
                + " entries: every column needs one entry per item"
            )
        self.machine_labels = check_labels(
            self.machine_labels, "machine_labels", self.n_classes, allow_missing=False
        )
        self.human_labels = check_labels(
            self.human_labels, "human_labels", self.n_classes, allow_missing=True
        )
        impossible = self.delta & (self.pi == 0.0)
        if impossible.any():
            raise ValueError(
                f"{int(impossible.sum())} reviewed item(s) have pi = 0 (first at row "
                f"{int(np.flatnonzero(impossible)[0])}): delta = 1 cannot be drawn with "
                "probability 0, and the weight delta/pi would be infinite"
            )
        if self.class_names is not None:
            if len(self.class_names) != self.n_classes:
                raise ValueError(
                    f"class_names has {len(self.class_names)} names but n_classes is "
                    f"{self.n_classes}"
                )
            if len(set(self.class_names)) != len(self.class_names):
                raise ValueError("class_names repeats a name")
        return self


class TrainingData(ReviewColumns):
    """One row per item: features, machine label, human label (-1: none), delta and pi."""

    features: Any

    @field_validator("features")
    @classmethod
    def _features(cls, value: Any) -> np.ndarray:
        return check_features(value)

    @model_validator(mode="after")
    def _one_row_per_item(self) -> Self:
        if self.features.shape[0] != len(self.delta):
            raise ValueError(
                f"features has {self.features.shape[0]} rows but the label columns have "
                f"{len(self.delta)} entries: every column needs one entry per item"
            )
        return self

    @property
    def n_items(self) -> int:
        return int(self.features.shape[0])

    def rows(self, keep: np.ndarray) -> TrainingData:
        """The rows where `keep` is true, re-validated."""
        return TrainingData(
            features=self.features[keep],
            machine_labels=self.machine_labels[keep],
            human_labels=self.human_labels[keep],
            delta=self.delta[keep],
            pi=self.pi[keep],
            n_classes=self.n_classes,
            class_names=self.class_names,
            item_ids=None if self.item_ids is None else list(np.asarray(self.item_ids)[keep]),
        )


class EvalData(BaseModel):
    """Held-out features with their reference labels (class indices)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    features: Any
    labels: Any

    @field_validator("features")
    @classmethod
    def _features(cls, value: Any) -> np.ndarray:
        return check_features(value, "eval features")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        labels = np.asarray(self.labels)
        if labels.shape != (self.features.shape[0],):
            raise ValueError(
                f"eval features has {self.features.shape[0]} rows but eval labels has shape "
                f"{labels.shape}: one label per item"
            )
        # The class count is the training data's: `check_for_training` checks the upper end.
        self.labels = check_labels(labels, "eval labels", None, allow_missing=False)
        return self


def rows_to_drop(config: TrainConfig, columns: ReviewColumns) -> np.ndarray:
    """The reviewed rows without a human label that config.unlabelled_reviews = 'drop' removes
    (a boolean mask); ValueError when the loss needs human labels the data lacks."""
    if config.loss == "human":
        missing = columns.human_labels == NO_HUMAN_LABEL
        if missing.any():
            raise ValueError(
                f"loss 'human' trains on the human label of every item, but {int(missing.sum())}"
                f" of {len(missing)} items have none (first at row "
                f"{int(np.flatnonzero(missing)[0])}); it is the fully human-labelled oracle"
            )
    if config.loss not in ("act", "act-data"):
        return np.zeros(len(columns.delta), dtype=bool)
    unlabelled = columns.delta & (columns.human_labels == NO_HUMAN_LABEL)
    if unlabelled.any():
        if config.unlabelled_reviews == "error":
            raise ValueError(
                f"{int(unlabelled.sum())} reviewed item(s) (delta = 1) have no human label yet "
                f"(first at row {int(np.flatnonzero(unlabelled)[0])}); wait for the reviews, or "
                "pass unlabelled_reviews='drop' to train without them (slightly biased)"
            )
        logger.warning(
            "dropping %d reviewed item(s) without a human label yet: the loss is slightly "
            "biased towards the items that were reviewed faster",
            int(unlabelled.sum()),
        )
    return unlabelled


def check_eval(eval_data: EvalData, n_classes: int, item_shape: tuple[int, ...]) -> None:
    """Held-out data must look like the training data: same item shape, same classes."""
    if tuple(eval_data.features.shape[1:]) != tuple(item_shape):
        raise ValueError(
            f"eval features have shape {eval_data.features.shape[1:]} per item but the "
            f"training features {tuple(item_shape)}"
        )
    check_labels(eval_data.labels, "eval labels", n_classes, allow_missing=False)
