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


# What one record adds to its window's counts (window_counts columns), as SQL templates over
# a row named {r}; capped and delta are booleans on PostgreSQL and 0/1 on SQLite, CASE reads both.
_V3_ADDS = {
    "decisions": "1",
    "selected": "CASE WHEN {r}.delta THEN 1 ELSE 0 END",
    "capped": "CASE WHEN {r}.capped THEN 1 ELSE 0 END",
    "expected": "{r}.pi",
    "reviewed": "CASE WHEN {r}.state = 'reviewed' THEN 1 ELSE 0 END",
    "unsure": "CASE WHEN {r}.state = 'reviewed' AND {r}.unsure THEN 1 ELSE 0 END",
    "labelled": "CASE WHEN {r}.state = 'reviewed' AND {r}.human_label IS NOT NULL "
    "THEN 1 ELSE 0 END",
    "agree": "CASE WHEN {r}.state = 'reviewed' AND {r}.human_label = {r}.machine_label "
    "THEN 1 ELSE 0 END",
}
# The record columns those read, and the window's key.
_V3_READS = (
    "schema_id",
    "budget_id",
    "window_id",
    "delta",
    "capped",
    "pi",
    "decided_at",
    "state",
    "unsure",
    "human_label",
    "machine_label",
)
_V3_KEY = "schema_id, budget_id, window_id"
_V3_COUNTS = ", ".join(_V3_ADDS)
# What a record's counts depend on, as SQL templates like _V3_ADDS: an update that changes none
# of these (a claim, a release: pending and claimed count alike) leaves the counts alone.
_V3_COUNTED_BY = (
    *(f"{{r}}.{column}" for column in _V3_READS if column != "state"),
    "{r}.state = 'reviewed'",
)


def _v3_sums(rows: str) -> str:
    """Per window, the signed sums of what the rows of `rows` (a relation with a `sign` column
    and `_V3_READS`) add, and their latest decision time."""
    sums = ", ".join(f"sum(r.sign * ({add.format(r='r')}))" for add in _V3_ADDS.values())
    return (
        f"SELECT {_V3_KEY}, {sums}, max(r.decided_at) FROM ({rows}) AS r "
        f"GROUP BY {_V3_KEY} ORDER BY {_V3_KEY}"
    )


def _v3_postgres_triggers(conn: Connection) -> None:
    """Statement-level triggers (one aggregate per INSERT, COPY, UPDATE or DELETE statement,
    over its transition tables) that add each statement's change to window_counts. An UPDATE
    counts only the rows whose counted values changed (a claim or a release changes none)."""
    reads = ", ".join(_V3_READS)
    same = " AND ".join(
        f"({value.format(r='o')}) IS NOT DISTINCT FROM ({value.format(r='n')})"
        for value in _V3_COUNTED_BY
    )
    updated = (
        f"SELECT 1 AS sign, {reads} FROM new_records AS n WHERE NOT EXISTS "
        f"(SELECT FROM old_records AS o WHERE o.item_id = n.item_id AND {same}) "
        f"UNION ALL SELECT -1, {reads} FROM old_records AS o WHERE NOT EXISTS "
        f"(SELECT FROM new_records AS n WHERE n.item_id = o.item_id AND {same})"
    )
    adds = ", ".join(f"{column} = w.{column} + excluded.{column}" for column in _V3_ADDS)
    changes = {
        "insert": ("NEW TABLE AS new_records", f"SELECT 1 AS sign, {reads} FROM new_records"),
        "update": ("OLD TABLE AS old_records NEW TABLE AS new_records", updated),
        "delete": ("OLD TABLE AS old_records", f"SELECT -1 AS sign, {reads} FROM old_records"),
    }
    for event, (transition, rows) in changes.items():
        conn.exec_driver_sql(
            f"CREATE FUNCTION act_count_records_{event}() RETURNS trigger LANGUAGE plpgsql "
            f"AS $$ BEGIN "
            f"INSERT INTO window_counts AS w ({_V3_KEY}, {_V3_COUNTS}, last_decided_at) "
            f"{_v3_sums(rows)} "
            f"ON CONFLICT ({_V3_KEY}) DO UPDATE SET {adds}, "
            f"last_decided_at = GREATEST(w.last_decided_at, excluded.last_decided_at); "
            f"RETURN NULL; END $$"
        )
        conn.exec_driver_sql(
            f"CREATE TRIGGER records_counted_on_{event} AFTER {event.upper()} ON records "
            f"REFERENCING {transition} FOR EACH STATEMENT "
            f"EXECUTE FUNCTION act_count_records_{event}()"
        )


