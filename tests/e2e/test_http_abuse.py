"""End to end: hostile HTTP requests through the local host, Azurite and the real gateway.

The threats are told in tests/security/; here they go through the whole stack once: an oversized
Event Webhook body refused by its length, the anonymous health probe against the admin's
details, and a refused key in the host's log as the refusal log writes it, with the caller's
address as the front end gives it (the local host sets `client-ip` as App Service does).
Ids that Table storage refuses as keys are not here: Azurite accepts `#`, `?`, a backslash and
control characters in keys, which Azure refuses; tests/security/test_id_probing.py plays that.
"""

from __future__ import annotations

import re
import secrets
import uuid

from shared.clients import ClientStore
from shared.webhook_signature import MAX_EVENT_BATCH_BYTES
from tests.e2e.conftest import ADMIN_KEY, RunningHost, wait_for


def test_should_refuse_an_oversized_event_webhook_body_with_413(stack: RunningHost) -> None:
    response = stack.http.post(
        "/api/v1/events/sendgrid",
        content=b"[" + b" " * MAX_EVENT_BATCH_BYTES + b"]",
        headers={"Content-Type": "application/json"},
    )

    assert response.status_code == 413
    assert response.headers["Content-Type"].startswith("application/problem+json")


def test_should_show_the_health_details_to_the_admin_key_only(stack: RunningHost) -> None:
    anonymous = stack.http.get("/api/health", headers={"x-functions-key": "a guess"})
    refused = stack.http.get("/api/health/details", headers={"x-functions-key": "a guess"})
    admin = stack.http.get("/api/health/details", headers={"x-functions-key": ADMIN_KEY})

    assert anonymous.json() == {"status": "healthy"}
    assert refused.status_code == 401
    assert admin.json()["queues"] == {"mail-e2e": 0, "mail-e2e-poison": 0}


def test_should_log_a_refused_key_with_its_client_and_address_but_never_the_key(
    stack: RunningHost, clients: ClientStore
) -> None:
    name = f"audit-{secrets.token_hex(4)}"
    _, key = clients.create(name, "@apps.example.com")
    clients.set_enabled(name, False)

    for _ in range(3):
        response = stack.http.get(
            f"/api/v1/messages/{uuid.uuid4()}",
            headers={**stack.client_headers(key), "client-ip": "203.0.113.99:4444"},
        )
        assert response.status_code == 401

    line = wait_for(
        lambda: re.search(
            rf"Requests refused: route=get_message_status status=401 client={name} .*", stack.log()
        )
    )
    # The address is the peer's, as the front end writes it, not what the caller claimed.
    assert line[0].endswith(f"client={name} address=127.0.0.1 count=1")
    assert key not in stack.log()
