"""OpenAIChatModel against a local fake chat-completions server (no network, no GPU).

The server speaks the wire format of POST /v1/chat/completions, records what it receives,
counts simultaneous requests, and answers as each test scripts it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from act.inference.base import ChatRequest, ChatResponse, Message, ScoreRequest
from act.inference.errors import (
    BackendTimeout,
    BackendUnavailable,
    InferenceError,
    InvalidInput,
    OutOfSchemaLabel,
    Overloaded,
    UnparsableOutput,
    UnsupportedStrategy,
)
from act.inference.openai_backend import OpenAIChatModel
from act.inference.types import Image

MODEL = "served-model"

# ----------------------------------------------------------------------------- fake server


@dataclass
class Reply:
    status: int = 200
    body: dict[str, Any] | str = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


Script = Callable[[dict[str, Any], int], Reply]


def completion(
    content: str | None,
    *,
    logprobs: list[dict[str, Any]] | None = None,
    usage: tuple[int, int] = (11, 3),
    finish_reason: str = "stop",
    refusal: str | None = None,
) -> Reply:
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": content, "refusal": refusal},
        "finish_reason": finish_reason,
        "logprobs": None if logprobs is None else {"content": logprobs},
    }
    return Reply(
        body={
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 0,
            "model": MODEL,
            "choices": [choice],
            "usage": {
                "prompt_tokens": usage[0],
                "completion_tokens": usage[1],
                "total_tokens": sum(usage),
            },
        }
    )


def token(text: str, logprob: float, top: dict[str, float] | None = None) -> dict[str, Any]:
    return {
        "token": text,
        "logprob": logprob,
        "bytes": list(text.encode()),
        "top_logprobs": [
            {"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in (top or {}).items()
        ],
    }


def honouring(body: dict[str, Any], pick: int = 0) -> str:
    """An answer that respects the request's restriction: a choice, its JSON wrapper, or JSON."""
    structured = body.get("structured_outputs")
    if structured:
        return structured["choice"][pick]
    response_format = body.get("response_format")
    if response_format:
        schema = response_format["json_schema"]["schema"]
        enum = schema["properties"].get("answer", {}).get("enum")
        if enum:
            return json.dumps({"answer": enum[pick]})
        return json.dumps({key: 0.25 for key in schema["properties"]})
    return "free text"


def default_script(body: dict[str, Any], index: int) -> Reply:
    return completion(honouring(body))


class FakeChatServer:
    def __init__(self) -> None:
        self.script: Script = default_script
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.fake = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def stop(self) -> None:
        self.stopping.set()  # slow handlers return now
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_POST(self) -> None:
        fake: FakeChatServer = self.server.fake  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        if self.path != "/v1/chat/completions":
            self._send(Reply(404, {"error": {"message": f"no route {self.path}"}}))
            return
        with fake.lock:
            index = len(fake.requests)
            fake.requests.append(body)
            fake.headers.append({k.lower(): v for k, v in self.headers.items()})
            fake.in_flight += 1
            fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
        try:
            reply = fake.script(body, index)
            if reply.delay:
                fake.stopping.wait(reply.delay)
        finally:
            with fake.lock:
                fake.in_flight -= 1
        self._send(reply)

    def _send(self, reply: Reply) -> None:
        payload = (reply.body if isinstance(reply.body, str) else json.dumps(reply.body)).encode()
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test)


@pytest.fixture
def server() -> Iterator[FakeChatServer]:
    fake = FakeChatServer()
    yield fake
    fake.stop()


@pytest.fixture(autouse=True)
def _no_ambient_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ACT_OPENAI_API_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


# ----------------------------------------------------------------------------- helpers


def make_model(server: FakeChatServer, **settings: Any) -> OpenAIChatModel:
    options: dict[str, Any] = {
        "base_url": server.url,
        "timeout_seconds": 5.0,
        "max_retries": 2,
        "backoff_base_seconds": 0.01,
        "backoff_max_seconds": 0.05,
    }
    options.update(settings)
    return OpenAIChatModel(MODEL, **options)


