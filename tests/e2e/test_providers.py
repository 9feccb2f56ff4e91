"""Mail through the whole local stack to a real SMTP relay (aiosmtpd with STARTTLS and AUTH):
the smtp provider alone, and SendGrid failing over to it."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from devstack.azurite import Azurite
from devstack.sendgrid_standin import SendGridStandIn
from tests.e2e.conftest import RunningHost, gateway_settings, wait_for
from tests.e2e.test_console import OpenedPage, browser, console_page, open_console  # noqa: F401 (fixtures)
from tests.smtp_relay import PASSWORD, USERNAME, SmtpRelay

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 4
PNG = b"\x89PNG\r\n\x1a\n" + bytes(64)


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpRelay]:
    with SmtpRelay(tmp_path_factory.mktemp("relay")) as running:
        yield running


@pytest.fixture(scope="module")
def own_standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SendGridStandIn]:
    """A stand-in of the module's own: its scripts reach no other test's host."""
    with SendGridStandIn(outbox=tmp_path_factory.mktemp("providers-outbox")) as running:
        yield running


def provider_host(
    azurite: Azurite,
    standin: SendGridStandIn,
    relay: SmtpRelay,
    folder: Path,
    providers: str,
    queue: str,
) -> RunningHost:
    return RunningHost(
        {
            **gateway_settings(azurite.connection_string, standin),
            "MAIL_QUEUE_NAME": queue,
            "MAIL_PROVIDERS": providers,
            "SMTP_HOST": relay.host,
            "SMTP_PORT": str(relay.port),
            "SMTP_USERNAME": USERNAME,
            "SMTP_PASSWORD": PASSWORD,
            # The worker trusts the relay's test CA (and the public ones) through OpenSSL's
            # default verify paths, as it would trust a relay's real certificate in Azure.
            "SSL_CERT_FILE": str(relay.ca_bundle),
        },
        folder,
    )


@pytest.fixture(scope="module")
def smtp_host(
    azurite: Azurite,
    own_standin: SendGridStandIn,
    relay: SmtpRelay,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningHost]:
    host = provider_host(
        azurite, own_standin, relay, tmp_path_factory.mktemp("smtp-host"), "smtp", "mail-smtp"
    )
    yield host
    host.stop()


@pytest.fixture(scope="module")
def failover_host(
    azurite: Azurite,
    own_standin: SendGridStandIn,
    relay: SmtpRelay,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningHost]:
    host = provider_host(
        azurite,
        own_standin,
        relay,
        tmp_path_factory.mktemp("failover-host"),
        "sendgrid,smtp",
        "mail-failover",
    )
    yield host
    host.stop()


def full_mail(subject: str) -> dict[str, Any]:
    return {
        "from": "App <app@example.com>",
        "to": ["Ann <ann@example.net>"],
        "cc": ["carol@example.net"],
        "bcc": ["dee@example.net"],
        "reply_to": "support@example.com",
        "subject": subject,
        "text": "Plain body ✓",
        "html": '<p>HTML body <img src="cid:logo"></p>',
        "headers": {"X-Campaign": "spring"},
        "attachments": [
            {
                "filename": "report.pdf",
                "content": base64.b64encode(PDF).decode(),
                "content_type": "application/pdf",
            },
            {
                "filename": "logo.png",
                "content": base64.b64encode(PNG).decode(),
                "content_type": "image/png",
                "disposition": "inline",
                "content_id": "logo",
            },
        ],
    }


def settled(host: RunningHost, message_id: str) -> dict[str, Any]:
    """The message's status once it is sent or failed."""

    def final() -> dict[str, Any] | None:
        status = host.status(message_id)
        return status if status["status"] in ("sent", "failed") else None

    return wait_for(final, timeout=30)


def accepted(host: RunningHost, mail: dict[str, Any]) -> str:
    response = host.post_message(mail)
    assert response.status_code == 202, response.text
    message_id: str = response.json()["id"]
    return message_id


