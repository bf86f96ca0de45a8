"""`bring_up` and `bring_down`: the whole streaming system as local processes.

Up, in order (each step recorded in the state dir before the next, so that a failed or
interrupted `up` stops what it had started, and a `down` after a crash finds everything):

1. the label schema (bundled or `ACT_SCHEMAS_DIR`) is looked up, so a typo fails first;
2. the broker: reused when it answers, else started with deploy/local/kafka.sh;
3. the review store: SQLite in the state dir (embedded default), or PostgreSQL, reused or
   started with deploy/local/postgres.sh;
4. the four topics (`ensure_topics`, with the topic suffix);
5. the store's tables (migrations), the schema registered, a reviewer token issued;
6. the annotator and the criticizer (`actctl serve annotator|criticizer`, gRPC health), the
   review server (`actctl serve review --publish-reviews`, HTTP /healthz and gRPC health) and
   the decision consumer (`actctl serve review-consumer`, its metrics port) together;
7. then the sampler (`actctl serve sampler` over the two gRPC services, its metrics port), only
   once the models answer, so no item is scored against a service that is still loading.

Each service is a detached process with its log in `<state dir>/logs/<name>.log`. Down stops
the services in three stages, the stream's head first (the sampler; then the review server and
the consumer; then the model services), each stage's together: SIGTERM, `timeout` seconds, then
SIGKILL of whatever is left in their sessions. Then the broker and PostgreSQL if and only if
this `up` started them; then it removes the run record. Logs and the SQLite store stay (`purge`
deletes them).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from act.local import processes, stack
from act.local.probes import free_port, grpc_serving, http_ok
from act.local.state import LocalRun, ServiceProcess, load, locked, remove, save
from act.validation import validation_problems

if TYPE_CHECKING:
    from act.inference.types import LabelSchema

Echo = Callable[[str], None]

SQLITE_FILE = "review.db"
LOGS_DIR = "logs"
# The ports of each service, in start order (also the order --base-port lays them out in).
SERVICE_PORTS: dict[str, tuple[str, ...]] = {
    "annotator": ("grpc", "metrics"),
    "criticizer": ("grpc", "metrics"),
    "review": ("http", "grpc"),
    "review-consumer": ("metrics",),
    "sampler": ("metrics",),
}
MODEL_SERVICES = ("annotator", "criticizer")
SAMPLER = "sampler"
STOP_STAGES = ((SAMPLER,), ("review-consumer", "review"), MODEL_SERVICES)


class UpError(RuntimeError):
    """`up` could not bring the system up (what it started is stopped again)."""


class AlreadyUp(RuntimeError):
    """A run record exists in the state dir; `exited` names its services that no longer run."""

    def __init__(self, run: LocalRun, exited: list[str]) -> None:
        self.run = run
        self.exited = exited
        if exited or not run.complete:
            gone = ", ".join(exited) or "none"
            message = (
                f"a system is recorded in {run.state_dir} but not fully up (exited: {gone}); "
                "see `actctl status`, then `actctl down` (it works with dead processes too)"
            )
        else:
            message = f"already up (state in {run.state_dir}); `actctl down` stops it"
        super().__init__(message)


class UpOptions(BaseModel):
    """What `actctl up` was asked for (see its --help for each)."""

    model_config = ConfigDict(frozen=True)

    state_dir: Path
    backend: str = "embedded"
    backend_options: tuple[str, ...] = ()
    store: Literal["sqlite", "postgres"] | None = None  # None: from database_url, else sqlite
    database_url: str | None = None
    kafka_bootstrap: str | None = None
    topic_suffix: str = ""
    schema_id: str = "act-moderation"
    reviewer: str = Field(default="reviewer", min_length=1)
    host: str = "127.0.0.1"
    review_port: int = Field(default=0, ge=0, le=65535)
    base_port: int | None = Field(default=None, ge=1, le=65535 - 8)  # nine ports from it
    budget_per_window: float = Field(default=100.0, gt=0)
    window_items: int = Field(default=1000, ge=1)
    seed: str = Field(default="act", min_length=1)
    timeout_s: float = Field(default=180.0, gt=0)

    def resolved_store(self) -> Literal["sqlite", "postgres"]:
        by_url: Literal["sqlite", "postgres"] | None = None
        if self.database_url:
            by_url = "sqlite" if self.database_url.startswith("sqlite") else "postgres"
        if self.store is not None and by_url is not None and self.store != by_url:
            raise UpError(f"--store {self.store} does not match --database-url (a {by_url} URL)")
        return self.store or by_url or "sqlite"


@dataclass
class UpResult:
    run: LocalRun
    token: str
    rotated: bool  # the reviewer existed: this is a new token, the old one no longer works


@dataclass
class _Plan:
    name: str
    command: list[str]
    ports: dict[str, int]
    address: str
    ready: Callable[[], bool]


@dataclass
class DownReport:
    stopped: list[tuple[str, processes.Stopped]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- up


def bring_up(options: UpOptions, echo: Echo) -> UpResult:
    """Brings the system up (see the module docstring); AlreadyUp, UpError, StackError."""
    state_dir = options.state_dir.expanduser().resolve()
    with locked(state_dir):
        existing = load(state_dir)
        if existing is not None:
            exited = [
                s.name for s in existing.services if not processes.is_alive(s.pid, s.start_ticks)
            ]
            raise AlreadyUp(existing, exited)
        run = LocalRun(
            state_dir=str(state_dir),
            topic_suffix=options.topic_suffix,
            schema_id=options.schema_id,
            backend=options.backend,
            reviewer=options.reviewer,
        )
        save(run)
        try:
            token, rotated = _up(run, options, state_dir, echo)
        except BaseException:
            echo("up failed: stopping what it started")
            _down(run, 20.0, echo)
            raise
        return UpResult(run, token, rotated)


def _up(run: LocalRun, options: UpOptions, state_dir: Path, echo: Echo) -> tuple[str, bool]:
    from act.bus import BusSettings

    schema = _schema(options.schema_id)
    store_kind = options.resolved_store()

    bootstrap = options.kafka_bootstrap or BusSettings().kafka_bootstrap
    broker = stack.ensure_broker(bootstrap)
    echo(f"kafka: {'started' if broker.started_by_up else 'reusing'} {bootstrap}")
    run.stack.append(broker)
    run.kafka_bootstrap = bootstrap
    save(run)

    if store_kind == "postgres":
        given = options.database_url or os.environ.get("ACT_DATABASE_URL") or None
        database, url = stack.ensure_postgres(given)
        echo(f"postgres: {'started' if database.started_by_up else 'reusing'} {database.address}")
        run.stack.append(database)
    else:
        url = options.database_url or f"sqlite:///{state_dir / SQLITE_FILE}"
        echo(f"review store: {url}")
    run.database_url = url
    save(run)

    _create_topics(bootstrap, options.topic_suffix)
    token, rotated = _prepare_store(url, schema, options.reviewer)

    env = {**os.environ, "ACT_KAFKA_BOOTSTRAP": bootstrap, "PYTHONUNBUFFERED": "1"}
    plans = _plans(options, url, _ports(options))
    first = [p for p in plans if p.name != SAMPLER]
    last = [p for p in plans if p.name == SAMPLER]
    deadline = time.monotonic() + options.timeout_s
    for group in (first, last):
        for plan in group:
            _start(run, plan, state_dir / LOGS_DIR, env, echo)
        _wait_ready(run, group, deadline, options.timeout_s, echo)
    run.review_url = next(p.address for p in plans if p.name == "review")
    run.complete = True
    save(run)
    return token, rotated


def check_pacing(options: UpOptions) -> None:
    """UpError when the sampler would refuse the budget: each of the topic's partitions
    (`ACT_TOPIC_PARTITIONS`) needs at least one review per window of its share
    (`PacerConfig.partition_share`). Checked before anything starts."""
    from act.bus import BusSettings
    from act.core.sampling import PacerConfig

    try:
        partitions = BusSettings().topic_partitions
        PacerConfig(
            budget_per_window=options.budget_per_window, window_items=options.window_items
        ).partition_share(partitions)
    except ValidationError as exc:
        raise UpError(f"invalid settings: {validation_problems(exc)}") from None
    except ValueError as exc:
        raise UpError(f"--budget-per-window: {exc}") from None


def _schema(schema_id: str) -> LabelSchema:
    from act.inference.errors import InferenceError
    from act.inference.schemas import SchemaRegistry

    try:
        registry = SchemaRegistry.with_defaults(os.environ.get("ACT_SCHEMAS_DIR") or None)
        return registry.get(schema_id)
    except (InferenceError, ValueError) as exc:
        raise UpError(str(exc)) from None


def _create_topics(bootstrap: str, suffix: str) -> None:
    from kafka.errors import KafkaError

    from act.bus import BusSettings, default_topic_specs, ensure_topics
    from act.bus.topics import TopicMismatchError

    try:
        specs = default_topic_specs(BusSettings(kafka_bootstrap=bootstrap), suffix=suffix)
        ensure_topics(bootstrap, specs, timeout_s=30.0)
    except (KafkaError, TopicMismatchError, TimeoutError, ValueError) as exc:
        raise UpError(f"cannot create the topics on {bootstrap}: {exc}") from None


def _prepare_store(url: str, schema: LabelSchema, reviewer: str) -> tuple[str, bool]:
    """Migrates the store (before any service opens it), registers the schema, and issues the
    reviewer's token: a new reviewer, or a new token for an existing one."""
    from act.inference.types import schema_to_proto
    from act.review.errors import ReviewerExists, ReviewStoreError
    from act.review.store import ReviewStore

    try:
        with ReviewStore(url) as store:
            store.register_schema(schema_to_proto(schema))
            try:
                return store.add_reviewer(reviewer), False
            except ReviewerExists:
                return store.rotate_token(reviewer), True
    except (ReviewStoreError, ValueError) as exc:
        raise UpError(f"review store {stack.hide_password(url)}: {exc}") from None
    except Exception as exc:  # a driver error (cannot connect, no permission) named as such
        raise UpError(
            f"review store {stack.hide_password(url)}: {type(exc).__name__}: {exc}"
        ) from None


