"""`actctl review ...`: run the review-queue server and manage reviewers.

`review_app` is a typer sub-app; actctl mounts it with `app.add_typer(review_app, name="review")`.
Settings come from `ACT_REVIEW_*` variables (see `act.review.server`); flags override them.

The commands that work on a store from outside (`add-reviewer`, `deactivate-reviewer`,
`reviewers`, `sync-reviewers`, `stats`, `export`) find it as `_store_url` says:
`--database-url`, else the store of the system `actctl up` runs
(its run record), else the environment (`act.review.db.url_from_environment`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from act.local.cli import JsonOutput, StateDir
from act.review.errors import InvalidArgument, ReviewerExists, ReviewStoreError
from act.review.store import ReviewStore, check_reviewer_token, time_to_review

# act.review.server (gRPC, uvicorn, starlette) and act.review.publisher (Kafka) are imported
# inside the commands that use them: actctl imports this module for every command, and
# `actctl demo` must run with the `demo` extra alone.

review_app = typer.Typer(
    name="review",
    help="The human review queue: serve it (HTTP, web UI, gRPC) and manage reviewers.",
    no_args_is_help=True,
    add_completion=False,
)

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="SQLAlchemy URL of the review store (env ACT_REVIEW_DATABASE_URL, else "
        "ACT_DATABASE_URL, else sqlite:///act-review.db).",
    ),
]
StoreUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="SQLAlchemy URL of the review store (default: the store of the system `actctl up` "
        "runs, else env ACT_REVIEW_DATABASE_URL, else ACT_DATABASE_URL, else "
        "sqlite:///act-review.db).",
    ),
]


def _store_url(given: str | None, state_dir: Path | None) -> str:
    """The store a command works on: `given`, else the store of the system `actctl up` runs
    (the run record in the state dir; said on stderr), else `url_from_environment()`. An
    explicit `state_dir` with nothing up in it is an error (exit 2)."""
    from act.local.state import StateError, load, resolve_state_dir
    from act.review.db import url_from_environment

    if given:
        return given
    directory = resolve_state_dir(state_dir)
    try:
        run = load(directory)
    except StateError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if run is not None and run.database_url:
        typer.echo(f"review store of the system actctl up runs (state dir {directory})", err=True)
        return run.database_url
    if state_dir is not None:
        typer.echo(f"error: nothing is up in {directory} (no run record)", err=True)
        raise typer.Exit(2)
    return url_from_environment()


def _existing_store_url(given: str | None, state_dir: Path | None) -> str:
    """`_store_url`, refusing (exit 2) a SQLite file that does not exist: opening it would
    create an empty store, and a command that reads one would report nothing."""
    from act.review.db import missing_sqlite_file

    url = _store_url(given, state_dir)
    missing = missing_sqlite_file(url)
    if missing is not None:
        hint = "" if given else "; give --database-url, or start the system with actctl up"
        typer.echo(f"error: there is no review store at {missing}{hint}", err=True)
        raise typer.Exit(2)
    return url


@review_app.command("serve")
def serve(
    database_url: DatabaseUrl = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (env ACT_REVIEW_HOST).")] = None,
    http_port: Annotated[
        int | None, typer.Option(help="HTTP port, 0 for a free one (env ACT_REVIEW_HTTP_PORT).")
    ] = None,
    grpc_port: Annotated[
        int | None, typer.Option(help="gRPC port, 0 for a free one (env ACT_REVIEW_GRPC_PORT).")
    ] = None,
    show_machine_label: Annotated[
        bool | None,
        typer.Option(
            "--show-machine-label/--hide-machine-label",
            help="Show reviewers the model's label (env ACT_REVIEW_SHOW_MACHINE_LABEL).",
        ),
    ] = None,
    publish_reviews: Annotated[
        bool,
        typer.Option(
            help="Publish every stored review to act.reviews.v1 (broker: ACT_KAFKA_BOOTSTRAP)."
        ),
    ] = False,
    topic_suffix: Annotated[
        str, typer.Option(help="Suffix of the topic names (a namespace of their own).")
    ] = "",
) -> None:
    """Serve the review queue: HTTP API and web UI, and the gRPC ReviewQueue service."""
    from act.review.publisher import ReviewPublisher
    from act.review.server import ReviewServer, ReviewSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    overrides = {} if show_machine_label is None else {"show_machine_label": show_machine_label}
    publisher = ReviewPublisher(topic_suffix=topic_suffix) if publish_reviews else None
    try:
        server = ReviewServer(
            database_url,
            http_port,
            grpc_port,
            host=host,
            settings=ReviewSettings(),
            on_review=publisher,
            **overrides,
        )
        server.start()
    except (ReviewStoreError, RuntimeError, OSError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"review UI and API on {server.http_url}/ ; gRPC on {server.grpc_target}", err=True)
    done = threading.Event()

    def _stop(_signum: int, _frame: object) -> None:
        done.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        while not done.wait(0.5):
            if not server.running:
                typer.echo("error: the review server stopped", err=True)
                raise typer.Exit(1)
    finally:
        server.stop()
        if publisher is not None:
            publisher.close()


@review_app.command("add-reviewer")
def add_reviewer(
    name: Annotated[str, typer.Argument(help="The reviewer's name (shown in the audit trail).")],
    database_url: StoreUrl = None,
    rotate: Annotated[
        bool, typer.Option(help="Issue a new token for an existing reviewer instead.")
    ] = False,
    state_dir: StateDir = None,
) -> None:
    """Create a reviewer and print their token (shown only once; only its hash is stored)."""
    url = _store_url(database_url, state_dir)
    try:
        with ReviewStore(url) as store:
            token = store.rotate_token(name) if rotate else store.add_reviewer(name)
    except ReviewerExists as exc:
        typer.echo(
            f"error: reviewer {exc.name!r} already exists; pass --rotate for a new token", err=True
        )
        raise typer.Exit(1) from None
    except ReviewStoreError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(token)


@review_app.command("deactivate-reviewer")
def deactivate_reviewer(
    name: Annotated[str, typer.Argument(help="The reviewer to lock out.")],
    database_url: StoreUrl = None,
    state_dir: StateDir = None,
) -> None:
    """Lock a reviewer out: their token stops working at once and the items they hold go back
    to the queue (audited as releases); their reviews stay theirs. `add-reviewer NAME --rotate`
    or `sync-reviewers` reactivates them with a token."""
    url = _existing_store_url(database_url, state_dir)
    try:
        with ReviewStore(url) as store:
            returned = store.deactivate_reviewer(name)
    except ReviewStoreError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{name}: deactivated; {returned} claimed item(s) returned to the queue")


def _when(moment: datetime | None) -> str:
    return "" if moment is None else moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _minute(moment: datetime | None) -> str:
    """A UTC time to the minute, for tables."""
    return "" if moment is None else moment.strftime("%Y-%m-%d %H:%M")


@review_app.command("reviewers")
def list_reviewers(
    database_url: StoreUrl = None,
    state_dir: StateDir = None,
    as_json: JsonOutput = False,
) -> None:
    """List the reviewers: active or not, when created and when their token last changed, and
    how many reviews (and corrections) they recorded. Never a token."""
    url = _existing_store_url(database_url, state_dir)
    try:
        with ReviewStore(url) as store:
            found = store.reviewers()
    except ReviewStoreError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        rows = [
            {
                "name": r.name,
                "active": r.active,
                "created_at": _when(r.created_at),
                "token_rotated_at": _when(r.token_rotated_at) or None,
                "reviews": r.reviews,
                "last_review_at": _when(r.last_review_at) or None,
            }
            for r in found
        ]
        typer.echo(json.dumps({"reviewers": rows}))
        return
    if not found:
        typer.echo("no reviewers yet: actctl review add-reviewer NAME", err=True)
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.add_column("reviewer", min_width=8)
    table.add_column("active")
    for heading in ("created", "new token"):
        table.add_column(heading, no_wrap=True)
    table.add_column("reviews", justify="right", min_width=7)
    table.add_column("last review", no_wrap=True)
    table.caption = "times in UTC"
    for r in found:
        table.add_row(
            r.name,
            "yes" if r.active else "no",
            _minute(r.created_at),
            _minute(r.token_rotated_at),
            f"{r.reviews:,}",
            _minute(r.last_review_at),
        )
    Console(highlight=False, soft_wrap=True).print(table)


@review_app.command("stats")
def stats(
    database_url: StoreUrl = None,
    state_dir: StateDir = None,
    schema_id: Annotated[
        str | None, typer.Option(help="Only the records of this label schema.")
    ] = None,
    windows: Annotated[
        int,
        typer.Option(min=0, help="Show the budget use of this many latest sampling windows."),
    ] = 10,
    as_json: JsonOutput = False,
) -> None:
    """Show the review queue: decisions stored, selected, pending, claimed, reviewed, the
    oldest pending item's age, the time to review of the last hour's first reviews, agreement,
    and the budget use of the latest sampling windows."""
    url = _existing_store_url(database_url, state_dir)
    try:
        with ReviewStore(url) as store:
            counts = store.stats(schema_id, recent_windows=windows)
            delays = store.review_delays()
    except ReviewStoreError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    quantiles = time_to_review(delays)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    **counts.as_json(),
                    "first_reviews_last_hour": len(delays),
                    "time_to_review_seconds": {f"{q:g}": v for q, v in quantiles.items()},
                    "windows": [dataclasses.asdict(w) for w in counts.windows],
                }
            )
        )
        return
    age = counts.oldest_pending_age
    agreement = counts.agreement_rate
    out = Console(highlight=False, soft_wrap=True)
    out.print(
        f"{counts.decisions:,} decisions: {counts.selected:,} selected for review, "
        f"{counts.not_selected:,} not ({counts.capped:,} after a window's cap)"
    )
    out.print(
        f"queue: {counts.pending:,} pending, {counts.claimed:,} claimed by "
        f"{counts.active_reviewers} reviewer(s), {counts.reviewed:,} reviewed "
        f"({counts.unsure:,} unsure)"
        + (
            f"; the oldest pending one has waited {timedelta(seconds=round(age.total_seconds()))}"
            if age is not None
            else ""
        )
    )
    if quantiles:
        spans = ", ".join(
            f"p{q * 100:g} {timedelta(seconds=round(v))}" for q, v in quantiles.items()
        )
        out.print(f"time to review, {len(delays):,} first reviews in the last hour: {spans}")
    if agreement is not None:
        out.print(
            f"human label = machine label on {agreement:.1%} of {counts.labelled:,} labelled "
            "reviews (items drawn by eps: not the machine's accuracy)"
        )
    if counts.windows:
        table = Table(box=box.SIMPLE_HEAD, title="latest sampling windows, oldest first")
        table.add_column("budget", overflow="fold")
        table.add_column("window")
        for heading in ("decisions", "selected", "expected", "capped", "reviewed"):
            table.add_column(heading, justify="right")
        for w in counts.windows:
            table.add_row(
                w.budget_id,
                w.window_id,
                f"{w.decisions:,}",
                f"{w.selected:,}",
                f"{w.expected:,.1f}",
                f"{w.capped:,}",
                f"{w.reviewed:,}",
            )
        out.print(table)


def read_reviewer_tokens(directory: Path) -> dict[str, str]:
    """The reviewers of a token directory, name -> token: every file is one reviewer, its name
    the reviewer's, its content (less one trailing newline) the token. This is a Kubernetes
    Secret mounted as a volume, whose keys are symlinks into kubelet's hidden `..data` folder:
    names starting with "." are skipped, symlinks followed. ValueError naming every bad file."""
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory")
    tokens: dict[str, str] = {}
    holders: dict[str, str] = {}
    problems: list[str] = []
    for path in sorted(directory.iterdir()):
        if path.name.startswith("."):
            continue
        if not path.is_file():
            problems.append(f"{path}: not a regular file")
            continue
        try:
            token = path.read_text(encoding="utf-8").removesuffix("\n")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{path}: unreadable ({exc.__class__.__name__})")
            continue
        if not token:
            problems.append(f"{path}: empty")
            continue
        try:
            check_reviewer_token(path.name, token)
        except InvalidArgument as exc:
            problems.append(f"{path}: {exc}")
            continue
        if token in holders:
            problems.append(f"{path}: the same token as {directory / holders[token]}")
            continue
        holders[token] = path.name
        tokens[path.name] = token
    if problems:
        raise ValueError("; ".join(problems))
    return tokens


@review_app.command("sync-reviewers")
def sync_reviewers(
    directory: Annotated[
        Path, typer.Argument(help="Folder with one file per reviewer: name, and token as content.")
    ],
    database_url: StoreUrl = None,
    state_dir: StateDir = None,
    deactivate_missing: Annotated[
        bool,
        typer.Option(
            help="Also lock out every active reviewer without a file (as deactivate-reviewer "
            "does): DIR is then the whole list of reviewers. Never on a DIR without files."
        ),
    ] = False,
) -> None:
    """Give the reviewers of DIR the tokens of their files (a Kubernetes Secret mounted as a
    volume): creates missing reviewers, replaces changed tokens and reactivates them; prints
    each name with what was done, never a token. Every file is checked first: one bad file and
    nothing is written (exit 2). Reviewers without a file are left as they are, unless
    --deactivate-missing."""
    try:
        tokens = read_reviewer_tokens(directory)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if not tokens:
        # An empty folder is more likely a Secret not mounted than a team of nobody.
        typer.echo(f"no reviewer files in {directory}; nothing to do", err=True)
        return
    url = _store_url(database_url, state_dir)
    try:
        with ReviewStore(url) as store:
            for name, token in tokens.items():
                if store.authenticate(token) == name:
                    outcome = "unchanged"
                else:
                    outcome = "created" if store.set_reviewer_token(name, token) else "updated"
                typer.echo(f"{name}: {outcome}")
            if deactivate_missing:
                for reviewer in store.reviewers():
                    if reviewer.active and reviewer.name not in tokens:
                        returned = store.deactivate_reviewer(reviewer.name)
                        typer.echo(
                            f"{reviewer.name}: deactivated (no file; {returned} claimed item(s) "
                            "returned to the queue)"
                        )
    except ReviewStoreError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@review_app.command("export")
def export(
    output: Annotated[Path, typer.Argument(help="Parquet file to write (replaced atomically).")],
    database_url: StoreUrl = None,
    schema_id: Annotated[
        str | None, typer.Option(help="Only the records of this label schema.")
    ] = None,
    include_items: Annotated[
        bool, typer.Option(help="Also write the serialized item (content) of every record.")
    ] = False,
    state_dir: StateDir = None,
) -> None:
    """Export the ACT dataset (every record: machine label, eps, pi, delta, human label,
    reviewer, timestamps, model and prompt versions) to Parquet for the trainer."""
    url = _existing_store_url(database_url, state_dir)
    if output.parent and not output.parent.exists():
        typer.echo(f"error: folder {output.parent} does not exist", err=True)
        raise typer.Exit(2)
    try:
        with ReviewStore(url) as store:
            rows = store.export_parquet(output, schema_id=schema_id, include_items=include_items)
    except ReviewStoreError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{rows} records written to {output}")


@review_app.command("consume")
def consume(
    database_url: DatabaseUrl = None,
    group_id: Annotated[str, typer.Option("--group", help="Kafka consumer group.")] = "act-review",
    topic_suffix: Annotated[
        str, typer.Option(help="Suffix of the topic names (a namespace of their own).")
    ] = "",
    schema_id: Annotated[
        list[str] | None,
        typer.Option(help="Label schema(s) to register, by id (bundled or ACT_SCHEMAS_DIR)."),
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus metrics on this port.")
    ] = None,
    metrics_host: Annotated[
        str, typer.Option(help="Address the metrics server binds (0.0.0.0 in a container).")
    ] = "127.0.0.1",
) -> None:
    """Store every decision of act.decisions.v1 in the review store until SIGTERM/SIGINT
    (offsets are committed after the database commit; bad records go to act.dlq.v1)."""
    from act.bus import BusSettings
    from act.inference.errors import InferenceError
    from act.review.consumer import serve_decision_consumer

    try:
        bus = BusSettings()  # ACT_KAFKA_BOOTSTRAP and the other ACT_KAFKA_* settings
        code = serve_decision_consumer(
            database_url=database_url,
            group_id=group_id,
            topic_suffix=topic_suffix,
            schema_ids=schema_id or [],
            metrics_port=metrics_port,
            metrics_host=metrics_host,
            bus_settings=bus,
        )
    except (InferenceError, ReviewStoreError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(code)
