"""`actctl demo`: the whole pipeline in one process, on bundled data, with the production pieces.

1. Bundled items (scikit-learn digits by default, or the moderation messages) are labelled by
   the embedded annotator and criticized by the embedded criticizer (a different model).
2. Pilot: the sampler's batch policy (`act.sampler.policy`) with a uniform transform selects
   `pilot_share` of the pool; those decisions go to the review store (SQLite in the output
   directory, `act.review.store`) and a simulated reviewer answers the true label there.
3. The pilot gives the Horvitz–Thompson error estimate ê and the recommended budget B for the
   rest of the pool (`act.experiment.study.plan_budget`: the smaller of the paper's 1.1·ê·N
   and the calibrated rule, DESIGN.md §2.1).
4. The rest of the pool goes through the sampler's batch policy with the default transform,
   top-B (`thre`, ρ = 0, pi_min = 0), into the store; the reviewer answers those too.
5. The ACT dataset is exported to Parquet with its items (`act.review.export`), featurized
   into the trainer's training table (`act.trainer.featurize`, as `actctl train` reads it)
   and the ACT model is trained on that table with the trainer's default (human weight
   delta/pi clipped at 1); human-only and machine-only models are trained on the same pool
   for comparison. All are tested on the held-out items.
6. The report (the same code as `actctl experiment`) goes to the output directory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from act.core.transforms import TransformSpec
from act.experiment.labelled import (
    BundledTask,
    Labelled,
    LabelledData,
    bundled_task,
    label_bundled,
)
from act.experiment.report import ReportFiles, Table, downstream_table, write_report
from act.experiment.study import (
    PILOT_TRANSFORM,
    ROW_BY_KEY,
    TOP_B,
    BudgetRule,
    Split,
    StudyResults,
    StudySettings,
    baseline_review,
    describe_dataset,
    quiet_trainer,
    record_row,
    rule_budget,
    single_thread,
    summarize_pilot,
    train_and_record,
)
from act.inference.embedded import EmbeddedBackend
from act.inference.types import schema_to_proto
from act.review.store import MAX_CLAIM_ITEMS, ReviewStore
from act.sampler.policy import PartitionSampler, SamplingPolicy, ScoredItem
from act.trainer.featurize import featurize_export
from act.trainer.table import read_training_table
from act.v1 import bus_pb2

REVIEWER = "simulated-reviewer"
DATABASE_FILE = "review.db"
EXPORT_FILE = "act-dataset.parquet"
TRAINING_TABLE_FILE = "training-table.parquet"
DEMO_ROWS = ("human-ce", "machine-ce")


class DemoConfig(BaseModel):
    """What `actctl demo` runs."""

    model_config = ConfigDict(frozen=True)

    dataset: Literal["digits", "moderation"] = "digits"
    seed: int = Field(default=0, ge=0)
    n_shots: int = Field(default=5, ge=1)
    limit: int | None = Field(default=None, ge=50)  # a random subset of the items
    pilot_share: float = Field(default=0.1, gt=0, lt=1)
    test_share: float = Field(default=0.3, gt=0, lt=1)
    rule: BudgetRule = "recommended"
    epochs: int | None = Field(default=None, ge=1)

    @property
    def act_row(self) -> str:
        return f"act-pilot-{self.rule}"


@dataclass(frozen=True)
class DemoOutcome:
    results: StudyResults
    report: ReportFiles
    table: Table
    summary: list[str]


def review_queue(store: ReviewStore, answers: dict[str, str]) -> dict[str, str]:
    """The simulated reviewer: claims every queued item and submits its true label."""
    labels: dict[str, str] = {}
    while claimed := store.claim(REVIEWER, max_items=MAX_CLAIM_ITEMS):
        for record in claimed:
            review = store.submit(
                record.item_id, record.claim_id, REVIEWER, answers[record.item_id]
            )
            labels[record.item_id] = review.label
    return labels


def _store_decisions(store: ReviewStore, decisions: list[bus_pb2.Decision]) -> None:
    outcome = store.upsert_decisions(decisions)
    if outcome.rejected:
        raise RuntimeError(f"the review store rejected a decision: {outcome.rejected[0]}")


def _decide(
    scored: list[ScoredItem], seed: str, review_fraction: float, transform: TransformSpec
) -> list[bus_pb2.Decision]:
    """Decisions for every item from the sampler's batch policy (one micro-batch)."""
    policy = SamplingPolicy(
        mode="batch",
        seed=seed,
        batch_items=len(scored),
        review_fraction=review_fraction,
        transform=transform,
    )
    return PartitionSampler(policy, 0).offer(scored)


