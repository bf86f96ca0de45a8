"""`act.v1.Annotator` over a `Backend`: protocol in, `Backend.annotate`, protocol out.

Validation, limits, deadlines, error mapping, metrics and logs are `act.serving.handling`'s.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc

from act.inference.base import Backend
from act.inference.errors import InferenceError, InvalidInput
from act.inference.types import Annotation, Item, LabelSchema, annotation_to_proto
from act.serving.handling import RpcState, ServiceCore, StreamEntry, StreamState
from act.v1 import annotator_pb2, annotator_pb2_grpc, info_pb2, types_pb2

SERVICE_NAME = annotator_pb2.DESCRIPTOR.services_by_name["Annotator"].full_name


def _ok(annotation: Annotation) -> types_pb2.AnnotationResult:
    return types_pb2.AnnotationResult(annotation=annotation_to_proto(annotation))


def _error(error: types_pb2.Error) -> types_pb2.AnnotationResult:
    return types_pb2.AnnotationResult(error=error)


class AnnotatorServicer(annotator_pb2_grpc.AnnotatorServicer):
    """The Annotator RPCs; one instance per server."""

    def __init__(self, core: ServiceCore) -> None:
        self.core = core

    def _item(self, request: annotator_pb2.AnnotateRequest, where: str) -> Item:
        if not request.HasField("item"):
            raise InvalidInput(f"{where} is required")
        return self.core.parse_item(request.item, where)

    async def _run(self, items: list[Item], schema: LabelSchema, strategy: str) -> list:
        return await self.core.backend.annotate(items, schema, strategy)

    async def Annotate(
        self, request: annotator_pb2.AnnotateRequest, context: grpc.aio.ServicerContext
    ) -> annotator_pb2.AnnotateResponse:
        async def body(state: RpcState) -> annotator_pb2.AnnotateResponse:
            state.items = 1
            item = self._item(request, "item")
            schema = self.core.parse_schema(request.HasField("schema"), request.schema)
            strategy = self.core.resolve_strategy(request.prompt_strategy)
            [outcome] = await self.core.call_backend(
                lambda: self._run([item], schema, strategy), 1, state
            )
            if isinstance(outcome, InferenceError):
                raise outcome
            state.ok_items = 1
            return annotator_pb2.AnnotateResponse(annotation=annotation_to_proto(outcome))

        return await self.core.handle("Annotate", context, body)

    async def AnnotateBatch(
        self, request: annotator_pb2.AnnotateBatchRequest, context: grpc.aio.ServicerContext
    ) -> annotator_pb2.AnnotateBatchResponse:
        async def body(state: RpcState) -> annotator_pb2.AnnotateBatchResponse:
            core = self.core
            state.items = len(request.items)
            core.check_batch_size(state.items)
            schema = core.parse_schema(request.HasField("schema"), request.schema)
            strategy = core.resolve_strategy(request.prompt_strategy)
            results: list[types_pb2.AnnotationResult | None] = [None] * state.items
            valid: list[tuple[int, Item]] = []
            for index, message in enumerate(request.items):
                try:
                    valid.append((index, core.parse_item(message, f"items[{index}]")))
                except InferenceError as exc:
                    results[index] = _error(core.item_error(state, exc, message.item_id))
            if valid:
                items = [item for _, item in valid]
                outcomes = await core.call_backend(
                    lambda: self._run(items, schema, strategy), len(items), state
                )
                for (index, item), outcome in zip(valid, outcomes, strict=True):
                    if isinstance(outcome, InferenceError):
                        results[index] = _error(core.item_error(state, outcome, item.item_id))
                    else:
                        state.ok_items += 1
                        results[index] = _ok(outcome)
            return annotator_pb2.AnnotateBatchResponse(results=results)

        return await self.core.handle("AnnotateBatch", context, body)

    def _prepare(
        self, request: annotator_pb2.AnnotateRequest, stream: StreamState
    ) -> StreamEntry[Item]:
        schema, strategy = self.core.stream_context(
            stream, request.HasField("schema"), request.schema, request.prompt_strategy
        )
        item = self._item(request, "item")
        return StreamEntry(item_id=item.item_id, payload=item, schema=schema, strategy=strategy)

    async def AnnotateStream(
        self,
        request_iterator: AsyncIterator[annotator_pb2.AnnotateRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[types_pb2.AnnotationResult]:
        async for result in self.core.handle_stream(
            "AnnotateStream",
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


def add_to_server(core: ServiceCore, server: grpc.aio.Server) -> AnnotatorServicer:
    servicer = AnnotatorServicer(core)
    annotator_pb2_grpc.add_AnnotatorServicer_to_server(servicer, server)
    return servicer


def strategy_hooks(backend: Backend) -> tuple[tuple[str, ...], Callable[[str], None]]:
    """The annotation strategies of the backend and the check of a requested one."""
    return tuple(backend.annotation_strategies), backend.check_annotation_strategy
