"""The review queue: storage of every decision, the human review queue, the ACT export.

`ReviewStore` (in `act.review.store`) is the storage layer: SQLAlchemy Core on PostgreSQL
(production) or SQLite (embedded default), with versioned migrations (`act.review.migrations`).
"""

from __future__ import annotations

from act.review.db import DEFAULT_URL, create_engine, normalize_url
from act.review.errors import (
    ClaimError,
    ClaimExpired,
    ClaimNotFound,
    ClaimNotYours,
    ClaimRequired,
    Conflict,
    DecisionConflict,
    InvalidArgument,
    InvalidDecision,
    InvalidLabel,
    NotQueued,
    ReviewerExists,
    ReviewStoreError,
    RevisionConflict,
    SchemaVersionError,
    UnknownItem,
    UnknownReviewer,
    UnknownSchema,
)
from act.review.migrations import LATEST_VERSION, current_version, migrate
from act.review.store import (
    AuditEntry,
    ClaimedRecord,
    QueueStats,
    Record,
    ReviewerInfo,
    ReviewStore,
    UpsertResult,
    WindowSpend,
)

__all__ = [
    "DEFAULT_URL",
    "LATEST_VERSION",
    "AuditEntry",
    "ClaimError",
    "ClaimExpired",
    "ClaimNotFound",
    "ClaimNotYours",
    "ClaimRequired",
    "ClaimedRecord",
    "Conflict",
    "DecisionConflict",
    "InvalidArgument",
    "InvalidDecision",
    "InvalidLabel",
    "NotQueued",
    "QueueStats",
    "Record",
    "ReviewStore",
    "ReviewStoreError",
    "ReviewerExists",
    "ReviewerInfo",
    "RevisionConflict",
    "SchemaVersionError",
    "UnknownItem",
    "UnknownReviewer",
    "UnknownSchema",
    "UpsertResult",
    "WindowSpend",
    "create_engine",
    "current_version",
    "migrate",
    "normalize_url",
]