def _ports(options: UpOptions) -> dict[str, dict[str, int]]:
    """Each service's ports: consecutive from --base-port, else free ones; --review-port
    fixes the review UI's either way."""
    ports: dict[str, dict[str, int]] = {}
    taken: list[int] = [options.review_port] if options.review_port else []
    next_port = options.base_port
    for service, names in SERVICE_PORTS.items():
        ports[service] = {}
        for name in names:
            if service == "review" and name == "http" and options.review_port:
                port = options.review_port
            elif next_port is not None:
                while next_port in taken:
                    next_port += 1
                port, next_port = next_port, next_port + 1
            else:
                port = free_port(options.host, taken)
            taken.append(port)
            ports[service][name] = port
    return ports


def _flags(flags: dict[str, str]) -> list[str]:
    return [word for pair in flags.items() for word in pair]


def _plans(options: UpOptions, url: str, ports: dict[str, dict[str, int]]) -> list[_Plan]:
    actctl = [sys.executable, "-m", "act.cli", "serve"]
    host = options.host
    suffix = options.topic_suffix
    dot_suffix = f".{suffix}" if suffix else ""
    plans: list[_Plan] = []
    for service in MODEL_SERVICES:
        target = f"{host}:{ports[service]['grpc']}"
        command = [
            *actctl,
            service,
            *_flags(
                {
                    "--backend": options.backend,
                    "--host": host,
                    "--port": str(ports[service]["grpc"]),
                    "--metrics-port": str(ports[service]["metrics"]),
                }
            ),
        ]
        for option in options.backend_options:
            command += ["--backend-option", option]
        name = f"act.v1.{service.capitalize()}"
        plans.append(_Plan(service, command, ports[service], target, _grpc_probe(target, name)))

    review = ports["review"]
    review_url = f"http://{host}:{review['http']}/"
    review_flags = {
        "--database-url": url,
        "--host": host,
        "--http-port": str(review["http"]),
        "--grpc-port": str(review["grpc"]),
        "--topic-suffix": suffix,
    }
    plans.append(
        _Plan(
            "review",
            [*actctl, "review", *_flags(review_flags), "--publish-reviews"],
            review,
            review_url,
            lambda: (
                http_ok(f"{review_url}healthz")
                and grpc_serving(f"{host}:{review['grpc']}", "act.v1.ReviewQueue")
            ),
        )
    )

    consumer_port = ports["review-consumer"]["metrics"]
    consumer_flags = {
        "--database-url": url,
        "--topic-suffix": suffix,
        "--group": f"act-review{dot_suffix}",
        "--schema-id": options.schema_id,
        "--metrics-port": str(consumer_port),
        "--metrics-host": host,
    }
    plans.append(
        _Plan(
            "review-consumer",
            [*actctl, "review-consumer", *_flags(consumer_flags)],
            ports["review-consumer"],
            "",
            lambda: http_ok(f"http://{host}:{consumer_port}/metrics"),
        )
    )

    sampler_port = ports[SAMPLER]["metrics"]
    sampler_flags = {
        "--annotator": plans[0].address,
        "--criticizer": plans[1].address,
        "--schema-id": options.schema_id,
        "--budget-per-window": repr(options.budget_per_window),
        "--window-items": str(options.window_items),
        "--seed": options.seed,
        "--group": f"act-sampler{dot_suffix}",
        "--transactional-id": f"act-sampler-0{dot_suffix}",
        "--topic-suffix": suffix,
        "--metrics-port": str(sampler_port),
        "--metrics-host": host,
    }
    plans.append(
        _Plan(
            SAMPLER,
            [*actctl, SAMPLER, *_flags(sampler_flags)],
            ports[SAMPLER],
            "",
            lambda: http_ok(f"http://{host}:{sampler_port}/metrics"),
        )
    )
    return plans


