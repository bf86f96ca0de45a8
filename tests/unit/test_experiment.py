"""actctl experiment: simulated operating points, the pilot's budget, the study's rows, the
report, the label cache and the command line's refusal of bad input."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from act.cli import app
from act.core.metrics import auroc
from act.experiment.labelled import LabelledData, load_or_label, paper_operating_point, simulate
from act.experiment.report import (
    DATASETS_CSV,
    REPORT_HTML,
    RESULTS_CSV,
    RESULTS_MD,
    downstream_table,
    write_report,
)
from act.experiment.runner import ExperimentConfig, run_experiment
from act.experiment.study import (
    ROWS,
    RowResult,
    StudyResults,
    StudySettings,
    plan_budget,
    run_dataset,
    trainings_per_dataset,
)

runner = CliRunner()


def _base(n_items: int = 600, seed: int = 0) -> LabelledData:
    """Digits pixels with a noisy stand-in annotator (what `simulate` starts from)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    features = (digits.data[:n_items] / 16.0).astype(np.float32)
    labels = digits.target[:n_items].astype(np.int64)
    rng = np.random.default_rng(seed)
    logits = 3.0 * np.eye(10)[labels] + rng.normal(size=(n_items, 10))
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return LabelledData(
        name="base",
        title="Base digits",
        provenance="test data",
        item_ids=np.array([f"item-{i}" for i in range(n_items)]),
        features=features,
        labels=labels,
        machine_labels=probabilities.argmax(axis=1),
        eps=1.0 - probabilities.max(axis=1),
        annotator_probabilities=probabilities,
        class_names=tuple(str(i) for i in range(10)),
        annotator="stand-in",
        criticizer="stand-in",
        downstream_model="mlp",
    )


def test_simulated_annotator_has_the_paper_error_rate_and_errs_where_the_base_model_is_unsure():
    base = _base(1500)
    point = paper_operating_point("fashion", auroc=0.85)
    data = simulate(base, point, seed=3)
    errors = data.machine_labels != data.labels
    assert int(errors.sum()) == round(0.2181 * 1500)
    rows = np.arange(base.n_items)
    p_true = base.annotator_probabilities[rows, base.labels]
    assert p_true[errors].mean() < p_true[~errors].mean()
    others = base.annotator_probabilities.copy()
    others[rows, base.labels] = -np.inf
    assert (data.machine_labels[errors] == others[errors].argmax(axis=1)).all()


def test_simulated_criticizer_reaches_the_target_auroc_and_is_calibrated():
    data = simulate(_base(1500), paper_operating_point("irony", auroc=0.8), seed=1)
    errors = data.machine_labels != data.labels
    # Standard error of an AUROC on ~500 vs ~1000 items is about 0.012.
    assert abs(auroc(data.eps, errors) - 0.8) < 0.04
    assert abs(float(data.eps.mean()) - float(errors.mean())) < 0.03


def test_unknown_operating_point_or_auroc_outside_its_range_is_refused():
    with pytest.raises(ValueError, match="unknown simulated data set"):
        paper_operating_point("imagenet")
    with pytest.raises(ValueError, match="AUROC"):
        paper_operating_point("cars", auroc=0.4)


def test_pilot_budget_is_the_horvitz_thompson_error_times_1_1_of_the_rest():
    # 10 items, 4 reviewed with pi = 0.4, one of them wrong: ê = (1/0.4)/10 = 0.25, and the
    # paper's budget for the 6 unreviewed items is ceil(1.1 * 0.25 * 6) = 2.
    machine = np.array([0, 1, 1, 0, 1, 0, 1, 0, 1, 0])
    human = np.array([0, 1, 0, 0, -1, -1, -1, -1, -1, -1])
    delta = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], dtype=bool)
    pi = np.full(10, 0.4)
    eps = np.linspace(0.05, 0.95, 10)
    error, recommendation = plan_budget(eps, machine, human, delta, pi)
    assert error.estimate == pytest.approx(0.25)
    assert recommendation.n_items == 6
    assert recommendation.paper == math.ceil(1.1 * 0.25 * 6)
    assert recommendation.recommended == min(recommendation.paper, recommendation.calibrated)


@pytest.fixture(scope="module")
def small_study() -> tuple[LabelledData, StudySettings, object, list[RowResult]]:
    data = simulate(_base(300), paper_operating_point("cifar10"), seed=0)
    settings = StudySettings(budget_factors=(0.5, 1.0), epochs=1)
    dataset, rows = run_dataset(data, 0, settings)
    return data, settings, dataset, rows


@pytest.mark.slow
def test_study_trains_every_row_at_every_budget_with_the_reviews_it_says(small_study):
    data, settings, dataset, rows = small_study
    assert len(rows) == trainings_per_dataset(settings)
    by_key: dict[str, list[RowResult]] = {}
    for row in rows:
        by_key.setdefault(row.row, []).append(row)
    assert set(by_key) == {row.key for row in ROWS}
    n_pool = dataset.n_pool
    assert by_key["human-ce"][0].human_share == 1.0
    assert by_key["machine-ce"][0].reviews == 0
    pool_error = dataset.error_rate
    for row in by_key["act-default"]:  # top-B: exactly ceil(f·e·N) reviews
        assert row.reviews == math.ceil(row.budget_factor * pool_error * n_pool)
    recommendation = dataset.pilot.recommendation
    for key, rule in (("act-pilot-paper", "paper"), ("act-pilot-recommended", "recommended")):
        budget = max(1, getattr(recommendation, rule))  # at least one review
        assert by_key[key][0].reviews == dataset.pilot.reviewed + budget
    assert {row.budget_factor for row in by_key["act-exp"]} == {0.5, 1.0}
    assert all(0.0 <= row.test_accuracy <= 1.0 for row in rows)
    assert dataset.n_pool + dataset.n_test == data.n_items


