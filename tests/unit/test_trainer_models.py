"""The trainer's model registry: every model builds and maps a batch to logits, local weights
load (nothing is downloaded), and missing weights give a clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from act.data import MODERATION_LABELS, moderation_items
from act.trainer import (
    MODELS,
    EvalData,
    TrainConfig,
    TrainingData,
    build_model,
    tokenize_texts,
    train_in_process,
)


@pytest.mark.parametrize(
    ("name", "item_shape"),
    [("linear", (64,)), ("mlp", (1, 8, 8)), ("cnn", (1, 8, 8)), ("cnn", (3, 28, 28))],
)
def test_small_models_map_a_batch_to_logits(name: str, item_shape: tuple[int, ...]) -> None:
    model = build_model(name, item_shape, 7, hidden_dim=16)
    assert model(torch.randn(5, *item_shape)).shape == (5, 7)


def _labelled(features: np.ndarray, labels: np.ndarray, n_classes: int) -> TrainingData:
    """Every label right and nothing reviewed: these tests are about the models."""
    n = len(labels)
    return TrainingData(
        features=features,
        machine_labels=labels,
        human_labels=labels,
        delta=np.zeros(n, dtype=bool),
        pi=np.full(n, 0.1),
        n_classes=n_classes,
    )


def test_cnn_trains_on_flat_pixels_given_their_image_shape() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 64)
    pixels = rng.normal(size=(64, 64)).astype(np.float32) + labels[:, None]
    data = _labelled(pixels, labels, 2)
    config = TrainConfig(model="cnn", input_shape=(1, 8, 8), loss="machine", epochs=2)
    result = train_in_process(config, data, EvalData(features=pixels, labels=labels))
    assert result.model[0].in_channels == 1
    assert result.predict_proba(pixels).shape == (64, 2)
    with pytest.raises(ValueError, match=r"takes images \(C, H, W\)"):
        train_in_process(config.model_copy(update={"input_shape": None}), data)


@pytest.mark.parametrize("channels", [1, 3])
def test_resnet18_builds_with_random_weights(channels: int) -> None:
    model = build_model("resnet18", (channels, 32, 32), 10)
    model.eval()
    assert model(torch.randn(2, channels, 32, 32)).shape == (2, 10)


def test_resnet18_loads_a_local_imagenet_state_dict_with_a_new_head(tmp_path: Path) -> None:
    from torchvision.models import resnet18

    imagenet = resnet18(weights=None)  # stands in for the cached ImageNet weights
    path = tmp_path / "resnet18.pth"
    torch.save(imagenet.state_dict(), path)
    grey = build_model("resnet18", (1, 28, 28), 10, model_path=path)
    assert torch.equal(grey.layer1[0].conv1.weight, imagenet.layer1[0].conv1.weight)
    assert torch.allclose(grey.conv1.weight, imagenet.conv1.weight.sum(dim=1, keepdim=True))
    assert grey.fc.out_features == 10
    colour = build_model("resnet18", (3, 32, 32), 10, model_path=path)
    assert torch.equal(colour.conv1.weight, imagenet.conv1.weight)


def test_resnet18_weights_that_are_not_there_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        build_model("resnet18", (3, 32, 32), 10, model_path=tmp_path / "missing.pth")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a resnet18 state dict"):
        build_model("resnet18", (3, 32, 32), 10, model_path=tmp_path / "other.pth")


@pytest.fixture(scope="module")
def tiny_roberta(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised two-layer RoBERTa with a byte-level BPE tokenizer trained on the
    bundled moderation messages, saved the way a downloaded roberta-base directory is."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaForSequenceClassification, RobertaTokenizerFast

    directory = tmp_path_factory.mktemp("roberta")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        [row.item.text for row in moderation_items()],
        vocab_size=400,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    )
    bpe.save_model(str(directory))
    # Positional: transformers 4 names them vocab_file/merges_file, 5 vocab/merges.
    tokenizer = RobertaTokenizerFast(str(directory / "vocab.json"), str(directory / "merges.txt"))
    tokenizer.save_pretrained(str(directory))
    config = RobertaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
    )
    RobertaForSequenceClassification(config).save_pretrained(str(directory))
    return directory


def test_roberta_trains_on_token_ids_from_its_own_tokenizer(tiny_roberta: Path) -> None:
    rows = moderation_items()[:64]
    token_ids = tokenize_texts([row.item.text for row in rows], tiny_roberta, max_length=48)
    assert token_ids.shape == (64, 48) and token_ids.dtype == np.int64
    pad = 1  # RoBERTa's <pad>, the second special token above
    assert (token_ids[:, 0] != pad).all() and (token_ids == pad).any()
    labels = np.array([MODERATION_LABELS.index(row.label) for row in rows])
    data = _labelled(token_ids, labels, len(MODERATION_LABELS))
    config = TrainConfig(
        model="roberta-base", model_path=tiny_roberta, loss="machine", epochs=2, batch_size=16
    )
    result = train_in_process(config, data, EvalData(features=token_ids, labels=labels))
    assert result.predict_proba(token_ids).shape == (64, len(MODERATION_LABELS))
    first, last = result.history[0]["train_loss"], result.history[-1]["train_loss"]
    assert last < first  # the optimiser reaches the transformer's weights


def test_roberta_is_loaded_from_a_local_directory_only(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs model_path"):
        build_model("roberta-base", (32,), 5)
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        build_model("roberta-base", (32,), 5, model_path=tmp_path)


def test_registry_says_what_each_model_reads() -> None:
    assert {name: spec.input_kind for name, spec in MODELS.items()} == {
        "linear": "float",
        "mlp": "float",
        "cnn": "float",
        "resnet18": "float",
        "roberta-base": "token_ids",
    }
