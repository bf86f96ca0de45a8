"""Reviewer tokens chosen outside the store: `ReviewStore.set_reviewer_token` and
`actctl review sync-reviewers DIR` on a folder laid out like a mounted Kubernetes Secret."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from act.cli import app
from act.review.errors import InvalidArgument
from act.review.store import TOKEN_PREFIX, ReviewStore
from act.review.tables import reviewers

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
BAD_TOKENS = {
    "too short": TOKEN_PREFIX + "x" * 10,
    "without the prefix": "x" * 40,
    "with a space": TOKEN_PREFIX + "abc def" + "x" * 30,
    "with a newline inside": TOKEN_PREFIX + "abc\ndef" + "x" * 30,
    "with a control character": TOKEN_PREFIX + "abc\x07" + "x" * 30,
    "not ASCII": TOKEN_PREFIX + "é" * 30,
}


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'review.db'}"


@pytest.fixture
def store(url: str, clock: Clock) -> ReviewStore:
    review_store = ReviewStore(url, clock=clock)
    yield review_store
    review_store.close()


def stored_reviewers(store: ReviewStore) -> dict[str, tuple]:
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(reviewers)).all()
    return {row.name: tuple(row) for row in rows}


# ----------------------------------------------------------------------------- the store


def test_a_chosen_token_creates_the_reviewer_and_only_its_hash_is_stored(
    store: ReviewStore,
) -> None:
    token = new_token()
    assert store.set_reviewer_token("alice", token) is True
    assert store.authenticate(token) == "alice"
    [row] = stored_reviewers(store).values()
    assert token not in str(row)
    with store.engine.connect() as conn:
        rotated = conn.execute(sa.select(reviewers.c.token_rotated_at)).scalar_one()
    assert rotated is None


def test_a_new_token_replaces_the_old_one_and_reactivates_the_reviewer(
    store: ReviewStore, clock: Clock
) -> None:
    old = store.add_reviewer("alice")
    store.deactivate_reviewer("alice")
    clock.now = T0 + timedelta(hours=1)
    new = new_token()
    assert store.set_reviewer_token("alice", new) is False
    assert store.authenticate(old) is None
    assert store.authenticate(new) == "alice"
    with store.engine.connect() as conn:
        rotated = conn.execute(sa.select(reviewers.c.token_rotated_at)).scalar_one()
    assert rotated == clock.now


def test_setting_the_same_token_again_changes_nothing(store: ReviewStore, clock: Clock) -> None:
    token = new_token()
    store.set_reviewer_token("alice", token)
    before = stored_reviewers(store)
    clock.now = T0 + timedelta(days=1)
    assert store.set_reviewer_token("alice", token) is False
    assert stored_reviewers(store) == before


@pytest.mark.parametrize("token", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
def test_a_malformed_token_is_refused_and_nothing_is_stored(store: ReviewStore, token: str) -> None:
    with pytest.raises(InvalidArgument, match="token of reviewer 'alice'") as refused:
        store.set_reviewer_token("alice", token)
    assert token not in str(refused.value)
    assert stored_reviewers(store) == {}


def test_a_bad_name_or_another_reviewers_token_is_refused(store: ReviewStore) -> None:
    with pytest.raises(InvalidArgument, match="reviewer name"):
        store.set_reviewer_token(" ", new_token())
    bob = store.add_reviewer("bob")
    alice = new_token()
    store.set_reviewer_token("alice", alice)
    before = stored_reviewers(store)
    for name in ("alice", "carol"):  # an existing reviewer and a new one
        with pytest.raises(InvalidArgument, match="another reviewer's"):
            store.set_reviewer_token(name, bob)
    assert stored_reviewers(store) == before
    assert store.authenticate(alice) == "alice"


# ----------------------------------------------------------------------------- the command


def secret_volume(path: Path, tokens: dict[str, str]) -> Path:
    """A folder as kubelet mounts a Secret: the files in a timestamped hidden folder, `..data`
    a symlink to it, and one symlink per key into `..data`."""
    path.mkdir()
    version = path / "..2026_12_01_08_00_00.000000001"
    version.mkdir()
    for name, token in tokens.items():
        (version / name).write_text(token)
        (path / name).symlink_to(Path("..data") / name)
    (path / "..data").symlink_to(version.name)
    return path


def sync(directory: Path, url: str, *options: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(
        app, ["review", "sync-reviewers", str(directory), "--database-url", url, *options]
    )
    return result.exit_code, result.stdout, result.stderr


def test_sync_reviewers_reads_a_secret_volume_and_is_idempotent(tmp_path: Path, url: str) -> None:
    tokens = {"alice": new_token(), "bob": new_token() + "\n"}  # `--from-file` keeps newlines
    directory = secret_volume(tmp_path / "reviewers", tokens)
    with ReviewStore(url) as store:
        old_bob = store.add_reviewer("bob")

    code, out, err = sync(directory, url)
    assert (code, out.splitlines()) == (0, ["alice: created", "bob: updated"]), err
    assert not any(token.strip() in out + err for token in tokens.values())
    with ReviewStore(url) as store:
        assert store.authenticate(tokens["alice"]) == "alice"
        assert store.authenticate(tokens["bob"].strip()) == "bob"
        assert store.authenticate(old_bob) is None
        before = stored_reviewers(store)

    code, out, _ = sync(directory, url)
    assert (code, out.splitlines()) == (0, ["alice: unchanged", "bob: unchanged"])
    with ReviewStore(url) as store:
        assert stored_reviewers(store) == before


@pytest.mark.parametrize(
    ("name", "content", "why"),
    [
        ("mallory", "", "empty"),
        ("mallory", "\n", "empty"),
        ("mallory", BAD_TOKENS["too short"], "shorter than"),
        ("m" * 201, new_token(), "longer than 200"),
    ],
    ids=["empty", "a newline", "a short token", "a long name"],
)
def test_sync_reviewers_writes_nothing_when_one_file_is_bad(
    tmp_path: Path, url: str, name: str, content: str, why: str
) -> None:
    directory = secret_volume(tmp_path / "reviewers", {"alice": new_token(), name: content})
    code, out, err = sync(directory, url)
    assert code == 2
    assert str(directory / name) in err and why in err
    assert out == ""
    with ReviewStore(url) as store:
        assert stored_reviewers(store) == {}


def test_sync_reviewers_refuses_one_token_for_two_reviewers(tmp_path: Path, url: str) -> None:
    token = new_token()
    directory = secret_volume(tmp_path / "reviewers", {"alice": token, "bob": token})
    code, _, err = sync(directory, url)
    assert code == 2 and "the same token as" in err and token not in err
    with ReviewStore(url) as store:
        assert stored_reviewers(store) == {}


def test_sync_reviewers_reports_a_store_refusal_with_exit_1(tmp_path: Path, url: str) -> None:
    with ReviewStore(url) as store:
        bob = store.add_reviewer("bob")
    directory = secret_volume(tmp_path / "reviewers", {"alice": bob})
    code, _, err = sync(directory, url)
    assert code == 1 and "another reviewer's" in err


def test_sync_reviewers_needs_a_directory(tmp_path: Path, url: str) -> None:
    code, _, err = sync(tmp_path / "missing", url)
    assert code == 2 and "is not a directory" in err


def test_sync_reviewers_can_lock_out_the_reviewers_without_a_file(tmp_path: Path, url: str) -> None:
    with ReviewStore(url) as store:
        store.add_reviewer("carol")
        store.add_reviewer("dave")
        store.deactivate_reviewer("dave")
    alice = new_token()
    directory = secret_volume(tmp_path / "reviewers", {"alice": alice})
    code, out, _ = sync(directory, url)  # by default, carol is left alone
    assert (code, out.splitlines()) == (0, ["alice: created"])
    code, out, _ = sync(directory, url, "--deactivate-missing")
    assert (code, out.splitlines()) == (
        0,
        [
            "alice: unchanged",
            "carol: deactivated (no file; 0 claimed item(s) returned to the queue)",
        ],
    )
    with ReviewStore(url) as store:
        assert {r.name: r.active for r in store.reviewers()} == {
            "alice": True,
            "carol": False,
            "dave": False,
        }
    # A folder without files (a Secret not mounted, say) locks nobody out.
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = sync(empty, url, "--deactivate-missing")
    assert (code, out) == (0, "") and "nothing to do" in err
    with ReviewStore(url) as store:
        assert store.authenticate(alice) == "alice"
