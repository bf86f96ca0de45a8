"""`actctl export`: decisions stored by the review queue come out as the ACT dataset; the
operator's `actctl review stats`, `reviewers` and `deactivate-reviewer`; and which store the
review commands use when not told."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from act.cli import app
from act.core.sampling import PacerConfig
from act.data import text_schema
from act.inference.instant import InstantBackend
from act.inference.types import Item, schema_to_proto
from act.local.state import LocalRun, save
from act.review.db import DEFAULT_URL, missing_sqlite_file, url_from_environment
from act.review.server import ReviewSettings
from act.review.store import ReviewStore
from act.sampler.policy import PartitionSampler, SamplingPolicy, ScoredItem


def _decisions(n_items: int) -> list:
    backend = InstantBackend()
    schema = text_schema()
    items = [Item(item_id=f"doc-{i}", text=f"post {i}") for i in range(n_items)]
    annotations = asyncio.run(backend.annotate(items, schema, "direct"))
    criticisms = asyncio.run(
        backend.criticize(list(zip(items, annotations, strict=True)), schema, "direct")
    )
    policy = SamplingPolicy(pacer=PacerConfig(budget_per_window=10, window_items=50), seed="x")
    scored = [
        ScoredItem(item, annotation, criticism, offset, 0.0)
        for offset, (item, annotation, criticism) in enumerate(
            zip(items, annotations, criticisms, strict=True)
        )
    ]
    return PartitionSampler(policy, 0).offer(scored)


def test_export_writes_one_row_per_record_with_the_act_columns(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'review.db'}"
    decisions = _decisions(120)
    with ReviewStore(url) as store:
        store.register_schema(schema_to_proto(text_schema()))
        assert len(store.upsert_decisions(decisions).inserted) == 120
    output = tmp_path / "act.parquet"
    result = CliRunner().invoke(app, ["export", str(output), "--database-url", url])
    assert result.exit_code == 0, result.output
    assert "120 records written" in result.output
    table = pq.read_table(output)
    assert table.num_rows == 120
    for column in ("item_id", "machine_label", "eps", "pi", "delta", "human_label", "reviewer"):
        assert column in table.column_names
    rows = {row["item_id"]: row for row in table.to_pylist()}
    for decision in decisions:
        assert rows[decision.item_id]["pi"] == decision.pi
        assert rows[decision.item_id]["delta"] == decision.delta


def test_export_refuses_a_missing_folder(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["export", str(tmp_path / "no" / "x.parquet"), "--database-url", "sqlite://"]
    )
    assert result.exit_code == 2
    assert "does not exist" in result.output


# -- the operator's commands: stats, reviewers, deactivate-reviewer ----------------------------


def test_stats_reviewers_and_deactivate_reviewer_report_the_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'review.db'}"
    decisions = _decisions(120)
    selected = sum(d.delta for d in decisions)
    with ReviewStore(url) as store:
        store.register_schema(schema_to_proto(text_schema()))
        store.upsert_decisions(decisions)
        store.add_reviewer("alice")
        store.add_reviewer("bob")
        [first, *_] = store.claim("alice", max_items=3)
        store.submit(first.item_id, first.claim_id, "alice", first.decision.annotation.label)

    def run(*arguments: str) -> str:
        result = CliRunner().invoke(app, ["review", *arguments, "--database-url", url])
        assert result.exit_code == 0, result.output
        return result.stdout

    counts = json.loads(run("stats", "--json", "--windows", "2"))
    assert (counts["decisions"], counts["selected"]) == (120, selected)
    assert (counts["reviewed"], counts["claimed"], counts["pending"]) == (1, 2, selected - 3)
    assert counts["agreement_rate"] == 1.0
    assert counts["first_reviews_last_hour"] == 1
    assert list(counts["time_to_review_seconds"]) == ["0.5", "0.9", "0.99"]
    # Windows of 50 items: the latest two of the three, oldest first.
    assert [(w["window_id"], w["decisions"]) for w in counts["windows"]] == [
        (decisions[50].window_id, 50),
        (decisions[100].window_id, 20),
    ]
    text = run("stats")
    assert f"120 decisions: {selected} selected for review" in text
    assert "2 claimed by 1 reviewer(s), 1 reviewed" in text
    assert "time to review, 1 first reviews in the last hour: p50 " in text

    listed = json.loads(run("reviewers", "--json"))["reviewers"]
    assert [(r["name"], r["active"], r["reviews"]) for r in listed] == [
        ("alice", True, 1),
        ("bob", True, 0),
    ]
    assert "actr_" not in run("reviewers")

    assert run("deactivate-reviewer", "alice").strip() == (
        "alice: deactivated; 2 claimed item(s) returned to the queue"
    )
    counts = json.loads(run("stats", "--json"))
    assert (counts["claimed"], counts["pending"]) == (0, selected - 1)
    assert [r["active"] for r in json.loads(run("reviewers", "--json"))["reviewers"]] == [
        False,
        True,
    ]


def test_the_operators_commands_refuse_an_unknown_reviewer_or_a_missing_store(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'review.db'}"
    ReviewStore(url).close()
    result = CliRunner().invoke(
        app, ["review", "deactivate-reviewer", "carol", "--database-url", url]
    )
    assert result.exit_code == 1 and "no reviewer named 'carol'" in result.output
    result = CliRunner().invoke(app, ["review", "stats", "--windows", "-1", "--database-url", url])
    assert result.exit_code == 2 and "--windows" in result.output
    missing = tmp_path / "gone.db"
    for command in ("stats", "reviewers"):
        result = CliRunner().invoke(
            app, ["review", command, "--database-url", f"sqlite:///{missing}"]
        )
        assert result.exit_code == 2 and "there is no review store" in result.output
    assert not missing.exists()


# -- which store the commands use ---------------------------------------------------------------


def test_the_store_url_comes_from_the_review_variable_then_the_shared_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ACT_REVIEW_DATABASE_URL", raising=False)
    monkeypatch.delenv("ACT_DATABASE_URL", raising=False)
    assert url_from_environment() == DEFAULT_URL
    assert ReviewSettings().database_url == DEFAULT_URL

    monkeypatch.setenv("ACT_DATABASE_URL", "postgresql://act@db/act")  # deploy/local/env.sh's
    assert url_from_environment() == "postgresql://act@db/act"
    assert ReviewSettings().database_url == "postgresql://act@db/act"

    monkeypatch.setenv("ACT_REVIEW_DATABASE_URL", "sqlite:///review.db")
    assert url_from_environment() == "sqlite:///review.db"
    assert ReviewSettings().database_url == "sqlite:///review.db"


def test_export_without_a_url_reads_the_store_of_the_system_actctl_up_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_dir = tmp_path / "state"
    monkeypatch.setenv("ACT_STATE_DIR", str(state_dir))
    elsewhere = tmp_path / "elsewhere.db"
    monkeypatch.setenv("ACT_DATABASE_URL", f"sqlite:///{elsewhere}")
    url = f"sqlite:///{tmp_path / 'review.db'}"
    with ReviewStore(url) as store:
        store.upsert_decisions(_decisions(30))
    save(LocalRun(state_dir=str(state_dir), database_url=url))

    result = CliRunner().invoke(app, ["export", str(tmp_path / "act.parquet")])

    assert result.exit_code == 0, result.output
    assert "review store of the system actctl up runs" in result.output
    assert pq.read_table(tmp_path / "act.parquet").num_rows == 30
    assert not elsewhere.exists()


def test_export_refuses_a_sqlite_store_that_does_not_exist_and_creates_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACT_STATE_DIR", str(tmp_path / "nothing-up"))
    monkeypatch.delenv("ACT_REVIEW_DATABASE_URL", raising=False)
    monkeypatch.delenv("ACT_DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)

    result = CliRunner().invoke(app, ["export", "act.parquet"])

    assert result.exit_code == 2
    assert f"there is no review store at {tmp_path / 'act-review.db'}" in result.output
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_a_state_dir_with_nothing_up_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["review", "add-reviewer", "bob", "--state-dir", str(tmp_path / "none")]
    )

    assert result.exit_code == 2
    assert "nothing is up in" in result.output
    assert not (tmp_path / "none").exists()


def test_missing_sqlite_file_names_only_a_sqlite_file_that_is_not_there(tmp_path: Path) -> None:
    present = tmp_path / "present.db"
    present.touch()
    assert missing_sqlite_file(f"sqlite:///{present}") is None
    assert missing_sqlite_file(f"sqlite:///{tmp_path / 'gone.db'}") == tmp_path / "gone.db"
    assert missing_sqlite_file("sqlite://") is None
    assert missing_sqlite_file("sqlite:///:memory:") is None
    assert missing_sqlite_file("postgresql://act@db/act") is None
