"""act.review.store on the local PostgreSQL of deploy/local/ (ACT_DATABASE_URL).

The core behaviours of tests/unit/test_review_store.py (SQLite) on PostgreSQL, plus what only a
server shows: 20 reviewers on their own connections claiming one item at a time from 200 never
get the same item and together review all of them (FOR UPDATE SKIP LOCKED), and concurrent
startups migrate once. Each test gets a database of its own, dropped afterwards.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

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


def make_decision(i: int, *, delta: bool = True, pi: float = 0.5, label: str = "spam") -> object:
    from act.v1 import bus_pb2

    item_id = f"item-{i:05d}"
    decision = bus_pb2.Decision(
        item_id=item_id,
        eps=0.4,
        pi=pi,
        delta=delta,
        sampler="stream",
        transform_id="thre(rho=0)",
        budget_id="budget-a",
        seed_id="key-1",
        window_id="w1",
        content_ref=f"act.items.v1/0/{i}",
    )
    annotation = decision.annotation
    annotation.label = label
    annotation.schema_id = SCHEMA_ID
    annotation.schema_version = 1
    annotation.model.backend = "vllm"
    annotation.model.model = "Qwen/Qwen2.5-VL-7B-Instruct"
    annotation.prompt.strategy_id = "annotate.cot"
    annotation.prompt.version = "3"
    annotation.distribution.add(label=label, probability=0.75)
    decision.criticism.label = label
    decision.criticism.error_probability = 0.4
    decision.criticism.model.model = "critic"
    decision.decided_time.FromDatetime(T0 - timedelta(hours=1) + timedelta(seconds=i))
    decision.item.item_id = item_id
    decision.item.text = f"text #{i}"
    return decision


def make_schema() -> object:
    from act.v1 import types_pb2

    schema = types_pb2.LabelSchema(schema_id=SCHEMA_ID, version=1)
    for name in LABELS:
        schema.labels.add(name=name)
    return schema


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(fresh_database: str, clock: FakeClock) -> Iterator[object]:
    from act.review import ReviewStore

    review_store = ReviewStore(fresh_database, clock=clock)
    review_store.register_schema(make_schema())
    yield review_store
    review_store.close()


def test_it_runs_on_postgresql_with_psycopg(store) -> None:
    assert store.dialect == "postgresql"
    assert store.engine.url.drivername == "postgresql+psycopg"


def test_upsert_is_idempotent_and_conflicts_are_rejected(store) -> None:
    from act.review import DecisionConflict

    assert store.upsert_decision(make_decision(1)) is True
    assert store.upsert_decision(make_decision(1)) is False
    with pytest.raises(DecisionConflict) as caught:
        store.upsert_decision(make_decision(1, pi=0.9))
    assert caught.value.differences == {"pi": (0.5, 0.9)}
    result = store.upsert_decisions(
        [make_decision(1), make_decision(2), make_decision(2), make_decision(3, label="ok")]
    )
    assert result.inserted == ("item-00002", "item-00003")
    assert sorted(result.unchanged) == ["item-00001", "item-00002"]
    assert store.get_record("item-00001").pi == 0.5
    bad = make_decision(4)
    bad.budget_id = "nul\x00byte"  # PostgreSQL refuses NUL in text: caught before writing
    result = store.upsert_decisions([bad, make_decision(5)])
    assert [e.item_id for e in result.invalid] == ["item-00004"]
    assert result.inserted == ("item-00005",)


def test_concurrent_writers_of_the_same_decisions_insert_each_once(fresh_database: str) -> None:
    from act.review import ReviewStore

    decisions = [make_decision(i, delta=i % 4 == 0) for i in range(2000)]
    ReviewStore(fresh_database).close()
    inserted: list[str] = []
    unchanged: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def consumer(offset: int) -> None:
        try:
            with ReviewStore(fresh_database, pool_size=1) as own:
                barrier.wait(30)
                # Overlapping batches in different orders, as after a consumer-group rebalance.
                rotated = decisions[offset:] + decisions[:offset]
                if offset % 500:
                    rotated.reverse()
                for start in range(0, 2000, 500):
                    result = own.upsert_decisions(rotated[start : start + 500])
                    assert not result.conflicts and not result.invalid
                    inserted.extend(result.inserted)
                    unchanged.extend(result.unchanged)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=consumer, args=(k * 250,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert sorted(inserted) == sorted({d.item_id for d in decisions})
    assert len(inserted) + len(unchanged) == 4 * 2000
    with ReviewStore(fresh_database) as check:
        stats = check.stats()
    assert (stats.decisions, stats.selected) == (2000, 500)
    # The writers added to the same window's counts concurrently: none was lost.
    [window] = stats.windows
    assert (window.decisions, window.selected, window.expected) == (2000, 500, 1000.0)


def test_deactivating_a_reviewer_returns_their_claims(store) -> None:
    store.add_reviewer("alice")
    store.upsert_decisions([make_decision(i) for i in range(4)])
    held = store.claim("alice", max_items=3)
    assert store.deactivate_reviewer("alice") == 3
    assert {store.get_record(c.item_id).state for c in held} == {"pending"}
    assert [r.active for r in store.reviewers()] == [False]
    assert (store.stats().claimed, store.stats().pending) == (0, 4)


def test_claims_and_releases_leave_the_window_counts_alone(store) -> None:
    """A claim or a release does not rewrite the window's counts (it would wait on the decision
    consumer's lock of that row); a review does."""
    import sqlalchemy as sa

    store.add_reviewer("alice")
    store.upsert_decisions([make_decision(i) for i in range(3)])

    def version() -> str:  # the row version: changes with every update of the row
        with store.engine.connect() as conn:
            return conn.execute(sa.text("SELECT xmin::text FROM window_counts")).scalar_one()

    before = version()
    first, second = store.claim("alice", max_items=2)
    store.release(second.item_id, second.claim_id, "alice")
    assert version() == before
    store.submit(first.item_id, first.claim_id, "alice", "spam")
    assert version() != before