@pytest.mark.slow
def test_report_files_are_complete_self_contained_and_escaped(small_study, tmp_path):
    _, settings, dataset, rows = small_study
    results = StudyResults(
        title="Study <script>alert(1)</script>",
        kind="experiment",
        settings={"<b>budgets</b>": "0.5 & 1"},
        datasets=[dataset],
        rows=rows,
        main_factor=settings.main_factor,
    )
    report = write_report(results, tmp_path)
    for name in (
        RESULTS_CSV,
        DATASETS_CSV,
        RESULTS_MD,
        REPORT_HTML,
        "accuracy_by_row.png",
        "budget_sensitivity.png",
        "accuracy_vs_budget.png",
    ):
        assert (tmp_path / name) in report.files
    assert (tmp_path / "budget_sensitivity.png").read_bytes().startswith(b"\x89PNG")
    assert len((tmp_path / RESULTS_CSV).read_text().splitlines()) == len(rows) + 1
    page = (tmp_path / REPORT_HTML).read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "&lt;b&gt;budgets&lt;/b&gt;" in page and "0.5 &amp; 1" in page
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 3
    assert not re.search(r'(src|href)="(?!data:)', page)  # no external asset
    markdown = (tmp_path / RESULTS_MD).read_text()
    assert "## Downstream test accuracy (%)" in markdown
    assert "Human–Machine gap" in markdown


def test_table_cells_are_mean_and_sample_std_over_seeds():
    rows = [
        RowResult(
            dataset="d",
            seed=seed,
            row=key,
            budget_factor=None,
            reviews=0,
            human_share=0.0,
            test_accuracy=accuracy,
            weights_clipped=False,
            n_train=10,
            n_test=10,
        )
        for key, accuracies in (("human-ce", (0.9, 0.8)), ("machine-ce", (0.7, 0.7)))
        for seed, accuracy in enumerate(accuracies)
    ]
    results = StudyResults(title="t", kind="experiment", settings={}, datasets=[], rows=rows)
    table = downstream_table(results)
    cells = {row[0]: row[1] for row in table.rows}
    assert cells["Human only — cross-entropy"] == "85.00 ± 7.07"
    assert cells["Machine only — cross-entropy"] == "70.00 ± 0.00"
    assert cells["Human–Machine gap (points)"] == "15.00 ± 7.07"


def test_labels_are_cached_per_dataset_and_seed_and_a_damaged_cache_is_relabelled(tmp_path):
    from act.inference.embedded import EmbeddedBackend

    backend = EmbeddedBackend()
    first, cached = load_or_label("digits", 0, 2, backend, tmp_path, limit=60)
    assert not cached
    assert first.features.shape == (60, 64)
    assert 0.0 <= first.features.min() and first.features.max() <= 1.0
    assert {first.annotator, first.criticizer} <= set(first.candidates)
    again, cached = load_or_label("digits", 0, 2, backend, tmp_path, limit=60)
    assert cached
    np.testing.assert_array_equal(again.machine_labels, first.machine_labels)
    np.testing.assert_array_equal(again.eps, first.eps)
    (path,) = tmp_path.glob("digits-seed0-*.npz")
    path.write_bytes(b"not a numpy file")
    relabelled, cached = load_or_label("digits", 0, 2, backend, tmp_path, limit=60)
    assert not cached
    np.testing.assert_array_equal(relabelled.machine_labels, first.machine_labels)


@pytest.mark.slow
def test_experiment_runs_bundled_and_simulated_sets_over_seeds_and_reuses_cached_labels(tmp_path):
    config = ExperimentConfig(
        datasets=("digits",),
        simulate=("irony",),
        seeds=2,
        limit=200,
        study=StudySettings(budget_factors=(1.0,), epochs=2),
        cache_dir=tmp_path / "cache",
    )
    results = run_experiment(config, progress=False)
    assert [(d.dataset, d.seed) for d in results.datasets] == [
        ("digits", 0),
        ("digits", 1),
        ("sim-irony", 0),
        ("sim-irony", 1),
    ]
    assert len(results.rows) == 4 * trainings_per_dataset(config.study)
    sim = [d for d in results.datasets if d.dataset == "sim-irony"]
    assert all(d.error_rate == pytest.approx(0.3379, abs=0.01) for d in sim)
    assert len(list((tmp_path / "cache").glob("digits-*.npz"))) == 2
    again = run_experiment(config, progress=False)
    assert [row.test_accuracy for row in again.rows] == [row.test_accuracy for row in results.rows]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--datasets", "cifar"], "unknown data set cifar"),
        (["--simulate", "imagenet"], "unknown simulated data set imagenet"),
        (["--budgets", "0,1"], "budget 0 must be a positive multiple"),
        (["--budgets", "1,lots"], "budget 'lots' is not a number"),
        (["--seeds", "0"], "seeds must be at least 1"),
        (["--pilot-share", "1.5"], "--pilot-share: Input should be less than 1"),
        (["--datasets", "none"], "nothing to run"),
    ],
)
def test_experiment_refuses_bad_input_before_any_work(arguments, message, tmp_path):
    result = runner.invoke(app, ["experiment", "-o", str(tmp_path / "out"), *arguments])
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_experiment_refuses_an_output_directory_it_cannot_write(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = runner.invoke(app, ["experiment", "-o", str(blocker / "out"), "--seeds", "1"])
    assert result.exit_code == 2
    assert "is not writable" in result.output
