"""`actctl`: the command line of the ACT pipeline.

Commands so far: `version`; `sample`, which turns a CSV of criticizer error
probabilities into review probabilities and keyed review decisions (batch mode of the
sampler, with the same core functions the services use); and `serve annotator` /
`serve criticizer`, which run the model services (settings from `ACT_*` variables, see
`act.serving.settings`; flags override them).
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from act import __version__
from act.core.sampling import DRAW_METHODS, draw
from act.core.transforms import DEFAULT_PI_MIN, METHODS, TransformSpec
from act.experiment import cli as experiment_commands
from act.local import cli as local_commands
from act.review import cli as review_commands
from act.sampler import cli as sampler_commands
from act.trainer import cli as trainer_commands
from act.validation import validation_problems

app = typer.Typer(
    name="actctl",
    help="ACT: LLM data annotation with critical thinking.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
)


@app.command()
def version() -> None:
    """Print the version of the act package."""
    typer.echo(__version__)


@app.command()
def sample(
    input_csv: Annotated[Path, typer.Argument(help="CSV with columns item_id and eps.")],
    budget: Annotated[
        float,
        typer.Option(help="Expected number of reviews; a value in (0, 1) is a share of items."),
    ],
    method: Annotated[str, typer.Option(help=f"Budget transform: {', '.join(METHODS)}.")] = "thre",
    draw_method: Annotated[
        str, typer.Option("--draw", help=f"Sampler: {', '.join(DRAW_METHODS)}.")
    ] = "systematic",
    seed: Annotated[str, typer.Option(help="Key of the keyed randomness.")] = "act",
    pi_min: Annotated[float, typer.Option(help="Floor of every review probability.")] = (
        DEFAULT_PI_MIN
    ),
    param: Annotated[
        list[str] | None,
        typer.Option(help="Transform hyperparameter NAME=VALUE, e.g. --param beta=20."),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Output CSV (default: stdout).")
    ] = None,
) -> None:
    """Review probabilities pi and decisions delta for a batch of criticized items.

    Writes item_id, eps, pi, delta. With --draw systematic and an integer sum of pi the
    number of reviews is exactly the budget.
    """
    try:
        item_ids, eps = _read_eps_csv(input_csv)
        n_budget = budget * len(eps) if 0 < budget < 1 else budget
        spec = TransformSpec(method=method, params=_parse_params(param or []), pi_min=pi_min)
        pi = spec.apply(eps, n_budget)
        delta = draw(pi, item_ids, seed, draw_method)  # type: ignore[arg-type]
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    stream = output.open("w", newline="") if output else sys.stdout
    try:
        writer = csv.writer(stream)
        writer.writerow(["item_id", "eps", "pi", "delta"])
        for row in zip(item_ids, eps, pi, delta, strict=True):
            writer.writerow([row[0], repr(float(row[1])), repr(float(row[2])), int(row[3])])
    finally:
        if output:
            stream.close()
    typer.echo(
        f"{int(delta.sum())} of {len(eps)} items selected for review "
        f"(expected {pi.sum():.2f}; transform {spec.id}, draw {draw_method}, seed {seed!r})",
        err=True,
    )


def _read_eps_csv(path: Path) -> tuple[list[str], np.ndarray]:
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"item_id", "eps"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
        item_ids: list[str] = []
        eps: list[float] = []
        for line, row in enumerate(reader, start=2):
            try:
                value = float(row["eps"])
            except (TypeError, ValueError):
                raise ValueError(f"{path}:{line}: eps {row['eps']!r} is not a number") from None
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"{path}:{line}: eps {value} is not in [0, 1]")
            if not row["item_id"]:
                raise ValueError(f"{path}:{line}: empty item_id")
            item_ids.append(row["item_id"])
            eps.append(value)
    if not item_ids:
        raise ValueError(f"{path}: no rows")
    if len(set(item_ids)) != len(item_ids):
        raise ValueError(f"{path}: item_id values repeat; each item must appear once")
    return item_ids, np.asarray(eps)


def _parse_params(pairs: list[str]) -> dict[str, float | str]:
    params: dict[str, float | str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--param expects NAME=VALUE, got {pair!r}")
        try:
            params[name] = float(value)
        except ValueError:
            params[name] = value
    return params


# ----------------------------------------------------------------------------- serve

serve_app = typer.Typer(
    name="serve",
    help="Run a service: the annotator and the criticizer (gRPC), the sampler, the review queue "
    "and its decision consumer; each with Prometheus metrics.",
    no_args_is_help=True,
)
app.add_typer(serve_app, name="serve")

_BackendFlag = Annotated[
    str | None,
    typer.Option(
        help="Backend: embedded, instant, replay, openai, hf, vllm, or a factory "
        "module:attribute (env ACT_BACKEND, default embedded)."
    ),
]
_BackendOptionFlag = Annotated[
    list[str] | None,
    typer.Option(
        "--backend-option",
        help="Backend setting KEY=VALUE (VALUE as JSON when it parses), repeatable; merged "
        "over ACT_BACKEND_OPTIONS.",
    ),
]
_HostFlag = Annotated[str | None, typer.Option(help="Bind address (env ACT_HOST, 127.0.0.1).")]
_PortFlag = Annotated[
    int | None, typer.Option(help="gRPC port; 0 picks a free one (env ACT_PORT).")
]
_MetricsPortFlag = Annotated[
    int | None,
    typer.Option(help="Prometheus metrics port; 0 picks a free one (env ACT_METRICS_PORT)."),
]
_NoMetricsFlag = Annotated[
    bool, typer.Option("--no-metrics", help="Do not serve metrics (env ACT_METRICS_ENABLED).")
]
_ConcurrencyFlag = Annotated[
    int | None, typer.Option(help="Backend calls in flight (env ACT_MAX_CONCURRENCY, 4).")
]
_QueueFlag = Annotated[
    int | None,
    typer.Option(
        help="Calls waiting for a slot before RESOURCE_EXHAUSTED (env ACT_MAX_QUEUE, 64)."
    ),
]
_BatchFlag = Annotated[
    int | None, typer.Option(help="Most items per batch request (env ACT_MAX_BATCH, 256).")
]
_MessageFlag = Annotated[
    int | None, typer.Option(help="Largest message in bytes (env ACT_MAX_MESSAGE_BYTES, 32 MiB).")
]
_ImageFlag = Annotated[
    int | None, typer.Option(help="Largest inline image in bytes (env ACT_MAX_IMAGE_BYTES, 8 MiB).")
]
_StrategyFlag = Annotated[
    str | None,
    typer.Option(help="Strategy of requests that name none (env ACT_DEFAULT_STRATEGY)."),
]
_GraceFlag = Annotated[
    float | None,
    typer.Option(help="Seconds in-flight RPCs may finish on shutdown (env ACT_GRACE_SECONDS, 10)."),
]
_LogLevelFlag = Annotated[str | None, typer.Option(help="Log level (env ACT_LOG_LEVEL, INFO).")]


def _serve(service: str, flags: dict[str, object], backend_option: list[str] | None) -> None:
    from pydantic import ValidationError

    from act.serving.server import run
    from act.serving.settings import parse_backend_options, settings_with_overrides

    try:
        settings = settings_with_overrides(flags, parse_backend_options(backend_option or []))
    except ValidationError as exc:
        typer.echo(f"error: invalid settings: {validation_problems(exc)}", err=True)
        raise typer.Exit(code=2) from None
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    raise typer.Exit(code=run(service, settings))  # type: ignore[arg-type]


def _model_server_command(service: str) -> None:
    """Registers `actctl serve <service>` for the annotator or the criticizer (same flags)."""

    def command(
        backend: _BackendFlag = None,
        backend_option: _BackendOptionFlag = None,
        host: _HostFlag = None,
        port: _PortFlag = None,
        metrics_port: _MetricsPortFlag = None,
        no_metrics: _NoMetricsFlag = False,
        max_concurrency: _ConcurrencyFlag = None,
        max_queue: _QueueFlag = None,
        max_batch: _BatchFlag = None,
        max_message_bytes: _MessageFlag = None,
        max_image_bytes: _ImageFlag = None,
        default_strategy: _StrategyFlag = None,
        grace_seconds: _GraceFlag = None,
        log_level: _LogLevelFlag = None,
    ) -> None:
        _serve(
            service,
            {
                "backend": backend,
                "host": host,
                "port": port,
                "metrics_port": metrics_port,
                "metrics_enabled": False if no_metrics else None,
                "max_concurrency": max_concurrency,
                "max_queue": max_queue,
                "max_batch": max_batch,
                "max_message_bytes": max_message_bytes,
                "max_image_bytes": max_image_bytes,
                "default_strategy": default_strategy,
                "grace_seconds": grace_seconds,
                "log_level": log_level,
            },
            backend_option,
        )

    command.__doc__ = (
        f"Serve act.v1.{service.capitalize()} until SIGTERM/SIGINT (then drain and stop)."
    )
    serve_app.command(service)(command)


_model_server_command("annotator")
_model_server_command("criticizer")


# The review queue: `actctl serve review` runs it, `actctl export` writes the ACT dataset,
# `actctl review add-reviewer` issues tokens.
serve_app.command("review")(review_commands.serve)
serve_app.command("sampler")(sampler_commands.serve)
serve_app.command("review-consumer")(review_commands.consume)
app.command("export")(review_commands.export)
app.add_typer(review_commands.review_app, name="review")

# The paper's study offline, and the one-command tour on bundled data (docs/experiment.md).
app.command("experiment")(experiment_commands.experiment)
app.command("demo")(experiment_commands.demo)

# The whole system as local processes (act.local): `up`, `status`, `down`, and `ingest` of
# files and folders onto act.items.v1.
app.command("up")(local_commands.up)
app.command("status")(local_commands.status)
app.command("down")(local_commands.down)
app.command("ingest")(local_commands.ingest)

# Training on the ACT data (act.trainer): `featurize` turns the export into a training table,
# `train` fits the downstream model in-process or on Ray Train (docs/training.md).
app.command("featurize")(trainer_commands.featurize)
app.command("train")(trainer_commands.train)


if __name__ == "__main__":
    app()
