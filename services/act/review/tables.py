"""The review store's tables (SQLAlchemy Core), as the code uses them now.

The database is created and upgraded by `act.review.migrations`, never by `create_all` on
these definitions; a test checks that the migrated schema matches them.

States of a record:
- `not_selected`: delta = 0 (including capped items); stored for the ACT dataset, never queued;
- `pending`: delta = 1, waiting for a reviewer;
- `claimed`: leased to `claimed_by` under `claim_id` until `lease_expires_at` (an expired claim
  counts as pending and can be claimed again);
- `reviewed`: has a human label (`revision` >= 1; corrections bump it).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect

from act.inference.types import (
    BACKEND_NAME_MAX_CHARS,
    MODEL_NAME_MAX_CHARS,
    PROMPT_STRATEGY_MAX_CHARS,
    PROMPT_VERSION_MAX_CHARS,
    REVISION_MAX_CHARS,
)

STATES = ("not_selected", "pending", "claimed", "reviewed")
QUEUED_STATES = ("pending", "claimed")
AUDIT_ACTIONS = ("review", "correction", "release")


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    PostgreSQL stores `timestamp with time zone`; SQLite stores naive UTC text in one fixed
    format, so that comparisons in SQL order correctly. Naive datetimes are refused.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware (UTC) datetime")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # an aggregate over SQLite text, e.g. min(decided_at)
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# JSONB on PostgreSQL, JSON text elsewhere.
JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

metadata = sa.MetaData()

records = sa.Table(
    "records",
    metadata,
    sa.Column("item_id", sa.String(512), primary_key=True),
    sa.Column("schema_id", sa.String(200), nullable=False),
    sa.Column("schema_version", sa.Integer, nullable=False),
    sa.Column("content_ref", sa.Text, nullable=False),
    sa.Column("content_hash", sa.String(128), nullable=False),
    # The serialized act.v1.Item, when the decision embedded it.
    sa.Column("item_pb", sa.LargeBinary, nullable=True),
    # The serialized act.v1.Decision without its item (annotation, criticism, rationales, usage).
    sa.Column("decision_pb", sa.LargeBinary, nullable=False),
    # SHA-256 of the fields that define the decision (see store.IDENTITY_FIELDS).
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("machine_label", sa.String(200), nullable=False),
    # [{"label": ..., "probability": ...}, ...] from the annotation; [] when not given.
    sa.Column("distribution", JSONType, nullable=False),
    sa.Column("eps", sa.Double, nullable=False),
    sa.Column("pi", sa.Double, nullable=False),
    sa.Column("delta", sa.Boolean, nullable=False),
    sa.Column("capped", sa.Boolean, nullable=False),
    sa.Column("audit", sa.Boolean, nullable=False),
    sa.Column("sampler", sa.String(64), nullable=False),
    sa.Column("transform_id", sa.String(200), nullable=False),
    sa.Column("budget_id", sa.String(200), nullable=False),
    sa.Column("seed_id", sa.String(200), nullable=False),
    sa.Column("window_id", sa.String(200), nullable=False),
    sa.Column("annotator_backend", sa.String(BACKEND_NAME_MAX_CHARS), nullable=False),
    sa.Column("annotator_model", sa.String(MODEL_NAME_MAX_CHARS), nullable=False),
    sa.Column("annotator_model_revision", sa.String(REVISION_MAX_CHARS), nullable=False),
    sa.Column("annotator_prompt", sa.String(PROMPT_STRATEGY_MAX_CHARS), nullable=False),
    sa.Column("annotator_prompt_version", sa.String(PROMPT_VERSION_MAX_CHARS), nullable=False),
    sa.Column("criticizer_backend", sa.String(BACKEND_NAME_MAX_CHARS), nullable=False),
    sa.Column("criticizer_model", sa.String(MODEL_NAME_MAX_CHARS), nullable=False),
    sa.Column("criticizer_model_revision", sa.String(REVISION_MAX_CHARS), nullable=False),
    sa.Column("criticizer_prompt", sa.String(PROMPT_STRATEGY_MAX_CHARS), nullable=False),
    sa.Column("criticizer_prompt_version", sa.String(PROMPT_VERSION_MAX_CHARS), nullable=False),
    sa.Column("decided_at", UTCDateTime, nullable=False),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("claimed_by", sa.String(200), nullable=True),
    sa.Column("claim_id", sa.String(64), nullable=True),
    sa.Column("lease_expires_at", UTCDateTime, nullable=True),
    sa.Column("human_label", sa.String(200), nullable=True),
    sa.Column("unsure", sa.Boolean, nullable=True),
    sa.Column("reviewer", sa.String(200), nullable=True),
    sa.Column("first_reviewed_at", UTCDateTime, nullable=True),
    sa.Column("reviewed_at", UTCDateTime, nullable=True),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.CheckConstraint(
        "state IN ('not_selected', 'pending', 'claimed', 'reviewed')", name="ck_records_state"
    ),
    sa.CheckConstraint("eps >= 0 AND eps <= 1", name="ck_records_eps"),
    sa.CheckConstraint("pi >= 0 AND pi <= 1", name="ck_records_pi"),
    sa.CheckConstraint("revision >= 0", name="ck_records_revision"),
)

# The queue: the few pending/claimed rows, in claim order.
sa.Index(
    "ix_records_queue",
    records.c.decided_at,
    records.c.item_id,
    postgresql_where=records.c.state.in_(QUEUED_STATES),
    sqlite_where=records.c.state.in_(QUEUED_STATES),
)
# The live claims, by lease end: the claimed count reads only these.
sa.Index(
    "ix_records_claimed",
    records.c.lease_expires_at,
    postgresql_where=records.c.state == "claimed",
    sqlite_where=records.c.state == "claimed",
)
sa.Index("ix_records_schema", records.c.schema_id, records.c.schema_version)
sa.Index("ix_records_window", records.c.budget_id, records.c.window_id)
# The latest first reviews and their decision times (time to review), reviewed records only.
sa.Index(
    "ix_records_first_reviewed",
    records.c.first_reviewed_at,
    records.c.decided_at,
    postgresql_where=records.c.first_reviewed_at.is_not(None),
    sqlite_where=records.c.first_reviewed_at.is_not(None),
)

# Counts per (schema, budget, window) of the stored decisions and of their reviews, kept by
# triggers on records (migration 3) in the transactions that write them, whoever writes:
# `ReviewStore.stats` reads these few rows instead of counting every record on each scrape.
window_counts = sa.Table(
    "window_counts",
    metadata,
    sa.Column("schema_id", sa.String(200), primary_key=True),
    sa.Column("budget_id", sa.String(200), primary_key=True),
    sa.Column("window_id", sa.String(200), primary_key=True),
    sa.Column("decisions", sa.BigInteger, nullable=False),
    sa.Column("selected", sa.BigInteger, nullable=False),
    sa.Column("capped", sa.BigInteger, nullable=False),
    # Sum of pi: the window's expected spend.
    sa.Column("expected", sa.Double, nullable=False),
    sa.Column("last_decided_at", UTCDateTime, nullable=False),
    # Reviewed records; of them unsure, with a human label, and with the machine's label.
    sa.Column("reviewed", sa.BigInteger, nullable=False),
    sa.Column("unsure", sa.BigInteger, nullable=False),
    sa.Column("labelled", sa.BigInteger, nullable=False),
    sa.Column("agree", sa.BigInteger, nullable=False),
)

reviews_audit = sa.Table(
    "reviews_audit",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column(
        "item_id", sa.String(512), sa.ForeignKey("records.item_id"), nullable=False, index=True
    ),
    # "review" (first label), "correction" (a later revision) or "release" (claim given back).
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("reviewer", sa.String(200), nullable=False),
    sa.Column("label", sa.String(200), nullable=True),
    sa.Column("previous_label", sa.String(200), nullable=True),
    sa.Column("unsure", sa.Boolean, nullable=False),
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("claim_id", sa.String(64), nullable=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.CheckConstraint(
        "action IN ('review', 'correction', 'release')", name="ck_reviews_audit_action"
    ),
)

reviewers = sa.Table(
    "reviewers",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    # Hex SHA-256 of the reviewer's token; the token itself is never stored.
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("token_rotated_at", UTCDateTime, nullable=True),
    sa.Column("active", sa.Boolean, nullable=False),
)

label_schemas = sa.Table(
    "label_schemas",
    metadata,
    sa.Column("schema_id", sa.String(200), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    # The label names, in display order.
    sa.Column("labels", JSONType, nullable=False),
    # The serialized act.v1.LabelSchema (instructions, descriptions) for reviewers; may be null.
    sa.Column("schema_pb", sa.LargeBinary, nullable=True),
    sa.Column("registered_at", UTCDateTime, nullable=False),
)

schema_migrations = sa.Table(
    "schema_migrations",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("applied_at", UTCDateTime, nullable=False),
)
