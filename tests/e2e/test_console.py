"""The operator console in a real browser: headless Chromium (Debian's `chromium` package)
driven by Playwright against the local stack.

Without Chromium the browser tests are skipped with a reason that says they did not run; in CI
(`MAILGATE_REQUIRE_BROWSER`, set by .ci/run, which installs Chromium) they fail instead.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import QueueClient, TextBase64EncodePolicy
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from devstack.azurite import Azurite
from devstack.sendgrid_standin import UNVERIFIED_SENDER_REFUSAL, SendGridStandIn
from shared.replay_advice import CAUSES, HOST_MOVED, SENDER_IDENTITY
from shared.settings import Settings
from shared.status import StatusStore
from tests.e2e.conftest import ADMIN_KEY, Queues, RunningHost, wait_for
from tests.e2e.test_mail_flow import accept, dead_letter_for, mails_for
from tests.samples import envelope

# Set by .ci/run: there the browser tests must run, never be skipped.
REQUIRE_BROWSER = "MAILGATE_REQUIRE_BROWSER"
# As root, in a sandbox without a network: no sandbox, no GPU, and none of the background
# connections Chromium would make to Google's hosts (a closed network refuses each one).
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The page refreshes its summary every 5 s: a state change shows within two refreshes.
PAGE_TIMEOUT_MS = 20_000
# For expectations that wait on the next refresh, or on an activity row: the gateway writes
# those in the background up to 0.5 s after the status record (shared/activity.py), so a page
# opened in between shows them only a refresh later. Playwright's expect() waits 5 s by default.
REFRESHED_MS = 15_000


def find_chromium() -> str | None:
    """Debian's Chromium, if this machine has it."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium, started once for the module (Playwright downloads no browser)."""
    executable = find_chromium()
    if executable is None:
        how = "apt-get install chromium chromium-driver"
        if os.environ.get(REQUIRE_BROWSER):
            pytest.fail(f"{REQUIRE_BROWSER} is set but there is no chromium on PATH ({how})")
        pytest.skip(
            f"DID NOT RUN: the console browser tests need Chromium, and there is none on PATH; "
            f"install it ({how}) to run them"
        )
    with sync_playwright() as playwright:
        # Playwright gives each launch a fresh, empty profile (--user-data-dir) of its own.
        running = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_FLAGS
        )
        yield running
        running.close()


class OpenedPage:
    """A page with every console error and uncaught exception it produced."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error" and not is_sign_in_probe(message):
            self.errors.append(f"console: {message.text} at {message.location}")


# Without a key in the tab the page first asks the signed-in routes whether the platform signed
# the operator in; without App Service Authentication the answer is 401, which Chromium reports
# as a failed resource load. That one answer is expected; any other is an error.
SIGN_IN_PROBE = "/api/signed-in/v1/console/summary"


def is_sign_in_probe(message: ConsoleMessage) -> bool:
    """Whether the message is Chromium's report of the page's sign-in probe answered 401."""
    return (
        message.text.startswith("Failed to load resource")
        and "status of 401" in message.text
        and str(message.location.get("url", "")).endswith(SIGN_IN_PROBE)
    )


@pytest.fixture
def console_page(browser: Browser) -> Iterator[OpenedPage]:
    """A fresh browser page for the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = OpenedPage(context.new_page())
    opened.page.set_default_timeout(PAGE_TIMEOUT_MS)
    yield opened
    context.close()


def open_console(opened: OpenedPage, host: RunningHost, key: str = ADMIN_KEY) -> Page:
    """The console as an operator opens it: the page, then the admin key typed into its form."""
    page = opened.page
    response = page.goto(f"{host.base_url}/api/console")
    assert response is not None
    assert response.status == 200
    enter_key(page, key)
    return page


def enter_key(page: Page, key: str) -> None:
    """Type the admin key into the page's form and send it."""
    expect(page.locator("#key-form")).to_be_visible()
    page.fill("#key-input", key)
    page.click("#key-form button[type=submit]")


