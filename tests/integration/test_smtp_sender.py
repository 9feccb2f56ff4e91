"""The smtp provider against a real relay (aiosmtpd): STARTTLS, AUTH, pooled connections, and
the relay's refusals as the gateway classifies them."""

from __future__ import annotations

import base64
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.errors import PermanentDeliveryError, RetryableDeliveryError
from shared.smtp_client import (
    MAX_CONNECTION_AGE_SECONDS,
    NOOP_AFTER_IDLE_SECONDS,
    SmtpSender,
)
from tests.samples import PNG_BASE64, envelope
from tests.smtp_relay import PASSWORD, USERNAME, SmtpRelay, free_port


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpRelay]:
    with SmtpRelay(tmp_path_factory.mktemp("relay")) as running:
        yield running


@pytest.fixture
def sender(relay: SmtpRelay) -> Iterator[SmtpSender]:
    relay.reset()
    smtp = SmtpSender(relay.host, relay.port, USERNAME, PASSWORD, timeout=5, tls=relay.client_tls())
    yield smtp
    smtp.close()


def test_should_deliver_recipients_headers_bodies_and_attachments_intact(
    relay: SmtpRelay, sender: SmtpSender
) -> None:
    queued = envelope(
        id="5b0e1c9a-7d2f-4e6b-8a3c-1f9d0e2b4c6a",
        to=["Ann <ann@example.net>"],
        cc=["carol@example.net"],
        bcc=["dee@example.net"],
        subject="Quarterly numbers",
        text="Plain body",
        html='<p>HTML body <img src="cid:logo"></p>',
        attachments=[
            {
                "filename": "report.pdf",
                "content": "JVBERi0xLjQK",
                "content_type": "application/pdf",
            },
            {
                "filename": "logo.png",
                "content": PNG_BASE64,
                "content_type": "image/png",
                "disposition": "inline",
                "content_id": "logo",
            },
        ],
    )

    message_id = sender.send(queued)

    [mail] = relay.mails
    assert mail.mail_from == "noreply@example.com"
    assert mail.rcpt_tos == ("ann@example.net", "carol@example.net", "dee@example.net")
    received = mail.message
    assert received["Message-ID"] == message_id == f"<{queued.id}@example.com>"
    assert received["To"] == "Ann <ann@example.net>"
    assert received["Bcc"] is None
    assert b"dee@example.net" not in mail.content
    assert received["Subject"] == "Quarterly numbers"
    assert received.get_body(("plain",)).get_content().strip() == "Plain body"  # type: ignore[union-attr]
    assert "HTML body" in received.get_body(("html",)).get_content()  # type: ignore[union-attr]
    attachments = {a.get_filename(): a for a in received.iter_attachments()}
    assert attachments["report.pdf"].get_content() == base64.b64decode("JVBERi0xLjQK")
    [image] = [p for p in received.walk() if p["Content-ID"] == "<logo>"]
    assert image.get_content() == base64.b64decode(PNG_BASE64)


def test_should_reuse_one_connection_for_mails_in_a_row(
    relay: SmtpRelay, sender: SmtpSender
) -> None:
    for index in range(3):
        sender.send(envelope(id=f"m-{index}"))

    assert len(relay.mails) == 3
    assert relay.connections == 1


def test_should_refuse_for_good_credentials_the_relay_refuses(relay: SmtpRelay) -> None:
    wrong = SmtpSender(relay.host, relay.port, USERNAME, "wrong", timeout=5, tls=relay.client_tls())

    with pytest.raises(PermanentDeliveryError) as refused:
        wrong.send(envelope())

    assert refused.value.cause == "smtp_auth"
    assert "535" in refused.value.reason
    assert "wrong" not in refused.value.reason