def complete(
    model: OpenAIChatModel, requests: Sequence[ChatRequest]
) -> list[ChatResponse | InferenceError]:
    async def go() -> list[ChatResponse | InferenceError]:
        try:
            return await model.complete(requests)
        finally:
            await model.aclose()

    return asyncio.run(go())


def ask(text: str = "Is this spam?", **fields: Any) -> ChatRequest:
    return ChatRequest(
        messages=(Message(role="system", text="You label."), Message(role="user", text=text)),
        **fields,
    )


def only(results: list[ChatResponse | InferenceError]) -> ChatResponse:
    assert len(results) == 1
    result = results[0]
    assert isinstance(result, ChatResponse), result
    return result


def error_of(results: list[ChatResponse | InferenceError], kind: type[InferenceError]) -> Any:
    assert len(results) == 1
    assert type(results[0]) is kind, results[0]
    return results[0]


def normalised(logprobs: dict[str, float]) -> dict[str, float]:
    total = sum(math.exp(lp) for lp in logprobs.values())
    return {key: math.exp(lp) / total for key, lp in logprobs.items()}


# ----------------------------------------------------------------------------- requests


def test_vllm_mode_sends_structured_outputs_choice_and_never_guided_choice(
    server: FakeChatServer,
) -> None:
    model = make_model(server, vllm_extensions=True)
    response = only(complete(model, [ask(choices=("spam", "ham"), max_tokens=8)]))
    assert response.text == "spam"
    body = server.requests[0]
    assert body["model"] == MODEL
    assert body["structured_outputs"] == {"choice": ["spam", "ham"]}
    assert "response_format" not in body
    assert "guided" not in json.dumps(body)
    assert body["temperature"] == 0
    assert body["max_completion_tokens"] == 8
    assert "logprobs" not in body and "top_logprobs" not in body
    assert body["messages"] == [
        {"role": "system", "content": "You label."},
        {"role": "user", "content": "Is this spam?"},
    ]
    assert response.usage.prompt_tokens == 11 and response.usage.completion_tokens == 3
    assert response.usage.latency_seconds > 0


def test_openai_mode_wraps_choices_in_a_strict_json_enum_and_unwraps_the_answer(
    server: FakeChatServer,
) -> None:
    server.script = lambda body, _: completion(honouring(body, pick=1))
    response = only(complete(make_model(server), [ask(choices=("spam", "ham"))]))
    assert response.text == "ham"
    body = server.requests[0]
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {
            "name": "choice",
            "schema": {
                "type": "object",
                "properties": {"answer": {"type": "string", "enum": ["spam", "ham"]}},
                "required": ["answer"],
                "additionalProperties": False,
            },
            "strict": True,
        },
    }
    assert "structured_outputs" not in body
    assert "guided" not in json.dumps(body)


@pytest.mark.parametrize("vllm", [True, False])
def test_json_schema_goes_as_strict_response_format_in_both_modes(
    server: FakeChatServer, vllm: bool
) -> None:
    schema = {
        "type": "object",
        "properties": {"error_probability": {"type": "number"}},
        "required": ["error_probability"],
        "additionalProperties": False,
    }
    model = make_model(server, vllm_extensions=vllm)
    response = only(complete(model, [ask(json_schema=schema)]))
    assert json.loads(response.text) == {"error_probability": 0.25}
    body = server.requests[0]
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema, "strict": True},
    }
    assert "structured_outputs" not in body


def test_images_go_as_data_urls_and_uris_as_urls(server: FakeChatServer) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"pixels"
    jpeg = b"\xff\xd8\xff\xe0jpeg"
    message = Message(
        role="user",
        text="What is shown?",
        images=(
            Image(data=png),  # mime type sniffed
            Image(data=jpeg, mime_type="image/jpeg"),
            Image(uri="https://example.org/cat.jpg"),
        ),
    )
    only(complete(make_model(server), [ChatRequest(messages=(message,))]))
    content = server.requests[0]["messages"][0]["content"]
    assert content == [
        {
            "type": "image_url",
            "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()},
        },
        {
            "type": "image_url",
            "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()},
        },
        {"type": "image_url", "image_url": {"url": "https://example.org/cat.jpg"}},
        {"type": "text", "text": "What is shown?"},
    ]


