"""`actctl export`: decisions stored by the review queue come out as the ACT dataset."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pyarrow.parquet as pq
from typer.testing import CliRunner

from act.cli import app
from act.core.sampling import PacerConfig
from act.data import text_schema
from act.inference.instant import InstantBackend
from act.inference.types import Item, schema_to_proto
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