def _pilot_arrays(
    pool: LabelledData, decisions: list[bus_pb2.Decision], labels: dict[str, str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(delta, pi, human label index or -1) of the pilot's decisions, in pool order."""
    index = {item_id: i for i, item_id in enumerate(pool.item_ids.tolist())}
    names = list(pool.class_names)
    delta = np.zeros(pool.n_items, dtype=bool)
    pi = np.zeros(pool.n_items)
    human = np.full(pool.n_items, -1)
    for decision in decisions:
        position = index[decision.item_id]
        delta[position], pi[position] = decision.delta, decision.pi
        if decision.delta:
            human[position] = names.index(labels[decision.item_id])
    return delta, pi, human


def _scored_pool(task: BundledTask, labelled: Labelled, pool: LabelledData) -> list[ScoredItem]:
    """The pool's items with their annotation and criticism, as the sampler receives them."""
    position = {item.item_id: i for i, item in enumerate(task.items)}
    return [
        ScoredItem(
            item=task.items[position[item_id]],
            annotation=labelled.annotations[position[item_id]],
            criticism=labelled.criticisms[position[item_id]],
            offset=offset,
            event_time=0.0,
        )
        for offset, item_id in enumerate(pool.item_ids.tolist())
    ]


def run_demo(
    config: DemoConfig,
    output: Path,
    *,
    progress: bool = True,
    console: Console | None = None,
) -> DemoOutcome:
    """Runs the demo (see the module docstring) and writes its report under `output`."""
    started = time.perf_counter()
    output.mkdir(parents=True, exist_ok=True)
    rows = [ROW_BY_KEY[key] for key in (*DEMO_ROWS, config.act_row)]
    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        disable=not progress,
    )
    with bars, single_thread(), quiet_trainer():
        step = bars.add_task("loading the bundled data", total=7 + len(rows))

        def next_step(description: str) -> None:
            bars.update(step, advance=1, description=description)

        task = bundled_task(config.dataset, config.seed, config.n_shots, config.limit)
        next_step("annotating and criticizing (embedded models)")
        labelled = label_bundled(task, EmbeddedBackend(), with_candidates=False)
        split = Split.of(labelled.data, config.seed, config.test_share)
        pool = split.pool
        scored = _scored_pool(task, labelled, pool)
        truth = {
            item_id: pool.class_names[label]
            for item_id, label in zip(pool.item_ids.tolist(), pool.labels, strict=True)
        }

        next_step("pilot review (uniform audit)")
        database = output / DATABASE_FILE
        database.unlink(missing_ok=True)  # the demo's own store from an earlier run
        store = ReviewStore(f"sqlite:///{database}")
        try:
            store.register_schema(schema_to_proto(task.schema))
            pilot_decisions = _decide(
                scored, f"act-demo-pilot-{config.seed}", config.pilot_share, PILOT_TRANSFORM
            )
            pilot_selected = [decision for decision in pilot_decisions if decision.delta]
            for decision in pilot_selected:
                decision.audit = True  # a uniform audit: unbiased estimates come from these
            _store_decisions(store, pilot_selected)
            pilot_labels = review_queue(store, truth)

            next_step("estimating the error and the budget")
            pilot_delta, pilot_pi, pilot_human = _pilot_arrays(pool, pilot_decisions, pilot_labels)
            pilot_summary = summarize_pilot(
                pool, config.pilot_share, pilot_delta, pilot_pi, pilot_human
            )
            budget = rule_budget(pilot_summary.recommendation, config.rule)

            next_step(f"top-B review of {budget} items")
            rest = [
                entry for entry, reviewed in zip(scored, pilot_delta, strict=True) if not reviewed
            ]
            _store_decisions(
                store, _decide(rest, f"act-demo-{config.seed}", min(1.0, budget / len(rest)), TOP_B)
            )
            main_labels = review_queue(store, truth)

            next_step("exporting the ACT dataset (Parquet) and featurizing it")
            export_path = output / EXPORT_FILE
            store.export_parquet(export_path, include_items=True)
        finally:
            store.close()
        # What `actctl train` reads: the export's items featurized into a training table.
        table_path = output / TRAINING_TABLE_FILE
        featurize_export(export_path, table_path, class_names=pool.class_names)
        act_data, _ = read_training_table(table_path)

        training = StudySettings(epochs=config.epochs).training(labelled.data.downstream_model)
        results_rows = []
        for spec in rows:
            next_step(f"training: {spec.key}")
            if spec.budget == "none":
                review = baseline_review(spec, pool.n_items)
                results_rows.append(train_and_record(spec, split, training, *review))
            else:
                results_rows.append(record_row(spec, split, training, act_data))

        next_step("writing the report")
        reviews = len(pilot_labels) + len(main_labels)
        results = StudyResults(
            title=f"ACT demo — {labelled.data.title}",
            kind="demo",
            settings={
                "data set": f"{labelled.data.title}: {pool.n_items} pool items, "
                f"{split.test.n_items} test",
                "annotator / criticizer": f"{labelled.data.annotator} / "
                f"{labelled.data.criticizer} (embedded)",
                "pilot": f"uniform audit of {config.pilot_share:g} of the pool "
                f"({PILOT_TRANSFORM.id}, systematic draw): {len(pilot_labels)} reviews",
                "budget rule": f"{config.rule} → B = {budget} reviews of the "
                f"{len(rest)} items outside the pilot",
                "review policy": f"{TOP_B.id}, systematic draw (act.sampler.policy)",
                "human reviewer": "simulated: answers the true label through the review store",
                "review store": f"SQLite, {database.name}; export {export_path.name}, "
                f"featurized to {table_path.name}",
                "training": f"{training.model}, {training.epochs} epochs, batch "
                f"{training.batch_size}, lr {training.lr:g}; ACT: delta/pi clipped at 1",
                "seed": str(config.seed),
            },
            datasets=[describe_dataset(split, training.model, pilot_summary)],
            rows=results_rows,
            notes=[
                "Produced by `actctl demo`: embedded annotator and criticizer, sampler "
                "policy, review store (SQLite), Parquet export and trainer in one process. "
                "The human reviewer is simulated and answers the true label."
            ],
        )
        results.elapsed_seconds = time.perf_counter() - started
        report = write_report(results, output)
        next_step("done")
    error, recommendation = pilot_summary.error, pilot_summary.recommendation
    summary = [
        f"annotator accuracy on the pool: {1 - pool.error_rate:.1%} "
        f"(true error {pool.error_rate:.1%})",
        f"pilot: {len(pilot_labels)} reviews; estimated error ê = {error.estimate:.1%} "
        f"(95% interval {error.lower:.1%}–{error.upper:.1%})",
        f"budget ({config.rule} rule): {budget} of {len(rest)} remaining items (paper "
        f"1.1·ê·N = {recommendation.paper}, calibrated = {recommendation.calibrated}); "
        f"{reviews} human reviews in all = {reviews / pool.n_items:.1%} of the pool",
    ]
    return DemoOutcome(results, report, downstream_table(results), summary)
