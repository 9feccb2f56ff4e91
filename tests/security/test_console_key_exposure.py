"""Threat: the Function App's admin (master) key leaks out of the operator console's address.

Attacker: whoever reads what an address leaves behind: a proxy's or gateway's access log, the
browser history of a shared machine, a bookmark, a pasted or screenshotted link, a Referer
header sent to another site. The master key manages every host key and invokes any function,
so the console used to be opened as `/api/console?code=<master key>` at that price.

What the gateway does: the page is public and the same for everyone, so it loads without the
key. It asks for the key in a form that cannot be submitted into an address, keeps it in this
tab's sessionStorage only (not localStorage, not a cookie), and sends it solely as the
`x-functions-key` header of its own requests to the operator routes. A key that still comes in
an old `?code=` link is taken out of the address before the page makes any request, and the page
sends no Referer. "Forget key" and a refused key drop it. With App Service Authentication in
front, an operator signed in with Microsoft Entra ID (and listed in OPERATOR_PRINCIPAL_IDS) uses
the console with no key at all; here the test plays the platform and adds its sign-in headers.

Runs headless Chromium against a host of the module's own (tests/e2e/test_console.py says how
the browser is found).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, Request, Route, expect

from devstack.azurite import Azurite
from devstack.sendgrid_standin import SendGridStandIn
from tests.e2e import conftest as e2e_fixtures
from tests.e2e import test_console as browser_fixtures
from tests.e2e.conftest import ADMIN_KEY, RunningHost, gateway_settings
from tests.e2e.test_console import OpenedPage, enter_key

# The end-to-end suite's fixtures, under their names: Azurite on free ports, headless Chromium.
azurite = e2e_fixtures.azurite
browser = browser_fixtures.browser

OPERATOR = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
KEY_ITEM = "mailgate-admin-key"
# The mail queue's depth, once the page has read it.
LOADED = re.compile(r"^\d+$")


@pytest.fixture(scope="module")
def console_host(
    azurite: Azurite, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningHost]:
    """A host of the module's own, with operator sign-in configured as infra/ configures it."""
    folder = tmp_path_factory.mktemp("console-key")
    with SendGridStandIn(outbox=folder / "outbox") as standin:
        host = RunningHost(
            {
                **gateway_settings(azurite.connection_string, standin),
                "MAIL_QUEUE_NAME": "mail-console-key",
                "STATUS_TABLE_NAME": "statusconsolekey",
                "CLIENT_TABLE_NAME": "clientsconsolekey",
                "LARGE_MESSAGE_CONTAINER_NAME": "large-console-key",
                "OPERATOR_PRINCIPAL_IDS": OPERATOR,
                # The platform's flag; the test plays the platform's sign-in where it needs one.
                "WEBSITE_AUTH_ENABLED": "True",
            },
            folder,
        )
        yield host
        host.stop()


class Traffic:
    """Every request a page made: its address and its headers."""

    def __init__(self, page: Page) -> None:
        self.requests: list[Request] = []
        page.on("request", self._record)

    def _record(self, request: Request) -> None:
        self.requests.append(request)

    def addresses(self) -> list[str]:
        return [request.url for request in self.requests]

    def carrying_the_key(self) -> list[str]:
        """Requests that carried the key anywhere but the x-functions-key header."""
        return [
            f"{request.method} {request.url}"
            for request in self.requests
            if ADMIN_KEY in request.url
            or any(
                ADMIN_KEY in value
                for name, value in request.all_headers().items()
                if name != "x-functions-key"
            )
        ]


@pytest.fixture
def opened(browser: Browser) -> Iterator[OpenedPage]:
    """A fresh browser context and page."""
    context = browser.new_context()
    page = OpenedPage(context.new_page())
    page.page.set_default_timeout(20_000)
    yield page
    context.close()


def storage(page: Page) -> dict[str, object]:
    """What the page keeps in the browser: its tab storage, its lasting storage, its cookies."""
    return {
        "session": page.evaluate(f"window.sessionStorage.getItem('{KEY_ITEM}')"),
        "local": page.evaluate("window.localStorage.length"),
        "cookie": page.evaluate("document.cookie"),
    }


def test_should_serve_the_page_without_the_key_and_its_data_only_with_the_key(
    console_host: RunningHost,
) -> None:
    base = console_host.base_url
    page = httpx.get(f"{base}/api/console", timeout=10)
    summary = httpx.get(f"{base}/api/v1/console/summary", timeout=10)
    dead_letters = httpx.get(f"{base}/api/v1/dead-letters", timeout=10)

    assert page.status_code == 200
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert page.headers["Cache-Control"] == "no-store"
    assert "form-action 'none'" in page.headers["Content-Security-Policy"]
    assert (summary.status_code, dead_letters.status_code) == (401, 401)


