"""End to end in identity mode: tokens that expire while the gateway runs are replaced before
any storage call uses one past its expiry.

An app instance here gets tokens that live 10 s from its own identity endpoint. Every cache on
the way refreshes a token within 5 minutes of its expiry (azure-core's BearerTokenCredentialPolicy
DEFAULT_REFRESH_WINDOW_SECONDS, MSAL's ManagedIdentityClient, the gateway's own storage path),
so with lifetimes that short each call asks for a fresh one; a layer that kept a token, or
refreshed it only once it was refused, would send an expired token, which Azurite refuses
(tests/devstack/test_identity_mode.py shows it does).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from devstack.identity_endpoint import IdentityEndpoint
from devstack.sendgrid_standin import SendGridStandIn
from tests.e2e.conftest import RunningHost, wait_for
from tests.e2e.identity.conftest import IdentityStack, identity_host_settings, storage_requests
from tests.e2e.test_mail_flow import accept, mails_for

TOKEN_LIFETIME_SECONDS = 10
REFRESH_QUEUE = "mail-refresh"


@pytest.fixture(scope="module")
def short_lived_tokens() -> Iterator[IdentityEndpoint]:
    """The identity endpoint of another instance of the app, whose tokens live 10 s."""
    with IdentityEndpoint(token_lifetime_seconds=TOKEN_LIFETIME_SECONDS) as running:
        yield running


@pytest.fixture(scope="module")
def refreshing_host(
    identity_stack: IdentityStack,
    standin: SendGridStandIn,
    short_lived_tokens: IdentityEndpoint,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningHost]:
    """The gateway on a queue of its own, with the short-lived tokens."""
    settings = identity_host_settings(identity_stack, standin, short_lived_tokens)
    settings["MAIL_QUEUE_NAME"] = REFRESH_QUEUE
    running = RunningHost(settings, tmp_path_factory.mktemp("refresh-host"))
    yield running
    running.stop()


def claims_of(authorization: str) -> dict[str, Any]:
    """The claims of a `Bearer <JWT>` header, unverified, as Azurite reads them."""
    decoded: dict[str, Any] = jwt.decode(
        authorization.removeprefix("Bearer "), options={"verify_signature": False}
    )
    return decoded


def delivered(host: RunningHost) -> str:
    """Accept a message and wait until it is sent; its id."""
    message_id = accept(host)
    wait_for(lambda: host.status(message_id)["status"] == "sent", timeout=20)
    return message_id


def test_should_refresh_tokens_that_expire_mid_run_without_a_failed_call(
    refreshing_host: RunningHost,
    short_lived_tokens: IdentityEndpoint,
    standin: SendGridStandIn,
    identity_stack: IdentityStack,
) -> None:
    standin.reset()
    before = delivered(refreshing_host)
    first = short_lived_tokens.issued[0]

    # The host keeps polling meanwhile; then a mail goes through after the first token expired.
    wait_for(lambda: time.time() > first.expires_on + 1, timeout=TOKEN_LIFETIME_SECONDS + 15)
    after = delivered(refreshing_host)

    later = [t for t in short_lived_tokens.issued if t.issued_at > first.expires_on]
    assert later, "no token was issued after the first one expired"
    # Every request of this instance (tokens that live 10 s), as Azurite received it.
    requests = [
        (request, claims_of(request.authorization))
        for request in storage_requests(identity_stack.debug_log)
        if request.authorization.startswith("Bearer ")
    ]
    short = [(r, c) for r, c in requests if c["exp"] - c["iat"] == TOKEN_LIFETIME_SECONDS]
    past_first = [r for r, _ in short if r.at.timestamp() > first.expires_on]
    assert past_first, "the instance made no storage call after its first token expired"
    assert {r.service for r in past_first} >= {"Queue", "Table"}
    expired = [(r.method, r.url) for r, c in short if c["exp"] <= r.at.timestamp()]
    assert expired == []
    assert "AuthenticationFailed" not in identity_stack.debug_log.read_text(errors="replace")
    log = refreshing_host.log()
    for failure in ("Polling queue", "Cannot", "StorageUnavailable", "Traceback", "ERROR"):
        assert failure not in log
    assert [len(mails_for(standin, id)) for id in (before, after)] == [1, 1]
