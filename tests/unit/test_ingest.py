"""The readers of `actctl ingest`: JSONL, CSV, Parquet and folders of images become the items
they describe; every bad row is reported with its place, and the command then sends nothing."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image as PILImage
from typer.testing import CliRunner

from act.cli import app
from act.local.ingest import IngestError, IngestItem, RowError, check, items

SCHEMA = "act-moderation"


def _png(shade: int) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("L", (4, 4), color=shade).save(buffer, format="PNG")
    return buffer.getvalue()


def _jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _good(path: Path) -> list[IngestItem]:
    outcomes = list(items(path, SCHEMA))
    assert all(isinstance(o, IngestItem) for o in outcomes), [str(o) for o in outcomes]
    return outcomes  # type: ignore[return-value]


def test_jsonl_rows_become_items_with_text_images_question_metadata_and_schema(
    tmp_path: Path,
) -> None:
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.png").write_bytes(_png(10))
    jpeg = io.BytesIO()
    PILImage.new("RGB", (4, 4)).save(jpeg, format="JPEG")
    source = _jsonl(
        tmp_path / "items.jsonl",
        [
            {"id": "t1", "text": "buy now", "metadata": {"lang": "en", "score": 3}},
            "",
            {"id": 7, "image": "pics/a.png", "question": "what is it?", "schema_id": SCHEMA},
            {"id": "b64", "image_base64": base64.b64encode(jpeg.getvalue()).decode()},
            {"id": "m", "text": "hi", "metadata.source": "forum"},
        ],
    )

    got = _good(source)

    assert [g.item.item_id for g in got] == ["t1", "7", "b64", "m"]
    assert [g.where for g in got] == [f"{source}:1", f"{source}:3", f"{source}:4", f"{source}:5"]
    assert got[0].item.text == "buy now" and got[0].item.metadata == {"lang": "en", "score": "3"}
    assert got[1].item.images[0].data == _png(10)
    assert got[1].item.images[0].mime_type == "image/png"
    assert got[1].item.question == "what is it?"
    assert got[2].item.images[0].data == jpeg.getvalue()
    assert got[2].item.images[0].mime_type == "image/jpeg"
    assert got[3].item.metadata == {"source": "forum"}
    message = got[1].to_proto()
    assert (message.item_id, message.schema_id) == ("7", SCHEMA)
    assert message.content_hash == got[1].item.content_hash()


def test_csv_rows_become_items_and_a_multiline_field_keeps_the_line_numbers_right(
    tmp_path: Path,
) -> None:
    (tmp_path / "x.png").write_bytes(_png(200))
    source = tmp_path / "items.csv"
    source.write_text(
        '\ufeffid,text,image,metadata.lang\na,"first line\nsecond line",,en\nb,,x.png,\n\nc,,,\n'
    )

    outcomes = list(items(source, SCHEMA))

    first, second, bad = outcomes
    assert isinstance(first, IngestItem) and isinstance(second, IngestItem)
    assert first.item.text == "first line\nsecond line"
    assert first.item.metadata == {"lang": "en"}
    assert second.item.images[0].data == _png(200) and second.item.metadata == {}
    assert isinstance(bad, RowError) and bad.where == f"{source}:6"
    assert "empty" in bad.message


def test_parquet_rows_with_integer_ids_and_image_bytes_become_items(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = tmp_path / "items.parquet"
    table = pa.table(
        {
            "id": pa.array([1, 2, 3], pa.int64()),
            "text": ["a cat", None, "caption"],
            "image": pa.array([None, _png(1), _png(2)], pa.binary()),
        }
    )
    pq.write_table(table, source)

    got = _good(source)

    assert [g.item.item_id for g in got] == ["1", "2", "3"]
    assert [g.where for g in got] == [f"{source}: row {n}" for n in (1, 2, 3)]
    assert got[0].item.images == () and got[0].item.text == "a cat"
    assert got[1].item.images[0].data == _png(1) and got[1].item.text == ""
    assert got[2].item.images[0].data == _png(2) and got[2].item.text == "caption"


def test_a_folder_gives_one_item_per_image_and_lists_the_other_files(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    (folder / "cats").mkdir(parents=True)
    (folder / "cats" / "c1.PNG").write_bytes(_png(5))
    (folder / "d1.png").write_bytes(_png(6))
    (folder / "notes.txt").write_text("not an image")

    report = check(folder, SCHEMA)
    got = _good(folder)

    assert [g.item.item_id for g in got] == ["cats/c1.PNG", "d1.png"]
    assert got[0].item.images[0].data == _png(5)
    assert (report.items, report.errors, report.ignored) == (2, [], ["notes.txt"])


def test_check_reports_every_bad_row_with_its_line_and_counts_the_good_ones(
    tmp_path: Path,
) -> None:
    (tmp_path / "fake.png").write_text("this is text, not a PNG")
    source = _jsonl(
        tmp_path / "items.jsonl",
        [
            {"id": "ok-1", "text": "fine"},
            "{not json",
            "[1, 2]",
            {"text": "no id"},
            {"id": "empty", "text": "   "},
            {"id": "typo", "txt": "misspelt field"},
            {"id": "gone", "image": "missing.png"},
            {"id": "fake", "image": "fake.png"},
            {"id": "b64", "image_base64": "%%%"},
            {"id": "two", "image": "fake.png", "image_base64": "AAAA"},
            {"id": "other", "text": "x", "schema_id": "sklearn-digits-5shot-seed0"},
            {"id": "ok-1", "text": "again"},
            {"id": "ctl", "text": "bell \u0007"},
            {"id": True, "text": "boolean id"},
            {"id": "ok-2", "text": "also fine"},
        ],
    )

    report = check(source, SCHEMA)

    assert report.items == 2
    where = {error.where.rsplit(":", 1)[1]: error.message for error in report.errors}
    assert sorted(where, key=int) == [str(line) for line in range(2, 15)]
    assert "not valid JSON" in where["2"]
    assert "expected a JSON object" in where["3"]
    assert "id is missing" in where["4"]
    assert where["5"] == "item 'empty' is empty: it needs text or an image"
    assert "unknown field(s) ['txt']" in where["6"]
    assert "does not exist" in where["7"]
    assert where["8"] == "the image is not one Pillow can read (unknown format)"
    assert "not valid base64" in where["9"]
    assert "not both" in where["10"]
    assert "not the pipeline's schema" in where["11"]
    assert f"repeats (first at {source}:1)" in where["12"]
    assert "invalid character" in where["13"]
    assert "id must be a string or an integer, got bool" in where["14"]


def test_an_item_larger_than_the_bus_payload_limit_is_a_bad_row(tmp_path: Path) -> None:
    source = _jsonl(tmp_path / "big.jsonl", [{"id": "big", "text": "x" * 5000}])

    report = check(source, SCHEMA, max_payload_bytes=2048)

    assert report.items == 0
    assert [e.where for e in report.errors] == [f"{source}:1"]
    assert "payload_too_large" in report.errors[0].message


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("items.csv", "id,txt\na,b\n", "unknown column(s) ['txt']"),
        ("items.csv", "text\nhello\n", "no 'id' column"),
        ("items.csv", "", "empty file"),
        ("items.txt", "id\n", "unknown format '.txt'"),
        ("items.parquet", "not parquet", "not a readable Parquet file"),
    ],
)
def test_a_source_that_cannot_be_read_as_a_whole_is_refused(
    tmp_path: Path, name: str, content: str, problem: str
) -> None:
    source = tmp_path / name
    source.write_text(content)

    with pytest.raises(IngestError, match=re.escape(problem)):
        check(source, SCHEMA)


def test_a_csv_row_with_the_wrong_number_of_fields_is_a_bad_row(tmp_path: Path) -> None:
    source = tmp_path / "items.csv"
    source.write_text("id,text\na,hello\nb,hello,extra\n")

    report = check(source, SCHEMA)

    assert report.items == 1
    assert [str(e) for e in report.errors] == [f"{source}:3: 3 fields, the header has 2"]


def test_the_ingest_command_refuses_a_file_with_bad_rows_before_contacting_the_broker(
    tmp_path: Path,
) -> None:
    source = _jsonl(
        tmp_path / "items.jsonl",
        [{"id": "a", "text": "fine"}, {"id": "b"}, {"id": "a", "text": "dup"}],
    )

    # 192.0.2.1 (documentation range) never answers: reaching for it would hang, not exit 2.
    result = CliRunner().invoke(
        app,
        [
            "ingest", str(source), "--state-dir", str(tmp_path / "state"),
            "--kafka-bootstrap", "192.0.2.1:9092",
        ],
    )  # fmt: skip

    assert result.exit_code == 2
    assert f"{source}:2: item 'b' is empty: it needs text or an image" in result.stderr
    assert f"{source}:3: id 'a' repeats (first at {source}:1)" in result.stderr
    assert "2 bad row(s)" in result.stderr and "nothing was sent" in result.stderr