def _grpc_probe(target: str, service: str) -> Callable[[], bool]:
    return lambda: grpc_serving(target, service)


def _start(run: LocalRun, plan: _Plan, logs: Path, env: dict[str, str], echo: Echo) -> None:
    log_path = logs / f"{plan.name}.log"
    started = processes.start_detached(plan.command, log_path, env)
    run.services.append(
        ServiceProcess(
            name=plan.name,
            command=plan.command,
            pid=started.pid,
            start_ticks=started.start_ticks,
            log=str(log_path),
            address=plan.address,
            ports=plan.ports,
        )
    )
    save(run)
    echo(f"{plan.name}: started (pid {started.pid}), log {log_path}")


def _wait_ready(
    run: LocalRun, plans: Sequence[_Plan], deadline: float, timeout_s: float, echo: Echo
) -> None:
    """Polls each service's probe until all answer; fails at once when one exits."""
    started = time.monotonic()
    pending = list(plans)
    while pending:
        for plan in list(pending):
            record = run.service(plan.name)
            assert record is not None
            if not processes.is_alive(record.pid, record.start_ticks):
                tail = processes.log_tail(Path(record.log))
                raise UpError(
                    f"{plan.name} exited during start-up; the end of {record.log}:\n{tail}"
                )
            if plan.ready():
                pending.remove(plan)
                echo(f"{plan.name}: ready ({time.monotonic() - started:.1f} s)")
        if pending and time.monotonic() >= deadline:
            names = ", ".join(p.name for p in pending)
            logs = "; ".join(r.log for r in run.services if r.name in names)
            raise UpError(f"not ready within {timeout_s:g} s: {names} (logs: {logs})")
        if pending:
            time.sleep(0.2)


