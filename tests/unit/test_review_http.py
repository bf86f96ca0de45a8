"""Tests of the review queue's HTTP API and web UI (act.review.http) over a SQLite store:
token auth on every API call, claim -> review with its audit trail, the status codes of wrong
claims, expired leases and bad labels, and that item content stays data (JSON text, never
markup in the page)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from act.inference.types import (
    Annotation,
    Criticism,
    Image,
    Item,
    Label,
    LabelSchema,
    ModelRef,
    PromptRef,
    annotation_to_proto,
    criticism_to_proto,
    item_to_proto,
    schema_to_proto,
)
from act.review import ReviewStore
from act.review.http import STATIC_DIR, ApiOptions, create_app
from act.v1 import bus_pb2

SCHEMA_ID = "moderation"
LABELS = ("ok", "spam", "abuse")
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def schema() -> LabelSchema:
    return LabelSchema(
        schema_id=SCHEMA_ID,
        labels=tuple(Label(name=n, description=f"{n} content") for n in LABELS),
        instructions="Label the post. <b>not bold</b>",
    )


def decision(i: int, text: str, *, delta: bool = True, images: tuple[Image, ...] = ()):
    item_id = f"item-{i}"
    item = item_to_proto(Item(item_id=item_id, text=text, images=images, question="Is it spam?"))
    item.schema_id = SCHEMA_ID
    annotation = annotation_to_proto(
        Annotation(
            item_id=item_id,
            label="spam",
            label_probabilities={"spam": 0.7, "ok": 0.3},
            model=ModelRef(backend="embedded", model="m"),
            prompt=PromptRef(strategy_id="annotate.direct", version="1"),
            schema_id=SCHEMA_ID,
            schema_version=1,
        )
    )
    criticism = criticism_to_proto(
        Criticism(
            item_id=item_id,
            label="spam",
            error_probability=0.4,
            model=ModelRef(backend="embedded", model="c"),
            prompt=PromptRef(strategy_id="criticize.direct", version="1"),
        )
    )
    out = bus_pb2.Decision(
        item_id=item_id,
        eps=0.4,
        pi=0.5 if delta else 0.1,
        delta=delta,
        annotation=annotation,
        criticism=criticism,
        item=item,
        budget_id="b",
        window_id="w",
    )
    out.decided_time.FromDatetime(T0 - timedelta(minutes=10) + timedelta(seconds=i))
    return out


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock):
    with ReviewStore(f"sqlite:///{tmp_path / 'review.db'}", clock=clock) as store:
        store.register_schema(schema_to_proto(schema()))
        store.upsert_decision(decision(1, "<script>alert(1)</script>", images=(Image(data=PNG),)))
        store.upsert_decision(decision(2, "second"))
        store.upsert_decision(decision(3, "not drawn", delta=False))
        yield store


@pytest.fixture
def published() -> list[bus_pb2.Review]:
    return []


@pytest.fixture
def client(store: ReviewStore, published: list[bus_pb2.Review]):
    app = create_app(store, ApiOptions(max_claim_items=10), on_review=published.append)
    with TestClient(app) as client:
        yield client


@pytest.fixture
def token(store: ReviewStore) -> str:
    return store.add_reviewer("alice")


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def claim(client: TestClient, token: str, **body: object) -> list[dict]:
    response = client.post("/api/claim", json={"max_items": 1, **body}, headers=auth(token))
    assert response.status_code == 200, response.text
    return response.json()["items"]


# ----------------------------------------------------------------------------- auth


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/claim"),
        ("POST", "/api/items/item-1/review"),
        ("POST", "/api/items/item-1/release"),
        ("GET", "/api/stats"),
        ("GET", "/api/me"),
    ],
)
@pytest.mark.parametrize("header", [None, "Bearer actr_not-a-token", "Basic abc", "Bearer "])
def test_api_refuses_missing_or_bad_token(
    client: TestClient, token: str, method: str, path: str, header: str | None
) -> None:
    headers = {"Authorization": header} if header is not None else {}
    response = client.request(method, path, json={}, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "UNAUTHENTICATED"
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_deactivated_reviewer_is_refused(client: TestClient, store: ReviewStore, token: str):
    assert client.get("/api/me", headers=auth(token)).json()["reviewer"] == "alice"
    store.deactivate_reviewer("alice")
    assert client.get("/api/me", headers=auth(token)).status_code == 401


def test_health_and_page_need_no_token(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    page = client.get("/")
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "unsafe-inline" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert client.get("/static/app.js").status_code == 200


# ----------------------------------------------------------------------------- the flow


def test_claim_review_stores_label_with_audit_trail(
    client: TestClient, store: ReviewStore, token: str, published: list[bus_pb2.Review]
) -> None:
    [item] = claim(client, token, lease_seconds=60)
    assert item["item_id"] == "item-1"
    assert item["question"] == "Is it spam?"
    assert [lb["name"] for lb in item["schema"]["labels"]] == list(LABELS)
    assert item["schema"]["labels"][1]["description"] == "spam content"
    assert item["schema"]["instructions"].startswith("Label the post.")
    assert item["images"][0]["src"].startswith("data:image/png;base64,")
    assert "machine_label" not in item  # hidden by default: no anchoring
    assert store.get_record("item-1").state == "claimed"

    response = client.post(
        "/api/items/item-1/review",
        json={"claim_id": item["claim_id"], "label": "ok", "unsure": True, "note": "hm"},
        headers=auth(token),
    )
    assert response.status_code == 200, response.text
    review = response.json()["review"]
    assert (review["label"], review["unsure"], review["reviewer"], review["revision"]) == (
        "ok",
        True,
        "alice",
        1,
    )
    record = store.get_record("item-1")
    assert (record.state, record.human_label, record.unsure, record.reviewer) == (
        "reviewed",
        "ok",
        True,
        "alice",
    )
    [entry] = store.audit_trail("item-1")
    assert (entry.action, entry.label, entry.reviewer, entry.note) == (
        "review",
        "ok",
        "alice",
        "hm",
    )
    assert [r.item_id for r in published] == ["item-1"]
    assert published[0].label == "ok"

    stats = client.get("/api/stats", headers=auth(token)).json()
    assert (stats["selected"], stats["reviewed"], stats["pending"]) == (2, 1, 1)


def test_a_reviewer_sees_their_own_changes_in_the_stats(store: ReviewStore, token: str) -> None:
    """Counts are reused between calls (here for ever), but never past the caller's own claim,
    review or release; another reviewer's reads reuse them."""
    app = create_app(store, ApiOptions(stats_reuse_factor=1e12))
    other = store.add_reviewer("bob")
    with TestClient(app) as client:

        def counts(reviewer_token: str) -> tuple[int, int, int]:
            stats = client.get("/api/stats", headers=auth(reviewer_token)).json()
            return stats["pending"], stats["claimed"], stats["reviewed"]

        assert counts(token) == (2, 0, 0)
        [item] = claim(client, token)
        assert counts(other) == (2, 0, 0)  # bob changed nothing: the count is reused
        assert counts(token) == (1, 1, 0)
        client.post(
            f"/api/items/{item['item_id']}/review",
            json={"claim_id": item["claim_id"], "label": "ok"},
            headers=auth(token),
        ).raise_for_status()
        assert counts(token) == (1, 0, 1)
        [item] = claim(client, token)
        assert counts(token) == (0, 1, 1)
        client.post(
            f"/api/items/{item['item_id']}/release",
            json={"claim_id": item["claim_id"]},
            headers=auth(token),
        ).raise_for_status()
        assert counts(token) == (1, 0, 1)


