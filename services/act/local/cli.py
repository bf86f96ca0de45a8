"""`actctl up`, `actctl down`, `actctl status`, `actctl ingest`: the whole system on this machine.

    actctl up                      # broker reused or started; SQLite store; embedded models
    actctl ingest items.jsonl      # or .csv, .parquet, or a folder of images
    actctl status
    actctl down

actctl registers these functions as its commands (`app.command("up")(local_commands.up)`).
Exit codes: 0 done; 1 the system or the broker failed; 2 bad arguments or bad input (nothing
sent); 3 (`status`) not everything runs.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from act.local.state import StateError, resolve_state_dir
from act.validation import validation_problems

JsonOutput = Annotated[
    bool, typer.Option("--json", help="Print the result as one JSON object on stdout.")
]
StateDir = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        help="Where the run record and logs live (env ACT_STATE_DIR; default "
        "$ACT_LOCAL_STATE/up or ~/.cache/act-local/up).",
        show_default=False,
    ),
]


def _stderr() -> Console:
    return Console(stderr=True, highlight=False)


def _fail(message: str, code: int) -> typer.Exit:
    _stderr().print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    return typer.Exit(code)


# ----------------------------------------------------------------------------- up


def up(
    state_dir: StateDir = None,
    backend: Annotated[
        str,
        typer.Option(
            help="Backend of the annotator and the criticizer: embedded (offline CPU models), "
            "instant (no model: hash labels, for load tests), openai, hf, ..."
        ),
    ] = "embedded",
    backend_option: Annotated[
        list[str] | None,
        typer.Option("--backend-option", help="KEY=VALUE for both model services, repeatable."),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(
            help="Review store: sqlite (embedded default, a file in the state dir) or postgres "
            "(reused, or started with deploy/local/postgres.sh). Default: from --database-url, "
            "else sqlite."
        ),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            help="Review store URL (postgresql://... or sqlite:///...); with --store postgres "
            "defaults to ACT_DATABASE_URL, else the deploy/local server."
        ),
    ] = None,
    kafka_bootstrap: Annotated[
        str | None,
        typer.Option(
            help="Broker HOST:PORT (env ACT_KAFKA_BOOTSTRAP, 127.0.0.1:9092); started with "
            "deploy/local/kafka.sh when nothing answers on a loopback address."
        ),
    ] = None,
    topic_suffix: Annotated[
        str, typer.Option(help="Suffix of the topic and consumer-group names (a namespace).")
    ] = "",
    schema_id: Annotated[
        str, typer.Option(help="Label schema of every item (bundled or ACT_SCHEMAS_DIR).")
    ] = "act-moderation",
    reviewer: Annotated[
        str, typer.Option(help="Reviewer to issue a token for (a new token if they exist).")
    ] = "reviewer",
    host: Annotated[str, typer.Option(help="Address every service binds.")] = "127.0.0.1",
    review_port: Annotated[
        int, typer.Option(help="Port of the review UI and API (0: a free one).")
    ] = 0,
    base_port: Annotated[
        int | None,
        typer.Option(help="Lay all nine ports out from this one on (default: free ones)."),
    ] = None,
    budget_per_window: Annotated[
        float,
        typer.Option(help="Sampler: most reviews per window of items (each partition its share)."),
    ] = 100.0,
    window_items: Annotated[
        int, typer.Option(help="Sampler: items of the stream per window.")
    ] = 1000,
    seed: Annotated[str, typer.Option(help="Sampler: key of the keyed randomness.")] = "act",
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the services to answer.")
    ] = 180.0,
    as_json: JsonOutput = False,
) -> None:
    """Start the whole streaming system here: broker and store (reused when running), the
    annotator, criticizer, sampler, review server and decision consumer as background
    processes; print the review UI's address, a reviewer token and the logs."""
    from pydantic import ValidationError

    from act.local.stack import StackError
    from act.local.system import AlreadyUp, UpError, UpOptions, bring_up, check_pacing

    console = _stderr()
    try:
        options = UpOptions(
            state_dir=resolve_state_dir(state_dir),
            backend=backend,
            backend_options=tuple(backend_option or ()),
            store=store,  # type: ignore[arg-type]
            database_url=database_url,
            kafka_bootstrap=kafka_bootstrap,
            topic_suffix=topic_suffix,
            schema_id=schema_id,
            reviewer=reviewer,
            host=host,
            review_port=review_port,
            base_port=base_port,
            budget_per_window=budget_per_window,
            window_items=window_items,
            seed=seed,
            timeout_s=timeout,
        )
    except ValidationError as exc:
        problems = validation_problems(exc, name=lambda loc: f"--{str(loc[0]).replace('_', '-')}")
        raise _fail(problems, 2) from None
    try:
        check_pacing(options)
    except UpError as exc:
        raise _fail(str(exc), 2) from None
    started = time.monotonic()
    try:
        result = bring_up(options, lambda line: console.print(line, markup=False))
    except AlreadyUp as exc:
        if exc.exited or not exc.run.complete:
            raise _fail(str(exc), 1) from None
        console.print(str(exc), markup=False)
        if as_json:
            typer.echo(json.dumps(_summary(exc.run, None)))
        return
    except (UpError, StackError, StateError) as exc:
        raise _fail(str(exc), 1) from None
    except KeyboardInterrupt:
        raise _fail("interrupted; what up had started is stopped", 130) from None
    elapsed = time.monotonic() - started
    summary = _summary(result.run, result.token)
    if as_json:
        typer.echo(json.dumps({**summary, "seconds": round(elapsed, 1)}))
        return
    _print_summary(summary, result.rotated, elapsed)


