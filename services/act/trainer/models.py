"""The downstream models the trainer builds, by name.

- `linear`, `mlp`: any feature shape, flattened (vectors, pixels, sentence embeddings);
- `cnn`: a small convolutional net for C×H×W images (8×8 digits up to 28×28 and beyond);
- `resnet18`: torchvision's ResNet-18 with a `num_classes` head; random weights, or a local
  state-dict file (`model_path`): nothing is downloaded;
- `roberta-base` (any `AutoModelForSequenceClassification` directory): takes token ids made by
  `tokenize_texts` with the tokenizer of the same local directory; offline only.

Every factory takes the shape of one item's features and the class count and returns an
`nn.Module` mapping a batch to logits (N, n_classes).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

InputKind = Literal["float", "token_ids"]


@dataclass(frozen=True)
class ModelSpec:
    """A model family: what it reads and how it is built."""

    name: str
    input_kind: InputKind
    build: Callable[[tuple[int, ...], int, int, Path | None], nn.Module]
    description: str


def _flat_size(item_shape: tuple[int, ...]) -> int:
    return int(np.prod(item_shape))


def _linear(
    item_shape: tuple[int, ...], n_classes: int, hidden_dim: int, model_path: Path | None
) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(_flat_size(item_shape), n_classes))


def _mlp(
    item_shape: tuple[int, ...], n_classes: int, hidden_dim: int, model_path: Path | None
) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(_flat_size(item_shape), hidden_dim),
        nn.ReLU(),
        nn.Linear(hidden_dim, hidden_dim),
        nn.ReLU(),
        nn.Linear(hidden_dim, n_classes),
    )


def _image_channels(name: str, item_shape: tuple[int, ...]) -> int:
    if len(item_shape) != 3:
        raise ValueError(
            f"model {name!r} takes images (C, H, W) per item, got feature shape {item_shape}; "
            "flat pixels need input_shape, e.g. (1, 8, 8) for the 64 digit pixels"
        )
    return item_shape[0]


def _cnn(
    item_shape: tuple[int, ...], n_classes: int, hidden_dim: int, model_path: Path | None
) -> nn.Module:
    channels = _image_channels("cnn", item_shape)
    return nn.Sequential(
        nn.Conv2d(channels, 32, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        # A fixed 4×4 grid: the same head for 8×8 digits and 28×28 images.
        nn.AdaptiveAvgPool2d((4, 4)),
        nn.Flatten(),
        nn.Linear(64 * 16, hidden_dim),
        nn.ReLU(),
        nn.Linear(hidden_dim, n_classes),
    )


def _resnet18(
    item_shape: tuple[int, ...], n_classes: int, hidden_dim: int, model_path: Path | None
) -> nn.Module:
    channels = _image_channels("resnet18", item_shape)
    try:
        from torchvision.models import resnet18
    except ImportError as exc:
        raise ImportError(
            f"model 'resnet18' needs torchvision ({exc}): pip install 'act-pipeline[train]'"
        ) from exc
    model = resnet18(weights=None, num_classes=n_classes)
    if channels != 3:
        model.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if model_path is not None:
        state = _load_state_dict(model_path)
        if channels != 3 and "conv1.weight" in state:
            # Grayscale from RGB filters: the sum keeps the response to a uniform grey image.
            if channels != 1:
                raise ValueError(
                    f"pretrained resnet18 weights take 1 or 3 channels, not {channels}"
                )
            state["conv1.weight"] = state["conv1.weight"].sum(dim=1, keepdim=True)
        head = model.fc.weight.shape
        if state.get("fc.weight", torch.empty(head)).shape != head:
            # An ImageNet head (1000 classes): the new head starts from random weights.
            state = {key: value for key, value in state.items() if not key.startswith("fc.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        unexplained = [key for key in missing if not key.startswith("fc.")]
        if unexplained or unexpected:
            raise ValueError(
                f"{model_path} is not a resnet18 state dict: missing {unexplained[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
    return model


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(
            f"no weights file at {path}: resnet18 loads a local state dict only (e.g. "
            "torchvision's cache, ~/.cache/torch/hub/checkpoints/resnet18-f37072fd.pth); "
            "nothing is downloaded"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    return dict(state)


class SequenceClassifier(nn.Module):
    """A transformers sequence classifier on padded token ids (attention mask: id != pad)."""

    def __init__(self, model: nn.Module, pad_token_id: int) -> None:
        super().__init__()
        self.model = model
        self.pad_token_id = pad_token_id

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        mask = (token_ids != self.pad_token_id).long()
        return self.model(input_ids=token_ids, attention_mask=mask).logits


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise ImportError(
            f"text models need transformers ({exc}): pip install 'act-pipeline[hf]'"
        ) from exc
    return transformers


def _check_model_dir(name: str, model_path: Path | None) -> Path:
    if model_path is None:
        raise ValueError(
            f"model {name!r} needs model_path: a local directory with config and weights "
            "(nothing is downloaded)"
        )
    if not (model_path / "config.json").is_file():
        raise FileNotFoundError(f"{model_path} is not a model directory (no config.json)")
    return model_path


def _offline() -> None:
    # Everything is on disk: make sure nothing tries the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _roberta(
    item_shape: tuple[int, ...], n_classes: int, hidden_dim: int, model_path: Path | None
) -> nn.Module:
    if len(item_shape) != 1:
        raise ValueError(f"text models take token ids (N, L), got feature shape {item_shape}")
    directory = _check_model_dir("roberta-base", model_path)
    transformers = _transformers()
    _offline()
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(directory),
        num_labels=n_classes,
        local_files_only=True,
        ignore_mismatched_sizes=True,  # a new classification head for this schema
    )
    return SequenceClassifier(model, int(model.config.pad_token_id))


def tokenize_texts(texts: Sequence[str], model_path: Path, max_length: int = 128) -> np.ndarray:
    """Token ids (N, max_length), padded with the model's pad id, from the tokenizer stored in
    the same local directory as the model."""
    directory = _check_model_dir("tokenizer", model_path)
    transformers = _transformers()
    _offline()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    encoded = tokenizer(
        list(texts),
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_tensors="np",
    )
    return np.asarray(encoded["input_ids"], dtype=np.int64)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("linear", "float", _linear, "multinomial logistic regression"),
        ModelSpec("mlp", "float", _mlp, "two hidden ReLU layers of hidden_dim units"),
        ModelSpec("cnn", "float", _cnn, "two 3×3 conv layers, 4×4 pooling, one hidden layer"),
        ModelSpec("resnet18", "float", _resnet18, "torchvision ResNet-18, local weights"),
        ModelSpec("roberta-base", "token_ids", _roberta, "transformers sequence classifier"),
    )
}


def build_model(
    name: str,
    item_shape: tuple[int, ...],
    n_classes: int,
    *,
    hidden_dim: int = 128,
    model_path: Path | None = None,
) -> nn.Module:
    """The model `name` for items of `item_shape` and `n_classes` classes (weights seeded by
    the caller's torch.manual_seed)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name].build(item_shape, n_classes, hidden_dim, model_path)
