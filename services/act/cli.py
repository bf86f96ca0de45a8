"""`actctl`: the command line of the ACT pipeline.

Commands so far: `version`, and `sample`, which turns a CSV of criticizer error
probabilities into review probabilities and keyed review decisions (batch mode of the
sampler, with the same core functions the services use).
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

app = typer.Typer(
    name="actctl",
    help="ACT: LLM data annotation with critical thinking.",
    no_args_is_help=True,
    add_completion=False,
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


if __name__ == "__main__":
    app()