def _summary(run: Any, token: str | None) -> dict[str, Any]:
    from act.bus.topics import ITEMS_TOPIC, with_suffix
    from act.local.stack import hide_password

    return {
        "state_dir": run.state_dir,
        "review_url": run.review_url,
        "reviewer": run.reviewer,
        "token": token,
        "kafka_bootstrap": run.kafka_bootstrap,
        "items_topic": with_suffix(ITEMS_TOPIC, run.topic_suffix),
        "database_url": hide_password(run.database_url),
        "backend": run.backend,
        "schema_id": run.schema_id,
        "stack": [
            part.model_dump(include={"name", "address", "started_by_up"}) for part in run.stack
        ],
        "services": [
            s.model_dump(include={"name", "pid", "address", "ports", "log"}) for s in run.services
        ],
    }


def _print_summary(summary: dict[str, Any], rotated: bool, elapsed: float) -> None:
    out = Console(highlight=False, soft_wrap=True)
    out.print(f"[bold green]ACT is up[/] in {elapsed:.0f} s (state: {summary['state_dir']})")
    out.print(f"  review UI     [bold]{summary['review_url']}[/]")
    note = " (a new token: the previous one no longer works)" if rotated else " (shown once)"
    out.print(f"  reviewer      {summary['reviewer']}, token [bold]{summary['token']}[/]{note}")
    out.print(f"  send items    actctl ingest FILE|FOLDER  (to {summary['items_topic']})")
    for part in summary["stack"]:
        how = "started by up" if part["started_by_up"] else "already running; down leaves it"
        out.print(f"  {part['name']:<13} {part['address']} ({how})")
    out.print(f"  review store  {summary['database_url']}")
    for service in summary["services"]:
        address = service["address"] or ", ".join(
            f"{name} :{port}" for name, port in service["ports"].items()
        )
        out.print(f"  {service['name']:<15} pid {service['pid']:<7} {address}")
        out.print(f"  {'':<15} log {service['log']}")
    out.print("  stop with     actctl down")


# ----------------------------------------------------------------------------- down


def down(
    state_dir: StateDir = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds each service gets after SIGTERM before SIGKILL.")
    ] = 20.0,
    purge: Annotated[
        bool,
        typer.Option(help="Also delete the logs and the SQLite review store in the state dir."),
    ] = False,
) -> None:
    """Stop everything `actctl up` started (also when some of it already died), and the broker
    and PostgreSQL only if up started them; remove the run record."""
    from act.local.system import bring_down

    console = _stderr()
    try:
        report = bring_down(
            resolve_state_dir(state_dir),
            timeout,
            lambda line: console.print(line, markup=False),
            purge=purge,
        )
    except StateError as exc:
        raise _fail(str(exc), 1) from None
    if report.problems:
        raise _fail("; ".join(report.problems), 1)


# ----------------------------------------------------------------------------- status


def status(state_dir: StateDir = None) -> None:
    """Show what `actctl up` started and whether it still runs (exit 3 unless all of it)."""
    from act.local.system import inspect

    try:
        run, alive = inspect(resolve_state_dir(state_dir))
    except StateError as exc:
        raise _fail(str(exc), 1) from None
    out = Console(highlight=False, soft_wrap=True)
    if run is None:
        out.print(f"nothing is up (no run record in {resolve_state_dir(state_dir)})")
        raise typer.Exit(3)
    out.print(f"state {run.state_dir}, started {run.started_at:%Y-%m-%d %H:%M:%S} UTC")
    if run.review_url:
        out.print(f"review UI {run.review_url}")
    for part in run.stack:
        how = "started by up" if part.started_by_up else "reused"
        out.print(f"  {part.name:<15} {part.address} ({how})")
    for service in run.services:
        state = "[green]running[/]" if alive[service.name] else "[red]exited[/]"
        out.print(f"  {service.name:<15} {state:<20} pid {service.pid:<7} {service.log}")
    if not run.complete or not all(alive.values()):
        raise typer.Exit(3)


# ----------------------------------------------------------------------------- ingest


