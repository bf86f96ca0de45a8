"""`act.v1.Criticizer` over a `Backend`: protocol in, `Backend.criticize`, protocol out.

Besides the item and schema checks every service makes, an annotation to criticize must
belong to its item (same item_id, or none), carry a label of the schema, and, when it names
a schema, name the request's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc
from pydantic import ValidationError

from act.inference.base import Backend
from act.inference.errors import InferenceError, InvalidInput
from act.inference.types import (
    Annotation,
    Criticism,
    Item,
    LabelSchema,
    annotation_from_proto,
    criticism_to_proto,
)
from act.serving.handling import (
    RpcState,
    ServiceCore,
    StreamEntry,
    StreamState,
    describe_validation_error,
)
from act.v1 import criticizer_pb2, criticizer_pb2_grpc, info_pb2, types_pb2

SERVICE_NAME = criticizer_pb2.DESCRIPTOR.services_by_name["Criticizer"].full_name

AnnotatedPair = tuple[Item, Annotation]


def _ok(criticism: Criticism) -> types_pb2.CriticismResult:
    return types_pb2.CriticismResult(criticism=criticism_to_proto(criticism))


def _error(error: types_pb2.Error) -> types_pb2.CriticismResult:
    return types_pb2.CriticismResult(error=error)


class CriticizerServicer(criticizer_pb2_grpc.CriticizerServicer):
    """The Criticizer RPCs; one instance per server."""

    def __init__(self, core: ServiceCore) -> None:
        self.core = core

    def _pair(
        self,
        item_message: types_pb2.Item,
        has_item: bool,
        annotation_message: types_pb2.Annotation,
        has_annotation: bool,
        schema: LabelSchema,
        where: str,
    ) -> AnnotatedPair:
        if not has_item:
            raise InvalidInput(f"{where}.item is required")
        item = self.core.parse_item(item_message, f"{where}.item")
        if not has_annotation:
            raise InvalidInput(f"{where}.annotation is required", item_id=item.item_id)
        try:
            annotation = annotation_from_proto(annotation_message)
        except ValidationError as exc:
            raise InvalidInput(
                describe_validation_error(exc, f"{where}.annotation"), item_id=item.item_id
            ) from None
        if not annotation.item_id:
            annotation = annotation.model_copy(update={"item_id": item.item_id})
        elif annotation.item_id != item.item_id:
            raise InvalidInput(
                f"{where}.annotation.item_id {annotation.item_id!r} does not match "
                f"{where}.item.item_id {item.item_id!r}",
                item_id=item.item_id,
            )
        if annotation.schema_id and annotation.schema_id != schema.schema_id:
            raise InvalidInput(
                f"{where}.annotation was made with schema {annotation.schema_id!r}, but the "
                f"request's schema is {schema.schema_id!r}",
                item_id=item.item_id,
            )
        try:
            schema.check_label(annotation.label)
        except ValueError as exc:
            raise InvalidInput(f"{where}.annotation: {exc}", item_id=item.item_id) from None
        return item, annotation

    async def _run(self, pairs: list[AnnotatedPair], schema: LabelSchema, strategy: str) -> list:
        return await self.core.backend.criticize(pairs, schema, strategy)

    async def Criticize(
        self, request: criticizer_pb2.CriticizeRequest, context: grpc.aio.ServicerContext
    ) -> criticizer_pb2.CriticizeResponse:
        async def body(state: RpcState) -> criticizer_pb2.CriticizeResponse:
            state.items = 1
            schema = self.core.parse_schema(request.HasField("schema"), request.schema)
            pair = self._pair(
                request.item,
                request.HasField("item"),
                request.annotation,
                request.HasField("annotation"),
                schema,
                "request",
            )
            strategy = self.core.resolve_strategy(request.prompt_strategy)
            [outcome] = await self.core.call_backend(
                lambda: self._run([pair], schema, strategy), 1, state
            )
            if isinstance(outcome, InferenceError):
                raise outcome
            state.ok_items = 1
            return criticizer_pb2.CriticizeResponse(criticism=criticism_to_proto(outcome))

        return await self.core.handle("Criticize", context, body)

    async def CriticizeBatch(
        self, request: criticizer_pb2.CriticizeBatchRequest, context: grpc.aio.ServicerContext
    ) -> criticizer_pb2.CriticizeBatchResponse:
        async def body(state: RpcState) -> criticizer_pb2.CriticizeBatchResponse:
            core = self.core
            state.items = len(request.items)
            core.check_batch_size(state.items)
            schema = core.parse_schema(request.HasField("schema"), request.schema)
            strategy = core.resolve_strategy(request.prompt_strategy)
            results: list[types_pb2.CriticismResult | None] = [None] * state.items
            valid: list[tuple[int, AnnotatedPair]] = []
            for index, message in enumerate(request.items):
                try:
                    pair = self._pair(
                        message.item,
                        message.HasField("item"),
                        message.annotation,
                        message.HasField("annotation"),
                        schema,
                        f"items[{index}]",
                    )
                    valid.append((index, pair))
                except InferenceError as exc:
                    results[index] = _error(core.item_error(state, exc, message.item.item_id))
            if valid:
                pairs = [pair for _, pair in valid]
                outcomes = await core.call_backend(
                    lambda: self._run(pairs, schema, strategy), len(pairs), state
                )
                for (index, (item, _)), outcome in zip(valid, outcomes, strict=True):
                    if isinstance(outcome, InferenceError):
                        results[index] = _error(core.item_error(state, outcome, item.item_id))
                    else:
                        state.ok_items += 1
                        results[index] = _ok(outcome)
            return criticizer_pb2.CriticizeBatchResponse(results=results)

        return await self.core.handle("CriticizeBatch", context, body)

    def _prepare(
        self, request: criticizer_pb2.CriticizeRequest, stream: StreamState
    ) -> StreamEntry[AnnotatedPair]:
        schema, strategy = self.core.stream_context(
            stream, request.HasField("schema"), request.schema, request.prompt_strategy
        )
        pair = self._pair(
            request.item,
            request.HasField("item"),
            request.annotation,
            request.HasField("annotation"),
            schema,
            "request",
        )
        return StreamEntry(item_id=pair[0].item_id, payload=pair, schema=schema, strategy=strategy)

    async def CriticizeStream(
        self,
        request_iterator: AsyncIterator[criticizer_pb2.CriticizeRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[types_pb2.CriticismResult]:
        async for result in self.core.handle_stream(
            "CriticizeStream",
            request_iterator,
            context,
            prepare=self._prepare,
            run=self._run,
            ok_result=_ok,
            error_result=_error,
        ):
            yield result

    async def GetInfo(
        self, request: info_pb2.GetInfoRequest, context: grpc.aio.ServicerContext
    ) -> info_pb2.ServiceInfo:
        async def body(state: RpcState) -> info_pb2.ServiceInfo:
            return self.core.service_info()

        return await self.core.handle("GetInfo", context, body)


def add_to_server(core: ServiceCore, server: grpc.aio.Server) -> CriticizerServicer:
    servicer = CriticizerServicer(core)
    criticizer_pb2_grpc.add_CriticizerServicer_to_server(servicer, server)
    return servicer


def strategy_hooks(backend: Backend) -> tuple[tuple[str, ...], Callable[[str], None]]:
    """The criticism strategies of the backend and the check of a requested one."""
    return tuple(backend.criticism_strategies), backend.check_criticism_strategy
