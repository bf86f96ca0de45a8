"""Integration tests against the real services that deploy/local/ starts.

They read ACT_KAFKA_BOOTSTRAP and ACT_DATABASE_URL (`source deploy/local/env.sh`). When one is
unset the tests that need it are skipped, except under CI (env CI set, as .ci/run and CI
runners do), where they fail: CI must run them.
"""

from __future__ import annotations

import importlib
import json
import os
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

START_HINT = "deploy/local/stack.sh up && source deploy/local/env.sh"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: needs the local Kafka broker and PostgreSQL of deploy/local/"
    )


def _under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _missing(reason: str) -> None:
    if _under_ci():
        pytest.fail(f"{reason}; CI must run the integration tests", pytrace=False)
    pytest.skip(reason)


def _env(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        _missing(f"{name} is unset (start the local services: {START_HINT})")
    return value


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        _missing(f"{name} is not installed ({exc})")
        raise  # unreachable: _missing raises


@pytest.fixture(scope="session")
def require_module() -> Callable[[str], ModuleType]:
    """Imports a module, or skips (fails under CI) when it is not installed."""
    return _import


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    return _env("ACT_KAFKA_BOOTSTRAP")


@pytest.fixture(scope="session")
def database_url() -> str:
    return _env("ACT_DATABASE_URL")


@pytest.fixture
def fresh_database(database_url: str) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped after the test."""
    psycopg = _import("psycopg")
    _import("sqlalchemy")
    name = f"act_test_{uuid.uuid4().hex[:12]}"
    base, _, _ = database_url.rpartition("/")
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{base}/{name}"
    finally:
        _drop_database(psycopg, database_url, name)


def _drop_database(psycopg: ModuleType, admin_url: str, name: str) -> None:
    # FORCE may not end a session of another role still connected (seen once): retry a while.
    for attempt in range(20):
        try:
            with psycopg.connect(admin_url, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.ObjectInUse):
            if attempt == 19:
                raise
            time.sleep(0.5)


def _post_as_reviewer(url: str, token: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


PostAsReviewer = Callable[[str, str, dict[str, Any]], dict[str, Any]]


@pytest.fixture(scope="session")
def post_as_reviewer() -> PostAsReviewer:
    """POSTs JSON to the review HTTP API with a reviewer's bearer token; returns the answer."""
    return _post_as_reviewer