def _v3_sqlite_triggers(conn: Connection) -> None:
    """Row-level triggers (SQLite has no other kind) that add each inserted, changed or
    deleted record to window_counts; an update only when a counted value changed."""

    def upsert(sign: int, row: str) -> str:
        values = ", ".join(f"{sign} * ({add.format(r=row)})" for add in _V3_ADDS.values())
        adds = ", ".join(f"{column} = {column} + excluded.{column}" for column in _V3_ADDS)
        keys = ", ".join(f"{row}.{column}" for column in _V3_KEY.split(", "))
        return (
            f"INSERT INTO window_counts ({_V3_KEY}, {_V3_COUNTS}, last_decided_at) "
            f"VALUES ({keys}, {values}, {row}.decided_at) "
            f"ON CONFLICT ({_V3_KEY}) DO UPDATE SET {adds}, "
            f"last_decided_at = max(last_decided_at, excluded.last_decided_at);"
        )

    changed = " OR ".join(
        f"({value.format(r='OLD')}) IS NOT ({value.format(r='NEW')})" for value in _V3_COUNTED_BY
    )
    for event, when, body in (
        ("insert", "", upsert(1, "NEW")),
        ("update", f"WHEN {changed} ", upsert(-1, "OLD") + " " + upsert(1, "NEW")),
        ("delete", "", upsert(-1, "OLD")),
    ):
        conn.exec_driver_sql(
            f"CREATE TRIGGER records_counted_on_{event} AFTER {event.upper()} ON records "
            f"FOR EACH ROW {when}BEGIN {body} END"
        )


def _v3_window_counts(conn: Connection) -> None:
    """window_counts: per (schema, budget, window), the decisions, selected, capped, sum(pi),
    the latest decision time, and the reviewed records (unsure, labelled, agreeing with the
    machine). Triggers on records keep it, whoever writes (a replica of an older release
    during a rolling upgrade too); it is filled from the records stored so far (one scan of
    the table) after the triggers exist, in the same transaction, whose lock on records
    (PostgreSQL's trigger creation, SQLite's write lock) lets no write fall in between. And an
    index of the claimed records by lease end."""
    counts = sa.Table(
        "window_counts",
        sa.MetaData(),
        sa.Column("schema_id", sa.String(200), primary_key=True),
        sa.Column("budget_id", sa.String(200), primary_key=True),
        sa.Column("window_id", sa.String(200), primary_key=True),
        sa.Column("decisions", sa.BigInteger, nullable=False),
        sa.Column("selected", sa.BigInteger, nullable=False),
        sa.Column("capped", sa.BigInteger, nullable=False),
        sa.Column("expected", sa.Double, nullable=False),
        sa.Column("last_decided_at", UTCDateTime, nullable=False),
        sa.Column("reviewed", sa.BigInteger, nullable=False),
        sa.Column("unsure", sa.BigInteger, nullable=False),
        sa.Column("labelled", sa.BigInteger, nullable=False),
        sa.Column("agree", sa.BigInteger, nullable=False),
    )
    counts.create(conn)
    if conn.dialect.name == "postgresql":
        _v3_postgres_triggers(conn)
    else:
        _v3_sqlite_triggers(conn)
    conn.exec_driver_sql(
        f"INSERT INTO window_counts ({_V3_KEY}, {_V3_COUNTS}, last_decided_at) "
        + _v3_sums(f"SELECT 1 AS sign, {', '.join(_V3_READS)} FROM records")
    )
    records = sa.Table(
        "records",
        sa.MetaData(),
        sa.Column("item_id", sa.String(512), primary_key=True),
        sa.Column("state", sa.String(16)),
        sa.Column("lease_expires_at", UTCDateTime),
    )
    claimed = records.c.state == "claimed"
    sa.Index(
        "ix_records_claimed",
        records.c.lease_expires_at,
        postgresql_where=claimed,
        sqlite_where=claimed,
    ).create(conn)


# Ordered by version; append new steps, never edit a released one.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "records, reviews_audit, reviewers, label_schemas", _v1_initial),
    Migration(2, "index of the records' first review times", _v2_first_reviewed_index),
    Migration(3, "counts of the decisions and reviews per window", _v3_window_counts),
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
