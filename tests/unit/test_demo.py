"""actctl demo: the one-command tour runs end to end on a reduced size, through the real CLI,
without the service stack; and it refuses bad input before doing any work."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from act.cli import app
from act.experiment.demo import DATABASE_FILE, EXPORT_FILE, TRAINING_TABLE_FILE
from act.experiment.report import DATASETS_CSV, REPORT_HTML, RESULTS_CSV, RESULTS_MD

# Runs `actctl demo --quick` in a fresh interpreter, then reports which modules it imported:
# the demo must not need Ray, Kafka, the project's gRPC/HTTP servers or the dev tools.
_RUN_DEMO = """
import json, sys
from typer.testing import CliRunner
from act.cli import app
result = CliRunner().invoke(app, ["demo", "--quick", "--quiet", "-o", sys.argv[1]])
print(result.output)
if result.exception is not None and not isinstance(result.exception, SystemExit):
    raise result.exception
print("MODULES=" + json.dumps(sorted(sys.modules)))
sys.exit(result.exit_code)
"""
FORBIDDEN_PACKAGES = {
    "ray",
    "kafka",
    "uvicorn",
    "starlette",
    "prometheus_client",
    "pytest",
    "hypothesis",
    "ruff",
    "playwright",
}
FORBIDDEN_ACT_MODULES = {
    "act.serving",
    "act.annotator",
    "act.criticizer",
    "act.bus",
    "act.sampler.service",
    "act.review.server",
    "act.review.http",
    "act.review.grpc_service",
}


@pytest.mark.slow
def test_quick_demo_prints_the_table_beats_machine_labels_and_writes_the_report(tmp_path):
    output = tmp_path / "demo"
    completed = subprocess.run(
        [sys.executable, "-c", _RUN_DEMO, str(output)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    text, _, modules = completed.stdout.rpartition("MODULES=")
    for row in ("Human only", "Machine only", "ACT default after the pilot", "Human–Machine gap"):
        assert row in text
    assert f"report: {output / REPORT_HTML}" in text.replace("\n", "")
    imported = set(json.loads(modules))
    assert not {name.split(".")[0] for name in imported} & FORBIDDEN_PACKAGES
    assert not {name for name in imported if name.startswith("act.")} & FORBIDDEN_ACT_MODULES

    for name in (RESULTS_CSV, DATASETS_CSV, RESULTS_MD, REPORT_HTML, "accuracy_by_row.png"):
        assert (output / name).is_file()
    assert (output / DATABASE_FILE).is_file()
    assert (output / TRAINING_TABLE_FILE).is_file()
    with (output / RESULTS_CSV).open() as handle:
        accuracy = {row["row"]: float(row["test_accuracy"]) for row in csv.DictReader(handle)}
    assert set(accuracy) == {"human-ce", "machine-ce", "act-pilot-recommended"}
    assert accuracy["act-pilot-recommended"] > accuracy["machine-ce"]

    # The export the ACT model was trained from: every pool item, reviewed ones labelled.
    export = pq.read_table(output / EXPORT_FILE).to_pydict()
    with (output / DATASETS_CSV).open() as handle:
        (dataset,) = list(csv.DictReader(handle))
    assert len(export["item_id"]) == int(dataset["n_pool"])
    labels = zip(export["human_label"], export["delta"], strict=True)
    reviewed = [label for label, delta in labels if delta]
    assert reviewed and all(label is not None for label in reviewed)
    assert sum(export["audit"]) == int(dataset["pilot_reviews"])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--dataset", "cifar10"], "--dataset"),
        (["--budget-rule", "generous"], "--budget-rule"),
    ],
)
def test_demo_refuses_bad_input_before_any_work(arguments: list[str], message: str, tmp_path):
    result = CliRunner().invoke(app, ["demo", "-o", str(tmp_path / "out"), *arguments])
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "out").exists()


def test_demo_refuses_an_output_directory_it_cannot_write(tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = CliRunner().invoke(app, ["demo", "-o", str(blocker / "out")])
    assert result.exit_code == 2
    assert "is not writable" in result.output