# ----------------------------------------------------------------------------- down


def bring_down(state_dir: Path, timeout_s: float, echo: Echo, *, purge: bool = False) -> DownReport:
    """Stops what `up` recorded in `state_dir` (see the module docstring); an empty report when
    nothing is recorded there."""
    state_dir = state_dir.expanduser().resolve()
    if not state_dir.is_dir():
        echo(f"nothing is up in {state_dir}")
        return DownReport()
    with locked(state_dir):
        run = load(state_dir)
        report = DownReport() if run is None else _down(run, timeout_s, echo)
        if run is None:
            echo(f"nothing is up in {state_dir}")
        if purge:
            _purge(state_dir)
        return report


def _down(run: LocalRun, timeout_s: float, echo: Echo) -> DownReport:
    report = DownReport()
    for stage in _stop_stages(run.services):
        started = time.monotonic()
        outcomes = processes.stop_sessions([(s.pid, s.start_ticks) for s in stage], timeout_s)
        took = time.monotonic() - started
        for service, stopped in zip(stage, outcomes, strict=True):
            report.stopped.append((service.name, stopped))
            line = f"{service.name}: {stopped.outcome}"
            if stopped.outcome != "not running":
                line += f" ({took:.1f} s)"
            if stopped.leftovers_killed:
                line += f", and {len(stopped.leftovers_killed)} leftover process(es) killed"
            echo(line)
    for part in reversed(run.stack):
        if not part.started_by_up:
            echo(f"{part.name}: left running (it was running before up)")
            continue
        problem = stack.stop_part(part)
        if problem is None:
            echo(f"{part.name}: stopped")
        else:
            report.problems.append(f"{part.name}: {problem}")
    remove(Path(run.state_dir))
    return report


def _stop_stages(services: Sequence[ServiceProcess]) -> list[list[ServiceProcess]]:
    """The services in the order they stop: the stream heads first (so that nothing is in
    flight towards a service that is gone), each stage's services together."""
    stages = [[s for s in services if s.name in names] for names in STOP_STAGES]
    staged = {name for names in STOP_STAGES for name in names}
    rest = [s for s in services if s.name not in staged]
    return [stage for stage in [*stages, rest] if stage]


def _purge(state_dir: Path) -> None:
    """Deletes what `up` writes in the state dir, and the dir when nothing else is in it (a
    state dir given by mistake, such as a home folder, loses only these files)."""
    import shutil

    shutil.rmtree(state_dir / LOGS_DIR, ignore_errors=True)
    for name in (SQLITE_FILE, f"{SQLITE_FILE}-wal", f"{SQLITE_FILE}-shm", ".lock"):
        (state_dir / name).unlink(missing_ok=True)
    try:
        state_dir.rmdir()
    except OSError:
        pass


# ----------------------------------------------------------------------------- status


def inspect(state_dir: Path) -> tuple[LocalRun | None, dict[str, bool]]:
    """The run record and, per service, whether it still runs."""
    run = load(state_dir.expanduser().resolve())
    if run is None:
        return None, {}
    return run, {s.name: processes.is_alive(s.pid, s.start_ticks) for s in run.services}
