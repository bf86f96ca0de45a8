from act.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServiceInfo(_message.Message):
    __slots__ = ("service", "model", "prompt_strategies", "default_prompt_strategy", "labels", "supports_images", "supports_logprobs", "max_batch_size", "server_version")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_STRATEGIES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_PROMPT_STRATEGY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SUPPORTS_IMAGES_FIELD_NUMBER: _ClassVar[int]
    SUPPORTS_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    service: str
    model: _types_pb2.ModelRef
    prompt_strategies: _containers.RepeatedScalarFieldContainer[str]
    default_prompt_strategy: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    supports_images: bool
    supports_logprobs: bool
    max_batch_size: int
    server_version: str
    def __init__(self, service: _Optional[str] = ..., model: _Optional[_Union[_types_pb2.ModelRef, _Mapping]] = ..., prompt_strategies: _Optional[_Iterable[str]] = ..., default_prompt_strategy: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., supports_images: _Optional[bool] = ..., supports_logprobs: _Optional[bool] = ..., max_batch_size: _Optional[int] = ..., server_version: _Optional[str] = ...) -> None: ...
