"""Engines for the review store: PostgreSQL in production, SQLite as the embedded default.

The only dialect-specific setup lives here:
- `postgresql://` and `postgres://` URLs (libpq form, as ACT_DATABASE_URL gives them) are mapped
  to SQLAlchemy's psycopg 3 driver, `postgresql+psycopg://`;
- SQLite has no `SELECT ... FOR UPDATE SKIP LOCKED`: every transaction of a store's engine begins
  with `BEGIN IMMEDIATE`, which takes the database's write lock, so the same statements are
  race-free there too (and read-only work such as exports opts into `BEGIN DEFERRED`, which in
  WAL mode reads a snapshot without blocking writers). Also WAL, a busy timeout, foreign keys.

Which store a process uses when it is not told (`url_from_environment`) is decided here too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.pool import StaticPool

DEFAULT_URL = "sqlite:///act-review.db"

# Execution option that makes a SQLite transaction begin DEFERRED (read-only work).
READ_ONLY = "act_read_only"

SQLITE_BUSY_TIMEOUT_S = 30.0


def url_from_environment() -> str:
    """The review store's URL when none is given: `ACT_REVIEW_DATABASE_URL` (the review
    server's setting), else `ACT_DATABASE_URL` (what deploy/local/env.sh exports, and the
    decision consumer's setting in the Helm chart), else the embedded SQLite file."""
    for name in ("ACT_REVIEW_DATABASE_URL", "ACT_DATABASE_URL"):
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return DEFAULT_URL


def missing_sqlite_file(url: str | sa.URL) -> Path | None:
    """The database file of a SQLite URL when that file does not exist (opening the store
    would create an empty one); None for an existing file, an in-memory database or a server."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or _in_memory(parsed) or parsed.query.get("uri"):
        return None  # (a `file:` URI names its file in its own syntax: not judged here)
    path = Path(parsed.database or "")
    return None if path.exists() else path.absolute()


def _in_memory(parsed: sa.URL) -> bool:
    return parsed.database in (None, "", ":memory:") or "mode=memory" in str(parsed)


def normalize_url(url: str | sa.URL) -> sa.URL:
    """The SQLAlchemy URL for `url`; libpq-style PostgreSQL URLs get the psycopg 3 driver."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("postgresql", "sqlite"):
        raise ValueError(
            f"unsupported database {parsed.get_backend_name()!r} in URL "
            f"{parsed.render_as_string(hide_password=True)}: use postgresql:// or sqlite:///"
        )
    return parsed


def create_engine(
    url: str | sa.URL = DEFAULT_URL, *, pool_size: int = 5, echo: bool = False
) -> Engine:
    """An engine configured for the review store (see the module docstring)."""
    parsed = normalize_url(url)
    kwargs: dict[str, Any] = {"echo": echo}
    if parsed.get_backend_name() == "postgresql":
        engine = sa.create_engine(
            parsed, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, **kwargs
        )
        return engine
    in_memory = _in_memory(parsed)
    connect_args = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S}
    if in_memory:
        # One shared connection, so that every use sees the same database; single-threaded use.
        engine = sa.create_engine(parsed, connect_args=connect_args, poolclass=StaticPool, **kwargs)
    else:
        engine = sa.create_engine(parsed, connect_args=connect_args, **kwargs)
    _configure_sqlite(engine, wal=not in_memory)
    return engine


def _configure_sqlite(engine: Engine, *, wal: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy (the "begin" hook below) issue BEGIN, not the sqlite3 module.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            if wal:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = "DEFERRED" if conn.get_execution_options().get(READ_ONLY) else "IMMEDIATE"
        conn.exec_driver_sql(f"BEGIN {mode}")
