"""Labelled data that exists offline, as items and label schemas for the embedded models.

- **Digits**: scikit-learn's bundled 8×8 handwritten digits (1,797 images, labels "0".."9"),
  each served as an 8×8 grayscale PNG, the form an image item takes on the wire.
- **Moderation**: 300 short, benign social-media-style messages written for this project
  (see README.md in this folder), labelled "safe", "harassment", "spam", "self-harm" or
  "violence".

Few-shot examples are drawn with a seeded generator; the schema id names the draw, so two
different draws never share an id and version (backends cache per schema id and version).
"""

from __future__ import annotations

import io
import json
from functools import lru_cache
from importlib import resources
from typing import NamedTuple

import numpy as np

from act.inference.types import FewShotExample, Image, Item, Label, LabelSchema

DIGIT_LABELS = tuple(str(digit) for digit in range(10))
MODERATION_LABELS = ("safe", "harassment", "spam", "self-harm", "violence")
MODERATION_DESCRIPTIONS = {
    "safe": (
        "A friendly everyday message about daily life, hobbies, food, work, school, weather "
        "or events."
    ),
    "harassment": (
        "An insult to someone: you are stupid, ugly, a loser, an idiot, pathetic, worthless."
    ),
    "spam": (
        "An advertisement or scam: buy now, click the link, win a free prize, earn money "
        "fast, discount offer."
    ),
    "self-harm": ("I want to hurt myself, I want to die, I feel hopeless and want my life to end."),
    "violence": (
        "A threat to attack someone: I will beat you up, break your bones, smash or burn "
        "their things."
    ),
}
MODERATION_FILE = "moderation.jsonl"


class LabelledItem(NamedTuple):
    """An item with its reference (human) label."""

    item: Item
    label: str


# ----------------------------------------------------------------------------- digits


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float64)  # (1797, 8, 8), values 0..16
    return images, np.asarray(bunch.target, dtype=np.int64)


def digits_count() -> int:
    """Number of images in scikit-learn's digits data set (1,797)."""
    return len(_digits()[1])


def _check_digit_index(index: int) -> int:
    count = digits_count()
    if not 0 <= index < count:
        raise IndexError(f"digit index {index} is out of range [0, {count})")
    return int(index)


def digit_png(index: int) -> bytes:
    """The digit as an 8×8 grayscale PNG: sklearn's 0..16 intensities scaled to 0..255."""
    from PIL import Image as PILImage

    pixels = _digits()[0][_check_digit_index(index)]
    grey = np.rint(pixels * (255.0 / 16.0)).astype(np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(grey, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def digits_item(index: int) -> Item:
    """Digit `index` as an image item (id "digits-<index>"; the label is not in the item)."""
    index = _check_digit_index(index)
    return Item(
        item_id=f"digits-{index}",
        images=(Image(data=digit_png(index), mime_type="image/png"),),
        metadata={"dataset": "sklearn-digits", "index": str(index)},
    )


def digits_label(index: int) -> str:
    """The reference label of digit `index`: "0".."9"."""
    return str(int(_digits()[1][_check_digit_index(index)]))


def digits_example_indices(n_shots: int, seed: int = 0) -> list[int]:
    """The indices `digits_schema(n_shots, seed)` uses as examples, `n_shots` per digit."""
    if n_shots < 0:
        raise ValueError(f"n_shots must be >= 0, got {n_shots}")
    targets = _digits()[1]
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for digit in range(10):
        pool = np.flatnonzero(targets == digit)
        if n_shots > len(pool):
            raise ValueError(f"only {len(pool)} images of digit {digit}, asked for {n_shots}")
        chosen.extend(int(i) for i in rng.choice(pool, size=n_shots, replace=False))
    return chosen


def digits_schema(n_shots: int = 5, seed: int = 0) -> LabelSchema:
    """Labels "0".."9" with `n_shots` example images per digit (drawn with `seed`).

    `n_shots=0` gives a schema without examples, which image models cannot be fitted on.
    """
    examples = tuple(
        FewShotExample(item=digits_item(index), label=digits_label(index))
        for index in digits_example_indices(n_shots, seed)
    )
    return LabelSchema(
        schema_id=f"sklearn-digits-{n_shots}shot-seed{seed}",
        labels=tuple(
            Label(name=name, description=f"a handwritten digit {name}") for name in DIGIT_LABELS
        ),
        instructions="Which digit (0-9) is written in the 8x8 grayscale image?",
        examples=examples,
    )


# ----------------------------------------------------------------------------- moderation


@lru_cache(maxsize=1)
def _moderation_rows() -> tuple[tuple[str, str, str], ...]:
    text = resources.files(__name__).joinpath(MODERATION_FILE).read_text(encoding="utf-8")
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        if record["label"] not in MODERATION_LABELS:
            raise ValueError(f"{MODERATION_FILE}:{number}: unknown label {record['label']!r}")
        rows.append((record["id"], record["text"], record["label"]))
    return tuple(rows)


def moderation_items() -> list[LabelledItem]:
    """The 300 bundled moderation messages with their reference labels, in file order."""
    return [
        LabelledItem(
            Item(item_id=item_id, text=text, metadata={"dataset": "act-moderation"}), label
        )
        for item_id, text, label in _moderation_rows()
    ]


def text_schema(n_shots: int = 0, seed: int = 0) -> LabelSchema:
    """The moderation task: five labels with descriptions, and `n_shots` examples per label
    drawn from the bundled messages with `seed` (zero-shot by default). Evaluate on the
    items whose ids are not among the examples."""
    if n_shots < 0:
        raise ValueError(f"n_shots must be >= 0, got {n_shots}")
    rows = moderation_items()
    rng = np.random.default_rng(seed)
    examples: list[FewShotExample] = []
    for name in MODERATION_LABELS:
        pool = [row for row in rows if row.label == name]
        if n_shots > len(pool):
            raise ValueError(f"only {len(pool)} messages labelled {name!r}, asked for {n_shots}")
        for position in sorted(rng.choice(len(pool), size=n_shots, replace=False)):
            examples.append(FewShotExample(item=pool[position].item, label=name))
    schema_id = "act-moderation" if n_shots == 0 else f"act-moderation-{n_shots}shot-seed{seed}"
    return LabelSchema(
        schema_id=schema_id,
        labels=tuple(
            Label(name=name, description=MODERATION_DESCRIPTIONS[name])
            for name in MODERATION_LABELS
        ),
        instructions=(
            "Label the social-media message with the moderation issue it contains, "
            "or 'safe' when it contains none."
        ),
        examples=tuple(examples),
    )
