"""The review queue's storage: every decision, the human reviews and their audit trail.

`ReviewStore` is SQLAlchemy Core over PostgreSQL (production) or SQLite (the embedded default),
one code path for both. The only dialect-specific setup is in `act.review.db`: SQLite begins
every write transaction with `BEGIN IMMEDIATE`, whose write lock stands in for
`FOR UPDATE SKIP LOCKED` (which SQLAlchemy leaves out when it compiles for SQLite).

Semantics:
- Decisions are idempotent by item id and the first one stored wins. A redelivery whose
  identity (`IDENTITY_FIELDS`: labels, eps, pi, delta, sampler, budget, models, prompts, ...)
  equals the stored one changes nothing; one that differs is a `DecisionConflict` (reported,
  logged, never written), whatever the record's state. Timestamps, rationales and usage are not
  part of the identity: a retried sampler call may differ there and still be the same decision.
- Only delta = 1 records are queued (`pending`). `claim` leases the oldest pending items (by
  decision time) or items whose lease expired; `submit` needs the claim for a first review and
  `expected_revision` for a correction; every review, correction and release is written to
  `reviews_audit` with the previous label and the revision.
- Time comes from the store's clock (UTC, injectable for tests); leases compare against it.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import math
import operator
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine, Row

from act.review import migrations
from act.review.db import DEFAULT_URL, READ_ONLY, create_engine
from act.review.errors import (
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
    RevisionConflict,
    UnknownItem,
    UnknownReviewer,
    UnknownSchema,
)
from act.review.tables import (
    QUEUED_STATES,
    label_schemas,
    records,
    reviewers,
    reviews_audit,
    window_counts,
)
from act.v1 import bus_pb2, types_pb2

log = logging.getLogger("act.review.store")

Clock = Callable[[], datetime]

# The fields that make two decisions for one item "the same decision".
IDENTITY_FIELDS = (
    "schema_id",
    "schema_version",
    "content_ref",
    "machine_label",
    "eps",
    "pi",
    "delta",
    "capped",
    "audit",
    "sampler",
    "transform_id",
    "budget_id",
    "seed_id",
    "window_id",
    "annotator_backend",
    "annotator_model",
    "annotator_model_revision",
    "annotator_prompt",
    "annotator_prompt_version",
    "criticizer_backend",
    "criticizer_model",
    "criticizer_model_revision",
    "criticizer_prompt",
    "criticizer_prompt_version",
)

MAX_CLAIM_ITEMS = 1000
TOKEN_PREFIX = "actr_"
# Shortest token an operator may choose (set_reviewer_token); issued tokens have 48 characters.
MIN_TOKEN_LENGTH = 24
# Time to review: the latest first reviews read (review_delays), and the quantiles reported.
REVIEW_DELAYS_LIMIT = 10_000
TIME_TO_REVIEW_QUANTILES = (0.5, 0.9, 0.99)
_CHUNK = 5000  # ids per IN (...) list: under SQLite's and PostgreSQL's parameter limits
_INSERT_ATTEMPTS = 3

# Length limits of the string columns, checked before writing so that PostgreSQL (which
# enforces them) and SQLite (which does not) accept and refuse the same decisions.
_STRING_LIMITS = {
    column.name: column.type.length
    for column in records.columns
    if isinstance(column.type, sa.String) and column.type.length
}


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class UpsertResult:
    """What `upsert_decisions` did with each decision of a batch."""

    inserted: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    conflicts: tuple[DecisionConflict, ...] = ()
    invalid: tuple[InvalidDecision, ...] = ()

    @property
    def rejected(self) -> tuple[InvalidDecision | DecisionConflict, ...]:
        """The decisions not stored and not duplicates: to dead-letter with their reason."""
        return (*self.invalid, *self.conflicts)


@dataclass(frozen=True)
class ClaimedRecord:
    """An item leased to a reviewer."""

    item_id: str
    claim_id: str
    reviewer: str
    lease_expires_at: datetime
    decided_at: datetime
    schema_id: str
    schema_version: int
    # The sampler's decision with its item embedded (when the item was stored).
    decision: bus_pb2.Decision
    # The registered schema (labels, instructions), or None when it was not registered.
    schema: types_pb2.LabelSchema | None


@dataclass(frozen=True)
class Record:
    """A stored record as reviewers and tools see it (no claim token)."""

    item_id: str
    schema_id: str
    schema_version: int
    content_ref: str
    machine_label: str
    eps: float
    pi: float
    delta: bool
    capped: bool
    audit: bool
    budget_id: str
    window_id: str
    # not_selected | pending | claimed | reviewed; an expired claim reads as pending.
    state: str
    claimed_by: str | None
    lease_expires_at: datetime | None
    human_label: str | None
    unsure: bool | None
    reviewer: str | None
    first_reviewed_at: datetime | None
    reviewed_at: datetime | None
    revision: int
    decided_at: datetime
    decision: bus_pb2.Decision


@dataclass(frozen=True)
class AuditEntry:
    """One review, correction or release of an item."""

    id: int
    item_id: str
    action: str
    reviewer: str
    label: str | None
    previous_label: str | None
    unsure: bool
    note: str
    revision: int
    at: datetime


@dataclass(frozen=True)
class ReviewerInfo:
    """A reviewer as an operator sees them (never their token)."""

    name: str
    active: bool
    created_at: datetime
    token_rotated_at: datetime | None
    # Reviews and corrections recorded under their name, and the latest one's time.
    reviews: int
    last_review_at: datetime | None


@dataclass(frozen=True)
class WindowSpend:
    """Budget use of one (budget, window): decisions, reviews drawn, expected spend."""

    budget_id: str
    window_id: str
    decisions: int
    selected: int
    # Sum of pi: the spend the sampler aimed at.
    expected: float
    capped: int
    reviewed: int
    # Reviewed with a human label, and of those with the machine's label.
    labelled: int
    agree: int


@dataclass(frozen=True)
class QueueStats:
    """Counts of records by state (expired claims count as pending)."""

    decisions: int
    not_selected: int
    selected: int
    pending: int
    claimed: int
    reviewed: int
    unsure: int
    capped: int
    oldest_pending_age: timedelta | None
    active_reviewers: int
    # Among reviewed records with a human label: share where it equals the machine label.
    # Not an unbiased accuracy estimate (the reviewed items were drawn by eps).
    agreement_rate: float | None
    labelled: int
    windows: tuple[WindowSpend, ...] = field(default=())

    def as_json(self) -> dict[str, Any]:
        """The counts (not the windows) as the HTTP API gives them."""
        age = self.oldest_pending_age
        return {
            "decisions": self.decisions,
            "not_selected": self.not_selected,
            "selected": self.selected,
            "pending": self.pending,
            "claimed": self.claimed,
            "reviewed": self.reviewed,
            "unsure": self.unsure,
            "capped": self.capped,
            "labelled": self.labelled,
            "active_reviewers": self.active_reviewers,
            "oldest_pending_age_seconds": age.total_seconds() if age is not None else None,
            "agreement_rate": self.agreement_rate,
        }


# ----------------------------------------------------------------------------- decisions


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# google.protobuf.Timestamp's range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
_TIMESTAMP_SECONDS = range(-62_135_596_800, 253_402_300_800)
_NANOS_PER_SECOND = 1_000_000_000


def _timestamp(item_id: str, name: str, ts: Timestamp) -> datetime | None:
    """The UTC datetime of a set timestamp (None when unset); InvalidDecision when it is out of
    Timestamp's range. The same value as `ts.ToDatetime(tzinfo=UTC)`, at a fifth of its cost
    (that checks through several calls and converts time zones)."""
    seconds, nanos = ts.seconds, ts.nanos
    if seconds == 0 and nanos == 0:
        return None
    if seconds not in _TIMESTAMP_SECONDS or not 0 <= nanos < _NANOS_PER_SECOND:
        raise InvalidDecision(
            item_id, f"{name} is not a valid timestamp (seconds={seconds}, nanos={nanos})"
        )
    return _EPOCH + timedelta(seconds=seconds, microseconds=nanos // 1000)


def _to_timestamp(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def _probability(item_id: str, name: str, value: float) -> float:
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise InvalidDecision(item_id, f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


_identity = operator.itemgetter(*IDENTITY_FIELDS)


def _fingerprint(row: dict[str, Any]) -> str:
    return hashlib.sha256(repr(_identity(row)).encode()).hexdigest()


def decision_row(decision: bus_pb2.Decision, received_at: datetime) -> dict[str, Any]:
    """The `records` row for a decision; InvalidDecision saying what is wrong."""
    item_id = decision.item_id
    if not item_id:
        raise InvalidDecision("", "item_id is empty")
    if not decision.HasField("annotation") or not decision.annotation.label:
        raise InvalidDecision(item_id, "it has no annotation label (y_m)")
    # Sub-messages are read once: each attribute access builds a new wrapper.
    annotation = decision.annotation
    criticism = decision.criticism
    item = decision.item
    annotator, annotator_prompt = annotation.model, annotation.prompt
    criticizer, criticizer_prompt = criticism.model, criticism.prompt
    for source, other in (
        ("annotation", annotation.item_id),
        ("criticism", criticism.item_id),
        ("item", item.item_id),
    ):
        if other and other != item_id:
            raise InvalidDecision(item_id, f"its {source} is for item {other!r}")
    if criticism.label and criticism.label != annotation.label:
        raise InvalidDecision(
            item_id,
            f"the criticism is of label {criticism.label!r}, the annotation says "
            f"{annotation.label!r}",
        )
    eps = _probability(item_id, "eps", decision.eps)
    pi = _probability(item_id, "pi", decision.pi)
    if decision.delta and pi <= 0.0:
        raise InvalidDecision(item_id, "delta = 1 with pi = 0 (the estimator divides by pi)")
    if decision.capped and (pi != 0.0 or decision.delta):
        raise InvalidDecision(item_id, f"capped with pi = {pi!r}, delta = {decision.delta}")
    schema_id = annotation.schema_id or item.schema_id
    if annotation.schema_id and item.schema_id and (annotation.schema_id != item.schema_id):
        raise InvalidDecision(
            item_id,
            f"annotation schema {annotation.schema_id!r} differs from the item's "
            f"{item.schema_id!r}",
        )
    distribution = [
        {
            "label": score.label,
            "probability": _probability(item_id, f"P({score.label})", score.probability),
        }
        for score in annotation.distribution
    ]

    if decision.HasField("item"):
        item_pb: bytes | None = item.SerializeToString(deterministic=True)
        stripped = bus_pb2.Decision()
        stripped.CopyFrom(decision)
        stripped.ClearField("item")
        decision_pb = stripped.SerializeToString(deterministic=True)
    else:
        item_pb = None
        decision_pb = decision.SerializeToString(deterministic=True)

    row: dict[str, Any] = {
        "item_id": item_id,
        "schema_id": schema_id,
        "schema_version": int(annotation.schema_version),
        "content_ref": decision.content_ref,
        "content_hash": item.content_hash,
        "item_pb": item_pb,
        "decision_pb": decision_pb,
        "machine_label": annotation.label,
        "distribution": distribution,
        "eps": eps,
        "pi": pi,
        "delta": bool(decision.delta),
        "capped": bool(decision.capped),
        "audit": bool(decision.audit),
        "sampler": decision.sampler,
        "transform_id": decision.transform_id,
        "budget_id": decision.budget_id,
        "seed_id": decision.seed_id,
        "window_id": decision.window_id,
        "annotator_backend": annotator.backend,
        "annotator_model": annotator.model,
        "annotator_model_revision": annotator.revision,
        "annotator_prompt": annotator_prompt.strategy_id,
        "annotator_prompt_version": annotator_prompt.version,
        "criticizer_backend": criticizer.backend,
        "criticizer_model": criticizer.model,
        "criticizer_model_revision": criticizer.revision,
        "criticizer_prompt": criticizer_prompt.strategy_id,
        "criticizer_prompt_version": criticizer_prompt.version,
        "decided_at": _timestamp(item_id, "decided_time", decision.decided_time) or received_at,
        "received_at": received_at,
        "state": "pending" if decision.delta else "not_selected",
        "revision": 0,
    }
    for name, limit in _STRING_LIMITS.items():
        value = row.get(name)
        if value is not None and len(value) > limit:
            raise InvalidDecision(item_id, f"{name} is longer than {limit} characters")
    for name, value in row.items():
        if isinstance(value, str) and "\x00" in value:
            raise InvalidDecision(item_id, f"{name} contains a NUL character")
    for score in distribution:
        if "\x00" in score["label"]:
            raise InvalidDecision(item_id, "a distribution label contains a NUL character")
    row["fingerprint"] = _fingerprint(row)
    return row


def _differences(stored: dict[str, Any] | Row[Any], received: dict[str, Any]) -> dict[str, Any]:
    mapping = stored if isinstance(stored, dict) else stored._mapping
    return {
        name: (mapping[name], received[name])
        for name in IDENTITY_FIELDS
        if mapping[name] != received[name]
    }


def _is_insert_race(exc: sa.exc.DBAPIError) -> bool:
    """A unique violation, deadlock or serialization failure: a retry may succeed."""
    # sqlite3 errors carry no SQLSTATE; SQLite's write lock rules out these races anyway.
    return getattr(exc.orig, "sqlstate", None) in ("23505", "40P01", "40001")


def _chunks(values: Sequence[str], size: int = _CHUNK) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _copy_records(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Inserts `rows` (from `decision_row`) with PostgreSQL's binary COPY, in the connection's
    open transaction: one statement for the batch instead of one per row, and values in their
    binary form (no text formatting and parsing, no hex for the protobuf bytes): measured in
    bench/stream_bench.py, and about 10 µs less CPU per row than text COPY (client and server
    together). A row whose item was inserted meanwhile by another writer fails the whole COPY
    with a unique violation, as the INSERT did, and the caller retries the batch."""
    import psycopg
    from psycopg import sql
    from psycopg.types.json import Jsonb

    columns = tuple(rows[0])
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(records.name), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    values_of = operator.itemgetter(*columns)
    position = columns.index("distribution")  # JSONB: the one value psycopg cannot infer
    driver = conn.connection.driver_connection
    try:
        with driver.cursor() as cursor, cursor.copy(statement) as copy:
            copy.set_types(_postgres_types(columns))
            for row in rows:
                values = list(values_of(row))
                values[position] = Jsonb(values[position])
                copy.write_row(values)
    except psycopg.Error as exc:  # raised as SQLAlchemy would, for the caller's retry logic
        raise sa.exc.DBAPIError.instance(
            statement.as_string(driver), None, exc, psycopg.Error
        ) from exc


