"""Versioned schema migrations of the review store, applied in one transaction at startup.

`migrate(engine)` creates `schema_migrations` if needed, reads the database's version, and
applies every newer step of `MIGRATIONS` in order, recording each, all in one transaction: a
failure leaves the database as it was. It is idempotent, safe to run from several processes at
once (PostgreSQL: a transaction-level advisory lock; SQLite: the write lock that the store's
engine takes with BEGIN IMMEDIATE), and refuses to touch a database whose version is newer than
the code knows (an older replica must not write to a newer schema).

Each step is frozen once released: its table definitions are written out here, not taken from
`act.review.tables`, so that a later change to the tables needs a new step. A test checks that
the migrated schema matches `act.review.tables`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine

from act.review.errors import SchemaVersionError
from act.review.tables import UTCDateTime

log = logging.getLogger("act.review.migrations")

# Arbitrary constant key of the PostgreSQL advisory lock that serializes concurrent migrations.
ADVISORY_LOCK_KEY = 0x4AC7_2E71


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Connection], None]


def _v1_initial(conn: Connection) -> None:
    """records, reviews_audit, reviewers, label_schemas."""
    json_type = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
    md = sa.MetaData()
    records = sa.Table(
        "records",
        md,
        sa.Column("item_id", sa.String(512), primary_key=True),
        sa.Column("schema_id", sa.String(200), nullable=False),
        sa.Column("schema_version", sa.Integer, nullable=False),
        sa.Column("content_ref", sa.Text, nullable=False),
        sa.Column("content_hash", sa.String(128), nullable=False),
        sa.Column("item_pb", sa.LargeBinary, nullable=True),
        sa.Column("decision_pb", sa.LargeBinary, nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("machine_label", sa.String(200), nullable=False),
        sa.Column("distribution", json_type, nullable=False),
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
        sa.Column("annotator_backend", sa.String(64), nullable=False),
        sa.Column("annotator_model", sa.String(500), nullable=False),
        sa.Column("annotator_model_revision", sa.String(200), nullable=False),
        sa.Column("annotator_prompt", sa.String(200), nullable=False),
        sa.Column("annotator_prompt_version", sa.String(64), nullable=False),
        sa.Column("criticizer_backend", sa.String(64), nullable=False),
        sa.Column("criticizer_model", sa.String(500), nullable=False),
        sa.Column("criticizer_model_revision", sa.String(200), nullable=False),
        sa.Column("criticizer_prompt", sa.String(200), nullable=False),
        sa.Column("criticizer_prompt_version", sa.String(64), nullable=False),
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
    queued = records.c.state.in_(("pending", "claimed"))
    sa.Index(
        "ix_records_queue",
        records.c.decided_at,
        records.c.item_id,
        postgresql_where=queued,
        sqlite_where=queued,
    )
    sa.Index("ix_records_schema", records.c.schema_id, records.c.schema_version)
    sa.Index("ix_records_window", records.c.budget_id, records.c.window_id)
    sa.Table(
        "reviews_audit",
        md,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column(
            "item_id", sa.String(512), sa.ForeignKey("records.item_id"), nullable=False, index=True
        ),
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
    sa.Table(
        "reviewers",
        md,
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("token_rotated_at", UTCDateTime, nullable=True),
        sa.Column("active", sa.Boolean, nullable=False),
    )
    sa.Table(
        "label_schemas",
        md,
        sa.Column("schema_id", sa.String(200), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("labels", json_type, nullable=False),
        sa.Column("schema_pb", sa.LargeBinary, nullable=True),
        sa.Column("registered_at", UTCDateTime, nullable=False),
    )
    md.create_all(conn, checkfirst=False)


def _v2_first_reviewed_index(conn: Connection) -> None:
    """An index on records.first_reviewed_at, with decided_at (so that reading both needs no
    visit to the wide rows), over reviewed records only: the time-to-review metric reads the
    latest first reviews. On PostgreSQL the build blocks writes to records while it scans the
    table once (seconds per million records)."""
    records = sa.Table(
        "records",
        sa.MetaData(),
        sa.Column("item_id", sa.String(512), primary_key=True),
        sa.Column("decided_at", UTCDateTime, nullable=False),
        sa.Column("first_reviewed_at", UTCDateTime, nullable=True),
    )
    reviewed = records.c.first_reviewed_at.is_not(None)
    sa.Index(
        "ix_records_first_reviewed",
        records.c.first_reviewed_at,
        records.c.decided_at,
        postgresql_where=reviewed,
        sqlite_where=reviewed,
    ).create(conn)


# Ordered by version; append new steps, never edit a released one.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "records, reviews_audit, reviewers, label_schemas", _v1_initial),
    Migration(2, "index of the records' first review times", _v2_first_reviewed_index),
)

_versions = [m.version for m in MIGRATIONS]
if _versions != list(range(1, len(MIGRATIONS) + 1)):  # pragma: no cover - a coding error
    raise RuntimeError(f"migration versions must be 1, 2, 3, ... in order, got {_versions}")

LATEST_VERSION = MIGRATIONS[-1].version

_schema_migrations = sa.Table(
    "schema_migrations",
    sa.MetaData(),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("applied_at", UTCDateTime, nullable=False),
)


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(ADVISORY_LOCK_KEY)))
    # SQLite: the store's engine opens every transaction with BEGIN IMMEDIATE (the write lock).


def _current_version(conn: Connection) -> int:
    if not sa.inspect(conn).has_table("schema_migrations"):
        return 0
    return conn.execute(
        sa.select(sa.func.coalesce(sa.func.max(_schema_migrations.c.version), 0))
    ).scalar_one()


def current_version(engine: Engine) -> int:
    """The database's schema version; 0 for an empty database."""
    with engine.connect() as conn:
        return _current_version(conn)


def migrate(engine: Engine, *, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[int]:
    """Brings the database to the latest version; returns the versions applied (maybe none).

    Raises SchemaVersionError when the database is newer than `migrations`, or when a step
    fails (the transaction is rolled back, so the database keeps its previous version).
    """
    latest = migrations[-1].version if migrations else 0
    with engine.begin() as conn:
        _lock(conn)
        _schema_migrations.create(conn, checkfirst=True)
        current = _current_version(conn)
        if current > latest:
            raise SchemaVersionError(
                f"the database schema is at version {current} but this code knows versions up "
                f"to {latest}: it was migrated by a newer release; upgrade this service instead "
                "of running it against the newer schema"
            )
        applied: list[int] = []
        for step in migrations:
            if step.version <= current:
                continue
            log.info("applying review-store migration %d: %s", step.version, step.description)
            try:
                step.apply(conn)
            except Exception as exc:
                raise SchemaVersionError(
                    f"migration {step.version} ({step.description}) failed and was rolled back: "
                    f"{exc}"
                ) from exc
            conn.execute(
                _schema_migrations.insert().values(
                    version=step.version,
                    description=step.description,
                    applied_at=datetime.now(UTC),
                )
            )
            applied.append(step.version)
        return applied
