"""While a setting is wrong the app still runs every function, and each answers for itself.

In Azure an exception at import leaves the host running with no function at all (every route
a 404, which SendGrid's libraries do not retry; the queue monitor silent). So settings are read
on first use, and while they are wrong: every route that needs them answers 503 naming the
settings (never their values) with Retry-After; deliveries put the message back for later,
unsent; the queue monitor logs an ERROR (tests/functions/test_monitor.py).
"""

from __future__ import annotations

import json
import logging

import azure.functions as func
import pytest
from azure.functions.decorators.function_app import Function
from azure.functions.decorators.http import HttpTrigger
from azure.functions.queue import QueueMessage

from functions.delivery import deliver_message
from shared.errors import ConfigurationError
from tests.fakes import FakeMailQueue
from tests.functions.conftest import APP_AUTH, UNRESOLVED_KEY
from tests.functions.test_auth import HTTP_FUNCTIONS, call
from tests.samples import envelope

# Routes that read no setting: they serve what is built into the app, whatever the settings.
STATIC_ROUTES = {
    "openapi": "the API's description, built from the code",
    "console": "the console's page; its data comes from routes that answer 503 meanwhile",
}
# Routes anyone may call: 503 while the settings are wrong, but naming none of them (the
# names are for the admin key, on health_details; tests/security/test_health_disclosure.py).
PUBLIC_ROUTES = {"health": "load balancers' probe"}
ROUTES = [route for route in HTTP_FUNCTIONS if route[0] not in STATIC_ROUTES | PUBLIC_ROUTES.keys()]


def dead_letter_request(trigger: HttpTrigger) -> func.HttpRequest:
    """A valid request to a dead-letter operation: every dead letter, confirmed."""
    return func.HttpRequest(
        method="POST",
        url=f"http://localhost:7071/api/{trigger.route}",
        headers={"Content-Type": "application/json"},
        body=b'{"all": true, "confirm": "mail-outbound-poison"}',
    )


def test_should_cover_every_route_that_is_not_static() -> None:
    assert {name for name, _, _ in HTTP_FUNCTIONS} - {name for name, _, _ in ROUTES} == set(
        STATIC_ROUTES
    ) | set(PUBLIC_ROUTES)
    assert len(ROUTES) >= 10


@pytest.mark.usefixtures("misconfigured")
@pytest.mark.parametrize(("name", "trigger", "function"), ROUTES, ids=[r[0] for r in ROUTES])
def test_should_answer_503_naming_the_settings_but_not_their_values(
    name: str, trigger: HttpTrigger, function: Function
) -> None:
    # Admin routes' keys are the host's to check, before the function runs.
    if (trigger.route or "").startswith("v1/dead-letters/"):
        response = function.get_user_function()(dead_letter_request(trigger))
    else:
        response = call(function, trigger, APP_AUTH)

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "60"
    text = response.get_body().decode()
    assert "SENDGRID_API_KEY" in text
    assert "ALLOWED_SENDERS" in text
    assert UNRESOLVED_KEY not in text
    assert "vault.azure.net" not in text
    if (trigger.route or "").startswith("v3/"):
        # SendGrid's own error format, which its libraries read.
        assert "SENDGRID_API_KEY" in json.loads(text)["errors"][0]["message"]
    else:
        assert response.mimetype == "application/problem+json"
        assert json.loads(text)["status"] == 503


@pytest.mark.usefixtures("misconfigured")
def test_should_log_the_settings_error_once_a_minute_not_per_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    [(_, trigger, function)] = [r for r in ROUTES if r[0] == "submit_message"]

    with caplog.at_level(logging.ERROR):
        for _ in range(5):
            assert call(function, trigger, APP_AUTH).status_code == 503

    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].startswith("Gateway not configured: SENDGRID_API_KEY")


@pytest.mark.usefixtures("misconfigured")
def test_should_put_a_queued_message_back_for_later_unsent(
    fallback_queue: FakeMailQueue,
) -> None:
    queued = envelope(id="msg-later")
    message = QueueMessage(
        id="q-1", body=queued.to_json().encode(), dequeue_count=4, pop_receipt="pr-1"
    )

    # Returns normally, so the host deletes its copy and counts no failure towards its poison
    # move: the copy put back starts again at a dequeue count of 0.
    deliver_message(message)

    [back] = fallback_queue.messages
    assert json.loads(back.text) == {**json.loads(queued.to_json()), "postponed": 1}
    assert back.delay_seconds >= 8
    assert fallback_queue.poison_texts == []


@pytest.mark.usefixtures("storage_misconfigured")
def test_should_raise_to_the_host_when_not_even_the_queue_can_be_reached() -> None:
    message = QueueMessage(id="q-2", body=envelope().to_json().encode(), pop_receipt="pr-2")

    with pytest.raises(ConfigurationError, match="AzureWebJobsStorage is not set"):
        deliver_message(message)