def ingest(
    source: Annotated[
        Path, typer.Argument(help="A .jsonl, .csv or .parquet file, or a folder of images.")
    ],
    state_dir: StateDir = None,
    kafka_bootstrap: Annotated[
        str | None,
        typer.Option(help="Broker HOST:PORT (default: the running system's, else env)."),
    ] = None,
    topic_suffix: Annotated[
        str | None,
        typer.Option(help="Topic suffix (default: the running system's, else none)."),
    ] = None,
    schema_id: Annotated[
        str | None,
        typer.Option(help="Label schema (default: the running system's, else act-moderation)."),
    ] = None,
) -> None:
    """Send every item of SOURCE to act.items.v1 (key: the item id) and wait until the broker
    has them all. The whole source is checked first: any bad row is reported with its line
    (or row) and nothing is sent. Format: docs/local.md."""
    from pydantic import ValidationError
    from rich.progress import Progress, TextColumn

    from act.bus import BusSettings
    from act.bus.topics import ITEMS_TOPIC, with_suffix
    from act.inference.errors import InferenceError
    from act.inference.schemas import SchemaRegistry
    from act.local import ingest as reader
    from act.local.state import load

    console = _stderr()
    try:
        run = load(resolve_state_dir(state_dir))
    except StateError as exc:
        raise _fail(str(exc), 1) from None
    bootstrap = kafka_bootstrap or (run.kafka_bootstrap if run else None)
    try:
        bus = BusSettings(**({"kafka_bootstrap": bootstrap} if bootstrap else {}))
    except ValidationError as exc:
        raise _fail(f"invalid Kafka settings: {exc}", 2) from None
    suffix = topic_suffix if topic_suffix is not None else (run.topic_suffix if run else "")
    schema = schema_id or (run.schema_id if run else "") or "act-moderation"
    try:
        SchemaRegistry.with_defaults(os.environ.get("ACT_SCHEMAS_DIR") or None).get(schema)
    except (InferenceError, ValueError) as exc:
        raise _fail(str(exc), 2) from None

    started = time.monotonic()
    try:
        with Progress(
            TextColumn("checking {task.fields[source]}"),
            TextColumn("{task.completed} rows"),
            console=console,
            transient=True,
        ) as progress:
            task = progress.add_task("check", total=None, source=source.name)
            report = reader.check(
                source, schema, bus.max_payload_bytes, lambda: progress.advance(task)
            )
    except reader.IngestError as exc:
        raise _fail(f"{exc}; nothing was sent", 2) from None
    if report.ignored:
        shown = ", ".join(report.ignored[:5]) + (", ..." if len(report.ignored) > 5 else "")
        console.print(f"ignored {len(report.ignored)} file(s) that are not images: {shown}")
    if report.errors:
        for error in report.errors[:50]:
            console.print(str(error), markup=False, soft_wrap=True)
        more = len(report.errors) - 50
        if more > 0:
            console.print(f"... and {more} more bad row(s)")
        raise _fail(
            f"{len(report.errors)} bad row(s) in {source}; nothing was sent (fix them and rerun)",
            2,
        )
    if report.items == 0:
        raise _fail(f"{source} holds no items; nothing was sent", 2)

    topic = with_suffix(ITEMS_TOPIC, suffix)
    try:
        delivered = _send(source, schema, bus, suffix, report.items, console)
    except reader.IngestError as exc:
        raise _fail(str(exc), 2) from None
    except Exception as exc:  # the broker: unreachable, refusing, timing out
        raise _fail(
            f"sending to {topic} on {bus.kafka_bootstrap} failed: {type(exc).__name__}: {exc}", 1
        ) from None
    elapsed = time.monotonic() - started
    typer.echo(
        f"sent {delivered} items to {topic} on {bus.kafka_bootstrap}, all acknowledged "
        f"by the broker ({elapsed:.1f} s)"
    )


def _send(source: Path, schema: str, bus: Any, suffix: str, total: int, console: Console) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from act.bus import ITEMS_TOPIC, default_topic_specs, ensure_topics
    from act.bus.clients import make_producer
    from act.bus.topics import with_suffix
    from act.local import ingest as reader

    topic = with_suffix(ITEMS_TOPIC, suffix)

    # Creates the topics when nothing is up yet (idempotent; partitions of existing ones kept).
    ensure_topics(
        bus.kafka_bootstrap, default_topic_specs(bus, suffix=suffix), strict=False, timeout_s=30
    )
    producer = make_producer(bus.kafka_bootstrap, settings=bus)
    try:
        with Progress(
            TextColumn(f"sending to {topic}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=console,
            transient=True,
        ) as progress:
            task = progress.add_task("send", total=total)
            return reader.send(
                reader.items(source, schema),
                producer,
                topic,
                lambda n: progress.advance(task, n),
            )
    finally:
        producer.close()