def test_machine_label_shown_when_configured(store: ReviewStore, token: str) -> None:
    app = create_app(store, ApiOptions(show_machine_label=True))
    with TestClient(app) as client:
        [item] = claim(client, token)
    assert item["machine_label"] == "spam"


def test_release_puts_item_back_with_audit(
    client: TestClient, store: ReviewStore, token: str
) -> None:
    [item] = claim(client, token)
    url = f"/api/items/{item['item_id']}/release"
    body = {"claim_id": item["claim_id"], "reason": "skipped"}
    assert client.post(url, json=body, headers=auth(token)).json() == {"released": True}
    assert client.post(url, json=body, headers=auth(token)).json() == {"released": False}
    assert store.get_record(item["item_id"]).state == "pending"
    assert [(e.action, e.note) for e in store.audit_trail(item["item_id"])] == [
        ("release", "skipped")
    ]


# ----------------------------------------------------------------------------- errors


def test_wrong_claim_is_conflict(client: TestClient, token: str) -> None:
    claim(client, token)
    response = client.post(
        "/api/items/item-1/review", json={"claim_id": "bogus", "label": "ok"}, headers=auth(token)
    )
    assert response.status_code == 409
    assert response.json()["error"]["type"] == "ClaimNotFound"


def test_other_reviewers_claim_is_forbidden(
    client: TestClient, store: ReviewStore, token: str
) -> None:
    [item] = claim(client, token)
    bob = store.add_reviewer("bob")
    response = client.post(
        "/api/items/item-1/review",
        json={"claim_id": item["claim_id"], "label": "ok"},
        headers=auth(bob),
    )
    assert response.status_code == 403
    assert store.get_record("item-1").state == "claimed"


def test_expired_lease_is_gone(client: TestClient, clock: Clock, token: str) -> None:
    [item] = claim(client, token, lease_seconds=30)
    clock.now += timedelta(seconds=31)
    response = client.post(
        "/api/items/item-1/review",
        json={"claim_id": item["claim_id"], "label": "ok"},
        headers=auth(token),
    )
    assert response.status_code == 410
    assert "expired" in response.json()["error"]["message"]


