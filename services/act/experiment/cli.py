"""`actctl experiment` and `actctl demo` (registered by act.cli).

Heavy imports (torch, the models, the review store) happen inside the commands, so that
`actctl --help` stays fast and the demo pulls in only what its extra installs.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from act.experiment.labelled import BUNDLED_DATASETS, DEFAULT_SIMULATED_AUROC, PAPER_ERROR_RATES
from act.validation import validation_problems

DEFAULT_BUDGETS = "0.25,0.5,1,1.1,1.5"
QUICK_LIMIT = 400  # items of the bundled data set with `actctl demo --quick`


# Settings fields whose command-line option has another name.
OPTION_NAMES = {"rule": "budget-rule", "budget_factors": "budgets"}


@contextlib.contextmanager
def bad_input_exits() -> Iterator[None]:
    """Bad settings end the command with exit code 2 and one line saying what is wrong."""
    from pydantic import ValidationError

    try:
        yield
    except ValidationError as exc:  # a ValueError too: caught first for its option names
        raise _fail(validation_problems(exc, name=lambda loc: _option(str(loc[-1])))) from None
    except ValueError as exc:
        raise _fail(str(exc)) from None


def _option(field: str) -> str:
    return "--" + OPTION_NAMES.get(field, field).replace("_", "-")


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=2)


def _names(value: str, known: tuple[str, ...], what: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    if names == ("all",):
        return known
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(unknown)}; known: {', '.join(known)}")
    return names


def _budgets(value: str) -> tuple[float, ...]:
    factors = []
    for part in value.split(","):
        try:
            factor = float(part)
        except ValueError:
            raise ValueError(f"budget {part.strip()!r} is not a number") from None
        if not 0.0 < factor <= 100.0:
            raise ValueError(
                f"budget {factor:g} must be a positive multiple of the error rate (at most 100)"
            )
        factors.append(factor)
    if not factors:
        raise ValueError("give at least one budget factor")
    return tuple(sorted(set(factors)))


def writable_directory(path: Path) -> Path:
    """`path`, created if needed, after checking a file can be written there."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".act-write-check-"):
            pass
    except OSError as exc:
        raise ValueError(
            f"output directory {path} is not writable: {exc.strerror or exc}"
        ) from None
    return path


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "act" / "experiment"


def experiment(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Directory for the results and the report.")
    ] = Path("act-experiment"),
    datasets: Annotated[
        str, typer.Option(help=f"Bundled data sets: {', '.join(BUNDLED_DATASETS)} (or 'none').")
    ] = ",".join(BUNDLED_DATASETS),
    simulate: Annotated[
        str,
        typer.Option(
            help="Simulated operating points of the paper's data sets (annotator error from "
            f"the slides, chosen criticizer AUROC): {', '.join(PAPER_ERROR_RATES)} or 'all'."
        ),
    ] = "",
    seeds: Annotated[int, typer.Option(help="Number of seeds (0, 1, ...).")] = 3,
    budgets: Annotated[
        str, typer.Option(help="Budgets of the sweep, as multiples of the true error rate × N.")
    ] = DEFAULT_BUDGETS,
    pilot_share: Annotated[float, typer.Option(help="Share of the pool in the pilot.")] = 0.1,
    test_share: Annotated[float, typer.Option(help="Share of the items held out for test.")] = 0.3,
    epochs: Annotated[
        int | None, typer.Option(help="Training epochs (default: per model, see the report).")
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="Use a random subset of this many items per data set.")
    ] = None,
    simulated_auroc: Annotated[
        float, typer.Option(help="Criticizer AUROC of the simulated operating points.")
    ] = DEFAULT_SIMULATED_AUROC,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            envvar="ACT_EXPERIMENT_CACHE",
            help="Where labels are cached per data set and seed (default ~/.cache/act/experiment).",
        ),
    ] = None,
    no_cache: Annotated[bool, typer.Option(help="Label everything again; cache nothing.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """The paper's downstream study offline: label, review, train the paper's rows and the
    design's default, sweep the budget, and write results and a report (docs/experiment.md)."""
    from act.experiment.runner import ExperimentConfig
    from act.experiment.study import StudySettings

    with bad_input_exits():
        if seeds < 1:
            raise ValueError(f"seeds must be at least 1, got {seeds}")
        chosen = (
            () if datasets.strip() == "none" else _names(datasets, BUNDLED_DATASETS, "data set")
        )
        simulated = _names(simulate, tuple(PAPER_ERROR_RATES), "simulated data set")
        if not chosen and not simulated:
            raise ValueError("nothing to run: give --datasets or --simulate")
        config = ExperimentConfig(
            datasets=chosen,
            simulate=simulated,
            seeds=seeds,
            limit=limit,
            simulated_auroc=simulated_auroc,
            study=StudySettings(
                budget_factors=_budgets(budgets),
                pilot_share=pilot_share,
                test_share=test_share,
                epochs=epochs,
            ),
            cache_dir=None if no_cache else (cache_dir or default_cache_dir()),
        )
        writable_directory(output)

    from act.experiment.report import write_report
    from act.experiment.runner import run_experiment

    console = Console(stderr=True)
    results = run_experiment(config, progress=not quiet, console=console)
    report = write_report(results, output)
    typer.echo(f"results: {output / 'results.md'}")
    typer.echo(f"report: {report.html}")


def demo(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Directory for the store, export and report.")
    ] = Path("act-demo"),
    dataset: Annotated[
        str, typer.Option(help="Bundled data set: digits or moderation.")
    ] = "digits",
    quick: Annotated[
        bool, typer.Option(help=f"Only {QUICK_LIMIT} random items: faster, noisier.")
    ] = False,
    budget_rule: Annotated[
        str,
        typer.Option(
            help="'recommended' (the smaller of 1.1·ê·N and the calibrated budget) or "
            "'paper' (1.1·ê·N)."
        ),
    ] = "recommended",
    seed: Annotated[int, typer.Option(help="Seed of the few-shot draw, split and reviews.")] = 0,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """The whole pipeline in one process on bundled data: embedded annotator and criticizer,
    a pilot to estimate the error, top-B review by a simulated reviewer through the review
    store, the Parquet export, training (human, machine, ACT) and a report."""
    from act.experiment.demo import DemoConfig

    with bad_input_exits():
        config = DemoConfig(
            dataset=dataset,  # type: ignore[arg-type]
            rule=budget_rule,  # type: ignore[arg-type]
            seed=seed,
            limit=QUICK_LIMIT if quick else None,
        )
        writable_directory(output)

    from act.experiment.demo import run_demo
    from act.experiment.report import rich_table

    console = Console()
    outcome = run_demo(config, output, progress=not quiet, console=Console(stderr=True))
    console.print(rich_table(outcome.table))
    for line in outcome.summary:
        console.print(f"• {line}")
    console.print(f"report: {outcome.report.html}")
