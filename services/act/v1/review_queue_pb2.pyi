import datetime

from act.v1 import bus_pb2 as _bus_pb2
from act.v1 import types_pb2 as _types_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClaimRequest(_message.Message):
    __slots__ = ("reviewer", "max_items", "lease", "schema_id")
    REVIEWER_FIELD_NUMBER: _ClassVar[int]
    MAX_ITEMS_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_ID_FIELD_NUMBER: _ClassVar[int]
    reviewer: str
    max_items: int
    lease: _duration_pb2.Duration
    schema_id: str
    def __init__(self, reviewer: _Optional[str] = ..., max_items: _Optional[int] = ..., lease: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., schema_id: _Optional[str] = ...) -> None: ...

class ClaimedItem(_message.Message):
    __slots__ = ("claim_id", "decision", "schema", "lease_expires_time")
    CLAIM_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_TIME_FIELD_NUMBER: _ClassVar[int]
    claim_id: str
    decision: _bus_pb2.Decision
    schema: _types_pb2.LabelSchema
    lease_expires_time: _timestamp_pb2.Timestamp
    def __init__(self, claim_id: _Optional[str] = ..., decision: _Optional[_Union[_bus_pb2.Decision, _Mapping]] = ..., schema: _Optional[_Union[_types_pb2.LabelSchema, _Mapping]] = ..., lease_expires_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ClaimResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ClaimedItem]
    def __init__(self, items: _Optional[_Iterable[_Union[ClaimedItem, _Mapping]]] = ...) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ("item_id", "claim_id", "reviewer", "label", "unsure", "note", "expected_revision")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    CLAIM_ID_FIELD_NUMBER: _ClassVar[int]
    REVIEWER_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    UNSURE_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    claim_id: str
    reviewer: str
    label: str
    unsure: bool
    note: str
    expected_revision: int
    def __init__(self, item_id: _Optional[str] = ..., claim_id: _Optional[str] = ..., reviewer: _Optional[str] = ..., label: _Optional[str] = ..., unsure: _Optional[bool] = ..., note: _Optional[str] = ..., expected_revision: _Optional[int] = ...) -> None: ...

class SubmitResponse(_message.Message):
    __slots__ = ("review",)
    REVIEW_FIELD_NUMBER: _ClassVar[int]
    review: _bus_pb2.Review
    def __init__(self, review: _Optional[_Union[_bus_pb2.Review, _Mapping]] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("item_id", "claim_id", "reviewer", "reason")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    CLAIM_ID_FIELD_NUMBER: _ClassVar[int]
    REVIEWER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    claim_id: str
    reviewer: str
    reason: str
    def __init__(self, item_id: _Optional[str] = ..., claim_id: _Optional[str] = ..., reviewer: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: bool
    def __init__(self, released: _Optional[bool] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ("schema_id",)
    SCHEMA_ID_FIELD_NUMBER: _ClassVar[int]
    schema_id: str
    def __init__(self, schema_id: _Optional[str] = ...) -> None: ...

class QueueStats(_message.Message):
    __slots__ = ("decisions", "selected", "pending", "claimed", "reviewed", "unsure", "capped", "oldest_pending_age", "active_reviewers")
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    SELECTED_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    CLAIMED_FIELD_NUMBER: _ClassVar[int]
    REVIEWED_FIELD_NUMBER: _ClassVar[int]
    UNSURE_FIELD_NUMBER: _ClassVar[int]
    CAPPED_FIELD_NUMBER: _ClassVar[int]
    OLDEST_PENDING_AGE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_REVIEWERS_FIELD_NUMBER: _ClassVar[int]
    decisions: int
    selected: int
    pending: int
    claimed: int
    reviewed: int
    unsure: int
    capped: int
    oldest_pending_age: _duration_pb2.Duration
    active_reviewers: int
    def __init__(self, decisions: _Optional[int] = ..., selected: _Optional[int] = ..., pending: _Optional[int] = ..., claimed: _Optional[int] = ..., reviewed: _Optional[int] = ..., unsure: _Optional[int] = ..., capped: _Optional[int] = ..., oldest_pending_age: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., active_reviewers: _Optional[int] = ...) -> None: ...
