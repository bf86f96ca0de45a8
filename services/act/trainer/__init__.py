"""Training the downstream model on ACT data: in-process (`train_in_process`) or on Ray Train.

    from act.trainer import TrainConfig, TrainingData, EvalData, train_in_process
    result = train_in_process(TrainConfig(loss="act"), data, eval_data)

See docs/training.md for the losses, the clipping default and the Ray path. The names below
are imported on first use, so that `actctl` starts without loading torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from act.trainer.checkpoint import LoadedCheckpoint, load_checkpoint, save_checkpoint
    from act.trainer.config import LOSSES, TrainConfig
    from act.trainer.data import NO_HUMAN_LABEL, EvalData, ReviewColumns, TrainingData
    from act.trainer.featurize import FEATURIZERS, featurize_export
    from act.trainer.loop import TrainResult, train_in_process, write_metrics
    from act.trainer.models import MODELS, build_model, tokenize_texts
    from act.trainer.ray_train import RayTrainResult, local_ray_init, train_with_ray
    from act.trainer.table import (
        TableInfo,
        read_eval_table,
        read_training_table,
        write_training_table,
    )

_HOMES = {
    "act.trainer.checkpoint": ("LoadedCheckpoint", "load_checkpoint", "save_checkpoint"),
    "act.trainer.config": ("LOSSES", "TrainConfig"),
    "act.trainer.data": ("NO_HUMAN_LABEL", "EvalData", "ReviewColumns", "TrainingData"),
    "act.trainer.featurize": ("FEATURIZERS", "featurize_export"),
    "act.trainer.loop": ("TrainResult", "train_in_process", "write_metrics"),
    "act.trainer.models": ("MODELS", "build_model", "tokenize_texts"),
    "act.trainer.ray_train": ("RayTrainResult", "local_ray_init", "train_with_ray"),
    "act.trainer.table": (
        "TableInfo",
        "read_eval_table",
        "read_training_table",
        "write_training_table",
    ),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}
__all__ = [
    "FEATURIZERS",
    "LOSSES",
    "MODELS",
    "NO_HUMAN_LABEL",
    "EvalData",
    "LoadedCheckpoint",
    "RayTrainResult",
    "ReviewColumns",
    "TableInfo",
    "TrainConfig",
    "TrainResult",
    "TrainingData",
    "build_model",
    "featurize_export",
    "load_checkpoint",
    "local_ray_init",
    "read_eval_table",
    "read_training_table",
    "save_checkpoint",
    "tokenize_texts",
    "train_in_process",
    "train_with_ray",
    "write_metrics",
    "write_training_table",
]


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'act.trainer' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    globals()[name] = value
    return value
