"""The review web UI in a real browser: a `ReviewServer` on free ports over a SQLite store,
headless Chromium (Debian's /usr/bin/chromium, `apt-get install -y chromium`) driven by
Playwright for Python (`pip install playwright`; no `playwright install`: the system Chromium is
used). Logs in with a reviewer token, labels an item with a keyboard shortcut and checks the
label and its audit row in the store, changes that label again ("z", a correction), and skips
an item; an unauthenticated API call gets 401.

Skipped when Chromium or Playwright is missing, except under CI (env CI set), where it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from act.inference.types import (
    Annotation,
    Item,
    Label,
    LabelSchema,
    ModelRef,
    PromptRef,
    annotation_to_proto,
    item_to_proto,
    schema_to_proto,
)
from act.review.server import ReviewServer
from act.v1 import bus_pb2

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CHROMIUM = os.environ.get("ACT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT = Path(os.environ.get("ACT_REVIEW_SCREENSHOT", "/tmp/review-ui.png"))
SCHEMA_ID = "moderation"
XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'


def _under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _missing(reason: str) -> None:
    if _under_ci():
        pytest.fail(f"{reason}; CI must run the browser test", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def sync_playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        _missing(f"playwright is not installed ({exc}): pip install playwright")
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        _missing(f"{CHROMIUM} is missing: apt-get install -y chromium")
    return sync_playwright


@pytest.fixture(scope="module")
def expect(sync_playwright):
    from playwright.sync_api import expect

    return expect


def decision(i: int, text: str) -> bus_pb2.Decision:
    item_id = f"item-{i}"
    annotation = annotation_to_proto(
        Annotation(
            item_id=item_id,
            label="spam",
            model=ModelRef(backend="embedded", model="m"),
            prompt=PromptRef(strategy_id="annotate.direct", version="1"),
            schema_id=SCHEMA_ID,
            schema_version=1,
        )
    )
    out = bus_pb2.Decision(item_id=item_id, eps=0.5, pi=0.6, delta=True, annotation=annotation)
    out.item.CopyFrom(item_to_proto(Item(item_id=item_id, text=text, question="Is this spam?")))
    out.decided_time.FromDatetime(datetime(2026, 3, 1, 12, 0, i, tzinfo=UTC))
    return out


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ReviewServer]:
    with ReviewServer(
        f"sqlite:///{tmp_path / 'review.db'}", http_port=0, grpc_port=0, host="127.0.0.1"
    ) as server:
        schema = LabelSchema(
            schema_id=SCHEMA_ID,
            labels=(
                Label(name="ok", description="Fine to keep"),
                Label(name="spam", description="Advertising or scams"),
                Label(name="abuse", description="Insults, threats"),
            ),
            instructions="Label the post. Advertising counts as spam, even when polite.",
        )
        server.store.register_schema(schema_to_proto(schema))
        server.store.upsert_decision(decision(1, XSS))
        server.store.upsert_decision(decision(2, "Buy cheap watches now!!!"))
        yield server


def test_label_with_keyboard_shortcut(sync_playwright, expect, server: ReviewServer) -> None:
    token = server.store.add_reviewer("alice")
    store = server.store

    # An unauthenticated API request is refused.
    request = urllib.request.Request(f"{server.http_url}/api/claim", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 401
    assert json.load(info.value)["error"]["code"] == "UNAUTHENTICATED"

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 760})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on(
                "console",
                lambda msg: errors.append(msg.text) if "Content Security" in msg.text else None,
            )
            page.goto(server.http_url + "/")

            # A bad token stays on the login box with an error.
            page.fill("#token", "actr_wrong")
            page.press("#token", "Enter")
            page.wait_for_selector("#banner:not([hidden])")
            assert page.is_visible("#login")

            page.fill("#token", token)
            page.press("#token", "Enter")
            page.wait_for_selector("#item:not([hidden])")
            assert page.text_content("#reviewer-name") == "alice"
            # Content is shown as text: the markup is neither parsed nor run.
            assert page.text_content("#item-id") == "item-1"
            assert page.text_content("#text") == XSS
            assert page.locator("#text img, #text script").count() == 0
            assert page.evaluate("window.__xss") is None
            assert page.text_content("#question") == "Is this spam?"
            assert "Advertising counts as spam" in page.text_content("#guidelines")
            assert page.locator("#labels button").count() == 3
            assert not page.is_visible("#machine")
            expect(page.locator("#stat-claimed")).to_have_text("1")

            # "u" flags unsure, "2" labels the item "spam", then the next item comes.
            page.keyboard.press("u")
            assert page.is_checked("#unsure")
            page.keyboard.press("2")
            expect(page.locator("#item-id")).to_have_text("item-2")
            assert page.text_content("#session-count") == "1"
            expect(page.locator("#stat-reviewed")).to_have_text("1")
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)

            record = store.get_record("item-1")
            assert (record.state, record.human_label, record.unsure, record.reviewer) == (
                "reviewed",
                "spam",
                True,
                "alice",
            )
            [entry] = store.audit_trail("item-1")
            assert (entry.action, entry.label, entry.reviewer, entry.revision) == (
                "review",
                "spam",
                "alice",
                1,
            )

            # "z" reopens the last reviewed item to change its label: "1" makes it "ok" (a
            # correction of revision 1, audited), and the waiting item comes back, still
            # claimed by alice under the same claim.
            held = store.get_record("item-2")
            page.keyboard.press("z")
            expect(page.locator("#correction")).to_be_visible()
            expect(page.locator("#item-id")).to_have_text("item-1")
            assert page.text_content("#correction-was") == "spam, unsure"
            assert not page.is_visible("#skip")
            page.keyboard.press("1")
            expect(page.locator("#item-id")).to_have_text("item-2")
            assert not page.is_visible("#correction")
            record = store.get_record("item-1")
            assert (record.human_label, record.unsure, record.revision) == ("ok", False, 2)
            assert [(e.action, e.label, e.previous_label) for e in store.audit_trail("item-1")] == [
                ("review", "spam", None),
                ("correction", "ok", "spam"),
            ]
            assert page.text_content("#session-count") == "1"  # a change is not a new review
            still = store.get_record("item-2")
            assert (still.state, still.claimed_by, still.lease_expires_at) == (
                "claimed",
                "alice",
                held.lease_expires_at,
            )
            # Esc leaves a reopened item unchanged.
            page.keyboard.press("z")
            expect(page.locator("#correction-was")).to_have_text("ok")
            page.keyboard.press("Escape")
            expect(page.locator("#item-id")).to_have_text("item-2")
            assert store.get_record("item-1").revision == 2

            # "s" skips: the item goes back to the queue (audited as a release), and the
            # queue hands it out again.
            page.keyboard.press("s")
            deadline = time.monotonic() + 10
            while [e.action for e in store.audit_trail("item-2")] != ["release"]:
                assert time.monotonic() < deadline, "the skip was not recorded"
                time.sleep(0.05)
            expect(page.locator("#item-id")).to_have_text("item-2")
            while store.get_record("item-2").state != "claimed":
                assert time.monotonic() < deadline, "the skipped item was not claimed again"
                time.sleep(0.05)
            assert errors == []
        finally:
            browser.close()
