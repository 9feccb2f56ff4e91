"""End to end: an app whose settings are wrong still starts, answers 503 naming them, and keeps
the mail it finds on its queue for when they are right.

This is the state a first `azd up` leaves without the SendGrid key in Key Vault (or before the
identity's Key Vault role applies): App Service leaves the reference's text in the setting. In
Azure an import error would leave the host running no function at all, every route a 404.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from devstack.azurite import Azurite
from devstack.host_process import LocalHostProcess
from devstack.sendgrid_standin import SendGridStandIn
from shared.models import MailRequest, QueueEnvelope
from tests.e2e.conftest import ADMIN_KEY, Queues, RunningHost, gateway_settings, wait_for
from tests.e2e.test_mail_flow import full_message, mails_for

REFERENCE = "@Microsoft.KeyVault(SecretUri=https://x.vault.azure.net/secrets/y/)"
# A queue of its own: the session's host, polling the shared one, must not take this mail.
QUEUE = "mail-unconfigured-e2e"


@pytest.fixture
def unconfigured(
    azurite: Azurite, standin: SendGridStandIn, tmp_path: Path
) -> Iterator[LocalHostProcess]:
    """The gateway with its SendGrid key an unresolved reference and ALLOWED_SENDERS unset."""
    settings = {
        **gateway_settings(azurite.connection_string, standin),
        "MAIL_QUEUE_NAME": QUEUE,
        "SENDGRID_API_KEY": REFERENCE,
        "LOCAL_TIMER_SCHEDULE_monitor_queues": "*/2 * * * * *",
    }
    del settings["ALLOWED_SENDERS"]
    standin.reset()
    Queues(azurite.connection_string, QUEUE).clear()
    host = LocalHostProcess(settings, tmp_path, log_name="unconfigured")
    yield host
    host.stop()


def queue_as_accepted(queues: Queues) -> str:
    """Put a message on the queue as the accept does (base64 JSON envelope); its id."""
    message_id = str(uuid.uuid4())
    envelope = QueueEnvelope(
        id=message_id,
        accepted_at=datetime.now(timezone.utc),
        client="e2e",
        message=MailRequest.model_validate(full_message()),
    )
    queues.mail.send_message(base64.b64encode(envelope.to_json().encode()).decode())
    return message_id


def not_configured_errors(host: LocalHostProcess) -> list[str]:
    """The ERROR lines saying which settings are wrong."""
    return [
        line
        for line in host.log().splitlines()
        if " ERROR " in line and "Gateway not configured: SENDGRID_API_KEY" in line
    ]


def test_should_answer_503_naming_the_settings_on_every_route_and_health(
    unconfigured: LocalHostProcess,
) -> None:
    key = {"Authorization": "Bearer mg_e2e_" + "k" * 43}
    admin = {"x-functions-key": ADMIN_KEY}
    calls: list[tuple[str, str, dict[str, str], Any]] = [
        ("GET", "/api/health/details", admin, None),
        ("POST", "/api/v1/messages", key, full_message()),
        ("GET", f"/api/v1/messages/{uuid.uuid4()}", key, None),
        ("POST", "/api/v3/mail/send", key, {"personalizations": []}),
        ("GET", "/api/v1/dead-letters", admin, None),
        ("GET", "/api/v1/console/summary", admin, None),
    ]

    for method, path, headers, body in calls:
        response = unconfigured.http.request(method, path, headers=headers, json=body)

        assert response.status_code == 503, (path, response.text)
        assert response.headers["Retry-After"] == "60", path
        assert "SENDGRID_API_KEY" in response.text, path
        assert "ALLOWED_SENDERS" in response.text, path
        assert "vault.azure.net" not in response.text, path
    # Anyone's probe learns that much and no more: the names are for the admin key.
    probe = unconfigured.http.get("/api/health")
    assert (probe.status_code, probe.json()) == (503, {"status": "unhealthy"})
    assert probe.headers["Retry-After"] == "60"
    # Every function was indexed: a route that does not exist is still the host's 404.
    assert unconfigured.http.get("/api/no-such-route").status_code == 404
    assert unconfigured.http.get("/api/openapi.json").status_code == 200


def test_should_keep_queued_mail_unsent_and_deliver_it_once_the_settings_are_right(
    unconfigured: LocalHostProcess,
    azurite: Azurite,
    standin: SendGridStandIn,
    tmp_path: Path,
) -> None:
    queues = Queues(azurite.connection_string, QUEUE)

    message_id = queue_as_accepted(queues)

    wait_for(lambda: f"Message {message_id} put back for" in unconfigured.log())
    # The monitor, every 2 s here, logs the error on each run (requests, once a minute).
    wait_for(lambda: len(not_configured_errors(unconfigured)) >= 3)
    assert "Queue monitor: queue=mail-unconfigured-e2e-poison depth=0" in unconfigured.log()
    assert REFERENCE not in unconfigured.log()
    unconfigured.stop()
    assert standin.requests() == []
    assert queues.peek(queues.poison) == []

    # The operator fixes the settings; the app restarts.
    fixed = RunningHost(
        {**gateway_settings(azurite.connection_string, standin), "MAIL_QUEUE_NAME": QUEUE},
        tmp_path,
    )
    try:
        [mail] = wait_for(lambda: mails_for(standin, message_id), timeout=30)
        assert mail["payload"]["subject"] == "Your invoice 42"
    finally:
        fixed.stop()
    assert len(mails_for(standin, message_id)) == 1
