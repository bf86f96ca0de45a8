"""The protobuf protocol: committed generated code is current, messages round-trip, and the
services expose the expected RPCs."""

from __future__ import annotations

import importlib.util
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.timestamp_pb2 import Timestamp

from act.v1 import (
    annotator_pb2,
    annotator_pb2_grpc,
    bus_pb2,
    criticizer_pb2,
    criticizer_pb2_grpc,
    info_pb2,
    review_queue_pb2,
    review_queue_pb2_grpc,
    types_pb2,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
GENERATED_DIR = REPO_ROOT / "services" / "act" / "v1"
STALE_HINT = "generated code in services/act/v1 is stale: run `python protos/generate.py`"


def _load_generator() -> ModuleType:
    # protos/ is not a package, so load the script by path.
    spec = importlib.util.spec_from_file_location(
        "act_protos_generate", REPO_ROOT / "protos" / "generate.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate_module = _load_generator()


# --- (a) committed generated code is current -------------------------------------------


def test_generated_code_is_current(tmp_path: Path) -> None:
    fresh = {p.name: p for p in generate_module.generate(tmp_path)}
    committed = {p.name: p for p in GENERATED_DIR.iterdir() if p.is_file() and p.suffix != ".pyc"}
    committed.pop("py.typed", None)  # not generated; tolerated if someone adds one

    problems = {
        "missing": sorted(fresh.keys() - committed.keys()),
        "not produced by any proto": sorted(committed.keys() - fresh.keys()),
        "differs": sorted(
            name
            for name in fresh.keys() & committed.keys()
            if fresh[name].read_bytes() != committed[name].read_bytes()
        ),
    }
    found = {kind: names for kind, names in problems.items() if names}
    assert not found, f"{STALE_HINT} ({found})"


def test_every_generated_file_has_its_proto() -> None:
    protos = generate_module.proto_files()
    assert protos, "no .proto files found"
    expected = generate_module.generated_names(protos)
    orphans = sorted(
        p.name
        for p in GENERATED_DIR.iterdir()
        if p.name.endswith(generate_module.GENERATED_SUFFIXES) and p.name not in expected
    )
    assert not orphans, f"generated files without a proto in protos/act/v1: {orphans}"
    assert (GENERATED_DIR / "__init__.py").is_file()


def test_generate_removes_files_of_deleted_protos(tmp_path: Path) -> None:
    package_dir = tmp_path / "act" / "v1"
    package_dir.mkdir(parents=True)
    stale = package_dir / "gone_pb2.py"
    stale.write_text("# from a deleted proto\n")
    generate_module.generate(tmp_path)
    assert not stale.exists()


# --- (b) round trips -------------------------------------------------------------------


def _timestamp(seconds: int) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(datetime.fromtimestamp(seconds, tz=UTC))
    return ts


def _item() -> types_pb2.Item:
    return types_pb2.Item(
        item_id="item-1",
        text="what is shown?",
        images=[
            types_pb2.Image(data=b"\x89PNG\r\n\x1a\n\x00\x01", mime_type="image/png"),
            types_pb2.Image(uri="s3://bucket/img.jpg", mime_type="image/jpeg"),
        ],
        question="Is there a fracture?",
        metadata={"source": "unit-test", "lang": "en"},
        event_time=_timestamp(1_700_000_000),
        schema_id="vqa-rad",
        content_hash="ab" * 32,
    )


def _annotation() -> types_pb2.Annotation:
    return types_pb2.Annotation(
        item_id="item-1",
        label="yes",
        distribution=[
            types_pb2.LabelScore(label="yes", probability=0.75),
            types_pb2.LabelScore(label="no", probability=0.25),
        ],
        rationale="visible discontinuity",
        stated_confidence=0.8,
        model=types_pb2.ModelRef(backend="vllm", model="m-a", revision="r1"),
        prompt=types_pb2.PromptRef(strategy_id="annotate.cot", version="1"),
        schema_id="vqa-rad",
        schema_version=3,
        usage=types_pb2.Usage(prompt_tokens=120, completion_tokens=30, latency_seconds=0.25),
        annotated_time=_timestamp(1_700_000_001),
    )


def _criticism() -> types_pb2.Criticism:
    return types_pb2.Criticism(
        item_id="item-1",
        label="yes",
        error_probability=0.125,
        rationale="the line may be an artefact",
        model=types_pb2.ModelRef(backend="openai", model="m-c"),
        prompt=types_pb2.PromptRef(strategy_id="criticize.blackbox.cot", version="2"),
        usage=types_pb2.Usage(prompt_tokens=200, completion_tokens=50, latency_seconds=0.5),
        criticized_time=_timestamp(1_700_000_002),
    )


def test_item_round_trip() -> None:
    item = _item()
    parsed = types_pb2.Item.FromString(item.SerializeToString())
    assert parsed == item
    assert [img.WhichOneof("source") for img in parsed.images] == ["data", "uri"]
    assert parsed.images[0].data.startswith(b"\x89PNG")
    assert parsed.HasField("question")
    assert dict(parsed.metadata) == {"source": "unit-test", "lang": "en"}
    assert parsed.event_time.ToDatetime(tzinfo=UTC) == datetime.fromtimestamp(1_700_000_000, tz=UTC)
    # Optional fields keep presence: an item without a question says so.
    assert not types_pb2.Item(item_id="x").HasField("question")


def test_decision_round_trip_with_nested_records() -> None:
    decision = bus_pb2.Decision(
        item_id="item-1",
        annotation=_annotation(),
        criticism=_criticism(),
        eps=0.125,
        pi=0.5,
        delta=True,
        sampler="stream",
        transform_id="thre(rho=0)",
        budget_id="budget-daily",
        seed_id="seed-2025",
        capped=False,
        audit=True,
        window_id="2025-01-01T00",
        content_ref="act.items.v1/0/42",
        decided_time=_timestamp(1_700_000_003),
        item=_item(),
    )
    parsed = bus_pb2.Decision.FromString(decision.SerializeToString())
    assert parsed == decision
    assert parsed.annotation.distribution[0].probability == 0.75
    assert parsed.annotation.HasField("stated_confidence")
    assert parsed.criticism.error_probability == 0.125
    assert parsed.item.images[1].uri == "s3://bucket/img.jpg"
    # Without the embedded item the record is still complete, and says the item is absent.
    slim = bus_pb2.Decision(item_id="item-1", content_ref="act.items.v1/0/42")
    assert not bus_pb2.Decision.FromString(slim.SerializeToString()).HasField("item")


def test_review_and_dead_letter_round_trip() -> None:
    review = bus_pb2.Review(
        item_id="item-1",
        label="no",
        unsure=True,
        reviewer="alice",
        reviewed_time=_timestamp(1_700_000_004),
        revision=2,
        previous_label="yes",
        note="second look",
    )
    assert bus_pb2.Review.FromString(review.SerializeToString()) == review
    letter = bus_pb2.DeadLetter(
        source_topic="act.items.v1",
        partition=3,
        offset=2**40,
        key=b"item-1",
        payload=b"\xff\x00not a protobuf",
        reason="cannot parse Item",
        error_type="DecodeError",
        service="sampler",
        failed_time=_timestamp(1_700_000_005),
    )
    assert bus_pb2.DeadLetter.FromString(letter.SerializeToString()) == letter


def test_result_wrappers_hold_either_result_or_error() -> None:
    ok = types_pb2.AnnotationResult(annotation=_annotation())
    failed = types_pb2.AnnotationResult(
        error=types_pb2.Error(item_id="item-2", code=3, message="empty item", detail="text")
    )
    response = annotator_pb2.AnnotateBatchResponse(results=[ok, failed])
    parsed = annotator_pb2.AnnotateBatchResponse.FromString(response.SerializeToString())
    assert [r.WhichOneof("result") for r in parsed.results] == ["annotation", "error"]
    assert parsed.results[1].error.code == 3
    assert not parsed.results[1].HasField("annotation")

    # Setting one member of the oneof clears the other.
    result = types_pb2.CriticismResult(criticism=_criticism())
    result.error.CopyFrom(types_pb2.Error(item_id="item-1", code=14, message="backend down"))
    assert result.WhichOneof("result") == "error"
    assert not result.HasField("criticism")
    assert types_pb2.CriticismResult().WhichOneof("result") is None


def test_requests_carry_schema_and_strategy() -> None:
    schema = types_pb2.LabelSchema(
        schema_id="vqa-rad",
        version=3,
        labels=[types_pb2.Label(name="yes", description="present"), types_pb2.Label(name="no")],
        instructions="Answer the question about the image.",
        examples=[types_pb2.FewShotExample(item=_item(), label="yes", rationale="clear")],
    )
    request = criticizer_pb2.CriticizeBatchRequest(
        items=[criticizer_pb2.AnnotatedItem(item=_item(), annotation=_annotation())],
        schema=schema,
        prompt_strategy="criticize.blackbox.devil",
    )
    parsed = criticizer_pb2.CriticizeBatchRequest.FromString(request.SerializeToString())
    assert parsed == request
    assert [label.name for label in parsed.schema.labels] == ["yes", "no"]
    assert parsed.schema.examples[0].item.item_id == "item-1"


# --- (c) services ----------------------------------------------------------------------


def _method_kinds(file: FileDescriptor, service: str) -> dict[str, tuple[str, str, bool, bool]]:
    methods = file.services_by_name[service].methods
    return {
        m.name: (
            m.input_type.full_name,
            m.output_type.full_name,
            m.client_streaming,
            m.server_streaming,
        )
        for m in methods
    }


@pytest.mark.parametrize(
    ("file", "service", "expected"),
    [
        (
            annotator_pb2.DESCRIPTOR,
            "Annotator",
            {
                "Annotate": ("act.v1.AnnotateRequest", "act.v1.AnnotateResponse", False, False),
                "AnnotateBatch": (
                    "act.v1.AnnotateBatchRequest",
                    "act.v1.AnnotateBatchResponse",
                    False,
                    False,
                ),
                "AnnotateStream": ("act.v1.AnnotateRequest", "act.v1.AnnotationResult", True, True),
                "GetInfo": ("act.v1.GetInfoRequest", "act.v1.ServiceInfo", False, False),
            },
        ),
        (
            criticizer_pb2.DESCRIPTOR,
            "Criticizer",
            {
                "Criticize": ("act.v1.CriticizeRequest", "act.v1.CriticizeResponse", False, False),
                "CriticizeBatch": (
                    "act.v1.CriticizeBatchRequest",
                    "act.v1.CriticizeBatchResponse",
                    False,
                    False,
                ),
                "CriticizeStream": (
                    "act.v1.CriticizeRequest",
                    "act.v1.CriticismResult",
                    True,
                    True,
                ),
                "GetInfo": ("act.v1.GetInfoRequest", "act.v1.ServiceInfo", False, False),
            },
        ),
        (
            review_queue_pb2.DESCRIPTOR,
            "ReviewQueue",
            {
                "Claim": ("act.v1.ClaimRequest", "act.v1.ClaimResponse", False, False),
                "Submit": ("act.v1.SubmitRequest", "act.v1.SubmitResponse", False, False),
                "Release": ("act.v1.ReleaseRequest", "act.v1.ReleaseResponse", False, False),
                "Stats": ("act.v1.StatsRequest", "act.v1.QueueStats", False, False),
            },
        ),
    ],
)
def test_service_methods(
    file: FileDescriptor, service: str, expected: dict[str, tuple[str, str, bool, bool]]
) -> None:
    assert file.package == "act.v1"
    assert _method_kinds(file, service) == expected


def test_grpc_stubs_and_servicers_exist() -> None:
    # The generated gRPC modules import and expose client stubs and server base classes.
    for module, service in [
        (annotator_pb2_grpc, "Annotator"),
        (criticizer_pb2_grpc, "Criticizer"),
        (review_queue_pb2_grpc, "ReviewQueue"),
    ]:
        assert hasattr(module, f"{service}Stub")
        assert hasattr(module, f"{service}Servicer")
        assert hasattr(module, f"add_{service}Servicer_to_server")
    assert info_pb2.ServiceInfo.DESCRIPTOR.full_name == "act.v1.ServiceInfo"
