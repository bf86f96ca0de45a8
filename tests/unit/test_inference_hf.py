"""The hf backend on a tiny randomly initialised GPT-2 with its own tokenizer (no downloads)."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from act.inference.base import ChatRequest, ChatResponse, Message, ScoreRequest  # noqa: E402
from act.inference.errors import InvalidInput, UnsupportedStrategy  # noqa: E402
from act.inference.hf import HFChatModel, render_plain  # noqa: E402
from act.inference.types import Image  # noqa: E402

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
CORPUS = [
    "Is this review positive or negative? The film was wonderful and moving.",
    "The answer is yes. The answer is no. The label is probably wrong.",
    "A cat sat on the mat; a dog barked at the postman all morning long.",
    "Classify the sentiment: terrible acting, boring plot, I want a refund.",
    "System: you are a careful annotator. User: label this. Assistant: positive",
    '{"label": "positive", "confidence": 0.9}',
]


def _save_model(directory: Path, *, template: bool) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        pad_token="<pad>",
    )
    if template:
        tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2,
        n_head=2,
        n_embd=32,
        n_positions=256,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GPT2LMHeadModel(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_model(tmp_path_factory.mktemp("tiny-gpt2"), template=True)


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_model(tmp_path_factory.mktemp("tiny-gpt2-plain"), template=False)


@pytest.fixture(scope="module")
def chat_model(model_dir: Path) -> HFChatModel:
    return HFChatModel(model_dir, max_batch_size=3)


@pytest.fixture(scope="module")
def reference(model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    model.eval()
    return tokenizer, model


def _messages(text: str) -> tuple[Message, ...]:
    return (
        Message(role="system", text="You are a careful annotator."),
        Message(role="user", text=text),
    )


def _direct_loglik(reference, messages: tuple[Message, ...], continuation: str, sep: str = ""):
    """Independent computation: one unpadded forward pass over prompt + continuation."""
    tokenizer, model = reference
    if tokenizer.chat_template:
        chat = [{"role": m.role, "content": m.text} for m in messages]
        prompt = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        special = False
    else:
        prompt = render_plain(messages)
        special = True
    prompt_ids = tokenizer(prompt, add_special_tokens=special)["input_ids"]
    full_ids = tokenizer(prompt + sep + continuation, add_special_tokens=special)["input_ids"]
    start = 0
    while start < len(prompt_ids) and prompt_ids[start] == full_ids[start]:
        start += 1
    with torch.no_grad():
        logits = model(torch.tensor([full_ids])).logits[0]
    logprobs = torch.log_softmax(logits.double(), dim=-1)
    values = [float(logprobs[i - 1, full_ids[i]]) for i in range(start, len(full_ids))]
    return sum(values), len(values)


def _run(coro):
    return asyncio.run(coro)


def test_choice_scoring_matches_a_direct_forward_pass(chat_model, reference) -> None:
    choices = ("yes", "no", "probably wrong", "positive")
    messages = _messages("Is the label positive correct for: the film was wonderful?")
    [response] = _run(chat_model.complete([ChatRequest(messages=messages, choices=choices)]))
    assert isinstance(response, ChatResponse)
    totals = {choice: _direct_loglik(reference, messages, choice)[0] for choice in choices}
    best = max(totals, key=totals.__getitem__)
    assert response.text == best
    assert response.choice_probabilities is not None
    assert set(response.choice_probabilities) == set(choices)
    assert math.isclose(sum(response.choice_probabilities.values()), 1.0, abs_tol=1e-9)
    peak = max(totals.values())
    norm = sum(math.exp(value - peak) for value in totals.values())
    for choice, total in totals.items():
        expected = math.exp(total - peak) / norm
        assert response.choice_probabilities[choice] == pytest.approx(expected, abs=1e-4)
    assert response.usage.prompt_tokens > 0
    assert response.usage.completion_tokens >= 1


def test_batch_order_is_preserved_and_errors_stay_per_request(chat_model, reference) -> None:
    choices = ("positive", "negative")
    texts = ["terrible acting, boring plot", "wonderful and moving", "a cat sat on the mat"]
    requests = [ChatRequest(messages=_messages(text), choices=choices) for text in texts]
    image = Image(data=b"\x89PNG\r\n\x1a\n", mime_type="image/png")
    bad = ChatRequest(messages=(Message(role="user", text="look", images=(image,)),))
    requests.insert(1, bad)
    responses = _run(chat_model.complete(requests))
    assert len(responses) == 4
    assert isinstance(responses[1], UnsupportedStrategy)
    assert "text-only" in responses[1].message
    for response, text in zip([responses[0], *responses[2:]], texts, strict=True):
        assert isinstance(response, ChatResponse)
        totals = {c: _direct_loglik(reference, _messages(text), c)[0] for c in choices}
        expected = max(totals, key=totals.__getitem__)
        assert response.text == expected
        assert response.choice_probabilities is not None
        p_positive = 1 / (1 + math.exp(totals["negative"] - totals["positive"]))
        assert response.choice_probabilities["positive"] == pytest.approx(p_positive, abs=1e-4)


def test_choice_logprobs_are_the_chosen_tokens(chat_model, reference) -> None:
    messages = _messages("label this")
    request = ChatRequest(messages=messages, choices=("yes", "no"), logprobs=True, top_logprobs=3)
    [response] = _run(chat_model.complete([request]))
    assert isinstance(response, ChatResponse)
    total, n = _direct_loglik(reference, messages, response.text)
    assert len(response.tokens) == n
    assert sum(token.logprob for token in response.tokens) == pytest.approx(total, abs=1e-4)
    assert "".join(token.token for token in response.tokens) == response.text
    for token in response.tokens:
        assert 1 <= len(token.top) <= 3
        assert max(token.top.values()) >= token.logprob - 1e-6


def test_score_matches_a_direct_forward_pass(chat_model, reference) -> None:
    requests = [
        ScoreRequest(messages=_messages("why?"), continuation="The label is probably wrong."),
        ScoreRequest(messages=_messages("and this one"), continuation="yes"),
        ScoreRequest(
            messages=_messages("a much longer question about the film and the plot"),
            continuation="The answer is no, the acting was terrible.",
        ),
    ]
    responses = _run(chat_model.score(requests))
    assert len(responses) == 3
    for request, response in zip(requests, responses, strict=True):
        total, n = _direct_loglik(reference, request.messages, request.continuation)
        assert not isinstance(response, Exception), response
        assert response.n_tokens == n
        assert response.total_logprob == pytest.approx(total, abs=1e-4)
        assert response.total_logprob < 0


def test_plain_text_template_without_chat_template(plain_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = HFChatModel(plain_dir, model_name="tiny-plain")
    assert model.model.model == "tiny-plain"
    messages = _messages("The film was wonderful.")
    assert model.render(messages) == (
        "System: You are a careful annotator.\n\nUser: The film was wonderful.\n\nAssistant:"
    )
    reference = (
        AutoTokenizer.from_pretrained(plain_dir, local_files_only=True),
        AutoModelForCausalLM.from_pretrained(plain_dir, local_files_only=True).eval(),
    )
    [scored] = _run(model.score([ScoreRequest(messages=messages, continuation="positive")]))
    total, n = _direct_loglik(reference, messages, "positive", sep=" ")
    assert scored.n_tokens == n
    assert scored.total_logprob == pytest.approx(total, abs=1e-4)


def test_generation_returns_text_and_logprobs(chat_model) -> None:
    requests = [
        ChatRequest(messages=_messages("say something"), max_tokens=5, logprobs=True),
        ChatRequest(
            messages=_messages("give JSON"),
            max_tokens=4,
            json_schema={"type": "object", "properties": {"label": {"type": "string"}}},
        ),
    ]
    first, second = _run(chat_model.complete(requests))
    assert isinstance(first, ChatResponse) and isinstance(second, ChatResponse)
    assert first.choice_probabilities is None
    assert 1 <= first.usage.completion_tokens <= 5
    assert len(first.tokens) <= 5
    assert all(token.logprob <= 0 for token in first.tokens)
    assert isinstance(first.text, str)
    assert second.usage.completion_tokens <= 4
    # Greedy decoding is deterministic.
    [again] = _run(chat_model.complete(requests[:1]))
    assert again.text == first.text


def test_invalid_requests_get_errors(chat_model) -> None:
    requests = [
        ChatRequest(messages=_messages("x"), choices=("a", "a")),
        ChatRequest(messages=_messages("x"), choices=("a", "b"), json_schema={"type": "object"}),
        ChatRequest(messages=_messages("x"), choices=()),
        ChatRequest(messages=_messages("word " * 400), choices=("a", "b")),
    ]
    responses = _run(chat_model.complete(requests))
    assert all(isinstance(response, InvalidInput) for response in responses), responses
    assert "context" in responses[3].message
    image = Image(uri="https://example.org/cat.png")
    [refused] = _run(
        chat_model.score(
            [
                ScoreRequest(
                    messages=(Message(role="user", text="x", images=(image,)),), continuation="y"
                )
            ]
        )
    )
    assert isinstance(refused, UnsupportedStrategy)
    assert _run(chat_model.complete([])) == []


def test_bad_directories_raise_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        HFChatModel(tmp_path / "missing")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        HFChatModel(tmp_path / "file.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="hf model directory"):
        HFChatModel(empty)
    with pytest.raises(ValueError, match="dtype"):
        HFChatModel(tmp_path, dtype="float8")


def test_tokenizer_only_directory_is_not_a_model(tmp_path: Path, model_dir: Path) -> None:
    import shutil

    only_tokenizer = tmp_path / "tokenizer-only"
    only_tokenizer.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (model_dir / name).exists():
            shutil.copy(model_dir / name, only_tokenizer / name)
    with pytest.raises(ValueError, match="causal language model"):
        HFChatModel(only_tokenizer)


def test_closed_model_answers_with_errors(model_dir: Path) -> None:
    model = HFChatModel(model_dir)
    _run(model.aclose())
    [error] = _run(model.complete([ChatRequest(messages=_messages("x"), choices=("a", "b"))]))
    assert "closed" in error.message


def test_template_without_system_role_gets_it_folded_in(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    directory = _save_model(tmp_path / "no-system", template=True)
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    tokenizer.chat_template = (
        "{% if messages[0]['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}" + CHAT_TEMPLATE
    )
    tokenizer.save_pretrained(directory)
    model = HFChatModel(directory)
    rendered = model.render(_messages("the text"))
    assert rendered == (
        "<|im_start|>user\nYou are a careful annotator.\n\nthe text<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    [response] = _run(model.complete([ChatRequest(messages=_messages("x"), choices=("a", "b"))]))
    assert isinstance(response, ChatResponse)


def test_generation_stops_at_the_context(chat_model) -> None:
    # 256 positions: a long prompt leaves room for only a few new tokens.
    count = 250
    while len(chat_model._encode(chat_model.render(_messages("word " * count)))) > 252:
        count -= 1
    request = ChatRequest(messages=_messages("word " * count), max_tokens=100)
    [response] = _run(chat_model.complete([request]))
    assert isinstance(response, ChatResponse), response
    assert response.usage.prompt_tokens + response.usage.completion_tokens <= 256
