"""The broker and PostgreSQL under a local system: reuse them when they answer, else start them
with the deploy/local scripts (kafka.sh, postgres.sh) and record that, so that `down` stops
what `up` started and nothing else.

The scripts live in the source checkout (`deploy/local/`, found next to this package, or at
`ACT_DEPLOY_LOCAL_DIR`); an installed package without them can still reuse running services.
Only a loopback address is ever started: the scripts bind 127.0.0.1.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from act.local.probes import split_address, tcp_open
from act.local.state import StackPart

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
# The environment that decides where the scripts keep their state and which ports they use;
# recorded with a part started by `up`, so that `down` stops that very instance.
_SCRIPT_ENV_PREFIXES = ("ACT_LOCAL_STATE", "ACT_KAFKA_", "ACT_PG_", "ACT_JAVA", "JAVA_HOME")


class StackError(RuntimeError):
    """The broker or the database is not there and cannot be started; says what to do."""


def deploy_dir() -> Path | None:
    """deploy/local of the checkout this package runs from, or `ACT_DEPLOY_LOCAL_DIR`."""
    explicit = os.environ.get("ACT_DEPLOY_LOCAL_DIR", "").strip()
    folder = Path(explicit) if explicit else Path(__file__).resolve().parents[3] / "deploy/local"
    return folder if (folder / "kafka.sh").is_file() else None


def _script_env(overrides: Mapping[str, str]) -> dict[str, str]:
    recorded = {k: v for k, v in os.environ.items() if k.startswith(_SCRIPT_ENV_PREFIXES)}
    return {**recorded, **overrides}


def _run_script(script: Path, action: str, env: Mapping[str, str]) -> str:
    """Runs `script action`; its messages go to our stderr; returns its stdout."""
    result = subprocess.run(
        ["bash", str(script), action],
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise StackError(
            f"{script.name} {action} failed (exit {result.returncode}); its messages are above"
        )
    return result.stdout.strip()


def ensure_broker(bootstrap: str) -> StackPart:
    """The broker at `bootstrap`: reused when it accepts connections, else started with
    deploy/local/kafka.sh on the bootstrap's port."""
    addresses = [a.strip() for a in bootstrap.split(",") if a.strip()]
    if any(tcp_open(address) for address in addresses):
        return StackPart(name="kafka", address=bootstrap, started_by_up=False)
    host, port = split_address(addresses[0])
    scripts = deploy_dir()
    if len(addresses) != 1 or host not in LOOPBACK:
        raise StackError(
            f"no Kafka broker answers at {bootstrap}; start it, or point --kafka-bootstrap "
            "(ACT_KAFKA_BOOTSTRAP) at one that runs"
        )
    if scripts is None:
        raise StackError(
            f"no Kafka broker answers at {bootstrap}, and deploy/local/kafka.sh (in the source "
            "checkout; or set ACT_DEPLOY_LOCAL_DIR) is not here to start one: the local system "
            "needs a broker even with the embedded store. Start one and pass --kafka-bootstrap"
        )
    env = _script_env({"ACT_KAFKA_PORT": str(port)})
    _run_script(scripts / "kafka.sh", "start", env)
    return StackPart(
        name="kafka",
        address=bootstrap,
        started_by_up=True,
        script=str(scripts / "kafka.sh"),
        env=env,
    )


def libpq_url(url: str) -> str:
    """`url` as psycopg takes it (a SQLAlchemy `postgresql+psycopg://` URL loses its driver)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def hide_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _connect_error(url: str) -> str | None:
    """None when PostgreSQL at `url` accepts a connection, else why not."""
    import psycopg

    try:
        psycopg.connect(libpq_url(url), connect_timeout=5).close()
    except psycopg.Error as exc:
        return str(exc).strip() or type(exc).__name__
    return None


def ensure_postgres(url: str | None) -> tuple[StackPart, str]:
    """PostgreSQL at `url` (default: the one deploy/local/postgres.sh runs): reused when it
    accepts connections, else started with postgres.sh (installed first when missing)."""
    scripts = deploy_dir()
    if url is None:
        if scripts is None:
            raise StackError(
                "--store postgres needs --database-url (or ACT_DATABASE_URL): "
                "deploy/local/postgres.sh is not here to start a server"
            )
        url = _run_script(scripts / "postgres.sh", "url", _script_env({}))
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    host, port = parsed.host or "127.0.0.1", parsed.port or 5432
    shown = hide_password(url)
    if tcp_open(f"{host}:{port}"):
        problem = _connect_error(url)
        if problem is not None:
            raise StackError(f"PostgreSQL at {shown} refuses the connection: {problem}")
        return StackPart(name="postgres", address=shown, started_by_up=False), url
    if host not in LOOPBACK or scripts is None:
        raise StackError(
            f"PostgreSQL does not answer at {shown}"
            + ("" if scripts else " and deploy/local/postgres.sh is not here to start one")
            + ": start it, or use --store sqlite"
        )
    env = _script_env({"ACT_PG_PORT": str(port)})
    _run_script(scripts / "postgres.sh", "install", env)
    _run_script(scripts / "postgres.sh", "start", env)
    problem = _connect_error(url)
    if problem is not None:
        raise StackError(
            f"postgres.sh started a server on port {port}, but {shown} cannot connect "
            f"({problem}); postgres.sh makes role, password and database 'act'"
        )
    part = StackPart(
        name="postgres",
        address=shown,
        started_by_up=True,
        script=str(scripts / "postgres.sh"),
        env=env,
    )
    return part, url


def stop_part(part: StackPart) -> str | None:
    """Stops a part `up` started (None when done or nothing to do, else what went wrong)."""
    if not part.started_by_up or part.script is None:
        return None
    try:
        _run_script(Path(part.script), "stop", part.env)
    except (StackError, OSError) as exc:
        return str(exc)
    return None