def latest_ids(host: RunningHost) -> list[str]:
    """The ids of the console summary's latest messages (those with the newest activity rows)."""
    response = host.admin("GET", "/api/v1/console/summary")
    assert response.status_code == 200, response.text
    return [message["id"] for message in response.json()["latest"]]


def activity_states(host: RunningHost, message_id: str) -> list[str]:
    """The outcomes the activity log holds for a message, oldest first."""
    response = host.admin("GET", f"/api/v1/console/messages/{message_id}")
    assert response.status_code == 200, response.text
    return [event["state"] for event in response.json()["activity"]]


def screenshot(page: Page, folder: Path, name: str = "console.png") -> Path:
    """A full-page screenshot in the test's output folder; its path is printed."""
    path = folder / name
    page.screenshot(path=str(path), full_page=True)
    print(f"console screenshot: {path}")
    return path


def test_should_serve_the_same_keyless_page_to_anyone_and_its_data_only_with_the_admin_key(
    stack: RunningHost,
) -> None:
    anyone = httpx.get(f"{stack.base_url}/api/console", timeout=10)
    with_key = httpx.get(f"{stack.base_url}/api/console?code={ADMIN_KEY}", timeout=10)
    summary = f"{stack.base_url}/api/v1/console/summary"
    without = httpx.get(summary, timeout=10)
    wrong = httpx.get(summary, headers={"x-functions-key": "not-the-key"}, timeout=10)

    assert (anyone.status_code, with_key.status_code) == (200, 200)
    assert anyone.text == with_key.text
    assert ADMIN_KEY not in with_key.text
    assert anyone.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "script-src 'sha256-" in anyone.headers["Content-Security-Policy"]
    assert (without.status_code, wrong.status_code) == (401, 401)


def test_should_show_depths_the_hour_and_a_message_sent_with_no_console_error(
    stack: RunningHost, standin: SendGridStandIn, console_page: OpenedPage, tmp_path: Path
) -> None:
    sent_id = accept(stack, subject="Shown on the console")
    wait_for(lambda: stack.status(sent_id)["status"] == "sent")
    # Its activity row follows the status record by up to half a second.
    wait_for(lambda: sent_id in latest_ids(stack))

    page = open_console(console_page, stack)

    expect(page.locator(f'#latest tr[data-id="{sent_id}"] .state')).to_have_text(
        "sent", timeout=REFRESHED_MS
    )
    expect(page.locator("#depth-mail")).to_have_text(re.compile(r"^\d+$"))
    expect(page.locator("#depth-poison")).to_have_text("0")
    expect(page.locator("#name-mail")).to_have_text("mail-e2e")
    expect(page.locator("#chart svg#chart-svg g.minute")).to_have_count(60)
    assert page.locator("#chart svg rect.bar-sent").count() >= 1
    expect(page.locator("#total-sent")).to_have_text(re.compile(r"^[1-9]\d*$"))
    expect(page.locator("#updated")).to_contain_text("updated")
    expect(page.locator("#dead-empty")).to_be_visible()
    screenshot(page, tmp_path)
    assert console_page.errors == []


