"""`actctl experiment`: the study over data sets, seeds and simulated operating points."""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from act.experiment.labelled import (
    BUNDLED_DATASETS,
    DEFAULT_SIMULATED_AUROC,
    PAPER_ERROR_RATES,
    LabelledData,
    load_or_label,
    paper_operating_point,
    simulate,
)
from act.experiment.study import (
    DEFAULT_TRAINING,
    PAPER_TRANSFORMS,
    TOP_B,
    StudyResults,
    StudySettings,
    quiet_trainer,
    run_dataset,
    single_thread,
    trainings_per_dataset,
)


class ExperimentConfig(BaseModel):
    """What `actctl experiment` runs; checked before any work starts."""

    model_config = ConfigDict(frozen=True)

    datasets: tuple[str, ...] = BUNDLED_DATASETS
    simulate: tuple[str, ...] = ()
    seeds: int = Field(default=3, ge=1)
    n_shots: int = Field(default=5, ge=1)
    limit: int | None = Field(default=None, ge=50)  # a random subset of each bundled set
    simulated_auroc: float = Field(default=DEFAULT_SIMULATED_AUROC, gt=0.5, lt=1.0)
    study: StudySettings = StudySettings()
    cache_dir: Path | None = None

    @field_validator("datasets")
    @classmethod
    def _known_datasets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [name for name in value if name not in BUNDLED_DATASETS]
        if unknown:
            raise ValueError(f"unknown data set(s) {unknown}; known: {', '.join(BUNDLED_DATASETS)}")
        return tuple(dict.fromkeys(value))

    @field_validator("simulate")
    @classmethod
    def _known_simulations(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [name for name in value if name not in PAPER_ERROR_RATES]
        if unknown:
            raise ValueError(
                f"unknown simulated data set(s) {unknown}; known: {', '.join(PAPER_ERROR_RATES)}"
            )
        return tuple(dict.fromkeys(value))

    def report_settings(self) -> dict[str, str]:
        study = self.study
        training = "; ".join(
            f"{name}: {s.epochs if study.epochs is None else study.epochs} epochs, batch "
            f"{s.batch_size}, AdamW lr {s.lr:g}, weight decay {s.weight_decay:g}"
            for name, s in DEFAULT_TRAINING.items()
        )
        return {
            "data sets": ", ".join(self.datasets) or "none",
            "simulated operating points": ", ".join(self.simulate) or "none",
            "seeds": f"{self.seeds} (0..{self.seeds - 1}): few-shot draw, split, pilot, "
            "review draws and model initialisation",
            "annotator / criticizer": f"embedded backend, {self.n_shots} examples per label "
            "(left out of the data)",
            "items per bundled data set": "all" if self.limit is None else f"{self.limit} (random)",
            "budget factors (× true error rate · N)": ", ".join(
                f"{f:g}" for f in study.budget_factors
            ),
            "pilot share of the pool": f"{study.pilot_share:g}",
            "test share": f"{study.test_share:g}",
            "paper transforms": ", ".join(spec.id for spec in PAPER_TRANSFORMS.values())
            + "; independent Bernoulli draws with keyed randomness",
            "default review policy": f"{TOP_B.id}, trainer clips delta/pi at 1",
            "training": training,
            "simulated criticizer AUROC": f"{self.simulated_auroc:g}",
        }


def _progress(console: Console | None, enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[detail]}"),
        console=console,
        disable=not enabled,
    )


def run_experiment(
    config: ExperimentConfig, *, progress: bool = True, console: Console | None = None
) -> StudyResults:
    """Label (or load from the cache), then run the study for every data set and seed."""
    from act.inference.embedded import EmbeddedBackend

    started = time.perf_counter()
    backend = EmbeddedBackend()
    seeds = range(config.seeds)
    # Simulations reuse the digits labelled with the same seed (the base annotator's
    # probabilities decide where the simulated errors fall).
    to_label = list(config.datasets)
    if config.simulate and "digits" not in to_label:
        to_label.append("digits")
    runs = (len(config.datasets) + len(config.simulate)) * config.seeds
    labelled: dict[tuple[str, int], LabelledData] = {}
    results = StudyResults(
        title="ACT downstream study (actctl experiment)",
        kind="experiment",
        settings=config.report_settings(),
        datasets=[],
        rows=[],
        main_factor=config.study.main_factor,
    )
    with _progress(console, progress) as bars, single_thread(), quiet_trainer():
        labelling = bars.add_task("labelling", total=len(to_label) * config.seeds, detail="")
        for name in to_label:
            for seed in seeds:
                bars.update(labelling, detail=f"{name} seed {seed}")
                data, cached = load_or_label(
                    name, seed, config.n_shots, backend, config.cache_dir, config.limit
                )
                labelled[(name, seed)] = data
                bars.update(labelling, advance=1, detail="from cache" if cached else "labelled")
        training = bars.add_task(
            "training", total=runs * trainings_per_dataset(config.study), detail=""
        )

        def advance(detail: str) -> None:
            bars.update(training, advance=1, detail=detail)

        for name in config.datasets:
            for seed in seeds:
                dataset, rows = run_dataset(
                    labelled[(name, seed)], seed, config.study, on_trained=advance
                )
                results.datasets.append(dataset)
                results.rows.extend(rows)
        for name in config.simulate:
            point = paper_operating_point(name, config.simulated_auroc)
            for seed in seeds:
                data = simulate(labelled[("digits", seed)], point, seed)
                dataset, rows = run_dataset(
                    data, seed, config.study, simulated=point, on_trained=advance
                )
                results.datasets.append(dataset)
                results.rows.extend(rows)
    results.elapsed_seconds = time.perf_counter() - started
    return results
