from act.v1 import info_pb2 as _info_pb2
from act.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AnnotateRequest(_message.Message):
    __slots__ = ("item", "schema", "prompt_strategy")
    ITEM_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    PROMPT_STRATEGY_FIELD_NUMBER: _ClassVar[int]
    item: _types_pb2.Item
    schema: _types_pb2.LabelSchema
    prompt_strategy: str
    def __init__(self, item: _Optional[_Union[_types_pb2.Item, _Mapping]] = ..., schema: _Optional[_Union[_types_pb2.LabelSchema, _Mapping]] = ..., prompt_strategy: _Optional[str] = ...) -> None: ...

class AnnotateResponse(_message.Message):
    __slots__ = ("annotation",)
    ANNOTATION_FIELD_NUMBER: _ClassVar[int]
    annotation: _types_pb2.Annotation
    def __init__(self, annotation: _Optional[_Union[_types_pb2.Annotation, _Mapping]] = ...) -> None: ...

class AnnotateBatchRequest(_message.Message):
    __slots__ = ("items", "schema", "prompt_strategy")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    PROMPT_STRATEGY_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[_types_pb2.Item]
    schema: _types_pb2.LabelSchema
    prompt_strategy: str
    def __init__(self, items: _Optional[_Iterable[_Union[_types_pb2.Item, _Mapping]]] = ..., schema: _Optional[_Union[_types_pb2.LabelSchema, _Mapping]] = ..., prompt_strategy: _Optional[str] = ...) -> None: ...

class AnnotateBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_types_pb2.AnnotationResult]
    def __init__(self, results: _Optional[_Iterable[_Union[_types_pb2.AnnotationResult, _Mapping]]] = ...) -> None: ...