def test_an_image_of_unknown_type_is_invalid_input_and_not_sent(server: FakeChatServer) -> None:
    message = Message(role="user", text="?", images=(Image(data=b"not an image"),))
    error = error_of(complete(make_model(server), [ChatRequest(messages=(message,))]), InvalidInput)
    assert "mime_type" in error.message
    assert server.requests == []


def test_contradictory_or_empty_restrictions_are_invalid_input(server: FakeChatServer) -> None:
    results = complete(
        make_model(server),
        [ask(choices=("a", "b"), json_schema={"type": "object"}), ask(choices=())],
    )
    assert [type(result) for result in results] == [InvalidInput, InvalidInput]
    assert server.requests == []


def test_api_key_comes_from_the_argument_then_act_env_then_openai_env_then_placeholder(
    server: FakeChatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    only(complete(make_model(server), [ask()]))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    only(complete(make_model(server), [ask()]))
    monkeypatch.setenv("ACT_OPENAI_API_KEY", "sk-act")
    only(complete(make_model(server), [ask()]))
    only(complete(make_model(server, api_key="sk-given"), [ask()]))
    assert [headers["authorization"] for headers in server.headers] == [
        "Bearer EMPTY",
        "Bearer sk-openai",
        "Bearer sk-act",
        "Bearer sk-given",
    ]


# ----------------------------------------------------------------------------- logprobs


def test_logprobs_are_requested_parsed_and_give_choice_probabilities(
    server: FakeChatServer,
) -> None:
    top = {"neg": -0.1, "pos": -2.5, "neutral": -4.0, "\n": -6.0}
    server.script = lambda body, _: completion(
        "negative", logprobs=[token("neg", -0.1, top), token("ative", -0.001, {"ative": -0.001})]
    )
    model = make_model(server, vllm_extensions=True)
    request = ask(choices=("positive", "negative", "neutral"), logprobs=True, top_logprobs=5)
    response = only(complete(model, [request]))
    body = server.requests[0]
    assert body["logprobs"] is True and body["top_logprobs"] == 5
    assert response.text == "negative"
    assert [(t.token, t.logprob) for t in response.tokens] == [("neg", -0.1), ("ative", -0.001)]
    assert response.tokens[0].top == top
    expected = normalised({"positive": -2.5, "negative": -0.1, "neutral": -4.0})
    assert response.choice_probabilities == pytest.approx(expected)


def test_choice_probabilities_in_openai_mode_come_from_the_answer_token_inside_the_json(
    server: FakeChatServer,
) -> None:
    tokens = [
        token('{"', -0.0),
        token("answer", -0.0),
        token('":"', -0.0),
        token("no", -0.3, {"no": -0.3, 'yes"': -1.4, "maybe": -5.0}),
        token('"}', -0.0),
    ]
    server.script = lambda body, _: completion('{"answer":"no"}', logprobs=tokens)
    request = ask(choices=("yes", "no"), logprobs=True, top_logprobs=3)
    response = only(complete(make_model(server), [request]))
    assert response.text == "no"
    assert response.choice_probabilities == pytest.approx(normalised({"yes": -1.4, "no": -0.3}))
    assert response.tokens[0].token == "no"  # aligned with the unwrapped answer


@pytest.mark.parametrize(
    ("choices", "first_top"),
    [
        (("New York", "New Jersey"), {"New": -0.01, "Boston": -5.0}),  # shared first token
        (("yes", "no"), {"yes": -0.01}),  # "no" not among the top logprobs
    ],
)
def test_choice_probabilities_stay_unset_when_first_tokens_do_not_identify_choices(
    server: FakeChatServer, choices: tuple[str, str], first_top: dict[str, float]
) -> None:
    first = next(iter(first_top))
    rest = choices[0][len(first) :]
    logprobs = [token(first, -0.01, first_top)] + ([token(rest, -0.01)] if rest else [])
    server.script = lambda body, _: completion(choices[0], logprobs=logprobs)
    model = make_model(server, vllm_extensions=True)
    response = only(complete(model, [ask(choices=choices, logprobs=True, top_logprobs=2)]))
    assert response.text == choices[0]
    assert response.choice_probabilities is None
    assert response.tokens[0].token == first


# ----------------------------------------------------------------------------- answers


@pytest.mark.parametrize(
    ("vllm", "raw"), [(True, "maybe"), (True, " spam"), (False, '{"answer": "Spam"}')]
)
def test_an_answer_outside_the_choices_is_out_of_schema_with_the_raw_text(
    server: FakeChatServer, vllm: bool, raw: str
) -> None:
    server.script = lambda body, _: completion(raw)
    model = make_model(server, vllm_extensions=vllm)
    error = error_of(complete(model, [ask(choices=("spam", "ham"))]), OutOfSchemaLabel)
    assert error.detail == raw


@pytest.mark.parametrize(
    ("request_fields", "raw"),
    [
        ({"json_schema": {"type": "object", "required": ["label"]}}, '{"label": "spam"'),
        ({"json_schema": {"type": "object", "required": ["label"]}}, '{"other": 1}'),
        ({"choices": ("spam", "ham")}, "spam"),  # OpenAI mode expects the JSON wrapper
        ({"choices": ("spam", "ham")}, '{"answer": "spam", "also": 1}'),
    ],
)
def test_malformed_structured_answers_are_unparsable_with_the_raw_text(
    server: FakeChatServer, request_fields: dict[str, Any], raw: str
) -> None:
    server.script = lambda body, _: completion(raw)
    error = error_of(complete(make_model(server), [ask(**request_fields)]), UnparsableOutput)
    assert error.detail == raw


@pytest.mark.parametrize(
    "reply",
    [
        Reply(body={"id": "x", "object": "chat.completion", "created": 0, "choices": []}),
        completion(None),
        completion(None, refusal="I cannot help with that."),
        Reply(body="<html>gateway says hi</html>"),
        Reply(body={"unexpected": True}),
    ],
)
def test_no_choices_no_content_or_no_completion_is_unparsable(
    server: FakeChatServer, reply: Reply
) -> None:
    server.script = lambda body, _: reply
    error_of(complete(make_model(server), [ask()]), UnparsableOutput)


def test_one_bad_answer_does_not_fail_the_batch(server: FakeChatServer) -> None:
    def script(body: dict[str, Any], _: int) -> Reply:
        text = body["messages"][-1]["content"]
        if text == "bad":
            return completion("eggs")
        if text == "invalid":
            return Reply(400, {"error": {"message": "prompt too long"}})
        return completion(honouring(body))

    server.script = script
    requests = [ask(t, choices=("spam", "ham")) for t in ("good", "bad", "invalid", "good")]
    results = complete(make_model(server, vllm_extensions=True), requests)
    assert [type(result) for result in results] == [
        ChatResponse,
        OutOfSchemaLabel,
        InvalidInput,
        ChatResponse,
    ]


def test_score_is_not_supported(server: FakeChatServer) -> None:
    model = make_model(server)
    request = ScoreRequest(messages=(Message(role="user", text="hi"),), continuation="yes")
    results = asyncio.run(model.score([request]))
    assert isinstance(results[0], UnsupportedStrategy)


# ----------------------------------------------------------------------------- failures


def test_a_500_then_success_is_retried(server: FakeChatServer) -> None:
    server.script = lambda body, index: (
        Reply(500, {"error": {"message": "engine hiccup"}}) if index == 0 else completion("ok")
    )
    response = only(complete(make_model(server), [ask()]))
    assert response.text == "ok"
    assert len(server.requests) == 2


def test_persistent_503_is_backend_unavailable_after_bounded_retries(
    server: FakeChatServer,
) -> None:
    server.script = lambda body, _: Reply(503, {"error": {"message": "engine is sleeping"}})
    error = error_of(complete(make_model(server, max_retries=2), [ask()]), BackendUnavailable)
    assert len(server.requests) == 3
    assert "503" in error.message and "engine is sleeping" in error.message


def test_429_is_retried_and_a_persistent_429_is_overloaded(server: FakeChatServer) -> None:
    limited = Reply(429, {"error": {"message": "slow down"}}, headers={"Retry-After": "0"})
    server.script = lambda body, index: limited if index == 0 else completion("ok")
    assert only(complete(make_model(server), [ask()])).text == "ok"
    server.script = lambda body, _: limited
    error = error_of(complete(make_model(server, max_retries=1), [ask()]), Overloaded)
    assert "slow down" in error.message
    assert len(server.requests) == 2 + 2


@pytest.mark.parametrize(
    "body",
    [
        {"error": {"message": "maximum context length is 4096 tokens", "code": 400}},
        {"object": "error", "message": "maximum context length is 4096 tokens", "code": 400},
    ],
)
def test_a_400_is_invalid_input_with_the_server_message_and_no_retry(
    server: FakeChatServer, body: dict[str, Any]
) -> None:
    server.script = lambda _, __: Reply(400, body)
    error = error_of(complete(make_model(server), [ask()]), InvalidInput)
    assert "maximum context length is 4096 tokens" in error.message
    assert len(server.requests) == 1


def test_a_wrong_key_or_model_is_backend_unavailable_not_invalid_input(
    server: FakeChatServer,
) -> None:
    server.script = lambda body, _: Reply(404, {"error": {"message": "model does not exist"}})
    error = error_of(complete(make_model(server), [ask()]), BackendUnavailable)
    assert "model does not exist" in error.message
    assert len(server.requests) == 1


def test_a_slow_server_is_backend_timeout(server: FakeChatServer) -> None:
    server.script = lambda body, _: Reply(delay=10.0)
    model = make_model(server, timeout_seconds=0.3, max_retries=1)
    error = error_of(complete(model, [ask()]), BackendTimeout)
    assert "0.3 s" in error.message
    assert len(server.requests) == 2


def test_a_refused_connection_is_backend_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    model = OpenAIChatModel(
        MODEL,
        base_url=f"http://127.0.0.1:{port}/v1",
        max_retries=1,
        backoff_base_seconds=0.01,
    )
    error = error_of(complete(model, [ask()]), BackendUnavailable)
    assert "2 attempt(s)" in error.message


# ----------------------------------------------------------------------------- concurrency


def test_concurrency_limit_holds_across_batches_and_results_keep_their_order(
    server: FakeChatServer,
) -> None:
    def script(body: dict[str, Any], _: int) -> Reply:
        text = body["messages"][-1]["content"]
        number = int(text.split()[-1])
        reply = completion(text)
        reply.delay = 0.01 * (10 - number % 10)  # later requests answer sooner
        return reply

    server.script = script
    model = make_model(server, max_concurrency=3)

    async def go() -> tuple[list[ChatResponse | InferenceError], ...]:
        try:
            return tuple(
                await asyncio.gather(
                    model.complete([ask(f"item {i}") for i in range(10)]),
                    model.complete([ask(f"item {i}") for i in range(10, 15)]),
                )
            )
        finally:
            await model.aclose()

    first, second = asyncio.run(go())
    assert [r.text for r in first] == [f"item {i}" for i in range(10)]  # type: ignore[union-attr]
    assert [r.text for r in second] == [f"item {i}" for i in range(10, 15)]  # type: ignore[union-attr]
    assert len(server.requests) == 15
    assert server.max_in_flight == 3
