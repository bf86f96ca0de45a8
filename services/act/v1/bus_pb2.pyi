import datetime

from act.v1 import types_pb2 as _types_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Decision(_message.Message):
    __slots__ = ("item_id", "annotation", "criticism", "eps", "pi", "delta", "sampler", "transform_id", "budget_id", "seed_id", "capped", "audit", "window_id", "content_ref", "decided_time", "item")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    ANNOTATION_FIELD_NUMBER: _ClassVar[int]
    CRITICISM_FIELD_NUMBER: _ClassVar[int]
    EPS_FIELD_NUMBER: _ClassVar[int]
    PI_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    TRANSFORM_ID_FIELD_NUMBER: _ClassVar[int]
    BUDGET_ID_FIELD_NUMBER: _ClassVar[int]
    SEED_ID_FIELD_NUMBER: _ClassVar[int]
    CAPPED_FIELD_NUMBER: _ClassVar[int]
    AUDIT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_REF_FIELD_NUMBER: _ClassVar[int]
    DECIDED_TIME_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    annotation: _types_pb2.Annotation
    criticism: _types_pb2.Criticism
    eps: float
    pi: float
    delta: bool
    sampler: str
    transform_id: str
    budget_id: str
    seed_id: str
    capped: bool
    audit: bool
    window_id: str
    content_ref: str
    decided_time: _timestamp_pb2.Timestamp
    item: _types_pb2.Item
    def __init__(self, item_id: _Optional[str] = ..., annotation: _Optional[_Union[_types_pb2.Annotation, _Mapping]] = ..., criticism: _Optional[_Union[_types_pb2.Criticism, _Mapping]] = ..., eps: _Optional[float] = ..., pi: _Optional[float] = ..., delta: _Optional[bool] = ..., sampler: _Optional[str] = ..., transform_id: _Optional[str] = ..., budget_id: _Optional[str] = ..., seed_id: _Optional[str] = ..., capped: _Optional[bool] = ..., audit: _Optional[bool] = ..., window_id: _Optional[str] = ..., content_ref: _Optional[str] = ..., decided_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., item: _Optional[_Union[_types_pb2.Item, _Mapping]] = ...) -> None: ...

class Review(_message.Message):
    __slots__ = ("item_id", "label", "unsure", "reviewer", "reviewed_time", "revision", "previous_label", "note")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    UNSURE_FIELD_NUMBER: _ClassVar[int]
    REVIEWER_FIELD_NUMBER: _ClassVar[int]
    REVIEWED_TIME_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_LABEL_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    label: str
    unsure: bool
    reviewer: str
    reviewed_time: _timestamp_pb2.Timestamp
    revision: int
    previous_label: str
    note: str
    def __init__(self, item_id: _Optional[str] = ..., label: _Optional[str] = ..., unsure: _Optional[bool] = ..., reviewer: _Optional[str] = ..., reviewed_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revision: _Optional[int] = ..., previous_label: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class DeadLetter(_message.Message):
    __slots__ = ("source_topic", "partition", "offset", "key", "payload", "reason", "error_type", "service", "failed_time")
    SOURCE_TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    FAILED_TIME_FIELD_NUMBER: _ClassVar[int]
    source_topic: str
    partition: int
    offset: int
    key: bytes
    payload: bytes
    reason: str
    error_type: str
    service: str
    failed_time: _timestamp_pb2.Timestamp
    def __init__(self, source_topic: _Optional[str] = ..., partition: _Optional[int] = ..., offset: _Optional[int] = ..., key: _Optional[bytes] = ..., payload: _Optional[bytes] = ..., reason: _Optional[str] = ..., error_type: _Optional[str] = ..., service: _Optional[str] = ..., failed_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
