"""Tests of act.review.store on SQLite (the embedded default): decisions are idempotent by item
id, only delta = 1 items are queued, claims are leases that expire, reviews keep an audit trail
with revisions, reviewer tokens are stored hashed, and the ACT export reads back from Parquet.

The same behaviours run on PostgreSQL in tests/integration/test_review_store_pg.py.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from act.review import (
    LATEST_VERSION,
    ClaimExpired,
    ClaimNotFound,
    ClaimNotYours,
    ClaimRequired,
    Conflict,
    DecisionConflict,
    InvalidArgument,
    InvalidDecision,
    InvalidLabel,
    NotQueued,
    ReviewerExists,
    ReviewStore,
    RevisionConflict,
    SchemaVersionError,
    UnknownItem,
    UnknownReviewer,
    UnknownSchema,
    current_version,
    migrate,
    normalize_url,
)
from act.review import tables as current_tables
from act.review.store import decision_row
from act.v1 import bus_pb2, types_pb2

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SCHEMA_ID = "act-moderation"
LABELS = ("ok", "spam", "abuse")


class FakeClock:
    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def make_decision(
    i: int,
    *,
    delta: bool = True,
    eps: float = 0.4,
    pi: float = 0.5,
    label: str = "spam",
    capped: bool = False,
    window: str = "w1",
    embed_item: bool = True,
) -> bus_pb2.Decision:
    item_id = f"item-{i:05d}"
    decision = bus_pb2.Decision(
        item_id=item_id,
        eps=eps,
        pi=pi,
        delta=delta,
        sampler="stream",
        transform_id="thre(rho=0)",
        budget_id="budget-a",
        seed_id="key-1",
        capped=capped,
        audit=i % 7 == 0,
        window_id=window,
        content_ref=f"act.items.v1/0/{i}",
    )
    annotation = decision.annotation
    annotation.item_id = item_id
    annotation.label = label
    annotation.schema_id = SCHEMA_ID
    annotation.schema_version = 1
    annotation.model.backend = "embedded"
    annotation.model.model = "minilm-knn"
    annotation.model.revision = "r1"
    annotation.prompt.strategy_id = "annotate.direct"
    annotation.prompt.version = "2"
    annotation.distribution.add(label=label, probability=0.75)
    annotation.distribution.add(label="ok", probability=0.25)
    annotation.rationale = "looks like an advert"
    criticism = decision.criticism
    criticism.item_id = item_id
    criticism.label = label
    criticism.error_probability = eps
    criticism.model.backend = "embedded"
    criticism.model.model = "minilm-critic"
    criticism.prompt.strategy_id = "criticize.blackbox.direct"
    criticism.prompt.version = "1"
    decision.decided_time.FromDatetime(T0 - timedelta(hours=1) + timedelta(seconds=i))
    if embed_item:
        decision.item.item_id = item_id
        decision.item.text = f"buy cheap watches #{i}"
        decision.item.schema_id = SCHEMA_ID
        decision.item.content_hash = f"{i:064x}"
    return decision


def make_schema() -> types_pb2.LabelSchema:
    schema = types_pb2.LabelSchema(schema_id=SCHEMA_ID, version=1, instructions="Moderate.")
    for name in LABELS:
        schema.labels.add(name=name, description=f"{name} content")
    return schema


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> ReviewStore:
    review_store = ReviewStore(f"sqlite:///{tmp_path / 'review.db'}", clock=clock)
    review_store.register_schema(make_schema())
    yield review_store
    review_store.close()


# ----------------------------------------------------------------------------- decisions


def test_upsert_is_idempotent_by_item_id(store: ReviewStore) -> None:
    decision = make_decision(1)
    assert store.upsert_decision(decision) is True
    before = store.get_record("item-00001")
    assert store.upsert_decision(decision) is False
    # A redelivery whose rationale and timestamps differ is still the same decision.
    again = make_decision(1)
    again.annotation.rationale = "a retried call explained it differently"
    again.decided_time.FromDatetime(T0)
    assert store.upsert_decision(again) is False
    after = store.get_record("item-00001")
    assert after == before
    assert after.decision == decision
    assert after.decision.item.text == "buy cheap watches #1"
    assert store.stats().decisions == 1


def test_a_differing_redelivery_is_a_conflict_and_changes_nothing(store: ReviewStore) -> None:
    store.upsert_decision(make_decision(1, pi=0.5))
    with pytest.raises(DecisionConflict) as caught:
        store.upsert_decision(make_decision(1, pi=0.9))
    assert caught.value.differences == {"pi": (0.5, 0.9)}
    assert caught.value.code == "ABORTED"
    assert "pi: stored 0.5, received 0.9" in str(caught.value)
    assert store.get_record("item-00001").pi == 0.5


def test_a_reviewed_record_is_never_overwritten_by_a_redelivery(store: ReviewStore) -> None:
    store.upsert_decision(make_decision(1))
    [claimed] = store.claim("alice")
    store.submit("item-00001", claimed.claim_id, "alice", "ok")
    with pytest.raises(DecisionConflict):
        store.upsert_decision(make_decision(1, delta=False, pi=0.2))
    record = store.get_record("item-00001")
    assert (record.state, record.human_label, record.delta, record.pi) == (
        "reviewed",
        "ok",
        True,
        0.5,
    )


def test_batch_upsert_reports_each_decision(store: ReviewStore) -> None:
    store.upsert_decisions([make_decision(1), make_decision(2)])
    bad_pi = make_decision(5, pi=1.5)
    no_label = make_decision(6)
    no_label.annotation.label = ""
    drawn_with_zero_pi = make_decision(7, pi=0.0)
    nan_probability = make_decision(8)
    nan_probability.annotation.distribution[0].probability = float("nan")
    result = store.upsert_decisions(
        [
            make_decision(1),  # replay: unchanged
            make_decision(2, label="abuse"),  # conflict
            make_decision(3),
            make_decision(3),  # duplicate inside the batch
            make_decision(4, delta=False),
            make_decision(4, delta=False, eps=0.9),  # conflicting duplicate inside the batch
            bad_pi,
            no_label,
            drawn_with_zero_pi,
            nan_probability,
        ]
    )
    assert result.inserted == ("item-00003", "item-00004")
    assert sorted(result.unchanged) == ["item-00001", "item-00003"]
    assert sorted(c.item_id for c in result.conflicts) == ["item-00002", "item-00004"]
    assert {c.item_id: c.differences for c in result.conflicts} == {
        "item-00002": {"machine_label": ("spam", "abuse")},
        "item-00004": {"eps": (0.4, 0.9)},
    }
    reasons = {e.item_id: e.reason for e in result.invalid}
    assert set(reasons) == {"item-00005", "item-00006", "item-00007", "item-00008"}
    assert "pi must be a number in [0, 1]" in reasons["item-00005"]
    assert "no annotation label" in reasons["item-00006"]
    assert "delta = 1 with pi = 0" in reasons["item-00007"]
    assert "P(spam)" in reasons["item-00008"]
    assert len(result.rejected) == 6
    assert store.stats().decisions == 4
    with pytest.raises(InvalidDecision, match="item 'item-00005'"):
        store.upsert_decision(bad_pi)


def test_decision_validation(store: ReviewStore) -> None:
    wrong_item = make_decision(1)
    wrong_item.criticism.item_id = "other"
    capped_but_drawn = make_decision(2, capped=True, pi=0.0)
    nul = make_decision(3)
    nul.budget_id = "a\x00b"
    too_long = make_decision(4)
    too_long.annotation.label = too_long.criticism.label = "x" * 201
    negative_nanos = make_decision(6)
    negative_nanos.decided_time.nanos = -1
    after_year_9999 = make_decision(7)
    after_year_9999.decided_time.seconds = 253_402_300_800
    for decision, message in (
        (wrong_item, "criticism is for item 'other'"),
        (capped_but_drawn, "delta = 1 with pi = 0"),
        (nul, "NUL"),
        (too_long, "longer than 200"),
        (negative_nanos, "decided_time is not a valid timestamp"),
        (after_year_9999, "decided_time is not a valid timestamp"),
        (bus_pb2.Decision(), "item_id is empty"),
    ):
        with pytest.raises(InvalidDecision, match=message):
            store.upsert_decision(decision)
    # Capped items (pi forced to 0 by the pacer) are stored, not queued.
    assert store.upsert_decision(make_decision(5, capped=True, delta=False, pi=0.0))
    assert store.stats().capped == 1


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [(1_796_123_389, 264_723_999), (-62_135_596_800, 0), (253_402_300_799, 999_999_999), (-1, 5)],
)
def test_decided_at_is_the_decisions_timestamp_in_utc(seconds: int, nanos: int) -> None:
    decision = make_decision(1)
    decision.decided_time.seconds = seconds
    decision.decided_time.nanos = nanos
    row = decision_row(decision, received_at=T0)
    assert row["decided_at"] == decision.decided_time.ToDatetime(tzinfo=UTC)
    assert row["decided_at"].tzinfo is UTC


def test_an_unset_decision_time_is_the_receive_time() -> None:
    decision = make_decision(1)
    decision.ClearField("decided_time")
    assert decision_row(decision, received_at=T0)["decided_at"] == T0


def test_a_decision_without_an_embedded_item_keeps_its_content_ref(store: ReviewStore) -> None:
    store.upsert_decision(make_decision(1, embed_item=False))
    [claimed] = store.claim("alice")
    assert not claimed.decision.HasField("item")
    assert claimed.decision.content_ref == "act.items.v1/0/1"


# ----------------------------------------------------------------------------- the queue


def test_only_drawn_items_are_queued(store: ReviewStore) -> None:
    store.upsert_decisions([make_decision(i, delta=i % 3 == 0) for i in range(30)])
    claimed = store.claim("alice", max_items=100)
    assert sorted(c.item_id for c in claimed) == [f"item-{i:05d}" for i in range(0, 30, 3)]
    assert store.claim("bob") == []
    with pytest.raises(NotQueued, match="delta = 0"):
        store.submit("item-00001", None, "alice", "ok", expected_revision=0)
    stats = store.stats()
    assert (stats.decisions, stats.selected, stats.not_selected) == (30, 10, 20)
    assert (stats.pending, stats.claimed, stats.active_reviewers) == (0, 10, 1)


def test_claim_hands_out_the_oldest_items_with_their_schema(
    store: ReviewStore, clock: FakeClock
) -> None:
    store.upsert_decisions([make_decision(i) for i in (5, 3, 9, 1)])
    first = store.claim("alice", max_items=2, lease_seconds=60)
    assert [c.item_id for c in first] == ["item-00001", "item-00003"]
    assert len({c.claim_id for c in first}) == 1
    claimed = first[0]
    assert claimed.reviewer == "alice"
    assert claimed.lease_expires_at == clock.now + timedelta(seconds=60)
    assert claimed.decided_at == T0 - timedelta(hours=1) + timedelta(seconds=1)
    assert claimed.decision.annotation.label == "spam"
    assert claimed.decision.item.text == "buy cheap watches #1"
    assert claimed.schema is not None
    assert [label.name for label in claimed.schema.labels] == list(LABELS)
    assert [c.item_id for c in store.claim("bob", max_items=5)] == ["item-00005", "item-00009"]


def test_claim_filters_by_schema(store: ReviewStore) -> None:
    other = make_decision(2)
    other.annotation.schema_id = "digits"
    other.item.schema_id = "digits"
    store.upsert_decisions([make_decision(1), other])
    assert [c.item_id for c in store.claim("alice", schema_id="digits")] == ["item-00002"]
    assert store.claim("alice", schema_id="digits") == []
    assert store.stats(schema_id="digits").claimed == 1


def test_claim_arguments_are_checked(store: ReviewStore) -> None:
    for kwargs in ({"max_items": 0}, {"lease_seconds": 0}, {"lease_seconds": float("nan")}):
        with pytest.raises(InvalidArgument):
            store.claim("alice", **kwargs)
    with pytest.raises(InvalidArgument, match="reviewer"):
        store.claim(" ")


def test_submit_records_the_review_and_the_audit_trail(
    store: ReviewStore, clock: FakeClock
) -> None:
    store.upsert_decision(make_decision(1))
    [claimed] = store.claim("alice")
    clock.advance(30)
    review = store.submit("item-00001", claimed.claim_id, "alice", "ok", note="not an advert")
    assert (review.item_id, review.label, review.reviewer, review.revision) == (
        "item-00001",
        "ok",
        "alice",
        1,
    )
    assert (review.previous_label, review.note, review.unsure) == ("", "not an advert", False)
    assert review.reviewed_time.ToDatetime(tzinfo=UTC) == clock.now
    record = store.get_record("item-00001")
    assert (record.state, record.human_label, record.reviewer, record.revision) == (
        "reviewed",
        "ok",
        "alice",
        1,
    )
    assert record.claimed_by is None and record.lease_expires_at is None
    assert record.reviewed_at == record.first_reviewed_at == clock.now

    # A correction needs no claim but the current revision.
    clock.advance(60)
    with pytest.raises(RevisionConflict, match="expected_revision=1"):
        store.submit("item-00001", None, "carol", "abuse")
    with pytest.raises(RevisionConflict, match="at revision 1, not 0"):
        store.submit("item-00001", None, "carol", "abuse", expected_revision=0)
    correction = store.submit(
        "item-00001", None, "carol", "abuse", note="threat in the image", expected_revision=1
    )
    assert (correction.revision, correction.previous_label, correction.reviewer) == (
        2,
        "ok",
        "carol",
    )
    record = store.get_record("item-00001")
    assert (record.human_label, record.revision, record.reviewer) == ("abuse", 2, "carol")
    assert record.first_reviewed_at == clock.now - timedelta(seconds=60)
    assert record.reviewed_at == clock.now

    trail = store.audit_trail("item-00001")
    assert [(e.action, e.reviewer, e.label, e.previous_label, e.revision) for e in trail] == [
        ("review", "alice", "ok", None, 1),
        ("correction", "carol", "abuse", "ok", 2),
    ]
    assert trail[0].note == "not an advert"
    assert trail[1].at == clock.now


def test_a_retried_submit_returns_the_stored_review(store: ReviewStore) -> None:
    store.upsert_decision(make_decision(1))
    [claimed] = store.claim("alice")
    first = store.submit("item-00001", claimed.claim_id, "alice", "ok")
    assert store.submit("item-00001", claimed.claim_id, "alice", "ok") == first
    assert len(store.audit_trail("item-00001")) == 1
    with pytest.raises(Conflict, match="already recorded a different review"):
        store.submit("item-00001", claimed.claim_id, "alice", "spam")


def test_first_review_needs_the_callers_current_claim(store: ReviewStore) -> None:
    store.upsert_decisions([make_decision(1), make_decision(2)])
    with pytest.raises(UnknownItem, match="item-99999"):
        store.submit("item-99999", "x", "alice", "ok")
    with pytest.raises(ClaimRequired, match="claim it first"):
        store.submit("item-00001", None, "alice", "ok")
    [claimed] = store.claim("alice")
    with pytest.raises(ClaimNotYours, match="not claimed by reviewer 'mallory'") as caught:
        store.submit("item-00001", claimed.claim_id, "mallory", "ok")
    assert caught.value.code == "PERMISSION_DENIED"
    with pytest.raises(ClaimNotFound, match="claimed under another claim"):
        store.submit("item-00001", "forged-claim", "alice", "ok")
    with pytest.raises(ClaimNotFound, match="in the queue"):
        store.submit("item-00002", claimed.claim_id, "alice", "ok")
    with pytest.raises(RevisionConflict):
        store.submit("item-00001", claimed.claim_id, "alice", "ok", expected_revision=3)
    assert store.submit("item-00001", claimed.claim_id, "alice", "ok", expected_revision=0)


def test_labels_are_checked_against_the_schema(store: ReviewStore) -> None:
    store.upsert_decisions([make_decision(1), make_decision(2), make_decision(3)])
    claims = {c.item_id: c.claim_id for c in store.claim("alice", max_items=3)}
    with pytest.raises(InvalidLabel, match="allowed: ok, spam, abuse") as caught:
        store.submit("item-00001", claims["item-00001"], "alice", "ham")
    assert caught.value.code == "INVALID_ARGUMENT"
    with pytest.raises(InvalidLabel, match="empty"):
        store.submit("item-00001", claims["item-00001"], "alice", "")
    # Unsure reviewers may give no label.
    review = store.submit("item-00001", claims["item-00001"], "alice", "", unsure=True)
    assert (review.label, review.unsure) == ("", True)
    record = store.get_record("item-00001")
    assert (record.human_label, record.unsure) == (None, True)
    # An explicit label set takes precedence over the registered schema.
    review = store.submit("item-00002", claims["item-00002"], "alice", "ham", labels=["ham", "x"])
    assert review.label == "ham"
    stats = store.stats()
    assert (stats.reviewed, stats.unsure, stats.labelled) == (2, 1, 1)


def test_an_unregistered_schema_cannot_check_labels(store: ReviewStore) -> None:
    decision = make_decision(1)
    decision.annotation.schema_version = 2
    store.upsert_decision(decision)
    [claimed] = store.claim("alice")
    with pytest.raises(UnknownSchema, match="version 2"):
        store.submit("item-00001", claimed.claim_id, "alice", "ok")
    assert claimed.schema is None
    v2 = make_schema()
    v2.version = 2
    assert store.register_schema(v2) is True
    assert store.register_schema(v2) is False
    assert store.submit("item-00001", claimed.claim_id, "alice", "ok").revision == 1
    changed = make_schema()
    changed.labels.add(name="nsfw")
    with pytest.raises(Conflict, match="needs a new version"):
        store.register_schema(changed)
    assert store.labels_for(SCHEMA_ID, 1) == LABELS
    assert store.labels_for(SCHEMA_ID, 7) is None


def test_an_expired_lease_returns_the_item_to_the_queue(
    store: ReviewStore, clock: FakeClock
) -> None:
    store.upsert_decisions([make_decision(1), make_decision(2)])
    [a1] = store.claim("alice", lease_seconds=10)
    [b2] = store.claim("bob", lease_seconds=10)
    clock.advance(9.9)
    assert store.claim("carol") == []
    assert store.stats().claimed == 2
    clock.advance(0.1)  # both leases end now
    stats = store.stats()
    assert (stats.pending, stats.claimed, stats.active_reviewers) == (2, 0, 0)
    assert store.get_record("item-00001").state == "pending"
    # bob's item is not taken over yet: his claim is expired, not gone.
    with pytest.raises(ClaimExpired, match="expired at"):
        store.submit("item-00002", b2.claim_id, "bob", "ok")
    [c1] = store.claim("carol")
    assert c1.item_id == "item-00001"
    with pytest.raises(ClaimNotFound, match="another claim"):
        store.submit("item-00001", a1.claim_id, "alice", "ok")
    assert store.submit("item-00001", c1.claim_id, "carol", "ok").reviewer == "carol"
    assert store.release("item-00002", b2.claim_id, "bob") is False


def test_a_lease_expires_in_real_time(tmp_path: Path) -> None:
    with ReviewStore(f"sqlite:///{tmp_path / 'real.db'}") as real:
        real.upsert_decision(make_decision(1))
        [first] = real.claim("alice", lease_seconds=0.2)
        assert real.claim("bob") == []
        threading.Event().wait(0.3)
        [second] = real.claim("bob")
        assert second.item_id == first.item_id
        assert second.claim_id != first.claim_id


def test_release_gives_the_item_back(store: ReviewStore) -> None:
    store.upsert_decision(make_decision(1))
    [claimed] = store.claim("alice")
    with pytest.raises(ClaimNotYours):
        store.release("item-00001", claimed.claim_id, "bob")
    assert store.release("item-00001", "forged", "alice") is False
    assert store.release("item-00001", claimed.claim_id, "alice", reason="needs expert") is True
    assert store.release("item-00001", claimed.claim_id, "alice") is False
    with pytest.raises(UnknownItem):
        store.release("item-99999", claimed.claim_id, "alice")
    assert store.get_record("item-00001").state == "pending"
    [release] = store.audit_trail("item-00001")
    assert (release.action, release.reviewer, release.note, release.label) == (
        "release",
        "alice",
        "needs expert",
        None,
    )
    with pytest.raises(ClaimNotFound):
        store.submit("item-00001", claimed.claim_id, "alice", "ok")
    assert [c.item_id for c in store.claim("bob")] == ["item-00001"]


def test_concurrent_claimers_never_share_an_item(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'threads.db'}"
    with ReviewStore(url) as setup:
        setup.register_schema(make_schema())
        setup.upsert_decisions([make_decision(i) for i in range(60)])
    seen: dict[str, list[str]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def reviewer(name: str) -> None:
        try:
            with ReviewStore(url) as own:
                barrier.wait()
                mine: list[str] = []
                while claimed := own.claim(name):
                    own.submit(claimed[0].item_id, claimed[0].claim_id, name, "ok")
                    mine.append(claimed[0].item_id)
                seen[name] = mine
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=reviewer, args=(f"r{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    everything = [item for items in seen.values() for item in items]
    assert len(everything) == len(set(everything)) == 60


# ----------------------------------------------------------------------------- stats


def test_stats(store: ReviewStore, clock: FakeClock) -> None:
    store.upsert_decisions(
        [make_decision(i, delta=i < 6, pi=0.5 if i < 6 else 0.25, window="w1") for i in range(10)]
        + [make_decision(10, delta=False, pi=0.0, capped=True, window="w2")]
    )
    clock.advance(3600)  # the first decision is two hours old now
    claims = store.claim("alice", max_items=4)
    for claimed, label in zip(claims[:3], ("spam", "spam", "ok"), strict=True):
        store.submit(claimed.item_id, claimed.claim_id, "alice", label)
    stats = store.stats()
    assert (stats.decisions, stats.selected, stats.not_selected, stats.capped) == (11, 6, 5, 1)
    assert (stats.pending, stats.claimed, stats.reviewed, stats.unsure) == (2, 1, 3, 0)
    assert stats.active_reviewers == 1
    assert stats.agreement_rate == pytest.approx(2 / 3)
    # The oldest pending item is item 4, decided at T0 - 1 h + 4 s.
    assert stats.oldest_pending_age == timedelta(hours=2) - timedelta(seconds=4)
    windows = {(w.budget_id, w.window_id): w for w in stats.windows}
    w1 = windows[("budget-a", "w1")]
    assert (w1.decisions, w1.selected, w1.reviewed, w1.capped) == (10, 6, 3, 0)
    assert w1.expected == pytest.approx(6 * 0.5 + 4 * 0.25)
    w2 = windows[("budget-a", "w2")]
    assert (w2.decisions, w2.selected, w2.capped, w2.expected) == (1, 0, 1, 0.0)


def test_stats_give_the_windows_with_the_latest_decisions_in_time_order(
    store: ReviewStore, clock: FakeClock
) -> None:
    # Windows named so that their names sort otherwise than their times: w9 first, then w10,
    # w11; w9 gets one more decision after w10's.
    order = ["w9", "w10", "w9", "w11"]
    for i, window in enumerate(order):
        decision = make_decision(i, delta=True, pi=0.5, window=window)
        decision.decided_time.FromDatetime(datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=i))
        store.upsert_decisions([decision])

    def names(windows: int | None) -> list[str]:
        return [w.window_id for w in store.stats(recent_windows=windows).windows]

    assert names(2) == ["w9", "w11"]
    assert names(3) == ["w10", "w9", "w11"]
    assert sorted(names(None)) == ["w10", "w11", "w9"]
    assert names(0) == []
    assert store.stats(recent_windows=0).decisions == 4
    with pytest.raises(InvalidArgument, match="recent_windows"):
        store.stats(recent_windows=-1)


def test_review_delays_are_the_last_hours_first_reviews(
    store: ReviewStore, clock: FakeClock
) -> None:
    # Decided at T0 - 1 h + i s; item 0 first reviewed at T0, item 1 at T0 + 30 min, and
    # item 2 at T0 + 2 h; item 1 is corrected later (its first review time stays).
    store.upsert_decisions([make_decision(i) for i in range(4)])
    for i, at in ((0, 0), (1, 1800), (2, 7200)):
        clock.now = T0 + timedelta(seconds=at)
        [claimed] = store.claim("alice", max_items=1)
        assert claimed.item_id == f"item-{i:05d}"
        store.submit(claimed.item_id, claimed.claim_id, "alice", "spam")
    clock.now = T0 + timedelta(seconds=7300)
    store.submit("item-00001", None, "alice", "ok", expected_revision=1)

    # The last hour: item 2 only.
    assert store.review_delays() == [3 * 3600 - 2]
    # The last 2 h, latest first: items 2 and 1 (item 0's review is older).
    assert store.review_delays(timedelta(hours=2)) == [3 * 3600 - 2, 5400 - 1]
    assert store.review_delays(timedelta(hours=3), limit=1) == [3 * 3600 - 2]
    with pytest.raises(InvalidArgument):
        store.review_delays(timedelta(0))


def counts_over_the_records(engine: sa.Engine) -> dict[tuple[str, str, str], tuple]:
    """(decisions, selected, capped, reviewed, unsure, labelled, agree, sum(pi), latest
    decision) per window, counted over every record: what window_counts must hold."""
    c = current_tables.records.c

    def number_of(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
        return sa.func.sum(sa.case((condition, 1), else_=0))

    reviewed = c.state == "reviewed"
    query = sa.select(
        c.schema_id,
        c.budget_id,
        c.window_id,
        sa.func.count(),
        number_of(c.delta),
        number_of(c.capped),
        number_of(reviewed),
        number_of(sa.and_(reviewed, c.unsure)),
        number_of(c.human_label.is_not(None)),
        number_of(c.human_label == c.machine_label),
        sa.func.sum(c.pi),
        sa.func.max(c.decided_at),
    ).group_by(c.schema_id, c.budget_id, c.window_id)
    with engine.connect() as conn:
        return {tuple(row[:3]): tuple(row[3:]) for row in conn.execute(query)}


def kept_window_counts(engine: sa.Engine) -> dict[tuple[str, str, str], tuple]:
    w = current_tables.window_counts.c
    query = sa.select(
        w.schema_id,
        w.budget_id,
        w.window_id,
        w.decisions,
        w.selected,
        w.capped,
        w.reviewed,
        w.unsure,
        w.labelled,
        w.agree,
        w.expected,
        w.last_decided_at,
    )
    with engine.connect() as conn:
        return {tuple(row[:3]): tuple(row[3:]) for row in conn.execute(query)}


def assert_same_counts(kept: dict, counted: dict) -> None:
    assert kept.keys() == counted.keys()
    for key, (*numbers, expected, last) in counted.items():
        assert list(kept[key][:7]) == numbers, key
        assert kept[key][7] == pytest.approx(expected), key
        # SQLite returns max() over its stored text; the kept column reads back as a datetime.
        last = datetime.fromisoformat(last).replace(tzinfo=UTC) if isinstance(last, str) else last
        assert kept[key][8] == last, key


def decisions_of_two_schemas(count: int) -> list[bus_pb2.Decision]:
    """Decisions over two schemas and three windows, with varied delta, pi and capped (a
    capped decision has pi = 0 and delta = 0)."""
    decisions = []
    for i in range(count):
        capped = i % 11 == 0
        decision = make_decision(
            i,
            delta=i % 3 == 0 and not capped,
            pi=0.0 if capped else (i % 10 + 1) / 10,
            capped=capped,
            window=f"w{i % 3}",
        )
        if i % 2:
            decision.annotation.schema_id = decision.item.schema_id = "other-schema"
        decisions.append(decision)
    return decisions


def test_window_counts_follow_the_stored_records(store: ReviewStore) -> None:
    decisions = decisions_of_two_schemas(60)
    store.upsert_decisions(decisions[:25])
    # Redeliveries, a duplicate inside a batch and a conflicting decision add nothing.
    conflicting = make_decision(3, pi=0.99)
    store.upsert_decisions([*decisions[20:45], decisions[44], conflicting])
    store.upsert_decisions(decisions[40:])
    kept = kept_window_counts(store.engine)
    assert sum(counts[0] for counts in kept.values()) == 60
    assert_same_counts(kept, counts_over_the_records(store.engine))
    stats = store.stats()
    selected = [d for d in decisions if d.delta]
    assert (stats.decisions, stats.selected) == (60, len(selected))
    assert (stats.capped, stats.not_selected) == (6, 60 - len(selected))
    other = store.stats(schema_id="other-schema")
    assert (other.decisions, other.selected) == (30, sum(d.delta for d in decisions[1::2]))
    # The windows of every schema together: w0 holds i = 0, 3, ..., 57.
    w0 = next(w for w in stats.windows if w.window_id == "w0")
    assert (w0.decisions, w0.selected) == (20, sum(d.delta for d in decisions[::3]))
    assert w0.expected == pytest.approx(sum(d.pi for d in decisions[::3]))


def test_window_counts_follow_reviews_and_corrections(store: ReviewStore, clock: FakeClock) -> None:
    store.upsert_decisions(decisions_of_two_schemas(30))
    labels = iter(["spam", "ok", "", "abuse", "spam", "ok", "spam"])
    for claimed in store.claim("alice", max_items=7):
        label = next(labels)
        store.submit(
            claimed.item_id, claimed.claim_id, "alice", label, unsure=not label, labels=LABELS
        )
    assert_same_counts(kept_window_counts(store.engine), counts_over_the_records(store.engine))
    reviewed = [r for r in (store.get_record(f"item-{i:05d}") for i in range(30)) if r.revision]
    # Corrections: to the machine's label, away from it, to unsure without a label.
    for record, label in zip(reviewed[:3], ("spam", "abuse", ""), strict=True):
        store.submit(
            record.item_id,
            None,
            "bob",
            label,
            unsure=not label,
            expected_revision=record.revision,
            labels=LABELS,
        )
    assert_same_counts(kept_window_counts(store.engine), counts_over_the_records(store.engine))
    # A released claim and an expired one change no count; both are pending again.
    [released, expiring] = store.claim("carol", max_items=2)
    store.release(released.item_id, released.claim_id, "carol")
    assert store.stats().claimed == 1
    assert store.get_record(expiring.item_id).claimed_by == "carol"
    clock.advance(3600 * 24)
    stats = store.stats()
    assert (stats.reviewed, stats.claimed) == (7, 0)
    assert stats.pending == stats.selected - 7
    assert stats.labelled == sum(
        r.human_label is not None
        for r in map(store.get_record, (f"item-{i:05d}" for i in range(30)))
    )
    assert_same_counts(kept_window_counts(store.engine), counts_over_the_records(store.engine))


def test_claims_and_releases_leave_the_window_counts_alone(store: ReviewStore) -> None:
    """Pending and claimed count alike: a claim or a release writes no count (it would wait on
    the decision consumer's lock of the window's row), a review does."""
    store.upsert_decisions([make_decision(i) for i in range(3)])
    with store.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE counts_written (n INTEGER)")
        conn.exec_driver_sql(
            "CREATE TRIGGER note_counts_written AFTER UPDATE ON window_counts "
            "BEGIN INSERT INTO counts_written VALUES (1); END"
        )

    def written() -> int:
        with store.engine.connect() as conn:
            return conn.exec_driver_sql("SELECT count(*) FROM counts_written").scalar_one()

    first, second = store.claim("alice", max_items=2)
    store.release(second.item_id, second.claim_id, "alice")
    assert written() == 0
    store.submit(first.item_id, first.claim_id, "alice", "spam", labels=LABELS)
    assert written() > 0  # the old record's share out, the new one's in


def test_window_counts_follow_writers_outside_the_store(store: ReviewStore) -> None:
    """The counts are kept by triggers: an older release's writer, or an operator's SQL,
    inserting, changing or deleting records moves them too."""
    records = current_tables.records
    rows = [decision_row(d, T0) for d in decisions_of_two_schemas(20)]
    with store.engine.begin() as conn:
        conn.execute(records.insert(), rows)
        conn.execute(
            sa.update(records)
            .where(records.c.item_id.in_(["item-00003", "item-00006"]))
            .values(state="reviewed", human_label="spam", unsure=False, revision=1)
        )
        conn.execute(
            sa.update(records)
            .where(records.c.item_id == "item-00005")
            .values(window_id="moved", pi=0.75)
        )
        conn.execute(sa.delete(records).where(records.c.item_id.in_(["item-00001", "item-00009"])))
    counted = counts_over_the_records(store.engine)
    assert sum(numbers[0] for numbers in counted.values()) == 18
    assert_same_counts(kept_window_counts(store.engine), counted)


def test_migration_3_counts_the_records_stored_before_it(tmp_path: Path) -> None:
    from act.review.migrations import MIGRATIONS

    url = f"sqlite:///{tmp_path / 'older.db'}"
    decisions = decisions_of_two_schemas(40)
    with ReviewStore(url, migrate=False) as older:
        migrate(older.engine, migrations=MIGRATIONS[:2])  # a database of the previous release
        with older.engine.begin() as conn:
            conn.execute(current_tables.records.insert(), [decision_row(d, T0) for d in decisions])
            # Reviews of selected items: the machine's label, another, unsure without one.
            for i, label in ((3, "spam"), (6, "ok"), (9, None)):
                conn.execute(
                    sa.update(current_tables.records)
                    .where(current_tables.records.c.item_id == f"item-{i:05d}")
                    .values(
                        state="reviewed",
                        human_label=label,
                        unsure=label is None,
                        reviewer="alice",
                        first_reviewed_at=T0,
                        reviewed_at=T0,
                        revision=1,
                    )
                )
        assert migrate(older.engine) == [3]
        counted = counts_over_the_records(older.engine)
        assert_same_counts(kept_window_counts(older.engine), counted)
        assert sum(counts[0] for counts in counted.values()) == 40
        stats = older.stats()
        assert (stats.reviewed, stats.labelled, stats.unsure, stats.agreement_rate) == (
            3,
            2,
            1,
            0.5,
        )
    with ReviewStore(url) as upgraded:  # and keeps counting from there
        upgraded.upsert_decisions([make_decision(40 + i, delta=True) for i in range(5)])
        stats = upgraded.stats()
        assert (stats.decisions, stats.selected) == (45, sum(d.delta for d in decisions) + 5)
        assert_same_counts(
            kept_window_counts(upgraded.engine), counts_over_the_records(upgraded.engine)
        )


def test_time_to_review_gives_the_quantiles_of_the_delays() -> None:
    from act.review.store import time_to_review

    assert time_to_review([]) == {}
    quantiles = time_to_review([40.0, 10.0, 30.0, 20.0])  # linear interpolation
    assert quantiles == pytest.approx({0.5: 25.0, 0.9: 37.0, 0.99: 39.7})


def test_stats_of_an_empty_store(store: ReviewStore) -> None:
    stats = store.stats()
    assert (stats.decisions, stats.pending, stats.windows) == (0, 0, ())
    assert stats.oldest_pending_age is None and stats.agreement_rate is None


# ----------------------------------------------------------------------------- reviewers


def test_reviewer_tokens(store: ReviewStore) -> None:
    token = store.add_reviewer("alice")
    assert token.startswith("actr_") and len(token) > 40
    assert store.authenticate(token) == "alice"
    for wrong in ("", "actr_nope", token[:-1], token + "x", None):
        assert store.authenticate(wrong) is None  # type: ignore[arg-type]
    with pytest.raises(ReviewerExists):
        store.add_reviewer("alice")
    # Only the hash is stored.
    with store.engine.connect() as conn:
        stored = conn.execute(sa.select(current_tables.reviewers)).one()
    assert token not in str(tuple(stored))
    assert len(stored.token_hash) == 64
    new_token = store.rotate_token("alice")
    assert store.authenticate(token) is None
    assert store.authenticate(new_token) == "alice"
    store.deactivate_reviewer("alice")
    assert store.authenticate(new_token) is None
    assert store.authenticate(store.rotate_token("alice")) == "alice"
    with pytest.raises(UnknownReviewer):
        store.rotate_token("bob")
    with pytest.raises(UnknownReviewer):
        store.deactivate_reviewer("bob")
    with pytest.raises(InvalidArgument):
        store.add_reviewer("")


def test_deactivating_a_reviewer_returns_their_items_to_the_queue(
    store: ReviewStore, clock: FakeClock
) -> None:
    store.add_reviewer("alice")
    store.add_reviewer("bob")
    store.upsert_decisions([make_decision(i) for i in range(5)])
    held = store.claim("alice", max_items=2)
    [expired] = store.claim("alice", max_items=1, lease_seconds=10)
    [bobs] = store.claim("bob", max_items=1)
    store.submit(held[0].item_id, held[0].claim_id, "alice", "spam")
    clock.advance(60)  # alice's short lease has run out: nothing of hers to give back there
    assert store.deactivate_reviewer("alice") == 1
    record = store.get_record(held[1].item_id)
    assert (record.state, record.claimed_by) == ("pending", None)
    [release] = store.audit_trail(held[1].item_id)
    assert (release.action, release.reviewer, release.note) == (
        "release",
        "alice",
        "reviewer deactivated",
    )
    assert store.audit_trail(expired.item_id) == []
    assert store.get_record(bobs.item_id).claimed_by == "bob"  # others keep theirs
    assert store.get_record(held[0].item_id).reviewer == "alice"  # her reviews stay hers
    assert store.deactivate_reviewer("alice") == 0  # again: nothing more to do
    # The returned item and the expired one are handed out again, oldest decision first.
    assert [c.item_id for c in store.claim("bob", max_items=5)] == [
        held[1].item_id,
        expired.item_id,
        "item-00004",
    ]


def test_reviewers_list_their_state_and_reviews(store: ReviewStore, clock: FakeClock) -> None:
    store.add_reviewer("bob")
    store.add_reviewer("alice")
    store.upsert_decisions([make_decision(i) for i in range(3)])
    for claimed in store.claim("alice", max_items=2):
        store.submit(claimed.item_id, claimed.claim_id, "alice", "spam")
    clock.advance(30)
    store.submit("item-00000", None, "alice", "ok", expected_revision=1)
    store.deactivate_reviewer("bob")
    store.rotate_token("alice")
    alice, bob = store.reviewers()
    assert (alice.name, alice.active, alice.reviews) == ("alice", True, 3)
    assert alice.last_review_at == clock.now and alice.token_rotated_at == clock.now
    assert (bob.name, bob.active, bob.reviews, bob.last_review_at) == ("bob", False, 0, None)
    assert bob.created_at == T0


# ----------------------------------------------------------------------------- export


def test_export_parquet(store: ReviewStore, tmp_path: Path, clock: FakeClock) -> None:
    store.upsert_decisions(
        [make_decision(1), make_decision(2, delta=False, pi=0.125, eps=0.05), make_decision(3)]
    )
    [claimed] = store.claim("alice")
    clock.advance(10)
    store.submit("item-00001", claimed.claim_id, "alice", "ok", note="fine")
    path = tmp_path / "out" / "act.parquet"
    assert store.export_parquet(path) == 3
    table = pq.read_table(path)
    assert table.num_rows == 3
    expected_columns = {
        "item_id": pa.string(),
        "schema_id": pa.string(),
        "schema_version": pa.int32(),
        "content_ref": pa.string(),
        "machine_label": pa.string(),
        "eps": pa.float64(),
        "pi": pa.float64(),
        "delta": pa.bool_(),
        "capped": pa.bool_(),
        "audit": pa.bool_(),
        "window_id": pa.string(),
        "human_label": pa.string(),
        "unsure": pa.bool_(),
        "reviewer": pa.string(),
        "revision": pa.int32(),
        "decided_at": pa.timestamp("us", tz="UTC"),
        "reviewed_at": pa.timestamp("us", tz="UTC"),
        "annotator_model": pa.string(),
        "annotator_prompt_version": pa.string(),
        "criticizer_model": pa.string(),
        "criticizer_prompt_version": pa.string(),
    }
    for name, arrow_type in expected_columns.items():
        assert table.schema.field(name).type == arrow_type, name
    assert table.schema.metadata[b"act.export.format_version"] == b"1"
    rows = {row["item_id"]: row for row in table.to_pylist()}
    reviewed = rows["item-00001"]
    assert reviewed["human_label"] == "ok"
    assert reviewed["machine_label"] == "spam"
    assert (reviewed["reviewer"], reviewed["revision"], reviewed["unsure"]) == ("alice", 1, False)
    assert (reviewed["eps"], reviewed["pi"], reviewed["delta"]) == (0.4, 0.5, True)
    assert reviewed["reviewed_at"] == clock.now
    assert reviewed["decided_at"] == T0 - timedelta(hours=1) + timedelta(seconds=1)
    assert reviewed["machine_distribution"] == [
        {"label": "spam", "probability": 0.75},
        {"label": "ok", "probability": 0.25},
    ]
    assert (reviewed["annotator_model"], reviewed["annotator_prompt"]) == (
        "minilm-knn",
        "annotate.direct",
    )
    assert (reviewed["criticizer_model"], reviewed["criticizer_prompt_version"]) == (
        "minilm-critic",
        "1",
    )
    assert (reviewed["schema_id"], reviewed["schema_version"]) == (SCHEMA_ID, 1)
    assert reviewed["content_ref"] == "act.items.v1/0/1"
    unselected = rows["item-00002"]
    assert (unselected["delta"], unselected["pi"], unselected["eps"]) == (False, 0.125, 0.05)
    assert (unselected["state"], unselected["human_label"], unselected["unsure"]) == (
        "not_selected",
        None,
        None,
    )
    assert unselected["revision"] == 0 and unselected["reviewed_at"] is None
    assert rows["item-00003"]["state"] == "pending"
    assert "item" not in table.schema.names
    assert not list(path.parent.glob(".*.tmp"))

    with_items = tmp_path / "items.parquet"
    assert store.export_parquet(with_items, include_items=True, batch_size=2) == 3
    items = pq.read_table(with_items).column("item").to_pylist()
    parsed = types_pb2.Item.FromString(items[0])
    assert parsed.text == "buy cheap watches #1"


def test_export_of_an_empty_store_has_the_schema(store: ReviewStore, tmp_path: Path) -> None:
    path = tmp_path / "empty.parquet"
    assert store.export_parquet(path) == 0
    table = pq.read_table(path)
    assert table.num_rows == 0
    assert table.schema.field("pi").type == pa.float64()


# ----------------------------------------------------------------------------- migrations


def test_migrations_are_idempotent_and_versioned(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    with ReviewStore(url, migrate=False) as fresh:
        assert current_version(fresh.engine) == 0
        assert migrate(fresh.engine) == list(range(1, LATEST_VERSION + 1))
        assert migrate(fresh.engine) == []
        assert current_version(fresh.engine) == LATEST_VERSION
    with ReviewStore(url) as again:  # migrating at startup is a no-op now
        assert again.stats().decisions == 0


def test_a_newer_database_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'newer.db'}"
    with ReviewStore(url) as store:
        with store.engine.begin() as conn:
            conn.execute(
                current_tables.schema_migrations.insert().values(
                    version=LATEST_VERSION + 1, description="from the future", applied_at=T0
                )
            )
    with pytest.raises(SchemaVersionError, match=r"upgrade this service"):
        ReviewStore(url)


def test_a_failed_migration_is_rolled_back(tmp_path: Path) -> None:
    from act.review.migrations import MIGRATIONS, Migration

    def broken(conn: sa.Connection) -> None:
        conn.execute(sa.text("CREATE TABLE half_done (x INTEGER)"))
        raise RuntimeError("boom")

    with ReviewStore(f"sqlite:///{tmp_path / 'f.db'}", migrate=False) as store:
        steps = (*MIGRATIONS, Migration(LATEST_VERSION + 1, "broken", broken))
        with pytest.raises(SchemaVersionError, match="boom"):
            migrate(store.engine, migrations=steps)
        assert current_version(store.engine) == 0
        assert not sa.inspect(store.engine).has_table("half_done")
        assert not sa.inspect(store.engine).has_table("records")


def schema_of(engine: sa.Engine) -> dict[str, object]:
    """Columns (name, type, nullable), primary key, indexes, unique and check constraints."""
    inspector = sa.inspect(engine)
    return {
        table: {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)
            ],
            "primary_key": inspector.get_pk_constraint(table)["constrained_columns"],
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                for i in inspector.get_indexes(table)
            ),
            "unique": sorted(
                tuple(u["column_names"]) for u in inspector.get_unique_constraints(table)
            ),
            "checks": sorted(str(c["name"]) for c in inspector.get_check_constraints(table)),
            "foreign_keys": sorted(
                (tuple(f["constrained_columns"]), f["referred_table"])
                for f in inspector.get_foreign_keys(table)
            ),
        }
        for table in sorted(inspector.get_table_names())
    }


def test_migrated_schema_matches_the_tables(tmp_path: Path) -> None:
    with ReviewStore(f"sqlite:///{tmp_path / 'a.db'}") as migrated:
        from_migrations = schema_of(migrated.engine)
    reference = sa.create_engine(f"sqlite:///{tmp_path / 'b.db'}")
    current_tables.metadata.create_all(reference)
    assert from_migrations == schema_of(reference)
    reference.dispose()


def test_database_urls() -> None:
    assert normalize_url("postgresql://act:act@h:1/act").drivername == "postgresql+psycopg"
    assert normalize_url("postgres://act@h/act").drivername == "postgresql+psycopg"
    assert normalize_url("postgresql+psycopg://h/act").drivername == "postgresql+psycopg"
    assert normalize_url("sqlite:///x.db").drivername == "sqlite"
    with pytest.raises(ValueError, match="unsupported database 'mysql'"):
        normalize_url("mysql://h/x")


def test_in_memory_database(clock: FakeClock) -> None:
    with ReviewStore("sqlite://", clock=clock) as memory:
        memory.upsert_decision(make_decision(1))
        [claimed] = memory.claim("alice")
        assert memory.submit("item-00001", claimed.claim_id, "alice", "x", labels=["x", "y"])


def test_naive_clock_is_refused(tmp_path: Path) -> None:
    with ReviewStore(f"sqlite:///{tmp_path / 'n.db'}", clock=datetime.now) as naive:
        with pytest.raises(InvalidArgument, match="naive"):
            naive.claim("alice")
