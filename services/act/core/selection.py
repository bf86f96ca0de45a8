"""Choice of annotator and criticizer: the ACT paper's "Pro Max" rule.

Lin et al., "ACT as Human: Multimodal LLM Data Annotation with Critical Thinking"
(NeurIPS 2025), "From Insights to Practice": prepare the candidate MLLMs and a small set of
human-annotated data, test the annotation accuracy of every candidate, use the most
accurate one as the annotator and the second most accurate as the criticizer. Two distinct
models are needed because cross-criticism outperforms self-criticism (the paper's
insight 3).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike
from pydantic import BaseModel, ConfigDict

from act.core.metrics import accuracy_interval

__all__ = ["ModelAccuracy", "ProMaxSelection", "pro_max"]


class ModelAccuracy(BaseModel):
    """Accuracy of one candidate model on the human-labelled set, with its Wilson interval."""

    model_config = ConfigDict(frozen=True)

    name: str
    accuracy: float
    lower: float
    upper: float
    n: int


class ProMaxSelection(BaseModel):
    """Outcome of :func:`pro_max`. ``top_two_indistinguishable`` is True when the Wilson
    intervals of the two best candidates overlap: the evaluation set is then too small to
    tell them apart, and the caller should say so (or label more items)."""

    model_config = ConfigDict(frozen=True)

    annotator: str
    criticizer: str
    ranking: tuple[ModelAccuracy, ...]
    top_two_indistinguishable: bool
    alpha: float


def _rank_candidates(
    candidate_labels: Mapping[str, ArrayLike], y_true: ArrayLike, alpha: float
) -> list[ModelAccuracy]:
    scored = []
    for name, labels in candidate_labels.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"candidate names must be non-empty strings, got {name!r}")
        try:
            estimate = accuracy_interval(labels, y_true, alpha)
        except ValueError as exc:
            raise ValueError(f"candidate {name!r}: {exc}") from exc
        scored.append(
            ModelAccuracy(
                name=name,
                accuracy=estimate.accuracy,
                lower=estimate.lower,
                upper=estimate.upper,
                n=estimate.n,
            )
        )
    # Ties in accuracy are broken by name so that the choice never depends on dict order.
    return sorted(scored, key=lambda model: (-model.accuracy, model.name))


def pro_max(
    candidate_labels: Mapping[str, ArrayLike],
    y_true: ArrayLike,
    alpha: float = 0.05,
) -> ProMaxSelection:
    """Pick the annotator and the criticizer by the paper's "Pro Max" rule (Lin et al.,
    NeurIPS 2025): rank the candidates by accuracy ``acc = 1/n Σ 1[y_model,i == y_true,i]``
    on a small human-labelled set (a missing answer, None, counts as wrong); the best is the
    annotator, the second best the criticizer. Ties are broken by name.

    Each accuracy comes with its Wilson score interval (Wilson 1927) at level 1 - alpha; the
    top two are flagged as indistinguishable when their intervals overlap (a conservative
    check: overlapping intervals do not prove the models equal).

    Raises ValueError for fewer than two candidates (cross-criticism beats self-criticism,
    insight 3 of the paper), an empty ``y_true`` or labels of the wrong length.
    """
    if len(candidate_labels) < 2:
        raise ValueError(
            f"pro_max needs at least two candidate models, got {len(candidate_labels)}: "
            "the criticizer should differ from the annotator (cross-criticism beats "
            "self-criticism, insight 3 of the ACT paper)"
        )
    if np.size(y_true) == 0:
        raise ValueError("y_true is empty: pro_max needs a human-labelled evaluation set")
    ranking = _rank_candidates(candidate_labels, y_true, alpha)
    best, second = ranking[0], ranking[1]
    return ProMaxSelection(
        annotator=best.name,
        criticizer=second.name,
        ranking=tuple(ranking),
        top_two_indistinguishable=best.lower <= second.upper,
        alpha=alpha,
    )
