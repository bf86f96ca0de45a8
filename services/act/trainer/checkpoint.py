"""A trained model on disk: its weights, the settings that built it and its metrics.

A checkpoint directory holds `model.pt` (the state dict, CPU tensors), `model.json` (the
TrainConfig, class names and item shape) and `history.json` (the per-epoch metrics). The same
format comes from `actctl train` in-process and from rank 0 of a Ray Train run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from act.trainer.config import TrainConfig
from act.trainer.models import build_model

WEIGHTS_FILE = "model.pt"
MODEL_FILE = "model.json"
HISTORY_FILE = "history.json"


@dataclass(frozen=True)
class LoadedCheckpoint:
    model: nn.Module
    config: TrainConfig
    class_names: list[str]
    item_shape: tuple[int, ...]
    history: list[dict[str, Any]]


def save_checkpoint(
    directory: str | Path,
    model: nn.Module,
    config: TrainConfig,
    *,
    class_names: list[str],
    item_shape: tuple[int, ...],
    history: list[dict[str, Any]],
) -> Path:
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    torch.save(state, target / WEIGHTS_FILE)
    description = {
        "config": config.model_dump(mode="json"),
        "class_names": class_names,
        "item_shape": list(item_shape),
    }
    (target / MODEL_FILE).write_text(json.dumps(description, indent=2) + "\n")
    (target / HISTORY_FILE).write_text(json.dumps(history, indent=2) + "\n")
    return target


def load_checkpoint(directory: str | Path) -> LoadedCheckpoint:
    """The model rebuilt from its settings with the saved weights, in evaluation mode."""
    source = Path(directory)
    for name in (WEIGHTS_FILE, MODEL_FILE):
        if not (source / name).is_file():
            raise FileNotFoundError(f"{source} is not a trainer checkpoint (no {name})")
    description = json.loads((source / MODEL_FILE).read_text())
    config = TrainConfig.model_validate(description["config"])
    item_shape = tuple(description["item_shape"])
    class_names = list(description["class_names"])
    model = build_model(
        config.model,
        item_shape,
        len(class_names),
        hidden_dim=config.hidden_dim,
        model_path=config.model_path,
    )
    model.load_state_dict(torch.load(source / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    history_path = source / HISTORY_FILE
    history = json.loads(history_path.read_text()) if history_path.is_file() else []
    return LoadedCheckpoint(model.eval(), config, class_names, item_shape, history)