def test_should_ask_for_the_key_and_send_it_only_as_a_header_to_its_own_routes(
    console_host: RunningHost, opened: OpenedPage
) -> None:
    page = opened.page
    traffic = Traffic(page)
    page.goto(f"{console_host.base_url}/api/console")
    expect(page.locator("#main")).to_be_hidden()

    enter_key(page, ADMIN_KEY)

    expect(page.locator("#depth-mail")).to_have_text(LOADED)
    keyed = [r for r in traffic.requests if r.headers.get("x-functions-key") == ADMIN_KEY]
    assert keyed, "no request sent the key"
    assert {r.url.split("/api/", 1)[1].split("/")[0] for r in keyed} == {"v1"}
    assert all(r.url.startswith(f"{console_host.base_url}/api/v1/") for r in keyed)
    assert traffic.carrying_the_key() == []
    assert ADMIN_KEY not in page.url
    assert storage(page) == {"session": ADMIN_KEY, "local": 0, "cookie": ""}
    assert [r.url for r in traffic.requests if r.all_headers().get("referer")] == []
    assert opened.errors == []


def test_should_take_a_key_in_an_old_link_out_of_the_address_before_any_request(
    console_host: RunningHost, opened: OpenedPage
) -> None:
    page = opened.page
    traffic = Traffic(page)

    page.goto(f"{console_host.base_url}/api/console?code={ADMIN_KEY}&view=all")

    expect(page.locator("#depth-mail")).to_have_text(LOADED)
    assert page.url == f"{console_host.base_url}/api/console?view=all"
    # The navigation itself carried it (that is the harm of such links); nothing after it did.
    [navigation, *after] = traffic.requests
    assert ADMIN_KEY in navigation.url
    assert [f"{r.method} {r.url}" for r in after if ADMIN_KEY in r.url] == []
    assert storage(page)["session"] == ADMIN_KEY

    # The tab's history entry was rewritten too: going back and forward, or reloading, asks for
    # the address without the key (and the page finds the key in the tab's storage).
    page.go_back()
    page.go_forward()
    page.reload()

    expect(page.locator("#depth-mail")).to_have_text(LOADED)
    assert page.url == f"{console_host.base_url}/api/console?view=all"
    assert traffic.carrying_the_key() == [f"GET {navigation.url}"]


def test_should_keep_the_key_to_its_tab_and_drop_it_when_forgotten_or_refused(
    console_host: RunningHost, opened: OpenedPage
) -> None:
    page = opened.page
    page.goto(f"{console_host.base_url}/api/console")
    enter_key(page, ADMIN_KEY)
    expect(page.locator("#depth-mail")).to_have_text(LOADED)

    other_tab = page.context.new_page()
    other_tab.goto(f"{console_host.base_url}/api/console")
    expect(other_tab.locator("#key-form")).to_be_visible()
    assert storage(other_tab)["session"] is None
    other_tab.close()

    page.click("#forget-key")

    expect(page.locator("#key-form")).to_be_visible()
    expect(page.locator("#main")).to_be_hidden()
    assert storage(page)["session"] is None

    enter_key(page, "not-the-admin-key")

    expect(page.locator("#notice")).to_contain_text("The admin key was refused")
    expect(page.locator("#key-form")).to_be_visible()
    assert storage(page)["session"] is None


def test_should_open_for_a_signed_in_operator_with_no_key_at_all(
    console_host: RunningHost, opened: OpenedPage, tmp_path: Path
) -> None:
    page = opened.page
    traffic = Traffic(page)

    def as_the_platform(route: Route) -> None:
        # What App Service Authentication adds to each request of a signed-in operator.
        headers = {
            **route.request.headers,
            "x-ms-client-principal-id": OPERATOR,
            "x-ms-client-principal-idp": "aad",
        }
        route.continue_(headers=headers)

    page.route(f"{console_host.base_url}/api/**", as_the_platform)

    page.goto(f"{console_host.base_url}/api/console")

    expect(page.locator("#depth-mail")).to_have_text(LOADED)
    expect(page.locator("#access")).to_have_text("signed in with Microsoft Entra ID")
    expect(page.locator("#key-form")).to_be_hidden()
    expect(page.locator("#sign-out")).to_be_visible()
    assert [r for r in traffic.requests if "x-functions-key" in r.headers] == []
    assert any("/api/signed-in/v1/dead-letters" in url for url in traffic.addresses())
    assert storage(page) == {"session": None, "local": 0, "cookie": ""}
    page.screenshot(path=str(tmp_path / "console-signed-in.png"), full_page=True)
    assert opened.errors == []