def test_migration_3_counts_the_records_stored_before_it(fresh_database: str) -> None:
    from act.review import ReviewStore, migrate
    from act.review.migrations import MIGRATIONS
    from act.review.store import decision_row
    from act.review.tables import records

    with ReviewStore(fresh_database, migrate=False) as older:
        migrate(older.engine, migrations=MIGRATIONS[:2])  # a database of the previous release
        rows = [decision_row(make_decision(i, delta=i % 4 == 0, pi=0.25), T0) for i in range(100)]
        with older.engine.begin() as conn:
            conn.execute(records.insert(), rows)
    with ReviewStore(fresh_database) as upgraded:
        stats = upgraded.stats()
        assert (stats.decisions, stats.selected, stats.not_selected) == (100, 25, 75)
        [window] = stats.windows
        assert (window.decisions, window.selected, window.expected) == (100, 25, 25.0)
        upgraded.upsert_decisions([make_decision(100 + i) for i in range(3)])
        assert (upgraded.stats().decisions, upgraded.stats().selected) == (103, 28)
        # Writers outside the store (an older release, an operator's SQL) move the counts too.
        with upgraded.engine.begin() as conn:
            conn.execute(
                records.update()
                .where(records.c.item_id.in_(["item-00000", "item-00004"]))
                .values(state="reviewed", human_label="spam", unsure=True, revision=1)
            )
            conn.execute(records.delete().where(records.c.item_id == "item-00001"))
        stats = upgraded.stats()
        assert (stats.decisions, stats.selected, stats.reviewed) == (102, 28, 2)
        assert (stats.unsure, stats.labelled, stats.agreement_rate) == (2, 2, 1.0)