@functools.cache
def _postgres_types(columns: tuple[str, ...]) -> list[str]:
    """PostgreSQL type names of these `records` columns, as binary COPY needs them
    ("varchar", "jsonb", "timestamp with time zone", ...)."""
    dialect = postgresql.dialect()
    return [
        re.sub(r"\(.*\)", "", records.c[name].type.compile(dialect=dialect)).lower()
        for name in columns
    ]


def _decision(decision_pb: bytes, item_pb: bytes | None) -> bus_pb2.Decision:
    decision = bus_pb2.Decision.FromString(decision_pb)
    if item_pb is not None:
        decision.item.ParseFromString(item_pb)
    return decision


# What a release writes to the record: back in the queue, unclaimed.
_UNCLAIMED = {"state": "pending", "claimed_by": None, "claim_id": None, "lease_expires_at": None}


def _release_entry(
    item_id: str, reviewer: str, note: str, revision: int, claim_id: str, at: datetime
) -> dict[str, Any]:
    """The audit row of a claim given back to the queue."""
    return {
        "item_id": item_id,
        "action": "release",
        "reviewer": reviewer,
        "label": None,
        "previous_label": None,
        "unsure": False,
        "note": note,
        "revision": revision,
        "claim_id": claim_id,
        "at": at,
    }


