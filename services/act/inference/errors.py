"""Errors of the inference layer, each mapped to the gRPC status code a client should see.

A backend never crashes a service and never invents a value: it raises one of these (or
returns it for one item of a batch), the service answers with the code and message, counts
it, and keeps serving.
"""

from __future__ import annotations

import grpc


class InferenceError(Exception):
    """Base: a message for humans, a gRPC status code, and optional detail (e.g. raw text)."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, detail: str = "", item_id: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.item_id = item_id

    def for_item(self, item_id: str) -> InferenceError:
        """The same error, attributed to one item of a batch."""
        copy = type(self)(self.message, detail=self.detail, item_id=item_id)
        return copy


class InvalidInput(InferenceError):
    """The request is malformed: empty item, corrupt image, bad schema, unknown strategy."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class UnknownSchema(InferenceError):
    """A label schema referenced by id that the service does not know."""

    code = grpc.StatusCode.NOT_FOUND


class NotRecorded(InferenceError):
    """A replayed request whose output was never recorded (`act.inference.cache`)."""

    code = grpc.StatusCode.NOT_FOUND


class UnsupportedStrategy(InferenceError):
    """A prompt strategy this backend cannot run (e.g. logprobs on a model without them)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class UnparsableOutput(InferenceError):
    """The model answered, but not in the required form; `detail` holds the raw text."""

    code = grpc.StatusCode.INTERNAL


class OutOfSchemaLabel(UnparsableOutput):
    """The model answered with a label that is not in the schema (never silently mapped)."""


class BackendUnavailable(InferenceError):
    """The model server cannot be reached or keeps failing after retries."""

    code = grpc.StatusCode.UNAVAILABLE


class BackendTimeout(InferenceError):
    """The model did not answer within the deadline."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Overloaded(InferenceError):
    """Too many requests in flight: back-pressure, try again later."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
