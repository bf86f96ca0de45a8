"""Labelled data for the experiment and the demo.

- **Bundled data** (`label_bundled`): scikit-learn's digits (features: the 64 pixels the
  embedded image models see) and the shipped moderation messages (features: MiniLM sentence
  embeddings from the embedded backend's encoder), labelled by the embedded annotator and
  criticized by the embedded criticizer, a different model (DESIGN.md §5). The few-shot
  examples the models are fitted on are left out of the data. Every candidate model's labels
  are kept too, for the paper's "Pro Max" choice on a pilot set.
- **Simulated operating points** (`simulate`): an annotator error rate and a criticizer AUROC
  set to chosen levels (by default the paper's data sets, `PAPER_OPERATING_POINTS`), applied
  on the digits features, so the study can be repeated at those points.

Labelling is cached on disk per data set, seed and model version (`load_or_label`), so a
sweep never relabels.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from scipy.special import expit
from scipy.stats import norm

from act.inference.types import Annotation, Criticism, Item, LabelSchema

if TYPE_CHECKING:
    from act.inference.base import Backend
    from act.inference.embedded import EmbeddedBackend

_T = TypeVar("_T")
log = logging.getLogger(__name__)

CACHE_VERSION = "1"
BUNDLED_DATASETS = ("digits", "moderation")

PROVENANCE = {
    "digits": (
        "scikit-learn's bundled handwritten digits (sklearn.datasets.load_digits: 1,797 8×8 "
        "grayscale images from the UCI 'Optical Recognition of Handwritten Digits' data set), "
        "served as PNG items; features are the 64 pixels scaled to [0, 1]."
    ),
    "moderation": (
        "The 300 moderation-style messages shipped in act/data/moderation.jsonl: written by "
        "hand for this project (none copied from a platform, user or data set), labelled safe, "
        "harassment, spam, self-harm or violence by their authors (the reference labels); see "
        "services/act/data/README.md. Features are all-MiniLM-L6-v2 sentence embeddings (384 "
        "dimensions) from the embedded backend's encoder."
    ),
}
TITLES = {
    "digits": "Digits (scikit-learn, 8×8 images)",
    "moderation": "Moderation text (bundled, 300 messages)",
}
# The downstream model trained on each kind of features.
DOWNSTREAM_MODELS = {"digits": "mlp", "moderation": "linear"}


@dataclass(frozen=True)
class LabelledData:
    """One data set after annotation and criticism: one row per item."""

    name: str
    title: str
    provenance: str
    item_ids: np.ndarray  # str
    features: np.ndarray  # float32 (N, D)
    labels: np.ndarray  # int64 reference ("human") labels
    machine_labels: np.ndarray  # int64 annotator labels
    eps: np.ndarray  # float64 criticizer P(annotator wrong)
    annotator_probabilities: np.ndarray  # float64 (N, C)
    class_names: tuple[str, ...]
    annotator: str  # the model's name, as in `candidates`
    criticizer: str
    downstream_model: str
    # Pro Max candidates: model name -> its labels for every item.
    candidates: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return len(self.labels)

    @property
    def error_rate(self) -> float:
        return float(np.mean(self.machine_labels != self.labels))

    def subset(self, keep: np.ndarray) -> LabelledData:
        """The rows where `keep` is true (a boolean mask or indices)."""
        return LabelledData(
            name=self.name,
            title=self.title,
            provenance=self.provenance,
            item_ids=self.item_ids[keep],
            features=self.features[keep],
            labels=self.labels[keep],
            machine_labels=self.machine_labels[keep],
            eps=self.eps[keep],
            annotator_probabilities=self.annotator_probabilities[keep],
            class_names=self.class_names,
            annotator=self.annotator,
            criticizer=self.criticizer,
            downstream_model=self.downstream_model,
            candidates={name: labels[keep] for name, labels in self.candidates.items()},
        )


# ----------------------------------------------------------------------------- bundled data


@dataclass(frozen=True)
class BundledTask:
    """A bundled data set as the pipeline sees it: a schema, items and their true labels."""

    name: str
    schema: LabelSchema
    items: list[Item]
    labels: list[str]


def bundled_task(name: str, seed: int, n_shots: int, limit: int | None = None) -> BundledTask:
    """The items of a bundled data set, without the `n_shots`-per-label examples (drawn with
    `seed`) the embedded models are fitted on; `limit` keeps a seeded random subset."""
    from act import data

    if name == "digits":
        schema = data.digits_schema(n_shots, seed)
        examples = set(data.digits_example_indices(n_shots, seed))
        indices = [i for i in range(data.digits_count()) if i not in examples]
        indices = _limited(indices, limit, seed)
        items = [data.digits_item(i) for i in indices]
        labels = [data.digits_label(i) for i in indices]
    elif name == "moderation":
        schema = data.text_schema(n_shots, seed)
        example_ids = {example.item.item_id for example in schema.examples}
        rows = [row for row in data.moderation_items() if row.item.item_id not in example_ids]
        rows = _limited(rows, limit, seed)
        items = [row.item for row in rows]
        labels = [row.label for row in rows]
    else:
        raise ValueError(f"unknown bundled data set {name!r}; known: {list(BUNDLED_DATASETS)}")
    return BundledTask(name=name, schema=schema, items=items, labels=labels)


def _limited(values: list[_T], limit: int | None, seed: int) -> list[_T]:
    if limit is None or limit >= len(values):
        return values
    chosen = np.sort(np.random.default_rng(seed).choice(len(values), size=limit, replace=False))
    return [values[i] for i in chosen]


def _raise_failures(outcomes: Sequence[object], items: Sequence[Item], stage: str) -> None:
    from act.inference.errors import InferenceError

    for item, outcome in zip(items, outcomes, strict=True):
        if isinstance(outcome, InferenceError):
            raise RuntimeError(
                f"the embedded {stage} failed on bundled item {item.item_id!r}: {outcome.message}"
            )


async def score_items(
    backend: Backend, items: list[Item], schema: LabelSchema
) -> tuple[list[Annotation], list[Criticism]]:
    """Annotate, then criticize ("direct" strategy) every item; any failure is an error."""
    annotations = await backend.annotate(items, schema, "direct")
    _raise_failures(annotations, items, "annotator")
    criticisms = await backend.criticize(
        list(zip(items, annotations, strict=True)), schema, "direct"
    )
    _raise_failures(criticisms, items, "criticizer")
    return annotations, criticisms


async def _criticizer_labels(
    backend: Backend, items: list[Item], annotations: list[Annotation], schema: LabelSchema
) -> tuple[str, np.ndarray]:
    """The criticizer model's own label for every item: it scores each label L as the
    annotation (eps_L = 1 - P_critic(L)) and its label is the L with the smallest eps_L."""
    eps_by_label = []
    model = ""
    for name in schema.label_names:
        proposed = [annotation.model_copy(update={"label": name}) for annotation in annotations]
        criticisms = await backend.criticize(
            list(zip(items, proposed, strict=True)), schema, "direct"
        )
        _raise_failures(criticisms, items, "criticizer")
        eps_by_label.append([criticism.error_probability for criticism in criticisms])
        model = criticisms[0].model.model
    return model, np.argmin(np.asarray(eps_by_label), axis=0)


def _shots(schema: LabelSchema) -> str:
    per_label = len(schema.examples) // len(schema.labels)
    return f"{per_label}-shot" if per_label else "zero-shot"


def _features(name: str, backend: EmbeddedBackend, items: list[Item]) -> np.ndarray:
    if name == "digits":
        from act.inference.embedded import image_features

        rows = [image_features(item.images[0], item.item_id) for item in items]
    else:
        # The backend's own encoder and embedding cache: the texts were embedded while
        # annotating. (EmbeddedBackend has no public embedding method yet.)
        rows = backend.embed_texts([item.text for item in items])
    return np.asarray(rows, dtype=np.float32)


async def _label_task(
    task: BundledTask, backend: EmbeddedBackend, with_candidates: bool
) -> Labelled:
    schema = task.schema
    names = schema.label_names
    annotations, criticisms = await score_items(backend, task.items, schema)
    probabilities = np.array(
        [
            [annotation.label_probabilities.get(label, 0.0) for label in names]
            for annotation in annotations
        ]
    )
    machine = np.array([names.index(annotation.label) for annotation in annotations])
    annotator = f"{annotations[0].model.model} ({_shots(schema)})"
    criticizer = f"{criticisms[0].model.model} ({_shots(schema)})"
    candidates: dict[str, np.ndarray] = {}
    if with_candidates:
        candidates[annotator] = machine
        _, critic_labels = await _criticizer_labels(backend, task.items, annotations, schema)
        candidates[criticizer] = critic_labels
        if task.name == "moderation":
            # The zero-shot variants of both models are candidates too (text models need no
            # examples; the image models do).
            from act.data import text_schema

            zero_shot = text_schema(0)
            plain = await backend.annotate(task.items, zero_shot, "direct")
            _raise_failures(plain, task.items, "annotator")
            candidates[f"{plain[0].model.model} (zero-shot)"] = np.array(
                [names.index(annotation.label) for annotation in plain]
            )
            critic, critic_labels = await _criticizer_labels(backend, task.items, plain, zero_shot)
            candidates[f"{critic} (zero-shot)"] = critic_labels
    data = LabelledData(
        name=task.name,
        title=TITLES[task.name],
        provenance=PROVENANCE[task.name],
        item_ids=np.array([item.item_id for item in task.items]),
        features=_features(task.name, backend, task.items),
        labels=np.array([names.index(label) for label in task.labels], dtype=np.int64),
        machine_labels=machine.astype(np.int64),
        eps=np.array([criticism.error_probability for criticism in criticisms]),
        annotator_probabilities=probabilities,
        class_names=names,
        annotator=annotator,
        criticizer=criticizer,
        downstream_model=DOWNSTREAM_MODELS[task.name],
        candidates={name: labels.astype(np.int64) for name, labels in candidates.items()},
    )
    return Labelled(data, annotations, criticisms)


@dataclass(frozen=True)
class Labelled:
    """The labelled data set and the backend's records it came from (what the sampler takes)."""

    data: LabelledData
    annotations: list[Annotation]
    criticisms: list[Criticism]