def test_should_deliver_everything_a_mail_carries_through_the_smtp_relay(
    smtp_host: RunningHost, relay: SmtpRelay, own_standin: SendGridStandIn
) -> None:
    relay.reset()
    own_standin.reset()

    message_id = accepted(smtp_host, full_mail("By relay alone"))
    status = settled(smtp_host, message_id)

    assert status["status"] == "sent"
    assert status["provider"] == "smtp"
    assert status["providers_tried"] == ["smtp"]
    assert "sendgrid_message_id" not in status
    [mail] = [m for m in relay.mails if m.message["Subject"] == "By relay alone"]
    assert status["provider_message_id"] == mail.message["Message-ID"]
    assert mail.mail_from == "app@example.com"
    assert mail.rcpt_tos == ("ann@example.net", "carol@example.net", "dee@example.net")
    received = mail.message
    assert received["To"] == "Ann <ann@example.net>"
    assert received["Cc"] == "carol@example.net"
    assert received["Bcc"] is None
    assert b"dee@" not in mail.content
    assert received["Reply-To"] == "support@example.com"
    assert received["X-Campaign"] == "spring"
    plain = received.get_body(("plain",))
    html = received.get_body(("html",))
    assert plain is not None
    assert html is not None
    assert plain.get_content().strip() == "Plain body ✓"
    assert "HTML body" in html.get_content()
    attachments = {a.get_filename(): a.get_content() for a in received.iter_attachments()}
    assert attachments == {"report.pdf": PDF}
    [image] = [p for p in received.walk() if p["Content-ID"] == "<logo>"]
    assert image.get_content() == PNG
    assert own_standin.mails() == []


def test_should_refuse_with_422_what_the_relay_cannot_carry(smtp_host: RunningHost) -> None:
    response = smtp_host.post_message(
        {
            "from": "app@example.com",
            "to": ["ann@example.net"],
            "subject": "s",
            "text": "t",
            "categories": ["orders"],
        }
    )

    assert response.status_code == 422
    assert [e["pointer"] for e in response.json()["errors"]] == ["#/categories"]


def test_should_send_the_next_attempt_by_smtp_when_sendgrid_answers_503(
    failover_host: RunningHost, relay: SmtpRelay, own_standin: SendGridStandIn
) -> None:
    relay.reset()
    own_standin.reset()
    own_standin.script([{"status": 503, "body": {"errors": [{"message": "busy"}]}}])

    message_id = accepted(failover_host, full_mail("Failed over"))
    status = settled(failover_host, message_id)

    assert status["status"] == "sent"
    assert status["attempts"] == 2
    assert status["provider"] == "smtp"
    assert status["providers_tried"] == ["sendgrid", "smtp"]
    assert [m.message["Subject"] for m in relay.mails] == ["Failed over"]
    # SendGrid was asked once, refused, and sent nothing: one copy in all.
    assert len(own_standin.requests()) == 1
    assert own_standin.mails() == []
    console = failover_host.admin("GET", f"/api/v1/console/messages/{message_id}")
    assert console.status_code == 200
    assert console.json()["status"]["providers_tried"] == ["sendgrid", "smtp"]
    assert console.json()["status"]["provider"] == "smtp"


def test_should_not_fail_over_a_permanent_sendgrid_refusal(
    failover_host: RunningHost, relay: SmtpRelay, own_standin: SendGridStandIn
) -> None:
    relay.reset()
    own_standin.reset()
    unverified = {
        "message": "The from address does not match a verified Sender Identity.",
        "field": "from",
    }
    own_standin.script([{"status": 403, "body": {"errors": [unverified]}}])

    message_id = accepted(failover_host, full_mail("Refused for good"))
    status = settled(failover_host, message_id)

    assert status["status"] == "failed"
    assert status["attempts"] == 1
    assert status["providers_tried"] == ["sendgrid"]
    assert "provider" not in status
    assert status["last_error"]["cause"] == "sender_identity"
    assert relay.mails == []


def test_should_keep_a_sendgrid_only_mail_on_sendgrid_when_it_fails(
    failover_host: RunningHost, relay: SmtpRelay, own_standin: SendGridStandIn
) -> None:
    relay.reset()
    own_standin.reset()
    own_standin.script([{"status": 503}])

    mail = {**full_mail("Categorised"), "categories": ["orders"]}
    message_id = accepted(failover_host, mail)
    status = settled(failover_host, message_id)

    assert status["status"] == "sent"
    assert status["providers_tried"] == ["sendgrid"]
    assert status["provider"] == "sendgrid"
    assert relay.mails == []
    assert len(own_standin.mails()) == 1


def test_should_show_on_the_console_which_provider_sent_a_mail_and_which_were_tried(
    failover_host: RunningHost,
    own_standin: SendGridStandIn,
    console_page: OpenedPage,  # noqa: F811 (the fixture imported above)
) -> None:
    own_standin.reset()
    own_standin.script([{"status": 503}])
    message_id = accepted(failover_host, full_mail("Shown with its providers"))
    assert settled(failover_host, message_id)["provider"] == "smtp"

    page = open_console(console_page, failover_host)
    page.fill("#search-id", message_id)
    page.click("#search-form button[type=submit]")

    timeline = page.locator(f'#timeline[data-id="{message_id}"][data-state="sent"]')
    expect(timeline).to_contain_text("sent by smtp")
    expect(timeline).to_contain_text("tried sendgrid, smtp")
    assert console_page.errors == []
