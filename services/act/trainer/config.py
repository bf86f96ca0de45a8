"""What a training run does: the loss, the model, the optimiser and how weights are handled.

The losses (DESIGN.md §1, §2.1 "What works in training"):
- `human`: cross-entropy on the human label of every item (the fully human-labelled oracle);
- `machine`: cross-entropy on the annotator's labels;
- `act-data`: cross-entropy on the human label where the item was reviewed, else the machine one;
- `act`: the ACT loss of `act.core.loss` with `lam` fixed or power-tuned, the human weight
  delta/pi clipped at `max_weight` (default 1, reported when it bites; None is unbiased).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

LossName = Literal["human", "machine", "act-data", "act"]
LOSSES: tuple[LossName, ...] = ("human", "machine", "act-data", "act")
DEFAULT_MAX_WEIGHT = 1.0


class TrainConfig(BaseModel):
    """Settings of one training run; every field has a tested default except the data."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    loss: LossName = "act"
    model: str = Field(default="mlp", description="A name in act.trainer.models.MODELS.")
    epochs: int = Field(default=20, ge=1)
    batch_size: int = Field(default=64, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    seed: int = 0
    lam: float | Literal["power"] = Field(
        default=1.0,
        description="Weight of the machine-label term in [0, 1]; 'power' re-estimates it by "
        "PPI++ power tuning at the start of every epoch (needs pi > 0 for every item).",
    )
    max_weight: float | None = Field(
        default=DEFAULT_MAX_WEIGHT,
        description="Clip the human weight delta/pi at this value (>= 1); None keeps the "
        "unbiased, unclipped estimator.",
    )
    unlabelled_reviews: Literal["error", "drop"] = Field(
        default="error",
        description="Reviewed rows (delta = 1) that have no human label yet: refuse to train "
        "('error') or drop them with a warning ('drop', which biases the loss slightly).",
    )
    device: Literal["cpu", "cuda", "auto"] = "auto"
    hidden_dim: int = Field(default=128, ge=1, description="Width of the mlp's hidden layers.")
    input_shape: tuple[int, ...] | None = Field(
        default=None,
        description="Shape of one item's features, e.g. (1, 8, 8) for the cnn on flat pixels; "
        "default: the shape the data has.",
    )
    model_path: Path | None = Field(
        default=None,
        description="Local weights (resnet18: a state-dict file) or model directory "
        "(roberta-base); nothing is downloaded.",
    )
    eval_batch_size: int = Field(default=1024, ge=1)
    metrics_path: Path | None = Field(
        default=None, description="Write the per-epoch metrics here (.json or .csv)."
    )

    @field_validator("lam")
    @classmethod
    def _lam_in_range(cls, value: float | str) -> float | str:
        if isinstance(value, float | int) and not 0.0 <= value <= 1.0:
            raise ValueError(f"lam must be in [0, 1] or 'power', got {value}")
        return value

    @field_validator("max_weight")
    @classmethod
    def _max_weight_at_least_one(cls, value: float | None) -> float | None:
        if value is not None and not value >= 1.0:
            raise ValueError(
                f"max_weight must be >= 1 (a reviewed item counts at least once) or None, "
                f"got {value}"
            )
        return value

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        from act.trainer.models import MODELS

        if value not in MODELS:
            raise ValueError(f"unknown model {value!r}; choose one of {', '.join(MODELS)}")
        return value

    @field_validator("metrics_path")
    @classmethod
    def _metrics_format(cls, value: Path | None) -> Path | None:
        if value is not None and value.suffix.lower() not in (".json", ".csv"):
            raise ValueError(f"metrics_path must end in .json or .csv, got {value}")
        return value
