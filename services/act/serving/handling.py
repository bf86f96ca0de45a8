"""What the annotator and criticizer servicers share: validation, the guarded backend call,
error mapping, metrics and the access log, and the engine of the bidirectional streams.

Rules, the same for both services:
- A request that cannot be served as a whole (missing or invalid schema, unknown strategy,
  too large a batch, an invalid item in a unary call) fails with INVALID_ARGUMENT (or the
  code of the `InferenceError` raised) and a message naming the offending field.
- In batch and stream RPCs a bad item, or an item the backend failed on, gets an `Error`
  result (code number, message, detail) and the RPC itself succeeds.
- Every backend call holds a concurrency slot (`ConcurrencyLimiter`: RESOURCE_EXHAUSTED when
  slots and queue are full) and runs under the caller's deadline, shortened by a small
  margin so the service answers DEADLINE_EXCEEDED itself, and under
  `ACT_REQUEST_TIMEOUT_SECONDS`.
- Unexpected exceptions become INTERNAL, are logged with their traceback and counted; the
  service keeps serving.
- An `InferenceError`'s detail travels in the trailing metadata key `act-error-detail-bin`
  (`act.client.DETAIL_METADATA_KEY`), where `act.client` puts it on `ServiceError.detail`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import grpc
from pydantic import ValidationError

from act import __version__
from act.client import DETAIL_METADATA_KEY
from act.inference.base import Backend
from act.inference.errors import BackendTimeout, InferenceError, InvalidInput
from act.inference.schemas import SchemaRegistry
from act.inference.types import Item, LabelSchema, item_from_proto, schema_from_proto
from act.serving.limits import ConcurrencyLimiter
from act.serving.logs import ACCESS_LOGGER, log_fields
from act.serving.metrics import ServiceMetrics
from act.serving.settings import ServingSettings
from act.v1 import info_pb2, types_pb2
from act.validation import validation_problems

MAX_DETAIL_BYTES = 4096
MAX_INTERNAL_MESSAGE_CHARS = 300
# The service answers DEADLINE_EXCEEDED itself this long before the caller's deadline (at
# most 5% of the time left), so the status, metrics and log are its own.
DEADLINE_MARGIN_SECONDS = 0.02

T = TypeVar("T")
Result = TypeVar("Result")


def code_number(code: grpc.StatusCode) -> int:
    """The numeric status code (google.rpc.Code) of a grpc.StatusCode."""
    return int(code.value[0])


def describe_validation_error(exc: ValidationError, what: str) -> str:
    """A one-line message from a pydantic error: `invalid <what>: field: problem; ...`."""
    return f"invalid {what}: {validation_problems(exc)}"


def internal_message(exc: BaseException) -> str:
    text = f"internal error ({type(exc).__name__}): {exc}"
    if len(text) > MAX_INTERNAL_MESSAGE_CHARS:
        text = text[: MAX_INTERNAL_MESSAGE_CHARS - 3] + "..."
    return text + "; see the server log"


@dataclass
class RpcState:
    """What one RPC tells the metrics and the access log, and its deadline.

    The peer and the deadline are read from the context once, when the RPC starts: grpc.aio
    contexts must not be queried after the call is cancelled or finished.
    """

    method: str
    peer: str = ""
    #: Deadline on the `time.monotonic()` clock; None when the caller set none.
    deadline: float | None = None
    items: int = 0
    ok_items: int = 0
    item_errors: Counter[str] = field(default_factory=Counter)

    @classmethod
    def start(cls, method: str, context: grpc.aio.ServicerContext) -> RpcState:
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        return cls(method=method, peer=str(context.peer()), deadline=deadline)

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()


@dataclass
class StreamEntry(Generic[T]):
    """One valid stream message, ready for the backend."""

    item_id: str
    payload: T
    schema: LabelSchema
    strategy: str


@dataclass
class StreamState:
    """The schema and strategy in force in a stream (a message may leave them empty)."""

    schema: LabelSchema | InferenceError | None = None
    schema_message: types_pb2.LabelSchema | None = None
    strategy: str | InferenceError | None = None


class ServiceCore:
    """Shared machinery of one service instance (annotator or criticizer)."""

    def __init__(
        self,
        service: str,
        backend: Backend,
        settings: ServingSettings,
        metrics: ServiceMetrics,
        *,
        strategies: Sequence[str],
        check_strategy: Callable[[str], None],
    ) -> None:
        self.service = service
        self.backend = backend
        self.schemas = SchemaRegistry.with_defaults(settings.schemas_dir)
        self.settings = settings
        self.metrics = metrics
        self.strategies = tuple(strategies)
        self._check_strategy = check_strategy
        self.limiter = ConcurrencyLimiter(
            settings.max_concurrency, settings.max_queue, on_change=metrics.set_limiter_state
        )
        self.log = logging.getLogger(f"act.{service}")
        self.access_log = logging.getLogger(ACCESS_LOGGER)
        self.default_strategy = self._pick_default_strategy()

    def _pick_default_strategy(self) -> str:
        if not self.strategies:
            raise ValueError(
                f"backend {self.backend.name!r} supports no {self.service} strategy; "
                f"it cannot serve as the {self.service}"
            )
        wanted = self.settings.default_strategy
        if wanted:
            try:
                self._check_strategy(wanted)
            except InferenceError as exc:
                raise ValueError(
                    f"default strategy (ACT_DEFAULT_STRATEGY): {exc.message}"
                ) from None
            return wanted
        return "direct" if "direct" in self.strategies else self.strategies[0]

    # ------------------------------------------------------------------ validation

    def check_images(self, message: types_pb2.Item, where: str) -> None:
        limit = self.settings.max_image_bytes
        for index, image in enumerate(message.images):
            size = len(image.data)
            if size > limit:
                raise InvalidInput(
                    f"{where}: image {index} of item {message.item_id!r} is {size} bytes, over "
                    f"the limit of {limit} bytes (ACT_MAX_IMAGE_BYTES); send a smaller image "
                    "or a uri",
                    item_id=message.item_id,
                )
        if len(message.images) and not self.backend.supports_images:
            raise InvalidInput(
                f"{where}: item {message.item_id!r} has images, but backend "
                f"{self.backend.name!r} does not accept images (see GetInfo.supports_images)",
                item_id=message.item_id,
            )

    def parse_item(self, message: types_pb2.Item, where: str) -> Item:
        self.check_images(message, where)
        try:
            return item_from_proto(message)
        except ValidationError as exc:
            raise InvalidInput(
                describe_validation_error(exc, where), item_id=message.item_id
            ) from None

    def parse_schema(self, present: bool, message: types_pb2.LabelSchema) -> LabelSchema:
        if not present:
            raise InvalidInput("schema is required: set the request's schema (a LabelSchema)")
        if not message.labels:  # a reference by id to a schema the service knows
            return self.schemas.get(message.schema_id, message.version)
        for index, example in enumerate(message.examples):
            self.check_images(example.item, f"schema.examples[{index}].item")
        try:
            return schema_from_proto(message)
        except ValidationError as exc:
            raise InvalidInput(describe_validation_error(exc, "schema")) from None

    def resolve_strategy(self, requested: str) -> str:
        strategy = requested or self.default_strategy
        self._check_strategy(strategy)
        return strategy

    def check_batch_size(self, size: int) -> None:
        if size > self.settings.max_batch:
            raise InvalidInput(
                f"batch of {size} items exceeds the limit of {self.settings.max_batch} items "
                "(ACT_MAX_BATCH); split it"
            )

    def service_info(self) -> info_pb2.ServiceInfo:
        """What GetInfo answers: backend, model, strategies, capabilities and limits."""
        model = self.backend.model
        labels = getattr(self.backend, "labels", ()) or ()
        return info_pb2.ServiceInfo(
            service=self.service,
            model=types_pb2.ModelRef(
                backend=model.backend, model=model.model, revision=model.revision
            ),
            prompt_strategies=list(self.strategies),
            default_prompt_strategy=self.default_strategy,
            labels=[str(label) for label in labels],
            supports_images=self.backend.supports_images,
            supports_logprobs=self.backend.supports_logprobs,
            max_batch_size=self.settings.max_batch,
            server_version=__version__,
        )

    # ------------------------------------------------------------------ backend call

    def _timeout(self, state: RpcState) -> float:
        timeout = self.settings.request_timeout_seconds
        remaining = state.time_remaining()
        if remaining is not None:
            margin = min(DEADLINE_MARGIN_SECONDS, 0.05 * max(remaining, 0.0))
            timeout = min(timeout, max(remaining - margin, 0.0))
        return timeout

    async def call_backend(
        self,
        run: Callable[[], Awaitable[list[T | InferenceError]]],
        size: int,
        state: RpcState,
    ) -> list[T | InferenceError]:
        """Run one backend call for `size` inputs under a concurrency slot and the deadline."""
        timeout = self._timeout(state)
        scope = asyncio.timeout(timeout)
        try:
            async with scope, self.limiter.slot():
                self.metrics.batch_size.observe(size)
                outcomes = await run()
        except TimeoutError:
            if scope.expired():
                raise BackendTimeout(
                    f"deadline exceeded: backend {self.backend.name!r} gave no answer within "
                    f"{timeout:.3f} s (waiting for a slot included)"
                ) from None
            raise
        if not isinstance(outcomes, list) or len(outcomes) != size:
            got = len(outcomes) if isinstance(outcomes, list) else type(outcomes).__name__
            raise InferenceError(
                f"backend {self.backend.name!r} returned {got} outcomes for {size} inputs"
            )
        prompt = completion = 0
        for outcome in outcomes:
            usage = getattr(outcome, "usage", None)
            if usage is not None and not isinstance(outcome, InferenceError):
                prompt += usage.prompt_tokens
                completion += usage.completion_tokens
        if prompt:
            self.metrics.tokens.labels(kind="prompt").inc(prompt)
        if completion:
            self.metrics.tokens.labels(kind="completion").inc(completion)
        return outcomes

    # ------------------------------------------------------------------ results and errors

    def item_error(self, state: RpcState, exc: InferenceError, item_id: str) -> types_pb2.Error:
        """The `Error` result of one item; counted when the RPC finishes."""
        state.item_errors[exc.code.name] += 1
        return types_pb2.Error(
            item_id=exc.item_id or item_id,
            code=code_number(exc.code),
            message=exc.message,
            detail=exc.detail,
        )

    def unexpected(self, state: RpcState, exc: BaseException) -> InferenceError:
        """Log an unexpected exception and turn it into an INTERNAL error."""
        self.log.error(
            "unexpected error",
            exc_info=exc,
            extra=log_fields(service=self.service, method=state.method),
        )
        return InferenceError(internal_message(exc))

    def _finish(
        self,
        state: RpcState,
        code: grpc.StatusCode,
        message: str,
        started: float,
    ) -> None:
        duration = time.perf_counter() - started
        metrics = self.metrics
        metrics.requests.labels(method=state.method, code=code.name).inc()
        metrics.duration.labels(method=state.method).observe(duration)
        if code == grpc.StatusCode.OK:
            errors = sum(state.item_errors.values())
            for name, count in state.item_errors.items():
                metrics.errors.labels(code=name).inc(count)
            ok = state.ok_items
        else:
            metrics.errors.labels(code=code.name).inc()
            errors, ok = state.items, 0
        if ok:
            metrics.items.labels(outcome="ok").inc(ok)
        if errors:
            metrics.items.labels(outcome="error").inc(errors)
        fields: dict[str, Any] = {
            "service": self.service,
            "method": state.method,
            "items": state.items,
            "item_errors": sum(state.item_errors.values()),
            "code": code.name,
            "duration_ms": round(duration * 1000, 3),
            "peer": state.peer,
        }
        if state.item_errors:
            fields["item_error_codes"] = dict(state.item_errors)
        if message:
            fields["message"] = message
        level = logging.ERROR if code == grpc.StatusCode.INTERNAL else logging.INFO
        self.access_log.log(level, "rpc", extra=log_fields(**fields))

    @staticmethod
    def _cancel_code(state: RpcState) -> grpc.StatusCode:
        remaining = state.time_remaining()
        if remaining is not None and remaining <= 0.001:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED

    async def _abort(
        self, context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str, detail: str
    ) -> None:
        if detail:
            data = detail.encode("utf-8", "replace")[:MAX_DETAIL_BYTES]
            context.set_trailing_metadata(((DETAIL_METADATA_KEY, data),))
        await context.abort(code, message)

    async def handle(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        body: Callable[[RpcState], Awaitable[T]],
    ) -> T:
        """Run a unary RPC body: map its errors to statuses, record metrics and the log."""
        state = RpcState.start(method, context)
        started = time.perf_counter()
        code, message, detail = grpc.StatusCode.OK, "", ""
        try:
            return await body(state)
        except InferenceError as exc:
            code, message, detail = exc.code, exc.message, exc.detail
        except ValidationError as exc:
            code, message = (
                grpc.StatusCode.INVALID_ARGUMENT,
                describe_validation_error(exc, "request"),
            )
        except asyncio.CancelledError:
            code, message = self._cancel_code(state), "cancelled"
            raise
        except Exception as exc:
            error = self.unexpected(state, exc)
            code, message = error.code, error.message
        finally:
            self._finish(state, code, message, started)
        await self._abort(context, code, message, detail)
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

    # ------------------------------------------------------------------ streams

    def stream_context(
        self,
        state: StreamState,
        has_schema: bool,
        schema_message: types_pb2.LabelSchema,
        strategy: str,
    ) -> tuple[LabelSchema, str]:
        """The schema and strategy of one stream message, updating what is in force."""
        if has_schema:
            if state.schema_message is None or schema_message != state.schema_message:
                state.schema_message = types_pb2.LabelSchema()
                state.schema_message.CopyFrom(schema_message)
                try:
                    state.schema = self.parse_schema(True, schema_message)
                except InferenceError as exc:
                    state.schema = exc
        if state.schema is None:
            raise InvalidInput("the first message of a stream must carry the schema")
        if isinstance(state.schema, InferenceError):
            raise InvalidInput(f"the stream's schema is invalid: {state.schema.message}")
        if strategy or state.strategy is None:
            try:
                state.strategy = self.resolve_strategy(strategy)
            except InferenceError as exc:
                state.strategy = exc
                raise
        if isinstance(state.strategy, InferenceError):
            error = state.strategy
            raise type(error)(f"the stream's prompt strategy is invalid: {error.message}")
        return state.schema, state.strategy

    async def handle_stream(
        self,
        method: str,
        requests: AsyncIterator[Any],
        context: grpc.aio.ServicerContext,
        *,
        prepare: Callable[[Any, StreamState], StreamEntry[Any]],
        run: Callable[[list[Any], LabelSchema, str], Awaitable[list[Any]]],
        ok_result: Callable[[Any], Result],
        error_result: Callable[[types_pb2.Error], Result],
    ) -> AsyncIterator[Result]:
        """A bidirectional stream: micro-batches of what has arrived, results as they complete.

        Messages are read as fast as the service keeps up (then HTTP/2 flow control pushes
        back on the client). Consecutive messages with the same schema and strategy go to
        the backend together, up to ACT_MAX_BATCH items a call and ACT_STREAM_WINDOW calls
        in flight for this stream.
        """
        state = RpcState.start(method, context)
        started = time.perf_counter()
        code, message = grpc.StatusCode.OK, ""
        engine = _StreamEngine(self, state, requests, prepare, run, ok_result, error_result)
        try:
            async for result in engine.results():
                yield result
        except InferenceError as exc:
            code, message = exc.code, exc.message
        except (asyncio.CancelledError, GeneratorExit):
            code, message = self._cancel_code(state), "cancelled"
            raise
        except Exception as exc:
            error = self.unexpected(state, exc)
            code, message = error.code, error.message
        finally:
            await engine.close()
            self._finish(state, code, message, started)
        if code != grpc.StatusCode.OK:
            await self._abort(context, code, message, "")


_END = object()
_DONE = object()


class _StreamEngine(Generic[Result]):
    def __init__(
        self,
        core: ServiceCore,
        state: RpcState,
        requests: AsyncIterator[Any],
        prepare: Callable[[Any, StreamState], StreamEntry[Any]],
        run: Callable[[list[Any], LabelSchema, str], Awaitable[list[Any]]],
        ok_result: Callable[[Any], Result],
        error_result: Callable[[types_pb2.Error], Result],
    ) -> None:
        self.core = core
        self.state = state
        self.requests = requests
        self.prepare = prepare
        self.run = run
        self.ok_result = ok_result
        self.error_result = error_result
        settings = core.settings
        self.max_batch = settings.max_batch
        self.window = asyncio.Semaphore(settings.stream_window)
        capacity = settings.max_batch * (settings.stream_window + 1)
        self.pending: asyncio.Queue[Any] = asyncio.Queue(maxsize=capacity)
        self.out: asyncio.Queue[Any] = asyncio.Queue(maxsize=capacity)
        self.stream_state = StreamState()
        self.tasks: set[asyncio.Task[None]] = set()
        self.reader: asyncio.Task[None] | None = None
        self.dispatcher: asyncio.Task[None] | None = None

    async def results(self) -> AsyncIterator[Result]:
        self.reader = asyncio.create_task(self._read())
        self.dispatcher = asyncio.create_task(self._dispatch())
        while True:
            result = await self.out.get()
            if result is _DONE:
                break
            yield result
        if self.reader.done() and not self.reader.cancelled():
            error = self.reader.exception()
            if error is not None:
                raise error

    async def close(self) -> None:
        tasks = [task for task in (self.reader, self.dispatcher, *self.tasks) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _read(self) -> None:
        try:
            async for message in self.requests:
                self.state.items += 1
                item_id = message.item.item_id
                try:
                    entry = self.prepare(message, self.stream_state)
                except Exception as exc:
                    if not isinstance(exc, InferenceError):
                        exc = self.core.unexpected(self.state, exc)
                    error = self.core.item_error(self.state, exc, item_id)
                    await self.out.put(self.error_result(error))
                    continue
                await self.pending.put(entry)
        finally:
            # On normal end or a read error (re-raised by results()); not when cancelled.
            if not _current_task_cancelling():
                await self.pending.put(_END)

    async def _dispatch(self) -> None:
        carry: Any = None
        while True:
            await self.window.acquire()
            first = carry if carry is not None else await self.pending.get()
            carry = None
            if first is _END:
                self.window.release()
                break
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    entry = self.pending.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if (
                    entry is _END
                    or entry.schema is not first.schema
                    or entry.strategy != first.strategy
                ):
                    carry = entry
                    break
                batch.append(entry)
            task = asyncio.create_task(self._process(batch))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        if self.tasks:
            await asyncio.gather(*list(self.tasks))
        await self.out.put(_DONE)

    async def _process(self, batch: list[StreamEntry[Any]]) -> None:
        core, state = self.core, self.state
        try:
            first = batch[0]
            payloads = [entry.payload for entry in batch]
            try:
                outcomes = await core.call_backend(
                    lambda: self.run(payloads, first.schema, first.strategy), len(batch), state
                )
            except InferenceError as exc:
                outcomes = [exc] * len(batch)
            except Exception as exc:
                outcomes = [core.unexpected(state, exc)] * len(batch)
            for entry, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, InferenceError):
                    result = self.error_result(core.item_error(state, outcome, entry.item_id))
                else:
                    state.ok_items += 1
                    result = self.ok_result(outcome)
                await self.out.put(result)
        finally:
            self.window.release()


def _current_task_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
