import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Image(_message.Message):
    __slots__ = ("data", "uri", "mime_type")
    DATA_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    uri: str
    mime_type: str
    def __init__(self, data: _Optional[bytes] = ..., uri: _Optional[str] = ..., mime_type: _Optional[str] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("item_id", "text", "images", "question", "metadata", "event_time", "schema_id", "content_hash")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    text: str
    images: _containers.RepeatedCompositeFieldContainer[Image]
    question: str
    metadata: _containers.ScalarMap[str, str]
    event_time: _timestamp_pb2.Timestamp
    schema_id: str
    content_hash: str
    def __init__(self, item_id: _Optional[str] = ..., text: _Optional[str] = ..., images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., question: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., schema_id: _Optional[str] = ..., content_hash: _Optional[str] = ...) -> None: ...

class Label(_message.Message):
    __slots__ = ("name", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class FewShotExample(_message.Message):
    __slots__ = ("item", "label", "rationale")
    ITEM_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    RATIONALE_FIELD_NUMBER: _ClassVar[int]
    item: Item
    label: str
    rationale: str
    def __init__(self, item: _Optional[_Union[Item, _Mapping]] = ..., label: _Optional[str] = ..., rationale: _Optional[str] = ...) -> None: ...

class LabelSchema(_message.Message):
    __slots__ = ("schema_id", "version", "labels", "instructions", "examples")
    SCHEMA_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    schema_id: str
    version: int
    labels: _containers.RepeatedCompositeFieldContainer[Label]
    instructions: str
    examples: _containers.RepeatedCompositeFieldContainer[FewShotExample]
    def __init__(self, schema_id: _Optional[str] = ..., version: _Optional[int] = ..., labels: _Optional[_Iterable[_Union[Label, _Mapping]]] = ..., instructions: _Optional[str] = ..., examples: _Optional[_Iterable[_Union[FewShotExample, _Mapping]]] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("backend", "model", "revision")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    backend: str
    model: str
    revision: str
    def __init__(self, backend: _Optional[str] = ..., model: _Optional[str] = ..., revision: _Optional[str] = ...) -> None: ...

class PromptRef(_message.Message):
    __slots__ = ("strategy_id", "version")
    STRATEGY_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    strategy_id: str
    version: str
    def __init__(self, strategy_id: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens", "latency_seconds")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    latency_seconds: float
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., latency_seconds: _Optional[float] = ...) -> None: ...

class LabelScore(_message.Message):
    __slots__ = ("label", "probability")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    label: str
    probability: float
    def __init__(self, label: _Optional[str] = ..., probability: _Optional[float] = ...) -> None: ...

class Annotation(_message.Message):
    __slots__ = ("item_id", "label", "distribution", "rationale", "stated_confidence", "model", "prompt", "schema_id", "schema_version", "usage", "annotated_time")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    DISTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    RATIONALE_FIELD_NUMBER: _ClassVar[int]
    STATED_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_ID_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    ANNOTATED_TIME_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    label: str
    distribution: _containers.RepeatedCompositeFieldContainer[LabelScore]
    rationale: str
    stated_confidence: float
    model: ModelRef
    prompt: PromptRef
    schema_id: str
    schema_version: int
    usage: Usage
    annotated_time: _timestamp_pb2.Timestamp
    def __init__(self, item_id: _Optional[str] = ..., label: _Optional[str] = ..., distribution: _Optional[_Iterable[_Union[LabelScore, _Mapping]]] = ..., rationale: _Optional[str] = ..., stated_confidence: _Optional[float] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ..., prompt: _Optional[_Union[PromptRef, _Mapping]] = ..., schema_id: _Optional[str] = ..., schema_version: _Optional[int] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., annotated_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Criticism(_message.Message):
    __slots__ = ("item_id", "label", "error_probability", "rationale", "model", "prompt", "usage", "criticized_time")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    ERROR_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    RATIONALE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    CRITICIZED_TIME_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    label: str
    error_probability: float
    rationale: str
    model: ModelRef
    prompt: PromptRef
    usage: Usage
    criticized_time: _timestamp_pb2.Timestamp
    def __init__(self, item_id: _Optional[str] = ..., label: _Optional[str] = ..., error_probability: _Optional[float] = ..., rationale: _Optional[str] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ..., prompt: _Optional[_Union[PromptRef, _Mapping]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., criticized_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("item_id", "code", "message", "detail")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    code: int
    message: str
    detail: str
    def __init__(self, item_id: _Optional[str] = ..., code: _Optional[int] = ..., message: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class AnnotationResult(_message.Message):
    __slots__ = ("annotation", "error")
    ANNOTATION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    annotation: Annotation
    error: Error
    def __init__(self, annotation: _Optional[_Union[Annotation, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class CriticismResult(_message.Message):
    __slots__ = ("criticism", "error")
    CRITICISM_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    criticism: Criticism
    error: Error
    def __init__(self, criticism: _Optional[_Union[Criticism, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...
