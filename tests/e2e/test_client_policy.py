"""End to end: per-client policy and the email rate, through the local host to the stand-in."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from python_http_client.exceptions import ForbiddenError
from sendgrid.helpers.mail import BypassListManagement, Mail, MailSettings

from devstack.sendgrid_standin import SendGridStandIn
from shared.clients import ClientStore
from tests.e2e.conftest import CLIENT_SENDERS, RunningHost, sendgrid_library, wait_for
from tests.e2e.test_mail_flow import mails_for


def bypassing_mail() -> Mail:
    """A mail that asks SendGrid to send past the account's suppression lists."""
    mail = Mail(
        from_email="app@example.com",
        to_emails="ann@customer.example.org",
        subject="Account notice",
        plain_text_content="Your account changed.",
    )
    settings = MailSettings()
    settings.bypass_list_management = BypassListManagement(True)
    mail.mail_settings = settings
    return mail


def new_client(clients: ClientStore, rate: int = 600, features: str = "") -> str:
    _, key = clients.create(f"policy-{uuid.uuid4().hex[:12]}", CLIENT_SENDERS, rate, features)
    return key


def test_should_refuse_bypass_list_management_with_403_naming_it_unless_allowed(
    stack: RunningHost, standin: SendGridStandIn, clients: ClientStore
) -> None:
    plain = new_client(clients)
    allowed = new_client(clients, features="mail_settings.bypass_list_management")

    with pytest.raises(ForbiddenError) as caught:
        sendgrid_library(stack, plain).send(bypassing_mail())
    response = sendgrid_library(stack, allowed).send(bypassing_mail())

    assert caught.value.status_code == 403
    [entry] = json.loads(caught.value.body)["errors"]
    assert entry["field"] == "mail_settings.bypass_list_management"
    assert "'mail_settings.bypass_list_management'" in entry["message"]
    assert response.status_code == 202
    message_id = response.headers["X-Message-Id"]
    [delivered] = wait_for(lambda: mails_for(standin, message_id))
    assert delivered["payload"]["mail_settings"] == {"bypass_list_management": {"enable": True}}
    # Only the allowed client's mail reached SendGrid.
    assert len(standin.requests()) == 1


def test_should_count_every_recipient_against_the_rate_and_answer_429_with_retry_after(
    stack: RunningHost, standin: SendGridStandIn, clients: ClientStore
) -> None:
    key = new_client(clients, rate=3)
    two = {
        "from": "app@example.com",
        "to": ["ann@customer.example.org"],
        "cc": ["bob@customer.example.org"],
        "subject": "Hello",
        "text": "Hi",
    }

    first = stack.post_message(two, key=key)
    second = stack.post_message(two, key=key)

    assert (first.status_code, second.status_code) == (202, 429)
    assert 0 < int(second.headers["Retry-After"]) <= 60
    assert "makes 2 and 1 are left" in second.json()["detail"]
    wait_for(lambda: mails_for(standin, first.json()["id"]))
    time.sleep(0.5)
    assert len(standin.requests()) == 1
