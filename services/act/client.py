"""Python clients of the annotator and criticizer services (grpc.aio).

    async with AnnotatorClient("127.0.0.1:50051") as annotator:
        annotations = await annotator.annotate(items, schema, "cot", timeout=30)

They take and return the pydantic records of `act.inference.types`. A failed RPC raises
`ServiceError` (an `InferenceError` carrying the gRPC status code, message and detail); in
batch and stream results a failed item comes back as a `ServiceError` in its place, like the
outcomes of an in-process `Backend`. Create clients inside a running event loop (grpc.aio
binds its channel to it); `timeout` is the RPC deadline in seconds (default: the client's).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from typing import Any, Self

import grpc
from pydantic import BaseModel, ConfigDict

from act.inference.errors import InferenceError
from act.inference.types import (
    Annotation,
    Criticism,
    Item,
    LabelSchema,
    ModelRef,
    annotation_from_proto,
    annotation_to_proto,
    criticism_from_proto,
    item_to_proto,
    schema_to_proto,
)
from act.v1 import (
    annotator_pb2,
    annotator_pb2_grpc,
    criticizer_pb2,
    criticizer_pb2_grpc,
    info_pb2,
    types_pb2,
)

#: Trailing metadata key of an error's detail (UTF-8), set by the services.
DETAIL_METADATA_KEY = "act-error-detail-bin"
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

_CODES = {code.value[0]: code for code in grpc.StatusCode}


class ServiceError(InferenceError):
    """An error answered by a service: a failed RPC (raised) or a failed item (returned)."""

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode = grpc.StatusCode.UNKNOWN,
        detail: str = "",
        item_id: str = "",
        method: str = "",
    ) -> None:
        super().__init__(message, detail=detail, item_id=item_id)
        self.code = code
        self.method = method

    def for_item(self, item_id: str) -> ServiceError:
        return ServiceError(
            self.message, code=self.code, detail=self.detail, item_id=item_id, method=self.method
        )

    def __str__(self) -> str:
        where = f" [{self.method}]" if self.method else ""
        item = f" (item {self.item_id!r})" if self.item_id else ""
        return f"{self.code.name}{where}{item}: {self.message}"

    def __repr__(self) -> str:
        return f"ServiceError({self.code.name}, {self.message!r}, item_id={self.item_id!r})"

    @classmethod
    def from_rpc_error(cls, exc: grpc.aio.AioRpcError, method: str = "") -> ServiceError:
        detail = ""
        for key, value in exc.trailing_metadata() or ():
            if key == DETAIL_METADATA_KEY:
                detail = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        return cls(exc.details() or "", code=exc.code(), detail=detail, method=method)

    @classmethod
    def from_proto(cls, error: types_pb2.Error, method: str = "") -> ServiceError:
        return cls(
            error.message,
            code=_CODES.get(error.code, grpc.StatusCode.UNKNOWN),
            detail=error.detail,
            item_id=error.item_id,
            method=method,
        )


class ServiceInfo(BaseModel):
    """What a service serves (GetInfo)."""

    model_config = ConfigDict(frozen=True)

    service: str
    model: ModelRef
    prompt_strategies: tuple[str, ...]
    default_prompt_strategy: str
    labels: tuple[str, ...] = ()
    supports_images: bool = False
    supports_logprobs: bool = False
    max_batch_size: int = 0
    server_version: str = ""

    @classmethod
    def from_proto(cls, message: info_pb2.ServiceInfo) -> ServiceInfo:
        return cls(
            service=message.service,
            model=ModelRef(
                backend=message.model.backend,
                model=message.model.model,
                revision=message.model.revision,
            ),
            prompt_strategies=tuple(message.prompt_strategies),
            default_prompt_strategy=message.default_prompt_strategy,
            labels=tuple(message.labels),
            supports_images=message.supports_images,
            supports_logprobs=message.supports_logprobs,
            max_batch_size=message.max_batch_size,
            server_version=message.server_version,
        )


class _ServiceClient:
    service_name = ""
    stub: Any  # the service's generated stub, set by the subclass

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.target = target
        self.timeout = timeout
        channel_options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            *options,
        ]
        if credentials is None:
            self.channel = grpc.aio.insecure_channel(target, options=channel_options)
        else:
            self.channel = grpc.aio.secure_channel(target, credentials, options=channel_options)

    def _deadline(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _unary(self, method: str, call: Any, request: Any, timeout: float | None) -> Any:
        try:
            return await call(request, timeout=self._deadline(timeout))
        except grpc.aio.AioRpcError as exc:
            raise ServiceError.from_rpc_error(exc, method) from None

    async def health(self, service: str | None = None, *, timeout: float | None = None) -> str:
        """Health status name (`SERVING`, `NOT_SERVING`, ...) of this service, or of `service`
        ("" for the whole server)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self.channel)
        name = self.service_name if service is None else service
        response = await self._unary(
            "Health.Check", stub.Check, health_pb2.HealthCheckRequest(service=name), timeout
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the service reports SERVING; `TimeoutError` after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        last: object = None
        while loop.time() < end:
            try:
                if await self.health(timeout=max(0.1, min(1.0, end - loop.time()))) == "SERVING":
                    return
            except ServiceError as exc:
                last = exc
            await asyncio.sleep(0.05)
        raise TimeoutError(f"{self.target}: not SERVING after {timeout} s (last: {last})")

    async def info(self, *, timeout: float | None = None) -> ServiceInfo:
        """What the service runs: model, strategies, limits (GetInfo of either service)."""
        message = await self._unary(
            "GetInfo", self.stub.GetInfo, info_pb2.GetInfoRequest(), timeout
        )
        return ServiceInfo.from_proto(message)


class AnnotatorClient(_ServiceClient):
    """Client of `act.v1.Annotator`."""

    service_name = "act.v1.Annotator"

    def __init__(self, target: str, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self.stub = annotator_pb2_grpc.AnnotatorStub(self.channel)

    async def annotate_one(
        self, item: Item, schema: LabelSchema, strategy: str = "", *, timeout: float | None = None
    ) -> Annotation:
        """The annotation of one item; raises `ServiceError` if the service gives none."""
        request = annotator_pb2.AnnotateRequest(
            item=item_to_proto(item), schema=schema_to_proto(schema), prompt_strategy=strategy
        )
        response = await self._unary("Annotate", self.stub.Annotate, request, timeout)
        return annotation_from_proto(response.annotation)

    async def annotate(
        self,
        items: Sequence[Item],
        schema: LabelSchema,
        strategy: str = "",
        *,
        timeout: float | None = None,
    ) -> list[Annotation | ServiceError]:
        """One annotation or per-item `ServiceError` per item, in order (one batch RPC)."""
        request = annotator_pb2.AnnotateBatchRequest(
            items=[item_to_proto(item) for item in items],
            schema=schema_to_proto(schema),
            prompt_strategy=strategy,
        )
        response = await self._unary("AnnotateBatch", self.stub.AnnotateBatch, request, timeout)
        return [_annotation_outcome(result, "AnnotateBatch") for result in response.results]

    async def stream_annotate(
        self,
        items: AsyncIterable[Item | tuple[Item, LabelSchema]] | Iterable[Item],
        schema: LabelSchema | None = None,
        strategy: str = "",
        *,
        timeout: float | None = None,
    ) -> AsyncIterator[Annotation | ServiceError]:
        """Annotations (or per-item errors) as they complete; match them by item_id.

        The schema goes with the first message only; an element `(item, schema)` switches the
        stream to another schema from that item on.
        """

        async def requests() -> AsyncIterator[annotator_pb2.AnnotateRequest]:
            sent: LabelSchema | None = None
            first = True
            async for element in _aiter(items):
                item, item_schema = element if isinstance(element, tuple) else (element, schema)
                request = annotator_pb2.AnnotateRequest(item=item_to_proto(item))
                if item_schema is not None and (first or item_schema != sent):
                    request.schema.CopyFrom(schema_to_proto(item_schema))
                    sent = item_schema
                if first and strategy:
                    request.prompt_strategy = strategy
                first = False
                yield request

        call = self.stub.AnnotateStream(requests(), timeout=self._deadline(timeout))
        try:
            async for result in call:
                yield _annotation_outcome(result, "AnnotateStream")
        except grpc.aio.AioRpcError as exc:
            raise ServiceError.from_rpc_error(exc, "AnnotateStream") from None
        finally:
            call.cancel()


class CriticizerClient(_ServiceClient):
    """Client of `act.v1.Criticizer`."""

    service_name = "act.v1.Criticizer"

    def __init__(self, target: str, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self.stub = criticizer_pb2_grpc.CriticizerStub(self.channel)

    async def criticize_one(
        self,
        item: Item,
        annotation: Annotation,
        schema: LabelSchema,
        strategy: str = "",
        *,
        timeout: float | None = None,
    ) -> Criticism:
        """The criticism of one annotation; raises `ServiceError` if the service gives none."""
        request = criticizer_pb2.CriticizeRequest(
            item=item_to_proto(item),
            annotation=annotation_to_proto(annotation),
            schema=schema_to_proto(schema),
            prompt_strategy=strategy,
        )
        response = await self._unary("Criticize", self.stub.Criticize, request, timeout)
        return criticism_from_proto(response.criticism)

    async def criticize(
        self,
        annotated: Sequence[tuple[Item, Annotation]],
        schema: LabelSchema,
        strategy: str = "",
        *,
        timeout: float | None = None,
    ) -> list[Criticism | ServiceError]:
        """One criticism or per-item `ServiceError` per annotated item, in order."""
        request = criticizer_pb2.CriticizeBatchRequest(
            items=[
                criticizer_pb2.AnnotatedItem(
                    item=item_to_proto(item), annotation=annotation_to_proto(annotation)
                )
                for item, annotation in annotated
            ],
            schema=schema_to_proto(schema),
            prompt_strategy=strategy,
        )
        response = await self._unary("CriticizeBatch", self.stub.CriticizeBatch, request, timeout)
        return [_criticism_outcome(result, "CriticizeBatch") for result in response.results]

    async def stream_criticize(
        self,
        annotated: AsyncIterable[tuple[Item, Annotation] | tuple[Item, Annotation, LabelSchema]]
        | Iterable[tuple[Item, Annotation]],
        schema: LabelSchema | None = None,
        strategy: str = "",
        *,
        timeout: float | None = None,
    ) -> AsyncIterator[Criticism | ServiceError]:
        """Criticisms (or per-item errors) as they complete; match them by item_id.

        Elements are `(item, annotation)` or `(item, annotation, schema)` to switch schema.
        """

        async def requests() -> AsyncIterator[criticizer_pb2.CriticizeRequest]:
            sent: LabelSchema | None = None
            first = True
            async for element in _aiter(annotated):
                item, annotation = element[0], element[1]
                item_schema = element[2] if len(element) > 2 else schema  # type: ignore[misc]
                request = criticizer_pb2.CriticizeRequest(
                    item=item_to_proto(item), annotation=annotation_to_proto(annotation)
                )
                if item_schema is not None and (first or item_schema != sent):
                    request.schema.CopyFrom(schema_to_proto(item_schema))
                    sent = item_schema
                if first and strategy:
                    request.prompt_strategy = strategy
                first = False
                yield request

        call = self.stub.CriticizeStream(requests(), timeout=self._deadline(timeout))
        try:
            async for result in call:
                yield _criticism_outcome(result, "CriticizeStream")
        except grpc.aio.AioRpcError as exc:
            raise ServiceError.from_rpc_error(exc, "CriticizeStream") from None
        finally:
            call.cancel()


def _annotation_outcome(
    result: types_pb2.AnnotationResult, method: str
) -> Annotation | ServiceError:
    if result.WhichOneof("result") == "annotation":
        return annotation_from_proto(result.annotation)
    return ServiceError.from_proto(result.error, method)


def _criticism_outcome(result: types_pb2.CriticismResult, method: str) -> Criticism | ServiceError:
    if result.WhichOneof("result") == "criticism":
        return criticism_from_proto(result.criticism)
    return ServiceError.from_proto(result.error, method)


async def _aiter(source: AsyncIterable[Any] | Iterable[Any]) -> AsyncIterator[Any]:
    if isinstance(source, AsyncIterable):
        async for element in source:
            yield element
    else:
        for element in source:
            yield element
