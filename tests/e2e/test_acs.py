"""Mail through the whole local stack to the ACS Email stand-in (which checks the SDK's HMAC
signature): the acs provider alone, and SendGrid failing over to it."""

from __future__ import annotations

import base64
import email
import email.policy
import json
from collections import Counter
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from devstack.acs_standin import AcsEmailStandIn
from devstack.azurite import Azurite
from devstack.sendgrid_standin import SendGridStandIn
from tests.e2e.conftest import RunningHost, gateway_settings, wait_for

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 4
PNG = b"\x89PNG\r\n\x1a\n" + bytes(64)
MAILS_IN_OUTAGE = 8


@pytest.fixture(scope="module")
def acs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AcsEmailStandIn]:
    with AcsEmailStandIn(outbox=tmp_path_factory.mktemp("acs-outbox")) as running:
        yield running


@pytest.fixture(scope="module")
def own_standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SendGridStandIn]:
    """A SendGrid stand-in of the module's own: its scripts reach no other test's host."""
    with SendGridStandIn(outbox=tmp_path_factory.mktemp("sendgrid-outbox")) as running:
        yield running


def acs_host(
    azurite: Azurite,
    standin: SendGridStandIn,
    acs: AcsEmailStandIn,
    folder: Path,
    providers: str,
    queue: str,
) -> RunningHost:
    return RunningHost(
        {
            **gateway_settings(azurite.connection_string, standin),
            "MAIL_QUEUE_NAME": queue,
            "MAIL_PROVIDERS": providers,
            "ACS_EMAIL_CONNECTION_STRING": acs.connection_string,
            "ACS_EMAIL_SENDERS": "@example.com",
        },
        folder,
    )


@pytest.fixture(scope="module")
def only_acs(
    azurite: Azurite,
    own_standin: SendGridStandIn,
    acs: AcsEmailStandIn,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningHost]:
    host = acs_host(
        azurite, own_standin, acs, tmp_path_factory.mktemp("acs-host"), "acs", "mail-acs"
    )
    yield host
    host.stop()


@pytest.fixture(scope="module")
def failover_host(
    azurite: Azurite,
    own_standin: SendGridStandIn,
    acs: AcsEmailStandIn,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningHost]:
    host = acs_host(
        azurite,
        own_standin,
        acs,
        tmp_path_factory.mktemp("acs-failover-host"),
        "sendgrid,acs",
        "mail-acs-failover",
    )
    yield host
    host.stop()