def label_bundled(
    task: BundledTask, backend: EmbeddedBackend, *, with_candidates: bool = True
) -> Labelled:
    """Label a bundled task with the embedded annotator and criticizer of `backend`
    (and, with `with_candidates`, record every candidate model's labels for "Pro Max")."""
    return asyncio.run(_label_task(task, backend, with_candidates))


# ----------------------------------------------------------------------------- the cache


def _cache_key(name: str, seed: int, n_shots: int, limit: int | None, backend: Backend) -> str:
    annotation = backend.prompt_ref("annotation", "direct")
    criticism = backend.prompt_ref("criticism", "direct")
    identity = {
        "format": CACHE_VERSION,
        "dataset": name,
        "seed": seed,
        "n_shots": n_shots,
        "limit": limit,
        "model": backend.model.model_dump(),
        "annotation": annotation.version,
        "criticism": criticism.version,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _save(data: LabelledData, path: Path) -> None:
    meta = {
        "name": data.name,
        "title": data.title,
        "provenance": data.provenance,
        "class_names": list(data.class_names),
        "annotator": data.annotator,
        "criticizer": data.criticizer,
        "downstream_model": data.downstream_model,
        "candidates": list(data.candidates),
    }
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        meta=np.array(json.dumps(meta)),
        item_ids=data.item_ids,
        features=data.features,
        labels=data.labels,
        machine_labels=data.machine_labels,
        eps=data.eps,
        annotator_probabilities=data.annotator_probabilities,
        candidates=np.array(list(data.candidates.values()), dtype=np.int64).reshape(
            len(data.candidates), data.n_items
        ),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(buffer.getvalue())
    os.replace(temporary, path)  # readers never see a partial file


def _load(path: Path) -> LabelledData:
    with np.load(path, allow_pickle=False) as stored:
        meta = json.loads(str(stored["meta"]))
        return LabelledData(
            name=meta["name"],
            title=meta["title"],
            provenance=meta["provenance"],
            item_ids=stored["item_ids"],
            features=stored["features"],
            labels=stored["labels"],
            machine_labels=stored["machine_labels"],
            eps=stored["eps"],
            annotator_probabilities=stored["annotator_probabilities"],
            class_names=tuple(meta["class_names"]),
            annotator=meta["annotator"],
            criticizer=meta["criticizer"],
            downstream_model=meta["downstream_model"],
            candidates=dict(zip(meta["candidates"], stored["candidates"], strict=True)),
        )


def load_or_label(
    name: str,
    seed: int,
    n_shots: int,
    backend: EmbeddedBackend,
    cache_dir: Path | None,
    limit: int | None = None,
) -> tuple[LabelledData, bool]:
    """The labelled data set, from the cache when it holds this data set, seed, shot count,
    item limit and model version, else labelled now (and cached). Returns (data, whether it
    came from the cache)."""
    path = None
    if cache_dir is not None:
        key = _cache_key(name, seed, n_shots, limit, backend)
        path = cache_dir / f"{name}-seed{seed}-{key}.npz"
        if path.is_file():
            try:
                return _load(path), True
            except (OSError, ValueError, KeyError) as exc:  # a damaged file: label again
                log.warning("ignoring unreadable cache %s: %s", path, exc)
    data = label_bundled(bundled_task(name, seed, n_shots, limit), backend).data
    if path is not None:
        _save(data, path)
    return data, False


# ----------------------------------------------------------------------------- simulation


@dataclass(frozen=True)
class OperatingPoint:
    """An annotator error rate and a criticizer AUROC to simulate, and where they come from."""

    name: str
    title: str
    error_rate: float
    auroc: float
    source: str


# The annotator error proportions are the "ACT human budget (%)" row of the slides' downstream
# table (/work/shared/seed), which the paper set to the estimated annotator error proportion.
# The slides publish no criticizer AUROC: DEFAULT_SIMULATED_AUROC is our choice (see below).
PAPER_ERROR_RATES = {
    "cifar10": ("CIFAR10", 0.1152),
    "fashion": ("Fashion-MNIST", 0.2181),
    "cars": ("Stanford Cars", 0.0956),
    "emotion": ("TweetEval Emotion", 0.1798),
    "irony": ("TweetEval Irony", 0.3379),
    "vqa-rad": ("VQA-RAD", 0.3015),
}
# Not in the slides. 0.85 lies between the criticizers measured here on the bundled data
# (0.74 zero-shot text, 0.91 digits, 0.93 five-shot text: act.inference.embedded), so the
# simulated criticizer is neither the best nor the worst we have seen.
DEFAULT_SIMULATED_AUROC = 0.85


def paper_operating_point(name: str, auroc: float = DEFAULT_SIMULATED_AUROC) -> OperatingPoint:
    """The operating point of one of the paper's data sets (error rate from the slides)."""
    if name not in PAPER_ERROR_RATES:
        raise ValueError(
            f"unknown simulated data set {name!r}; known: {', '.join(PAPER_ERROR_RATES)}"
        )
    if not 0.5 < auroc < 1.0:
        raise ValueError(f"the simulated criticizer AUROC must be in (0.5, 1), got {auroc}")
    title, error_rate = PAPER_ERROR_RATES[name]
    return OperatingPoint(
        name=name,
        title=title,
        error_rate=error_rate,
        auroc=auroc,
        source=(
            f"error rate {error_rate:.2%} = the slides' 'ACT human budget' for {title} (the "
            f"paper's estimated annotator error); criticizer AUROC {auroc:g} chosen (the slides "
            "give none)"
        ),
    )


def simulate(base: LabelledData, point: OperatingPoint, seed: int) -> LabelledData:
    """`base`'s features and true labels with a simulated annotator and criticizer.

    Annotator: exactly round(e·N) items are wrong, chosen where the base annotator is least
    sure of the true class (rank of -log p_true plus Gumbel noise), each labelled with the
    base annotator's most probable wrong class, so errors are systematic as a real model's
    are, not uniform label noise. Criticizer: a binormal score z = mu·err + N(0, 1) with
    mu = √2·Φ⁻¹(AUROC) (then AUROC = Φ(mu/√2) in expectation), turned into the calibrated
    eps = P(err | z) = sigmoid(logit(e) + mu·z - mu²/2).
    """
    rng = np.random.default_rng([seed, zlib.crc32(point.name.encode())])
    n_items = base.n_items
    rows = np.arange(n_items)
    p_true = base.annotator_probabilities[rows, base.labels]
    hardness = -np.log(np.maximum(p_true, 1e-300)) + rng.gumbel(size=n_items)
    n_errors = round(point.error_rate * n_items)
    wrong = np.argsort(-hardness, kind="stable")[:n_errors]
    others = base.annotator_probabilities.copy()
    others[rows, base.labels] = -np.inf
    machine = base.labels.copy()
    machine[wrong] = np.argmax(others[wrong], axis=1)
    errors = machine != base.labels
    mu = float(np.sqrt(2.0) * norm.ppf(point.auroc))
    scores = rng.standard_normal(n_items) + mu * errors
    prior = np.log(point.error_rate / (1.0 - point.error_rate))
    eps = expit(prior + mu * scores - mu * mu / 2.0)
    return LabelledData(
        name=f"sim-{point.name}",
        title=f"{point.title} (simulated on digits)",
        provenance=f"Simulated operating point on the digits features: {point.source}.",
        item_ids=base.item_ids,
        features=base.features,
        labels=base.labels,
        machine_labels=machine,
        eps=eps,
        annotator_probabilities=base.annotator_probabilities,
        class_names=base.class_names,
        annotator=f"simulated, error rate {point.error_rate:.2%}",
        criticizer=f"simulated, target AUROC {point.auroc:g}",
        downstream_model=base.downstream_model,
    )
