"""Schemas named by id: bundled, loaded from a directory, and unknown ones refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from act.data import text_schema
from act.inference.errors import InvalidInput, UnknownSchema
from act.inference.schemas import SchemaRegistry
from act.inference.types import Label, LabelSchema


def test_bundled_schemas_are_known_by_id() -> None:
    registry = SchemaRegistry.with_defaults()
    assert registry.get("act-moderation") == text_schema()
    assert registry.get("sklearn-digits-5shot-seed0").label_names == tuple("0123456789")


def test_a_directory_adds_schemas_and_the_latest_version_wins(tmp_path: Path) -> None:
    for version in (1, 2):
        schema = LabelSchema(
            schema_id="toxicity",
            version=version,
            labels=(Label(name="ok"), Label(name="toxic")),
        )
        (tmp_path / f"toxicity-v{version}.json").write_text(schema.model_dump_json())
    registry = SchemaRegistry.with_defaults(tmp_path)
    assert registry.get("toxicity").version == 2
    assert registry.get("toxicity", 1).version == 1


def test_unknown_schemas_and_versions_are_not_found_with_the_known_ones_named() -> None:
    registry = SchemaRegistry.with_defaults()
    with pytest.raises(UnknownSchema, match="act-moderation"):
        registry.get("nope")
    with pytest.raises(UnknownSchema, match="no version 9"):
        registry.get("act-moderation", 9)
    with pytest.raises(InvalidInput, match="neither labels nor a schema_id"):
        registry.get("")


def test_a_bad_schema_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text('{"schema_id": "x", "labels": []}')
    with pytest.raises(ValueError, match=r"broken\.json"):
        SchemaRegistry.with_defaults(tmp_path)