def test_bad_label_is_unprocessable(client: TestClient, store: ReviewStore, token: str) -> None:
    [item] = claim(client, token)
    response = client.post(
        "/api/items/item-1/review",
        json={"claim_id": item["claim_id"], "label": "nope"},
        headers=auth(token),
    )
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "InvalidLabel" and "allowed: ok, spam, abuse" in error["message"]
    assert store.get_record("item-1").state == "claimed"


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'{"max_items": "two"}',
        b'{"max_items": 0}',
        b'{"max_items": 11}',
        b'{"lease_seconds": -1}',
        b'{"lease_seconds": 99999}',
        b'{"unknown": 1}',
    ],
)
def test_bad_claim_body_is_unprocessable(client: TestClient, token: str, body: bytes) -> None:
    response = client.post(
        "/api/claim", content=body, headers={**auth(token), "content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "INVALID_ARGUMENT"


def test_unknown_and_unqueued_items(client: TestClient, token: str) -> None:
    body = {"claim_id": "c", "label": "ok"}
    missing = client.post("/api/items/nope/review", json=body, headers=auth(token))
    assert missing.status_code == 404
    not_drawn = client.post("/api/items/item-3/review", json=body, headers=auth(token))
    assert not_drawn.status_code == 409
    assert not_drawn.json()["error"]["type"] == "NotQueued"
    no_claim = client.post("/api/items/item-2/review", json={"label": "ok"}, headers=auth(token))
    assert no_claim.status_code == 422


def test_too_large_body_is_refused(client: TestClient, token: str) -> None:
    response = client.post(
        "/api/items/item-1/review",
        content=b'{"note": "' + b"x" * 100_000 + b'"}',
        headers={**auth(token), "content-type": "application/json"},
    )
    assert response.status_code == 413


# ----------------------------------------------------------------------------- escaping


def test_markup_in_content_is_returned_as_json_text(client: TestClient, token: str) -> None:
    response = client.post("/api/claim", json={"max_items": 1}, headers=auth(token))
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["items"][0]["text"] == "<script>alert(1)</script>"


def test_page_never_parses_content_as_markup() -> None:
    script = (STATIC_DIR / "app.js").read_text()
    code = re.sub(r"//[^\n]*", "", script)  # comments may mention what is avoided
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in code, sink
    assert ".textContent = item.text" in code
    page = (STATIC_DIR / "index.html").read_text()
    # No inline script or style: the CSP (default-src 'self') would block them.
    assert re.search(r"<script(?![^>]*\bsrc=)", page) is None
    assert "<style" not in page and " style=" not in page and "onclick" not in page.lower()


def test_metrics_report_queue_depth_agreement_time_to_review_and_window_budget(
    client: TestClient, token: str
) -> None:
    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        response = client.get("/metrics")  # no token: Prometheus scrapes it
        assert response.status_code == 200
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }

    before = scrape()
    assert before[("act_review_queue_depth", (("state", "pending"),))] == 2
    assert before[("act_review_queue_depth", (("state", "not_selected"),))] == 1
    assert ("act_review_agreement_ratio", ()) not in before  # nothing reviewed yet
    assert before[("act_review_first_reviews_last_hour", ())] == 0
    assert not [name for name, _ in before if name == "act_review_time_to_review_seconds"]
    [item] = claim(client, token, lease_seconds=60)
    response = client.post(
        f"/api/items/{item['item_id']}/review",
        json={"claim_id": item["claim_id"], "label": "spam"},
        headers=auth(token),
    )
    assert response.status_code == 200, response.text
    after = scrape()
    assert after[("act_review_queue_depth", (("state", "reviewed"),))] == 1
    assert after[("act_review_agreement_ratio", ())] == 1.0  # the machine said spam too
    # Item 1 was decided at T0 - 10 min + 1 s and reviewed now, at T0.
    assert after[("act_review_first_reviews_last_hour", ())] == 1
    for quantile in ("0.5", "0.9", "0.99"):
        key = ("act_review_time_to_review_seconds", (("quantile", quantile),))
        assert after[key] == 599.0
    selected = [v for (name, _), v in after.items() if name == "act_review_budget_selected"]
    reviewed = [v for (name, _), v in after.items() if name == "act_review_budget_reviewed"]
    assert sum(selected) == 2 and sum(reviewed) == 1
    # Per window, the labelled reviews and those that agree with the machine.
    [item] = claim(client, token, lease_seconds=60)
    client.post(
        f"/api/items/{item['item_id']}/review",
        json={"claim_id": item["claim_id"], "label": "ok"},
        headers=auth(token),
    ).raise_for_status()
    final = scrape()
    for name, value in (("act_review_budget_labelled", 2), ("act_review_budget_agreeing", 1)):
        assert sum(v for (metric, _), v in final.items() if metric == name) == value
