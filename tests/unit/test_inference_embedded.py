"""The embedded backend with its real models: MiniLM on the bundled moderation messages,
few-shot pixel models on scikit-learn's digits. No mocks; the model loads once per module.

Coroutines run under `asyncio.run` (no pytest-asyncio).
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Sequence

import grpc
import numpy as np
import pytest
from PIL import Image as PILImage
from pydantic import ValidationError

from act.core.metrics import auroc
from act.data import (
    MODERATION_LABELS,
    LabelledItem,
    digit_png,
    digits_count,
    digits_example_indices,
    digits_item,
    digits_label,
    digits_schema,
    moderation_items,
    text_schema,
)
from act.inference.embedded import EmbeddedBackend
from act.inference.errors import InferenceError, InvalidInput, UnsupportedStrategy
from act.inference.types import (
    BACKEND_NAME_MAX_CHARS,
    PROMPT_VERSION_MAX_CHARS,
    Annotation,
    Criticism,
    Image,
    Item,
    LabelSchema,
    PromptRef,
)

EVAL_DIGITS = 300


@pytest.fixture(scope="module")
def backend() -> EmbeddedBackend:
    return EmbeddedBackend()


def _annotate(backend: EmbeddedBackend, items: Sequence[Item], schema: LabelSchema) -> list:
    return asyncio.run(backend.annotate(items, schema, "direct"))


def _criticize(
    backend: EmbeddedBackend,
    items: Sequence[Item],
    annotations: Sequence[Annotation],
    schema: LabelSchema,
    strategy: str = "direct",
) -> list:
    return asyncio.run(
        backend.criticize(list(zip(items, annotations, strict=True)), schema, strategy)
    )


class Evaluation:
    """Annotations, cross- and self-criticism of a labelled set, and their quality."""

    def __init__(
        self, backend: EmbeddedBackend, rows: Sequence[LabelledItem], schema: LabelSchema
    ) -> None:
        items = [row.item for row in rows]
        self.schema = schema
        self.annotations: list[Annotation] = _annotate(backend, items, schema)
        self.cross: list[Criticism] = _criticize(backend, items, self.annotations, schema)
        self.self_confidence: list[Criticism] = _criticize(
            backend, items, self.annotations, schema, "self-confidence"
        )
        assert all(isinstance(a, Annotation) for a in self.annotations)
        assert all(isinstance(c, Criticism) for c in self.cross + self.self_confidence)
        self.errors = np.array(
            [a.label != row.label for a, row in zip(self.annotations, rows, strict=True)]
        )
        self.accuracy = 1.0 - float(self.errors.mean())
        self.cross_auroc = auroc([c.error_probability for c in self.cross], self.errors)
        self.self_auroc = auroc([c.error_probability for c in self.self_confidence], self.errors)
        self.n = len(rows)

    def line(self, name: str) -> str:
        return (
            f"{name}: n={self.n} annotator accuracy {self.accuracy:.3f}, criticizer AUROC "
            f"{self.cross_auroc:.3f} ({self.cross[0].model.model}), self-confidence AUROC "
            f"{self.self_auroc:.3f}"
        )


def _unseen(rows: Sequence[LabelledItem], schema: LabelSchema) -> list[LabelledItem]:
    seen = {example.item.item_id for example in schema.examples}
    return [row for row in rows if row.item.item_id not in seen]


@pytest.fixture(scope="module")
def text_zero_shot(backend: EmbeddedBackend) -> Evaluation:
    schema = text_schema()
    return Evaluation(backend, moderation_items(), schema)


@pytest.fixture(scope="module")
def text_few_shot(backend: EmbeddedBackend) -> Evaluation:
    schema = text_schema(n_shots=5, seed=0)
    return Evaluation(backend, _unseen(moderation_items(), schema), schema)


def _digit_rows(n_shots: int, seed: int, count: int) -> list[LabelledItem]:
    examples = set(digits_example_indices(n_shots, seed))
    rng = np.random.default_rng(1234)
    pool = [index for index in range(digits_count()) if index not in examples]
    chosen = sorted(int(i) for i in rng.choice(pool, size=count, replace=False))
    return [LabelledItem(digits_item(index), digits_label(index)) for index in chosen]


@pytest.fixture(scope="module")
def digits_five_shot(backend: EmbeddedBackend) -> Evaluation:
    return Evaluation(backend, _digit_rows(5, 0, EVAL_DIGITS), digits_schema(n_shots=5, seed=0))


# ----------------------------------------------------------------------------- quality


def test_text_zero_shot_beats_chance_makes_mistakes_and_its_criticizer_finds_them(
    text_zero_shot: Evaluation, capsys: pytest.CaptureFixture[str]
) -> None:
    with capsys.disabled():
        print("\n" + text_zero_shot.line("moderation text, zero-shot"))
    majority = 100 / 300
    assert majority + 0.15 < text_zero_shot.accuracy < 0.95
    assert text_zero_shot.cross_auroc > 0.6
    assert text_zero_shot.cross[0].model.model.endswith("label-hypothesis")
    assert text_zero_shot.annotations[0].model.model.endswith("prototype")


def test_text_few_shot_uses_examples_and_a_fitted_criticizer(
    text_few_shot: Evaluation, capsys: pytest.CaptureFixture[str]
) -> None:
    with capsys.disabled():
        print("\n" + text_few_shot.line("moderation text, 5 shots per label"))
    assert text_few_shot.n == 300 - 5 * len(MODERATION_LABELS)
    assert 0.5 < text_few_shot.accuracy < 0.97
    assert text_few_shot.cross_auroc > 0.6
    assert text_few_shot.cross[0].model.model.endswith("logistic-regression")


def test_digits_five_shot_beats_chance_makes_mistakes_and_its_criticizer_finds_them(
    digits_five_shot: Evaluation, capsys: pytest.CaptureFixture[str]
) -> None:
    with capsys.disabled():
        print("\n" + digits_five_shot.line("digits, 5 shots per class"))
    assert digits_five_shot.n == EVAL_DIGITS
    assert 0.5 < digits_five_shot.accuracy < 0.98
    assert digits_five_shot.cross_auroc > 0.6
    assert digits_five_shot.annotations[0].model.model == "pixels-8x8/nearest-centroid"
    assert digits_five_shot.cross[0].model.model == "pixels-8x8/logistic-regression"


def test_annotations_carry_a_distribution_whose_maximum_is_the_label_and_confidence(
    text_zero_shot: Evaluation, digits_five_shot: Evaluation
) -> None:
    for evaluation in (text_zero_shot, digits_five_shot):
        for annotation in evaluation.annotations[:50]:
            probabilities = annotation.label_probabilities
            assert list(probabilities) == list(evaluation.schema.label_names)
            assert sum(probabilities.values()) == pytest.approx(1.0)
            assert annotation.label == max(probabilities, key=probabilities.__getitem__)
            assert annotation.stated_confidence == pytest.approx(probabilities[annotation.label])
            assert annotation.schema_id == evaluation.schema.schema_id
            assert annotation.model.backend == "embedded"
            assert annotation.prompt.strategy_id == "direct"
            assert annotation.rationale


def test_criticism_is_one_minus_the_criticizer_probability_and_self_confidence_is_the_annotators(
    digits_five_shot: Evaluation,
) -> None:
    for annotation, cross, own in zip(
        digits_five_shot.annotations,
        digits_five_shot.cross,
        digits_five_shot.self_confidence,
        strict=True,
    ):
        assert cross.label == own.label == annotation.label
        assert cross.item_id == annotation.item_id
        assert 0.0 <= cross.error_probability <= 1.0
        assert own.error_probability == pytest.approx(1.0 - annotation.stated_confidence)
        assert own.model == annotation.model  # self-criticism: the annotator's own judgement
        assert cross.model != annotation.model  # cross-criticism: another model


# ----------------------------------------------------------------------------- batches and errors


def _corrupt_png_item(item_id: str = "broken") -> Item:
    truncated = digit_png(0)[:30]
    return Item(item_id=item_id, images=(Image(data=truncated, mime_type="image/png"),))


def test_a_corrupt_png_is_invalid_input_naming_the_item_and_the_rest_of_the_batch_is_served(
    backend: EmbeddedBackend,
) -> None:
    schema = digits_schema(n_shots=5, seed=0)
    text = moderation_items()[0].item
    items = [digits_item(1500), _corrupt_png_item("corrupt-7"), text, digits_item(1501)]
    outcomes = _annotate(backend, items, schema)
    assert [type(outcome) for outcome in outcomes] == [
        Annotation,
        InvalidInput,
        Annotation,
        Annotation,
    ]
    error = outcomes[1]
    assert error.item_id == "corrupt-7"
    assert "corrupt-7" in error.message and "cannot be decoded" in error.message
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [outcome.item_id for outcome in outcomes if isinstance(outcome, Annotation)] == [
        "digits-1500",
        text.item_id,
        "digits-1501",
    ]


def test_outputs_come_in_batch_order_and_do_not_depend_on_the_batch(
    backend: EmbeddedBackend,
) -> None:
    schema = digits_schema(n_shots=5, seed=0)
    text_rows = moderation_items()[:6]
    items = [digits_item(1600 + i) for i in range(6)]
    mixed = [
        item for pair in zip(items, (row.item for row in text_rows), strict=True) for item in pair
    ]
    batch = _annotate(backend, mixed, schema)
    assert [a.item_id for a in batch] == [item.item_id for item in mixed]
    reversed_batch = _annotate(backend, mixed[::-1], schema)
    assert [a.item_id for a in reversed_batch] == [item.item_id for item in mixed[::-1]]
    for one, other in zip(batch, reversed_batch[::-1], strict=True):
        assert one.label == other.label
        assert one.stated_confidence == pytest.approx(other.stated_confidence, abs=1e-6)
    criticisms = _criticize(backend, mixed, batch, schema)
    assert [c.item_id for c in criticisms] == [item.item_id for item in mixed]
    assert [c.label for c in criticisms] == [a.label for a in batch]


def test_an_image_schema_without_examples_asks_for_few_shot_examples(
    backend: EmbeddedBackend,
) -> None:
    outcomes = _annotate(backend, [digits_item(3), digits_item(4)], digits_schema(n_shots=0))
    assert all(isinstance(outcome, InvalidInput) for outcome in outcomes)
    assert [outcome.item_id for outcome in outcomes] == ["digits-3", "digits-4"]
    assert "few-shot examples" in outcomes[0].message


def test_images_it_cannot_use_are_invalid_input(backend: EmbeddedBackend) -> None:
    schema = digits_schema(n_shots=5, seed=0)
    png = digit_png(5)
    items = [
        Item(item_id="by-uri", images=(Image(uri="s3://bucket/5.png"),)),
        Item(item_id="two", images=(Image(data=png), Image(data=png))),
        Item(item_id="vqa", images=(Image(data=png),), question="What digit is it?"),
        Item(item_id="not-an-image", images=(Image(data=b"plain text, not a PNG"),)),
    ]
    outcomes = _annotate(backend, items, schema)
    assert all(isinstance(outcome, InvalidInput) for outcome in outcomes)
    assert [outcome.item_id for outcome in outcomes] == [item.item_id for item in items]
    assert "inline image data" in outcomes[0].message
    assert "one image per item" in outcomes[1].message
    assert "VQA" in outcomes[2].message


def test_larger_grayscale_or_colour_images_are_downsampled_to_the_model(
    backend: EmbeddedBackend,
) -> None:
    schema = digits_schema(n_shots=5, seed=0)
    small = PILImage.open(io.BytesIO(digit_png(0)))
    buffer = io.BytesIO()
    small.resize((32, 32), PILImage.Resampling.NEAREST).convert("RGB").save(buffer, "PNG")
    large = Item(item_id="large", images=(Image(data=buffer.getvalue(), mime_type="image/png"),))
    [from_large, from_small] = _annotate(backend, [large, digits_item(0)], schema)
    assert from_large.label == from_small.label
    assert from_large.stated_confidence == pytest.approx(from_small.stated_confidence, abs=1e-6)


def test_unsupported_and_unknown_strategies_are_refused(backend: EmbeddedBackend) -> None:
    schema = text_schema()
    item = moderation_items()[0].item
    with pytest.raises(UnsupportedStrategy, match="cot"):
        asyncio.run(backend.annotate([item], schema, "cot"))
    annotation = _annotate(backend, [item], schema)[0]
    for strategy in ("cot", "devil", "yes-no-logprob", "perplexity", "graded"):
        with pytest.raises(UnsupportedStrategy) as raised:
            asyncio.run(backend.criticize([(item, annotation)], schema, strategy))
        assert raised.value.code == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(InvalidInput, match="unknown prompt strategy"):
        asyncio.run(backend.annotate([item], schema, "guess"))


def test_criticism_of_a_label_outside_the_schema_or_another_items_annotation_is_invalid(
    backend: EmbeddedBackend,
) -> None:
    schema = text_schema()
    first, second = (row.item for row in moderation_items()[:2])
    annotation = _annotate(backend, [first], schema)[0]
    foreign = annotation.model_copy(update={"label": "politics"})
    unconfident = annotation.model_copy(update={"stated_confidence": None})
    for strategy in ("direct", "self-confidence"):
        outcomes = asyncio.run(
            backend.criticize(
                [(first, foreign), (second, annotation), (first, annotation)], schema, strategy
            )
        )
        assert isinstance(outcomes[0], InvalidInput) and "politics" in outcomes[0].message
        assert isinstance(outcomes[1], InvalidInput) and outcomes[1].item_id == second.item_id
        assert isinstance(outcomes[2], Criticism)
    [missing] = asyncio.run(backend.criticize([(first, unconfident)], schema, "self-confidence"))
    assert isinstance(missing, InvalidInput) and "stated confidence" in missing.message


def test_few_shot_models_are_fitted_once_per_schema(backend: EmbeddedBackend) -> None:
    schema = digits_schema(n_shots=3, seed=7)
    first = backend._image_models(schema)
    _annotate(backend, [digits_item(10)], schema)
    assert backend._image_models(schema) is first
    other = digits_schema(n_shots=3, seed=8)
    assert backend._image_models(other) is not first


def test_the_event_loop_stays_free_while_a_batch_is_embedded(backend: EmbeddedBackend) -> None:
    schema = text_schema()
    items = [
        Item(item_id=f"fresh-{i}", text=f"Fresh message number {i} about the weekend plans {i * 7}")
        for i in range(96)
    ]

    async def run() -> tuple[int, list]:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.005)

        task = asyncio.create_task(ticker())
        started = time.perf_counter()
        outcomes = await backend.annotate(items, schema, "direct")
        elapsed = time.perf_counter() - started
        done.set()
        await task
        assert elapsed > 0.05, "the batch was too quick to tell"
        return ticks, outcomes

    ticks, outcomes = asyncio.run(run())
    assert all(isinstance(outcome, Annotation) for outcome in outcomes)
    assert ticks >= 5


# ----------------------------------------------------------------------------- data helpers


def test_digit_items_are_8x8_grayscale_pngs_of_sklearn_digits() -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    item = digits_item(42)
    assert item.item_id == "digits-42" and item.images[0].mime_type == "image/png"
    image = PILImage.open(io.BytesIO(item.images[0].data))
    assert image.size == (8, 8) and image.mode == "L"
    pixels = np.asarray(image, dtype=float) * 16 / 255
    np.testing.assert_allclose(pixels, digits.images[42], atol=16 / 255)
    assert digits_label(42) == str(digits.target[42])
    with pytest.raises(IndexError):
        digits_item(digits_count())


def test_bundled_schemas_and_data() -> None:
    rows = moderation_items()
    assert len(rows) == 300
    assert len({row.item.item_id for row in rows}) == 300
    assert {row.label for row in rows} == set(MODERATION_LABELS)
    schema = text_schema()
    assert schema.label_names == MODERATION_LABELS and not schema.examples
    assert all(label.description for label in schema.labels)
    few = text_schema(n_shots=4, seed=3)
    assert len(few.examples) == 20 and few.schema_id != schema.schema_id
    assert text_schema(n_shots=4, seed=3) == few
    digits = digits_schema(n_shots=6, seed=2)
    assert len(digits.examples) == 60
    assert {e.label for e in digits.examples} == set(digits.label_names)
    assert [int(e.item.metadata["index"]) for e in digits.examples] == digits_example_indices(6, 2)


def test_the_model_loads_once_and_errors_are_inference_errors(backend: EmbeddedBackend) -> None:
    encoder = backend._load_encoder()
    _annotate(backend, [Item(item_id="x", text="hello there")], text_schema())
    assert backend._load_encoder() is encoder
    assert issubclass(InvalidInput, InferenceError)


def test_its_model_and_prompt_names_fit_the_provenance_the_review_store_keeps(
    backend: EmbeddedBackend,
) -> None:
    # A version longer than the store's column sent every embedded decision to the DLQ once.
    refs = [backend.prompt_ref("annotation", s) for s in backend.annotation_strategies]
    refs += [backend.prompt_ref("criticism", s) for s in backend.criticism_strategies]
    assert all(len(ref.version) <= PROMPT_VERSION_MAX_CHARS for ref in refs)
    assert len(backend.model.backend) <= BACKEND_NAME_MAX_CHARS
    with pytest.raises(ValidationError, match="at most 64 characters"):
        PromptRef(strategy_id="direct", version="v" * (PROMPT_VERSION_MAX_CHARS + 1))