def test_should_retry_a_4xx_and_refuse_a_5xx_after_data(
    relay: SmtpRelay, sender: SmtpSender
) -> None:
    relay.answer_data("451 4.3.0 try again later", "550 5.7.1 <ann@example.net> rejected")

    with pytest.raises(RetryableDeliveryError) as later:
        sender.send(envelope(id="m-451"))
    with pytest.raises(PermanentDeliveryError) as refused:
        sender.send(envelope(id="m-550"))
    sender.send(envelope(id="m-250"))

    assert later.value.ambiguous is False
    assert refused.value.cause == "smtp_rejected"
    assert "ann@" not in refused.value.reason
    assert "*@example.net" in refused.value.reason
    assert len(relay.mails) == 1


def test_should_retry_when_nothing_listens(tmp_path: Path) -> None:
    nobody = SmtpSender("127.0.0.1", free_port(), USERNAME, PASSWORD, timeout=2)

    with pytest.raises(RetryableDeliveryError) as failed:
        nobody.send(envelope())

    assert failed.value.ambiguous is False
    assert failed.value.cause == "unavailable"


def test_should_retry_a_relay_whose_certificate_it_does_not_trust(relay: SmtpRelay) -> None:
    untrusting = SmtpSender(
        relay.host, relay.port, USERNAME, PASSWORD, timeout=5, tls=ssl.create_default_context()
    )

    with pytest.raises(RetryableDeliveryError):
        untrusting.send(envelope())


def test_should_send_without_starttls_only_to_a_loopback_relay(tmp_path: Path) -> None:
    # 127.0.0.2 reaches this machine too, but only the names the SendGrid URL's rule calls
    # loopback (localhost, 127.0.0.1, ::1) may be sent to in clear text.
    with (
        SmtpRelay(tmp_path, starttls=False) as near,
        SmtpRelay(tmp_path, starttls=False, host="127.0.0.2") as far,
    ):
        plain = SmtpSender(near.host, near.port, timeout=5)
        plain.send(envelope(id="m-plain"))
        plain.close()
        with pytest.raises(PermanentDeliveryError) as refused:
            SmtpSender(far.host, far.port, timeout=5).send(envelope(id="m-far"))

        assert len(near.mails) == 1
        assert far.mails == []
        assert refused.value.cause == "smtp_config"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_should_check_an_idle_connection_and_retire_an_old_one(relay: SmtpRelay) -> None:
    relay.reset()
    clock = Clock()
    sender = SmtpSender(
        relay.host, relay.port, USERNAME, PASSWORD, timeout=5, tls=relay.client_tls(), clock=clock
    )
    try:
        sender.send(envelope(id="m-a"))
        clock.now += NOOP_AFTER_IDLE_SECONDS + 1  # idle: NOOP, still the same session
        sender.send(envelope(id="m-b"))
        reused = relay.connections
        clock.now += MAX_CONNECTION_AGE_SECONDS + 1  # too old: a new session
        sender.send(envelope(id="m-c"))
    finally:
        sender.close()

    assert reused == 1
    assert relay.connections == 2
    assert len(relay.mails) == 3


def test_should_return_the_message_id_as_plain_text(relay: SmtpRelay, sender: SmtpSender) -> None:
    message_id = sender.send(envelope(id="m-id"))

    # A header object (a str subclass) is refused by the Tables SDK when the status is written.
    assert type(message_id) is str


def test_should_wait_for_a_free_connection_then_retry_later_when_none_comes(
    relay: SmtpRelay,
) -> None:
    bounded = SmtpSender(
        relay.host,
        relay.port,
        USERNAME,
        PASSWORD,
        timeout=0.3,
        max_connections=1,
        tls=relay.client_tls(),
    )
    try:
        # The one connection busy with another delivery meanwhile.
        with bounded._connection(), pytest.raises(RetryableDeliveryError) as busy:
            bounded.send(envelope(id="m-busy"))
        bounded.send(envelope(id="m-free"))
    finally:
        bounded.close()

    assert "all 1 SMTP connections stayed busy" in busy.value.reason