def test_queue_claim_submit_correct_and_audit(store, clock: FakeClock) -> None:
    from act.review import (
        ClaimNotYours,
        ClaimRequired,
        InvalidLabel,
        NotQueued,
        RevisionConflict,
    )

    store.upsert_decisions([make_decision(i, delta=i % 2 == 0) for i in range(6)])
    claimed = store.claim("alice", max_items=10, lease_seconds=60)
    assert [c.item_id for c in claimed] == ["item-00000", "item-00002", "item-00004"]
    assert claimed[0].decision.item.text == "text #0"
    assert [label.name for label in claimed[0].schema.labels] == list(LABELS)
    with pytest.raises(NotQueued):
        store.submit("item-00001", None, "alice", "ok")
    with pytest.raises(ClaimRequired):
        store.submit("item-00002", None, "alice", "ok")
    with pytest.raises(ClaimNotYours):
        store.submit("item-00000", claimed[0].claim_id, "bob", "ok")
    with pytest.raises(InvalidLabel):
        store.submit("item-00000", claimed[0].claim_id, "alice", "ham")
    clock.advance(5)
    review = store.submit("item-00000", claimed[0].claim_id, "alice", "ok", note="fine")
    assert (review.revision, review.previous_label) == (1, "")
    with pytest.raises(RevisionConflict):
        store.submit("item-00000", None, "carol", "abuse", expected_revision=0)
    correction = store.submit("item-00000", None, "carol", "abuse", expected_revision=1)
    assert (correction.revision, correction.previous_label) == (2, "ok")
    assert [
        (e.action, e.label, e.previous_label, e.revision) for e in store.audit_trail("item-00000")
    ] == [("review", "ok", None, 1), ("correction", "abuse", "ok", 2)]
    assert store.release("item-00002", claimed[1].claim_id, "alice", reason="skip") is True
    stats = store.stats()
    assert (stats.decisions, stats.selected, stats.pending, stats.claimed, stats.reviewed) == (
        6,
        3,
        1,
        1,
        1,
    )
    assert stats.agreement_rate == 0.0
    assert stats.oldest_pending_age == timedelta(hours=1, seconds=3)


def test_an_expired_lease_returns_the_item(store, clock: FakeClock) -> None:
    from act.review import ClaimExpired, ClaimNotFound

    store.upsert_decisions([make_decision(1), make_decision(2)])
    [a1] = store.claim("alice", lease_seconds=30)
    [b2] = store.claim("bob", lease_seconds=30)
    assert store.claim("carol") == []
    clock.advance(30)
    assert store.stats().pending == 2
    with pytest.raises(ClaimExpired):
        store.submit("item-00002", b2.claim_id, "bob", "ok")
    [c1] = store.claim("carol")
    assert c1.item_id == "item-00001"
    with pytest.raises(ClaimNotFound):
        store.submit("item-00001", a1.claim_id, "alice", "ok")
    assert store.submit("item-00001", c1.claim_id, "carol", "spam").reviewer == "carol"


def test_a_lease_expires_in_real_time(fresh_database: str) -> None:
    from act.review import ReviewStore

    with ReviewStore(fresh_database) as real:
        real.upsert_decision(make_decision(1))
        [first] = real.claim("alice", lease_seconds=0.2)
        assert real.claim("bob") == []
        threading.Event().wait(0.3)
        [second] = real.claim("bob")
        assert second.item_id == first.item_id