def test_should_show_a_dead_letters_timeline_and_resend_it_when_replayed_from_the_page(
    stack: RunningHost,
    standin: SendGridStandIn,
    queues: Queues,
    console_page: OpenedPage,
    tmp_path: Path,
) -> None:
    # SendGrid's own refusal of an unverified sender: fixed (verified) before the replay.
    standin.script([UNVERIFIED_SENDER_REFUSAL])
    dead_id = accept(stack, subject="Refused, then replayed")
    wait_for(lambda: dead_letter_for(queues, dead_id))
    wait_for(lambda: stack.status(dead_id)["status"] == "failed")
    # The timeline lists the dead-lettering from its activity row, written just after.
    wait_for(lambda: activity_states(stack, dead_id) == ["failed"])

    page = open_console(console_page, stack)
    row = page.locator(f'#dead-letters tr[data-id="{dead_id}"]')
    reason = row.locator(".reason")
    expect(reason).to_contain_text("SendGrid refused the message with 403: The from address")
    expect(reason).to_contain_text("(field from)")
    expect(reason.locator(".hint")).to_have_text(
        "replay after a fix: " + CAUSES[SENDER_IDENTITY].action
    )
    expect(page.locator("#depth-poison")).to_have_text("1")
    page.fill("#search-id", dead_id)
    page.click("#search-form button[type=submit]")
    timeline = page.locator(f'#timeline[data-id="{dead_id}"][data-state="failed"]')
    expect(timeline).to_be_visible()
    expect(timeline.locator("li .what")).to_have_text(
        ["accepted", "dead-lettered (attempt 1)", "failed now, after 1 attempt(s)"]
    )
    expect(timeline).to_contain_text("last error 403: SendGrid refused the message with 403")
    expect(timeline).to_contain_text("(replay after a fix: Verify the sender in SendGrid")
    assert mails_for(standin, dead_id) == []
    screenshot(page, tmp_path, "console-before-replay.png")

    row.locator("button.replay").click()

    expect(page.locator("#notice")).to_contain_text(f"Replayed {dead_id}")
    [mail] = wait_for(lambda: mails_for(standin, dead_id), timeout=20)
    assert mail["payload"]["subject"] == "Refused, then replayed"
    wait_for(lambda: stack.status(dead_id)["status"] == "sent", timeout=20)
    wait_for(lambda: activity_states(stack, dead_id) == ["failed", "sent"])
    # Shown at the page's next refresh of the summary.
    expect(page.locator(f'#latest tr[data-id="{dead_id}"] .state')).to_have_text(
        "sent", timeout=REFRESHED_MS
    )
    expect(page.locator("#dead-empty")).to_be_visible()
    expect(page.locator("#depth-poison")).to_have_text("0")
    page.click(f'#latest tr[data-id="{dead_id}"] button.link')
    expect(page.locator(f'#timeline[data-id="{dead_id}"][data-state="sent"]')).to_be_visible()
    expect(page.locator("#timeline li .what").last).to_have_text("sent now, after 1 attempt(s)")
    screenshot(page, tmp_path)
    assert queues.poison_records() == []
    assert console_page.errors == []


def test_should_list_dead_letters_a_page_at_a_time_with_the_hosts_reason(
    azurite: Azurite, stack: RunningHost, queues: Queues, console_page: OpenedPage, tmp_path: Path
) -> None:
    # More than one listing call's worth of messages the host moved (bare envelopes, base64).
    poison = QueueClient.from_connection_string(
        azurite.connection_string,
        queues.poison.queue_name,
        message_encode_policy=TextBase64EncodePolicy(),
    )
    with contextlib.suppress(ResourceExistsError):
        poison.create_queue()
    # As after the gateway's first accept, which dead letters follow: its status table exists.
    StatusStore.from_settings(Settings.from_env(stack.settings)).ensure_exists()
    ids = [f"moved-{number:03}" for number in range(130)]
    # The stack's own client and a sender it may use: a replay checks both again.
    sender: dict[str, Any] = {"from": "app@example.com"}
    for id in ids:
        moved = envelope(id=id, attempt=2, **sender).model_copy(
            update={"client": stack.client_name}
        )
        poison.send_message(moved.to_json())

    page = open_console(console_page, stack)

    rows = page.locator("#dead-letters tbody tr")
    expect(rows).to_have_count(100)
    reason = rows.first.locator(".reason")
    expect(reason.locator("span").first).to_have_text(
        "moved to the poison queue by the Functions host after 5 dequeues"
    )
    expect(reason.locator(".hint")).to_have_text("replay after a fix: " + CAUSES[HOST_MOVED].action)
    page.click("#dead-more")
    expect(rows).to_have_count(130)
    expect(page.locator("#dead-more")).to_be_hidden()
    shown = page.locator("#dead-letters tbody tr").evaluate_all(
        "rows => rows.map(row => row.dataset.id)"
    )
    assert sorted(shown) == ids
    screenshot(page, tmp_path)
    # The listing released what it read behind the rest: the last one is now past the first
    # call of a replay walk, which goes on until it meets it.
    page.locator('#dead-letters tr[data-id="moved-129"] button.replay').click()
    expect(page.locator("#notice")).to_contain_text("Replayed moved-129")
    assert console_page.errors == []
