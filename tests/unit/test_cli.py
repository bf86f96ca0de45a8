"""`actctl sample`: CSV of eps in, review decisions out; bad input exits 2 with a clear message."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from act import __version__
from act.cli import app
from act.core.sampling import draw
from act.core.transforms import review_probabilities

runner = CliRunner()


def _write_csv(path: Path, rows: list[tuple[str, str]], header: str = "item_id,eps") -> Path:
    path.write_text(header + "\n" + "".join(f"{a},{b}\n" for a, b in rows))
    return path


def test_version_prints_the_package_version() -> None:
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == __version__


def test_sample_writes_the_core_decisions_and_spends_the_exact_budget(tmp_path: Path) -> None:
    eps = np.random.default_rng(0).random(200)
    ids = [f"doc-{i}" for i in range(200)]
    source = _write_csv(
        tmp_path / "eps.csv", [(i, repr(float(e))) for i, e in zip(ids, eps, strict=True)]
    )
    out = tmp_path / "decisions.csv"
    result = runner.invoke(
        app,
        [
            "sample",
            str(source),
            "--budget",
            "0.1",
            "--method",
            "exp",
            "--param",
            "beta=5",
            "--seed",
            "s1",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["item_id"] for row in rows] == ids
    pi = np.array([float(row["pi"]) for row in rows])
    delta = np.array([row["delta"] == "1" for row in rows])
    assert np.allclose(pi, review_probabilities(eps, 20, "exp", beta=5.0))
    assert delta.sum() == 20
    assert (delta == draw(pi, ids, "s1", "systematic")).all()
    assert "20 of 200 items selected" in result.output


@pytest.mark.parametrize(
    ("rows", "header", "args", "message"),
    [
        ([("a", "0.5")], "item_id,score", [], "missing column"),
        ([("a", "1.5")], "item_id,eps", [], "not in"),
        ([("a", "nan")], "item_id,eps", [], "not in"),
        ([("a", "x")], "item_id,eps", [], "not a number"),
        ([("a", "0.1"), ("a", "0.2")], "item_id,eps", [], "repeat"),
        ([], "item_id,eps", [], "no rows"),
        ([("a", "0.1"), ("b", "0.2")], "item_id,eps", ["--method", "magic"], "unknown"),
        ([("a", "0.1"), ("b", "0.2")], "item_id,eps", ["--param", "beta"], "NAME=VALUE"),
        ([("a", "0.1"), ("b", "0.2")], "item_id,eps", ["--draw", "dice"], "unknown draw"),
    ],
)
def test_sample_rejects_bad_input_with_exit_code_2(
    tmp_path: Path, rows: list[tuple[str, str]], header: str, args: list[str], message: str
) -> None:
    source = _write_csv(tmp_path / "eps.csv", rows, header)
    result = runner.invoke(app, ["sample", str(source), "--budget", "1", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_sample_reports_a_missing_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["sample", str(tmp_path / "absent.csv"), "--budget", "1"])
    assert result.exit_code == 2
    assert "no such file" in result.output


def test_help_shows_each_command_summary_as_one_paragraph() -> None:
    """Docstrings are wrapped at 100 columns in the source; the help reflows them to the
    terminal rather than keeping the source's line breaks."""
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "250"})

    assert result.exit_code == 0
    lines = [" ".join(line.strip("│ ").split()) for line in result.output.splitlines()]
    assert any(
        line.endswith(
            "delta, human label, reviewer, timestamps, model and prompt versions) to Parquet "
            "for the trainer."
        )
        for line in lines
    ), result.output
