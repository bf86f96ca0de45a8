"""Engines for the review store: PostgreSQL in production, SQLite as the embedded default.

The only dialect-specific setup lives here:
- `postgresql://` and `postgres://` URLs (libpq form, as ACT_DATABASE_URL gives them) are mapped
  to SQLAlchemy's psycopg 3 driver, `postgresql+psycopg://`;
- SQLite has no `SELECT ... FOR UPDATE SKIP LOCKED`: every transaction of a store's engine begins
  with `BEGIN IMMEDIATE`, which takes the database's write lock, so the same statements are
  race-free there too (and read-only work such as exports opts into `BEGIN DEFERRED`, which in
  WAL mode reads a snapshot without blocking writers). Also WAL, a busy timeout, foreign keys.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.pool import StaticPool

DEFAULT_URL = "sqlite:///act-review.db"

# Execution option that makes a SQLite transaction begin DEFERRED (read-only work).
READ_ONLY = "act_read_only"

SQLITE_BUSY_TIMEOUT_S = 30.0


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
    in_memory = parsed.database in (None, "", ":memory:") or "mode=memory" in str(parsed)
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