def test_twenty_concurrent_reviewers_never_share_an_item(fresh_database: str) -> None:
    from act.review import ReviewStore

    with ReviewStore(fresh_database) as setup:
        setup.register_schema(make_schema())
        assert len(setup.upsert_decisions([make_decision(i) for i in range(200)]).inserted) == 200
    claims: dict[str, list[str]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(20)

    def reviewer(name: str) -> None:
        try:
            with ReviewStore(fresh_database, pool_size=1) as own:  # its own connection
                barrier.wait(30)
                mine: list[str] = []
                while claimed := own.claim(name, max_items=1):
                    [item] = claimed
                    mine.append(item.item_id)
                    own.submit(item.item_id, item.claim_id, name, "ok")
                claims[name] = mine
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=reviewer, args=(f"reviewer-{i:02d}",)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert len(claims) == 20
    everything = [item for items in claims.values() for item in items]
    assert len(everything) == len(set(everything)) == 200
    assert sum(1 for items in claims.values() if items) > 1  # the work was actually shared
    with ReviewStore(fresh_database) as check:
        stats = check.stats()
        assert (stats.reviewed, stats.pending, stats.claimed) == (200, 0, 0)
        assert all(len(check.audit_trail(f"item-{i:05d}")) == 1 for i in range(0, 200, 17))


def test_concurrent_startups_migrate_once(fresh_database: str) -> None:
    import sqlalchemy as sa

    from act.review import LATEST_VERSION, ReviewStore

    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def start() -> None:
        try:
            barrier.wait(30)
            ReviewStore(fresh_database, pool_size=1).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    with ReviewStore(fresh_database) as store, store.engine.connect() as conn:
        versions = conn.execute(sa.text("SELECT version FROM schema_migrations")).scalars().all()
    assert versions == list(range(1, LATEST_VERSION + 1))


def test_a_newer_database_is_refused(fresh_database: str) -> None:
    from act.review import LATEST_VERSION, ReviewStore, SchemaVersionError
    from act.review.tables import schema_migrations

    with ReviewStore(fresh_database) as store, store.engine.begin() as conn:
        conn.execute(
            schema_migrations.insert().values(
                version=LATEST_VERSION + 1, description="future", applied_at=T0
            )
        )
    with pytest.raises(SchemaVersionError, match="newer release"):
        ReviewStore(fresh_database)


def test_migrated_schema_matches_the_tables(fresh_database: str, database_url: str) -> None:
    import psycopg
    import sqlalchemy as sa

    from act.review import ReviewStore, normalize_url
    from act.review.tables import metadata

    with ReviewStore(fresh_database) as store:
        migrated = _schema_of(store.engine)
    name = f"act_review_ref_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        reference = sa.create_engine(normalize_url(f"{database_url.rpartition('/')[0]}/{name}"))
        metadata.create_all(reference)
        try:
            assert migrated == _schema_of(reference)
        finally:
            reference.dispose()
    finally:
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _schema_of(engine) -> dict[str, object]:
    import sqlalchemy as sa

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
        }
        for table in sorted(inspector.get_table_names())
    }


def test_tokens_and_export(
    store, tmp_path: Path, clock: FakeClock, require_module: Callable[[str], ModuleType]
) -> None:
    pa = require_module("pyarrow")
    pq = require_module("pyarrow.parquet")

    token = store.add_reviewer("alice")
    assert store.authenticate(token) == "alice"
    assert store.authenticate(token + "x") is None
    store.upsert_decisions([make_decision(1), make_decision(2, delta=False, pi=0.25)])
    [claimed] = store.claim("alice")
    clock.advance(7)
    store.submit("item-00001", claimed.claim_id, "alice", "ok")
    path = tmp_path / "act.parquet"
    assert store.export_parquet(path) == 2
    table = pq.read_table(path)
    assert table.schema.field("pi").type == pa.float64()
    assert table.schema.field("delta").type == pa.bool_()
    assert table.schema.field("reviewed_at").type == pa.timestamp("us", tz="UTC")
    rows = {row["item_id"]: row for row in table.to_pylist()}
    assert (rows["item-00001"]["human_label"], rows["item-00001"]["reviewer"]) == ("ok", "alice")
    assert rows["item-00001"]["reviewed_at"] == clock.now
    assert rows["item-00001"]["annotator_model"] == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert (rows["item-00002"]["pi"], rows["item-00002"]["state"]) == (0.25, "not_selected")