def time_to_review(delays: Sequence[float]) -> dict[float, float]:
    """TIME_TO_REVIEW_QUANTILES of decision-to-first-review delays in seconds (empty: none)."""
    if not delays:
        return {}
    values = np.quantile(np.asarray(delays, dtype=float), TIME_TO_REVIEW_QUANTILES)
    return dict(zip(TIME_TO_REVIEW_QUANTILES, map(float, values), strict=True))


def _name(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgument(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > 200:
        raise InvalidArgument(f"{what} is longer than 200 characters")
    return value


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_reviewer_token(name: str, token: str) -> None:
    """InvalidArgument unless `name` is a valid reviewer name and `token` a token an operator
    may choose: TOKEN_PREFIX first (`authenticate` accepts no other), at least
    MIN_TOKEN_LENGTH characters, visible ASCII only (no whitespace or control characters: it
    travels in HTTP headers and gRPC metadata). The messages never quote the token."""
    _name(name, "reviewer name")
    if not isinstance(token, str):
        raise InvalidArgument(f"the token of reviewer {name!r} must be a string")
    if not token.startswith(TOKEN_PREFIX):
        raise InvalidArgument(f"the token of reviewer {name!r} must start with {TOKEN_PREFIX!r}")
    if len(token) < MIN_TOKEN_LENGTH:
        raise InvalidArgument(
            f"the token of reviewer {name!r} is shorter than {MIN_TOKEN_LENGTH} characters"
        )
    if not all("!" <= character <= "~" for character in token):
        raise InvalidArgument(
            f"the token of reviewer {name!r} contains whitespace, control or non-ASCII characters"
        )


# ----------------------------------------------------------------------------- the store


class ReviewStore:
    """Decisions, the review queue, reviews with their audit trail, reviewers, the export.

    Thread-safe: each call runs in its own transaction on a pooled connection.
    """

    def __init__(
        self,
        url: str | sa.URL = DEFAULT_URL,
        *,
        clock: Clock | None = None,
        pool_size: int = 5,
        migrate: bool = True,
        echo: bool = False,
    ) -> None:
        self._engine = create_engine(url, pool_size=pool_size, echo=echo)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._labels_cache: dict[tuple[str, int], tuple[str, ...]] = {}
        self._schema_cache: dict[tuple[str, int], types_pb2.LabelSchema] = {}
        if migrate:
            try:
                migrations.migrate(self._engine)
            except BaseException:
                self._engine.dispose()
                raise

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> ReviewStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise InvalidArgument("the store's clock returned a naive datetime: return UTC")
        return now.astimezone(UTC)

    def _read(self) -> Connection:
        """A connection for read-only work (on SQLite: a DEFERRED transaction, no write lock)."""
        return self._engine.connect().execution_options(**{READ_ONLY: True})

    def _snapshot(self) -> Connection:
        """`_read`, with every statement of its transaction seeing the same snapshot (SQLite's
        read transactions always do; PostgreSQL's default gives each statement its own)."""
        conn = self._read()
        if self.dialect == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        return conn

    # ------------------------------------------------------------------------- decisions

    def upsert_decision(self, decision: bus_pb2.Decision) -> bool:
        """Stores a decision; True if inserted, False if the same decision was already stored.

        Raises InvalidDecision, or DecisionConflict when a different decision is stored.
        """
        result = self.upsert_decisions([decision])
        if result.invalid:
            raise result.invalid[0]
        if result.conflicts:
            raise result.conflicts[0]
        return bool(result.inserted)

    def upsert_decisions(self, decisions: Iterable[bus_pb2.Decision]) -> UpsertResult:
        """Stores a batch in one transaction; invalid and conflicting decisions are reported in
        the result (and logged), not raised, so one bad record does not block the batch."""
        received_at = self._now()
        rows: dict[str, dict[str, Any]] = {}
        invalid: list[InvalidDecision] = []
        unchanged: list[str] = []
        conflicts: list[DecisionConflict] = []
        for decision in decisions:
            try:
                row = decision_row(decision, received_at)
            except InvalidDecision as exc:
                invalid.append(exc)
                continue
            first = rows.get(row["item_id"])
            if first is None:
                rows[row["item_id"]] = row
            elif first["fingerprint"] == row["fingerprint"]:
                unchanged.append(row["item_id"])
            else:
                conflicts.append(DecisionConflict(row["item_id"], _differences(first, row)))
        inserted: list[str] = []
        if rows:
            for attempt in range(1, _INSERT_ATTEMPTS + 1):
                try:
                    inserted, stored_unchanged, stored_conflicts = self._insert_new(rows)
                    break
                except sa.exc.DBAPIError as exc:
                    # Another writer inserted one of these items between our check and our
                    # insert (PostgreSQL, concurrent consumers): unique violation, or, in the
                    # rare case of a lock cycle, a deadlock. The retry sees its rows.
                    if attempt == _INSERT_ATTEMPTS or not _is_insert_race(exc):
                        raise
                    log.info("concurrent insert of the same items; retrying the batch")
            unchanged.extend(stored_unchanged)
            conflicts.extend(stored_conflicts)
        for problem in (*invalid, *conflicts):
            log.warning("decision rejected: %s", problem)
        return UpsertResult(
            inserted=tuple(inserted),
            unchanged=tuple(unchanged),
            conflicts=tuple(conflicts),
            invalid=tuple(invalid),
        )

    def _insert_new(
        self, rows: dict[str, dict[str, Any]]
    ) -> tuple[list[str], list[str], list[DecisionConflict]]:
        """Inserts the rows whose items are not stored yet, in one transaction; returns
        (inserted, unchanged, conflicts). A plain INSERT: a concurrent writer of the same item
        makes it fail with IntegrityError, and the caller retries."""
        unchanged: list[str] = []
        differing: list[str] = []
        conflicts: list[DecisionConflict] = []
        c = records.c
        postgres = self.dialect == "postgresql"
        with self._engine.begin() as conn:
            stored: dict[str, str] = {}
            for chunk in _chunks(list(rows)):
                if postgres:  # one array parameter instead of a parameter per id
                    ids = sa.bindparam("ids", list(chunk), type_=postgresql.ARRAY(sa.String()))
                    match = c.item_id == sa.any_(ids)
                else:
                    match = c.item_id.in_(chunk)
                query = sa.select(c.item_id, c.fingerprint).where(match)
                stored.update((item_id, fp) for item_id, fp in conn.execute(query))
            new = [row for item_id, row in rows.items() if item_id not in stored]
            if new:
                # Sorted by item id, so that concurrent writers of overlapping batches take
                # their locks in the same order.
                new.sort(key=lambda row: row["item_id"])
                if postgres:
                    _copy_records(conn, new)
                else:  # executemany, which sqlite3 runs in C
                    conn.execute(records.insert(), new)
            for item_id, fingerprint in stored.items():
                if fingerprint == rows[item_id]["fingerprint"]:
                    unchanged.append(item_id)
                else:
                    differing.append(item_id)
            identity = [c.item_id, *(c[name] for name in IDENTITY_FIELDS)]
            for chunk in _chunks(differing):
                for row in conn.execute(sa.select(*identity).where(c.item_id.in_(chunk))):
                    conflicts.append(
                        DecisionConflict(row.item_id, _differences(row, rows[row.item_id]))
                    )
        return [row["item_id"] for row in new], unchanged, conflicts

    # ------------------------------------------------------------------------- schemas

    def register_schema(self, schema: types_pb2.LabelSchema) -> bool:
        """Records a schema's labels (and the schema itself, shown to reviewers).

        True if registered now, False if this (schema_id, version) was registered with the same
        labels; Conflict if it was registered with different labels (bump the version).
        """
        schema_id = _name(schema.schema_id, "schema_id")
        version = int(schema.version) or 1
        labels = [label.name for label in schema.labels]
        if len(labels) < 2 or len(set(labels)) != len(labels) or not all(labels):
            raise InvalidArgument(
                f"schema {schema_id!r} needs at least two distinct, non-empty label names, "
                f"got {labels}"
            )
        with self._engine.begin() as conn:
            stored = conn.execute(
                sa.select(label_schemas.c.labels).where(
                    label_schemas.c.schema_id == schema_id, label_schemas.c.version == version
                )
            ).scalar_one_or_none()
            if stored is not None:
                if list(stored) != labels:
                    raise Conflict(
                        f"schema {schema_id!r} version {version} is registered with labels "
                        f"{list(stored)}, not {labels}: a changed schema needs a new version"
                    )
                return False
            conn.execute(
                label_schemas.insert().values(
                    schema_id=schema_id,
                    version=version,
                    labels=labels,
                    schema_pb=schema.SerializeToString(deterministic=True),
                    registered_at=self._now(),
                )
            )
        return True

    def labels_for(self, schema_id: str, version: int) -> tuple[str, ...] | None:
        """The registered label names of a schema version, or None."""
        with self._read() as conn:
            return self._labels(conn, schema_id, version)

    def _labels(self, conn: Connection, schema_id: str, version: int) -> tuple[str, ...] | None:
        key = (schema_id, version)
        if key not in self._labels_cache:
            stored = conn.execute(
                sa.select(label_schemas.c.labels).where(
                    label_schemas.c.schema_id == schema_id, label_schemas.c.version == version
                )
            ).scalar_one_or_none()
            if stored is None:
                return None  # not cached: it may be registered later
            self._labels_cache[key] = tuple(stored)
        return self._labels_cache[key]

    def _schema(
        self, conn: Connection, schema_id: str, version: int
    ) -> types_pb2.LabelSchema | None:
        key = (schema_id, version)
        if key not in self._schema_cache:
            stored = conn.execute(
                sa.select(label_schemas.c.schema_pb).where(
                    label_schemas.c.schema_id == schema_id, label_schemas.c.version == version
                )
            ).scalar_one_or_none()
            if stored is None:
                return None  # not cached: it may be registered later
            self._schema_cache[key] = types_pb2.LabelSchema.FromString(stored)
        return self._schema_cache[key]

    # ------------------------------------------------------------------------- the queue

    def claim(
        self,
        reviewer: str,
        max_items: int = 1,
        lease_seconds: float = 300.0,
        schema_id: str | None = None,
    ) -> list[ClaimedRecord]:
        """Leases up to `max_items` queued items (oldest decision first) to `reviewer`.

        Takes pending items and items whose lease expired; never gives an item to two
        reviewers at once (PostgreSQL: FOR UPDATE SKIP LOCKED, so concurrent claimers skip each
        other's rows instead of waiting; SQLite: the write lock of BEGIN IMMEDIATE). Returns
        fewer items, possibly none, when the queue has fewer. All items of one call share one
        claim id.
        """
        reviewer = _name(reviewer, "reviewer")
        if not isinstance(max_items, int) or not 1 <= max_items <= MAX_CLAIM_ITEMS:
            raise InvalidArgument(f"max_items must be in 1..{MAX_CLAIM_ITEMS}, got {max_items!r}")
        if not math.isfinite(lease_seconds) or lease_seconds <= 0:
            raise InvalidArgument(f"lease_seconds must be positive, got {lease_seconds!r}")
        now = self._now()
        expires = now + timedelta(seconds=lease_seconds)
        claim_id = secrets.token_urlsafe(18)
        c = records.c
        available = sa.and_(
            c.state.in_(("pending", "claimed")),
            sa.or_(c.state == "pending", c.lease_expires_at <= now),
        )
        if schema_id:
            available = sa.and_(available, c.schema_id == schema_id)
        # The dialect switch: FOR UPDATE SKIP LOCKED on PostgreSQL; SQLAlchemy compiles no
        # locking clause for SQLite, whose BEGIN IMMEDIATE already excludes other writers.
        # Two statements, not UPDATE ... WHERE item_id IN (SELECT ... LIMIT n FOR UPDATE SKIP
        # LOCKED): PostgreSQL may rescan such a subquery and then update more than n rows.
        pick = (
            sa.select(c.item_id)
            .where(available)
            .order_by(c.decided_at, c.item_id)
            .limit(max_items)
            .with_for_update(skip_locked=True)
        )
        with self._engine.begin() as conn:
            picked = list(conn.execute(pick).scalars())
            if not picked:
                return []
            statement = (
                sa.update(records)
                .where(c.item_id.in_(picked))
                .values(
                    state="claimed",
                    claimed_by=reviewer,
                    claim_id=claim_id,
                    lease_expires_at=expires,
                )
                .returning(
                    c.item_id,
                    c.decided_at,
                    c.schema_id,
                    c.schema_version,
                    c.decision_pb,
                    c.item_pb,
                )
            )
            rows = sorted(conn.execute(statement).all(), key=lambda r: (r.decided_at, r.item_id))
            schemas = {
                key: self._schema(conn, *key)
                for key in {(row.schema_id, row.schema_version) for row in rows}
            }
        return [
            ClaimedRecord(
                item_id=row.item_id,
                claim_id=claim_id,
                reviewer=reviewer,
                lease_expires_at=expires,
                decided_at=row.decided_at,
                schema_id=row.schema_id,
                schema_version=row.schema_version,
                decision=_decision(row.decision_pb, row.item_pb),
                schema=schemas[(row.schema_id, row.schema_version)],
            )
            for row in rows
        ]

    def submit(
        self,
        item_id: str,
        claim_id: str | None,
        reviewer: str,
        label: str,
        *,
        unsure: bool = False,
        note: str = "",
        expected_revision: int | None = None,
        labels: Sequence[str] | None = None,
    ) -> bus_pb2.Review:
        """Records a review and returns it as published on act.reviews.v1.

        A first review needs the item's current, unexpired claim held by `reviewer`
        (`expected_revision`, if given, must be 0). A correction of a reviewed item passes no
        claim and `expected_revision` = the item's current revision (optimistic concurrency).
        The label must be one of the schema's labels (`labels`, else the registered schema);
        it may be empty only when `unsure`. Resubmitting the same review with the claim that
        recorded it returns the stored review (safe client retries).
        """
        reviewer = _name(reviewer, "reviewer")
        if not isinstance(label, str) or not isinstance(note, str):
            raise InvalidArgument("label and note must be strings")
        now = self._now()
        c = records.c
        with self._engine.begin() as conn:
            row = conn.execute(
                sa.select(
                    c.item_id,
                    c.state,
                    c.capped,
                    c.schema_id,
                    c.schema_version,
                    c.claimed_by,
                    c.claim_id,
                    c.lease_expires_at,
                    c.human_label,
                    c.revision,
                )
                .where(c.item_id == item_id)
                .with_for_update()
            ).one_or_none()
            if row is None:
                raise UnknownItem(item_id)
            if row.state == "not_selected":
                raise NotQueued(item_id, row.capped)
            self._check_label(conn, row, label, unsure, labels)
            if claim_id:
                if row.claim_id != claim_id:
                    if row.state == "reviewed":
                        replay = self._replayed(
                            conn, item_id, claim_id, reviewer, label, unsure, note
                        )
                        if replay is not None:
                            return replay
                        detail = f"the item is already reviewed (revision {row.revision})"
                    elif row.state == "claimed" and row.lease_expires_at > now:
                        detail = "the item is claimed under another claim"
                    else:
                        detail = "the claim expired or was released; the item is in the queue"
                    raise ClaimNotFound(item_id, claim_id, detail)
                if row.claimed_by != reviewer:
                    raise ClaimNotYours(item_id, reviewer)
                if row.lease_expires_at <= now:
                    raise ClaimExpired(item_id, row.lease_expires_at)
                if expected_revision is not None and expected_revision != row.revision:
                    raise RevisionConflict(item_id, expected_revision, row.revision)
                action = "review"
            else:
                if row.state != "reviewed":
                    raise ClaimRequired(item_id)
                if expected_revision is None or expected_revision != row.revision:
                    raise RevisionConflict(item_id, expected_revision, row.revision)
                action = "correction"
            revision = row.revision + 1
            updated = conn.execute(
                sa.update(records)
                .where(c.item_id == item_id, c.revision == row.revision)
                .values(
                    state="reviewed",
                    human_label=label or None,
                    unsure=bool(unsure),
                    reviewer=reviewer,
                    reviewed_at=now,
                    first_reviewed_at=sa.func.coalesce(c.first_reviewed_at, now),
                    revision=revision,
                    claimed_by=None,
                    claim_id=None,
                    lease_expires_at=None,
                )
            ).rowcount
            if updated != 1:  # only without row locks; kept as a guard
                raise RevisionConflict(item_id, row.revision, row.revision + 1)
            conn.execute(
                reviews_audit.insert().values(
                    item_id=item_id,
                    action=action,
                    reviewer=reviewer,
                    label=label or None,
                    previous_label=row.human_label,
                    unsure=bool(unsure),
                    note=note,
                    revision=revision,
                    claim_id=claim_id or None,
                    at=now,
                )
            )
        return bus_pb2.Review(
            item_id=item_id,
            label=label,
            unsure=bool(unsure),
            reviewer=reviewer,
            reviewed_time=_to_timestamp(now),
            revision=revision,
            previous_label=row.human_label or "",
            note=note,
        )

    def _check_label(
        self,
        conn: Connection,
        row: Row[Any],
        label: str,
        unsure: bool,
        labels: Sequence[str] | None,
    ) -> None:
        if labels is not None:
            allowed = tuple(labels)
        else:
            found = self._labels(conn, row.schema_id, row.schema_version)
            if found is None:
                raise UnknownSchema(row.schema_id, row.schema_version)
            allowed = found
        if not label:
            if not unsure:
                raise InvalidLabel(
                    row.item_id,
                    label,
                    allowed,
                    f"the label of item {row.item_id!r} is empty: give one of "
                    f"{', '.join(allowed)}, or set unsure",
                )
            return
        if label not in allowed:
            raise InvalidLabel(row.item_id, label, allowed)

    def _replayed(
        self,
        conn: Connection,
        item_id: str,
        claim_id: str,
        reviewer: str,
        label: str,
        unsure: bool,
        note: str,
    ) -> bus_pb2.Review | None:
        """The stored review if this exact review was already recorded with this claim."""
        a = reviews_audit.c
        entry = conn.execute(
            sa.select(reviews_audit).where(
                a.item_id == item_id, a.claim_id == claim_id, a.action == "review"
            )
        ).one_or_none()
        if entry is None:
            return None
        if (entry.reviewer, entry.label or "", entry.unsure, entry.note) != (
            reviewer,
            label,
            bool(unsure),
            note,
        ):
            raise Conflict(
                f"claim {claim_id!r} already recorded a different review of item {item_id!r} "
                f"(revision {entry.revision}); to change it, submit a correction without a claim "
                "and with expected_revision"
            )
        return bus_pb2.Review(
            item_id=item_id,
            label=entry.label or "",
            unsure=entry.unsure,
            reviewer=entry.reviewer,
            reviewed_time=_to_timestamp(entry.at),
            revision=entry.revision,
            previous_label=entry.previous_label or "",
            note=entry.note,
        )

    def release(self, item_id: str, claim_id: str, reviewer: str, reason: str = "") -> bool:
        """Gives a claimed item back to the queue; False if the claim is no longer active
        (expired, released, or superseded): nothing changed then. ClaimNotYours if the claim
        belongs to another reviewer. The reason goes to the audit trail."""
        reviewer = _name(reviewer, "reviewer")
        now = self._now()
        c = records.c
        with self._engine.begin() as conn:
            row = conn.execute(
                sa.select(c.state, c.claimed_by, c.claim_id, c.lease_expires_at, c.revision)
                .where(c.item_id == item_id)
                .with_for_update()
            ).one_or_none()
            if row is None:
                raise UnknownItem(item_id)
            if row.state != "claimed" or not claim_id or row.claim_id != claim_id:
                return False
            if row.claimed_by != reviewer:
                raise ClaimNotYours(item_id, reviewer)
            if row.lease_expires_at <= now:
                return False
            conn.execute(sa.update(records).where(c.item_id == item_id).values(_UNCLAIMED))
            conn.execute(
                reviews_audit.insert().values(
                    _release_entry(item_id, reviewer, reason, row.revision, claim_id, now)
                )
            )
        return True

    # ------------------------------------------------------------------------- reads

    def get_record(self, item_id: str) -> Record:
        """The record of an item; UnknownItem if there is none."""
        now = self._now()
        with self._read() as conn:
            row = conn.execute(sa.select(records).where(records.c.item_id == item_id)).one_or_none()
        if row is None:
            raise UnknownItem(item_id)
        state = row.state
        claimed_by, lease = row.claimed_by, row.lease_expires_at
        if state == "claimed" and lease <= now:
            state, claimed_by, lease = "pending", None, None
        return Record(
            item_id=row.item_id,
            schema_id=row.schema_id,
            schema_version=row.schema_version,
            content_ref=row.content_ref,
            machine_label=row.machine_label,
            eps=row.eps,
            pi=row.pi,
            delta=row.delta,
            capped=row.capped,
            audit=row.audit,
            budget_id=row.budget_id,
            window_id=row.window_id,
            state=state,
            claimed_by=claimed_by,
            lease_expires_at=lease,
            human_label=row.human_label,
            unsure=row.unsure,
            reviewer=row.reviewer,
            first_reviewed_at=row.first_reviewed_at,
            reviewed_at=row.reviewed_at,
            revision=row.revision,
            decided_at=row.decided_at,
            decision=_decision(row.decision_pb, row.item_pb),
        )

    def audit_trail(self, item_id: str) -> list[AuditEntry]:
        """Every review, correction and release of an item, oldest first."""
        a = reviews_audit.c
        with self._read() as conn:
            rows = conn.execute(
                sa.select(reviews_audit).where(a.item_id == item_id).order_by(a.id)
            ).all()
        return [
            AuditEntry(
                id=row.id,
                item_id=row.item_id,
                action=row.action,
                reviewer=row.reviewer,
                label=row.label,
                previous_label=row.previous_label,
                unsure=row.unsure,
                note=row.note,
                revision=row.revision,
                at=row.at,
            )
            for row in rows
        ]

    def stats(
        self, schema_id: str | None = None, *, recent_windows: int | None = None
    ) -> QueueStats:
        """Counts by state, oldest pending age, agreement, and budget spent per window.

        Counts come from `window_counts` (a row per window), the live claims from their
        partial index, the oldest pending item from the queue's index: no query counts the
        records, so the cost follows the number of windows and of live claims, not the stream
        or the reviews. All from one snapshot.

        `recent_windows` limits the windows to that many, those whose last decision is the
        latest (in that order, oldest first): None gives every window, 0 none.
        """
        if recent_windows is not None and recent_windows < 0:
            raise InvalidArgument(f"recent_windows must be >= 0, got {recent_windows}")
        now = self._now()
        c, w = records.c, window_counts.c

        def total(column: sa.ColumnElement[Any]) -> sa.ColumnElement[int]:
            # PostgreSQL sums bigints as numeric: cast back to an integer.
            return sa.cast(sa.func.coalesce(sa.func.sum(column), 0), sa.BigInteger)

        per_window = (w.decisions, w.selected, w.capped, w.reviewed, w.labelled, w.agree)
        counted = (*per_window, w.unsure)
        totals = sa.select(*(total(column).label(column.name) for column in counted))
        live_claims = sa.select(
            sa.func.count().label("claimed"),
            sa.func.count(sa.distinct(c.claimed_by)).label("active"),
        ).where(c.state == "claimed", c.lease_expires_at > now)
        oldest_pending = (
            sa.select(c.decided_at)
            .where(
                c.state.in_(QUEUED_STATES),
                sa.or_(c.state == "pending", c.lease_expires_at <= now),
            )
            .order_by(c.decided_at, c.item_id)
            .limit(1)
        )
        windows = (
            sa.select(
                w.budget_id,
                w.window_id,
                *(total(column).label(column.name) for column in per_window),
                sa.func.sum(w.expected).label("expected"),
            )
            .group_by(w.budget_id, w.window_id)
            .order_by(sa.func.max(w.last_decided_at).desc(), w.budget_id.desc(), w.window_id.desc())
            .limit(recent_windows)
        )
        if schema_id:
            totals = totals.where(w.schema_id == schema_id)
            live_claims = live_claims.where(c.schema_id == schema_id)
            oldest_pending = oldest_pending.where(c.schema_id == schema_id)
            windows = windows.where(w.schema_id == schema_id)
        with self._snapshot() as conn:
            t = conn.execute(totals).one()
            claims = conn.execute(live_claims).one()
            oldest = conn.execute(oldest_pending).scalar_one_or_none()
            spend = conn.execute(windows).all()[::-1] if recent_windows != 0 else []
        return QueueStats(
            decisions=t.decisions,
            not_selected=t.decisions - t.selected,
            selected=t.selected,
            # Expired claims count as pending.
            pending=t.selected - t.reviewed - claims.claimed,
            claimed=claims.claimed,
            reviewed=t.reviewed,
            unsure=t.unsure,
            capped=t.capped,
            oldest_pending_age=(now - oldest) if oldest is not None else None,
            active_reviewers=claims.active,
            agreement_rate=(t.agree / t.labelled) if t.labelled else None,
            labelled=t.labelled,
            windows=tuple(
                WindowSpend(
                    budget_id=s.budget_id,
                    window_id=s.window_id,
                    decisions=s.decisions,
                    selected=s.selected,
                    expected=float(s.expected),
                    capped=s.capped,
                    reviewed=s.reviewed,
                    labelled=s.labelled,
                    agree=s.agree,
                )
                for s in spend
            ),
        )

    def review_delays(
        self, within: timedelta = timedelta(hours=1), limit: int = REVIEW_DELAYS_LIMIT
    ) -> list[float]:
        """Seconds from decision to first review, for the items first reviewed in the last
        `within` (the latest `limit` of them; read through the first-review index)."""
        if within <= timedelta(0) or limit < 1:
            raise InvalidArgument("within must be positive and limit at least 1")
        c = records.c
        query = (
            sa.select(c.decided_at, c.first_reviewed_at)
            .where(c.first_reviewed_at.is_not(None), c.first_reviewed_at >= self._now() - within)
            .order_by(c.first_reviewed_at.desc())
            .limit(limit)
        )
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [(reviewed - decided).total_seconds() for decided, reviewed in rows]

    # ------------------------------------------------------------------------- reviewers

    def add_reviewer(self, name: str) -> str:
        """Creates a reviewer and returns their token, the only time it is available (only its
        SHA-256 is stored). ReviewerExists if the name is taken."""
        name = _name(name, "reviewer name")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    reviewers.insert().values(
                        name=name,
                        token_hash=_token_hash(token),
                        created_at=self._now(),
                        active=True,
                    )
                )
        except sa.exc.IntegrityError:
            raise ReviewerExists(name) from None
        return token

    def rotate_token(self, name: str) -> str:
        """Issues a new token for a reviewer (the old one stops working) and reactivates them."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._engine.begin() as conn:
            changed = conn.execute(
                sa.update(reviewers)
                .where(reviewers.c.name == name)
                .values(token_hash=_token_hash(token), token_rotated_at=self._now(), active=True)
            ).rowcount
        if changed != 1:
            raise UnknownReviewer(name)
        return token

    def set_reviewer_token(self, name: str, token: str) -> bool:
        """Gives reviewer `name` a token chosen outside the store (e.g. held in a Kubernetes
        Secret); only its SHA-256 is stored. True: the reviewer was created. False: the reviewer
        existed, holds `token` from now on (`token_rotated_at` is set when it changed; the old
        token stops working) and is active again. Setting the token a reviewer already holds
        changes nothing else, so syncing the same tokens twice is a no-op.

        InvalidArgument for a malformed name or token (`check_reviewer_token`) or a token that
        another reviewer holds; nothing is written then."""
        check_reviewer_token(name, token)
        digest = _token_hash(token)
        for _ in range(_INSERT_ATTEMPTS):
            try:
                with self._engine.begin() as conn:
                    row = conn.execute(
                        sa.select(reviewers.c.token_hash, reviewers.c.active).where(
                            reviewers.c.name == name
                        )
                    ).one_or_none()
                    if row is None:
                        conn.execute(
                            reviewers.insert().values(
                                name=name, token_hash=digest, created_at=self._now(), active=True
                            )
                        )
                        return True
                    changes: dict[str, Any] = {} if row.active else {"active": True}
                    if row.token_hash != digest:
                        changes.update(token_hash=digest, token_rotated_at=self._now())
                    if changes:
                        conn.execute(
                            sa.update(reviewers).where(reviewers.c.name == name).values(changes)
                        )
                    return False
            except sa.exc.IntegrityError:
                # Either another reviewer holds the token, or a concurrent sync (another
                # replica's) created `name` first: then the next attempt updates it.
                with self._read() as conn:
                    holder = conn.execute(
                        sa.select(reviewers.c.name).where(reviewers.c.token_hash == digest)
                    ).scalar_one_or_none()
                if holder is not None and holder != name:
                    raise InvalidArgument(
                        f"the token chosen for reviewer {name!r} is already another reviewer's; "
                        "give every reviewer a token of their own"
                    ) from None
        raise Conflict(f"reviewer {name!r} kept changing while its token was set; try again")

    def deactivate_reviewer(self, name: str) -> int:
        """Disables a reviewer's token (their past reviews stay attributed to them) and gives
        the items they hold back to the queue (audited as releases); returns how many."""
        now = self._now()
        c = records.c
        with self._engine.begin() as conn:
            changed = conn.execute(
                sa.update(reviewers).where(reviewers.c.name == name).values(active=False)
            ).rowcount
            if changed != 1:
                raise UnknownReviewer(name)
            held = conn.execute(
                sa.select(c.item_id, c.claim_id, c.revision)
                .where(c.state == "claimed", c.claimed_by == name, c.lease_expires_at > now)
                .order_by(c.item_id)
                .with_for_update()
            ).all()
            for chunk in _chunks([row.item_id for row in held]):
                conn.execute(sa.update(records).where(c.item_id.in_(chunk)).values(_UNCLAIMED))
            if held:
                conn.execute(
                    reviews_audit.insert(),
                    [
                        _release_entry(
                            row.item_id,
                            name,
                            "reviewer deactivated",
                            row.revision,
                            row.claim_id,
                            now,
                        )
                        for row in held
                    ],
                )
        return len(held)

    def reviewers(self) -> list[ReviewerInfo]:
        """Every reviewer, by name, with how many reviews they recorded."""
        a = reviewers.c
        audit = reviews_audit.c
        activity = (
            sa.select(
                audit.reviewer,
                sa.func.count().label("reviews"),
                sa.func.max(audit.at).label("last_review_at"),
            )
            .where(audit.action.in_(("review", "correction")))
            .group_by(audit.reviewer)
            .subquery()
        )
        query = (
            sa.select(
                a.name,
                a.active,
                a.created_at,
                a.token_rotated_at,
                sa.func.coalesce(activity.c.reviews, 0).label("reviews"),
                activity.c.last_review_at,
            )
            .outerjoin_from(reviewers, activity, activity.c.reviewer == a.name)
            .order_by(a.name)
        )
        with self._read() as conn:
            return [ReviewerInfo(**row._mapping) for row in conn.execute(query)]

    def authenticate(self, token: str) -> str | None:
        """The name of the active reviewer holding `token`, else None.

        The lookup is by the token's SHA-256, and the stored hash is compared in constant time,
        so timing tells nothing about the stored hashes' relation to a guess.
        """
        if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX):
            return None
        digest = _token_hash(token)
        with self._read() as conn:
            row = conn.execute(
                sa.select(reviewers.c.name, reviewers.c.token_hash, reviewers.c.active).where(
                    reviewers.c.token_hash == digest
                )
            ).one_or_none()
        if row is None or not hmac.compare_digest(row.token_hash, digest) or not row.active:
            return None
        return row.name

    # ------------------------------------------------------------------------- export

    def export_parquet(
        self,
        path: str | Path,
        *,
        schema_id: str | None = None,
        include_items: bool = False,
        batch_size: int = 50_000,
    ) -> int:
        """Writes the ACT dataset (one row per record) to a Parquet file; returns the row count.

        See `act.review.export` for the columns. The file is written to a temporary name and
        renamed, so readers never see a partial file.
        """
        from act.review.export import export_parquet

        return export_parquet(
            self,
            path,
            schema_id=schema_id,
            include_items=include_items,
            batch_size=batch_size,
        )