def full_mail(subject: str) -> dict[str, Any]:
    return {
        "from": "app@example.com",
        "to": ["Ann <ann@example.net>", "bob@example.net"],
        "cc": ["Carol <carol@example.net>"],
        "bcc": ["dee@example.net"],
        "reply_to": "Support <support@example.com>",
        "subject": subject,
        "text": "Plain body ✓",
        "html": '<p>HTML body ✓ <img src="cid:logo"></p>',
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
    def final() -> dict[str, Any] | None:
        status = host.status(message_id)
        return status if status["status"] in ("sent", "failed") else None

    return wait_for(final, timeout=40)


def accepted(host: RunningHost, mail: dict[str, Any]) -> str:
    response = host.post_message(mail)
    assert response.status_code == 202, response.text
    message_id: str = response.json()["id"]
    return message_id


def outbox_ids(acs: AcsEmailStandIn) -> Counter[str]:
    """Each operation id in the stand-in's outbox folder, with how many records it has."""
    return Counter(json.loads(p.read_text())["operation_id"] for p in acs.outbox.glob("*.json"))


def test_should_deliver_everything_a_mail_carries_through_acs(
    only_acs: RunningHost, acs: AcsEmailStandIn, own_standin: SendGridStandIn
) -> None:
    acs.reset()
    own_standin.reset()

    message_id = accepted(only_acs, full_mail("By ACS alone"))
    status = settled(only_acs, message_id)

    assert status["status"] == "sent", status
    assert status["provider"] == "acs"
    assert status["providers_tried"] == ["acs"]
    assert status["provider_message_id"] == message_id
    record = json.loads((acs.outbox / f"{message_id}.json").read_text())
    sent = record["payload"]
    assert sent["senderAddress"] == "app@example.com"
    assert sent["recipients"] == {
        "to": [
            {"address": "ann@example.net", "displayName": "Ann"},
            {"address": "bob@example.net"},
        ],
        "cc": [{"address": "carol@example.net", "displayName": "Carol"}],
        "bcc": [{"address": "dee@example.net"}],
    }
    assert sent["replyTo"] == [{"address": "support@example.com", "displayName": "Support"}]
    assert sent["content"] == {
        "subject": "By ACS alone",
        "plainText": "Plain body ✓",
        "html": '<p>HTML body ✓ <img src="cid:logo"></p>',
    }
    assert sent["headers"] == {"X-Campaign": "spring"}
    # The readable copy, parsed back: both bodies and both attachments, byte for byte.
    eml = email.message_from_bytes(
        (acs.outbox / f"{message_id}.eml").read_bytes(), policy=email.policy.default
    )
    assert isinstance(eml, EmailMessage)
    plain, html = eml.get_body(("plain",)), eml.get_body(("html",))
    assert plain is not None
    assert plain.get_content().strip() == "Plain body ✓"
    assert html is not None
    assert "HTML body ✓" in html.get_content()
    parts = {p.get_filename(): p for p in eml.walk() if p.get_filename()}
    assert parts["report.pdf"].get_content() == PDF
    assert parts["report.pdf"].get_content_disposition() == "attachment"
    assert parts["logo.png"].get_content() == PNG
    assert parts["logo.png"].get_content_disposition() == "inline"
    assert parts["logo.png"]["Content-ID"] == "<logo>"
    assert own_standin.mails() == []


def test_should_refuse_with_422_a_sender_acs_cannot_send_for(only_acs: RunningHost) -> None:
    foreign = {**full_mail("Not ours"), "from": "Billing <billing@apps.example.com>"}

    response = only_acs.post_message(foreign)

    assert response.status_code == 422, response.text
    assert [e["pointer"] for e in response.json()["errors"]] == ["#/from", "#/from/name"]


def test_should_dead_letter_a_mail_whose_acs_operation_fails(
    only_acs: RunningHost, acs: AcsEmailStandIn
) -> None:
    acs.reset()
    acs.script([{"operation": "Failed", "error": {"code": "EmailDropped", "message": "no"}}])

    message_id = accepted(only_acs, full_mail("Dropped by ACS"))
    status = settled(only_acs, message_id)

    assert status["status"] == "failed"
    assert status["attempts"] == 1
    assert status["last_error"]["cause"] == "acs_failed"
    assert message_id not in outbox_ids(acs)


def test_should_deliver_every_mail_by_acs_while_sendgrid_answers_503(
    failover_host: RunningHost, acs: AcsEmailStandIn, own_standin: SendGridStandIn
) -> None:
    acs.reset()
    own_standin.reset()
    # More 503s than the mails can ask for: SendGrid refuses everything it is sent.
    own_standin.script([{"status": 503}] * (3 * MAILS_IN_OUTAGE))
    before = outbox_ids(acs)

    ids = [accepted(failover_host, full_mail(f"Outage {n}")) for n in range(MAILS_IN_OUTAGE)]
    statuses = [settled(failover_host, message_id) for message_id in ids]
    own_standin.clear_script()

    assert [s["status"] for s in statuses] == ["sent"] * MAILS_IN_OUTAGE
    assert {s["provider"] for s in statuses} == {"acs"}
    assert all(s["providers_tried"] == ["sendgrid", "acs"] for s in statuses)
    # Nothing lost, nothing twice: each mail once in ACS's outbox, none at SendGrid.
    added = outbox_ids(acs) - before
    assert added == Counter({message_id: 1 for message_id in ids})
    assert own_standin.mails() == []
    assert [r["status"] for r in own_standin.requests()] == [503] * MAILS_IN_OUTAGE
