"""End to end through the SMTP relay: real SMTP clients (Python's smtplib and swaks) talk to a
`mailgate-relay` process, which submits to the local host; the stand-in receives what
SendGrid would.

swaks is a Debian package (`apt-get install swaks`); without it its tests are skipped with a
reason that says they did not run, and in CI (`MAILGATE_REQUIRE_SWAKS`, set by .ci/run, which
installs it) they fail instead.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import smtplib
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import pytest

from devstack.sendgrid_standin import SendGridStandIn
from tests.e2e.conftest import RunningHost, wait_for
from tests.e2e.tcp_proxy import TcpProxy

# Set by .ci/run: there the swaks tests must run, never be skipped.
REQUIRE_SWAKS = "MAILGATE_REQUIRE_SWAKS"
SENDER = "app@example.com"
# The relay of the size test takes less than the gateway would (an operator's fixed limit).
SMALL_LIMIT = 100_000
PNG = b"\x89PNG\r\n\x1a\n not really a png"
PDF = b"%PDF-1.4 not really a pdf\n"


class RelayProcess:
    """`python -m mailgate_relay` on a free loopback port, its log kept for the tests."""

    def __init__(self, mailgate_url: str, *extra: str) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mailgate_relay",
                "--port",
                "0",
                "--mailgate-url",
                mailgate_url,
                *list(extra),
            ],
            stderr=subprocess.PIPE,
            text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("MAILGATE_")},
        )
        self.lines: list[str] = []
        self._port: list[int] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            self.port = wait_for(lambda: self._port[0] if self._port else None, timeout=30)
        except BaseException:
            self.stop()
            raise

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            found = re.search(r"listening on \S+ port (\d+)", line)
            if found:
                self._port.append(int(found.group(1)))

    def log(self) -> str:
        """Everything the relay logged so far."""
        return "".join(self.lines)

    def stop(self) -> None:
        """Stop it as systemd or Docker would (SIGTERM)."""
        self.process.terminate()
        self.process.wait(timeout=10)
        self._reader.join(timeout=10)
        if self.process.stderr is not None:
            self.process.stderr.close()


@pytest.fixture(scope="module")
def gateway_line(host: RunningHost) -> Iterator[TcpProxy]:
    """The relay's way to the gateway, which a test can cut."""
    proxy = TcpProxy(int(host.base_url.rsplit(":", 1)[1]))
    yield proxy
    proxy.close()


@pytest.fixture(scope="module")
def relay(gateway_line: TcpProxy) -> Iterator[RelayProcess]:
    """The relay as `make relay` runs it, submitting to the local host."""
    running = RelayProcess(f"http://127.0.0.1:{gateway_line.port}")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def small_relay(host: RunningHost) -> Iterator[RelayProcess]:
    """A relay whose operator set a lower size limit than the gateway's."""
    running = RelayProcess(host.base_url, "--max-message-bytes", str(SMALL_LIMIT))
    yield running
    running.stop()


@pytest.fixture
def swaks() -> str:
    """Debian's swaks, if this machine has it."""
    found = shutil.which("swaks")
    if found is None:
        if os.environ.get(REQUIRE_SWAKS):
            pytest.fail(
                f"{REQUIRE_SWAKS} is set but there is no swaks on PATH (apt-get install swaks)"
            )
        pytest.skip(
            "DID NOT RUN: the swaks tests need swaks, and there is none on PATH; install it "
            "(apt-get install swaks) to run them"
        )
    return found


def smtp(relay: RelayProcess, stack: RunningHost, key: str | None = None) -> smtplib.SMTP:
    """An authenticated smtplib session with the relay."""
    session = smtplib.SMTP("127.0.0.1", relay.port, timeout=60)
    session.ehlo()
    session.login(stack.client_name, key or stack.client_key)
    return session


def auth_plain(session: smtplib.SMTP, user: str, password: str) -> None:
    """AUTH PLAIN alone: smtplib's login() would try each mechanism in turn."""
    session.ehlo_or_helo_if_needed()
    session.user, session.password = user, password
    session.auth("PLAIN", session.auth_plain)


def forget_failures(relay: RelayProcess, stack: RunningHost) -> None:
    """A successful AUTH from this address, after which failures wait no more."""
    with smtp(relay, stack):
        pass


def message(**headers: str) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = f"Relay Test <{SENDER}>"
    mail["To"] = "Ann <ann@customer.example.org>"
    mail["Subject"] = "Through the relay"
    mail["Message-ID"] = make_msgid(domain="example.com")
    for name, value in headers.items():
        del mail[name.replace("_", "-")]
        mail[name.replace("_", "-")] = value
    mail.set_content("Sent over SMTP.\n")
    return mail


def wire(mail: EmailMessage, utf8: bool = False) -> bytes:
    """The message as an SMTP client sends it: CRLF line ends (raw UTF-8 headers for SMTPUTF8)."""
    return mail.as_bytes(policy=policy.SMTPUTF8 if utf8 else policy.SMTP)


def queued_id(reply: bytes | str) -> str:
    text = reply.decode() if isinstance(reply, bytes) else reply
    found = re.search(r"Queued as ([0-9a-f-]{36})", text)
    assert found, text
    return found.group(1)


def sent(session: smtplib.SMTP, mail: EmailMessage, recipients: list[str], **options: Any) -> str:
    """MAIL, RCPT and DATA by hand, so the 250 reply's text (the mailgate id) can be read."""
    session.mail(SENDER, options.get("mail_options", []))
    for recipient in recipients:
        code, reply = session.rcpt(recipient)
        assert code == 250, reply
    code, reply = session.data(wire(mail, utf8=bool(options.get("utf8"))))
    assert code == 250, reply
    return queued_id(reply)


def settled(stack: RunningHost, message_id: str) -> dict[str, Any]:
    """The message's status once it is sent or failed."""

    def probe() -> dict[str, Any] | None:
        status = stack.status(message_id)
        return status if status["status"] in ("sent", "failed") else None

    return wait_for(probe, timeout=30)


def delivered(standin: SendGridStandIn, message_id: str) -> dict[str, Any]:
    """The v3 payload the stand-in received for the mailgate id."""

    def find() -> dict[str, Any] | None:
        for mail in standin.mails():
            personalization = mail["payload"]["personalizations"][0]
            if personalization.get("custom_args", {}).get("mailgate_id") == message_id:
                payload: dict[str, Any] = mail["payload"]
                return payload
        return None

    return wait_for(find, timeout=30)


def copies(standin: SendGridStandIn, message_id: str) -> int:
    return sum(
        1
        for mail in standin.mails()
        if mail["payload"]["personalizations"][0].get("custom_args", {}).get("mailgate_id")
        == message_id
    )


def test_should_deliver_a_plain_text_mail_sent_with_smtplib(
    relay: RelayProcess, stack: RunningHost, standin: SendGridStandIn
) -> None:
    with smtp(relay, stack) as session:
        message_id = sent(session, message(), ["ann@customer.example.org"])

    payload = delivered(standin, message_id)
    assert payload["from"] == {"email": SENDER, "name": "Relay Test"}
    assert payload["personalizations"][0]["to"] == [
        {"email": "ann@customer.example.org", "name": "Ann"}
    ]
    assert payload["subject"] == "Through the relay"
    assert payload["content"] == [{"type": "text/plain", "value": "Sent over SMTP.\n"}]
    assert stack.status(message_id)["status"] in ("queued", "sending", "sent")


def test_should_deliver_alternative_bodies_with_utf8_subject_and_names(
    relay: RelayProcess, stack: RunningHost, standin: SendGridStandIn
) -> None:
    mail = message(From=f"Jörg Müller <{SENDER}>", To="Zoë Ñandú <zoe@customer.example.org>")
    del mail["Subject"]
    mail["Subject"] = "Grüße, Привет, 日本語 ✓"
    mail.add_alternative("<p>Grüße <b>HTML</b></p>\n", subtype="html")

    with smtp(relay, stack) as session:
        message_id = sent(session, mail, ["zoe@customer.example.org"])

    payload = delivered(standin, message_id)
    assert payload["subject"] == "Grüße, Привет, 日本語 ✓"
    assert payload["from"]["name"] == "Jörg Müller"
    assert payload["personalizations"][0]["to"][0]["name"] == "Zoë Ñandú"
    assert {c["type"]: c["value"] for c in payload["content"]} == {
        "text/plain": "Sent over SMTP.\n",
        "text/html": "<p>Grüße <b>HTML</b></p>\n",
    }


def test_should_deliver_attachments_and_an_inline_image(
    relay: RelayProcess, stack: RunningHost, standin: SendGridStandIn
) -> None:
    mail = message(X_Invoice="42")
    mail.add_alternative('<p><img src="cid:logo@example.com"></p>\n', subtype="html")
    html = list(mail.iter_parts())[1]
    assert isinstance(html, EmailMessage)
    html.add_related(PNG, "image", "png", cid="<logo@example.com>")
    mail.add_attachment(PDF, maintype="application", subtype="pdf", filename="invoice-42.pdf")

    with smtp(relay, stack) as session:
        message_id = sent(session, mail, ["ann@customer.example.org"])

    payload = delivered(standin, message_id)
    by_name = {a["filename"]: a for a in payload["attachments"]}
    assert base64.b64decode(by_name["invoice-42.pdf"]["content"]) == PDF
    assert by_name["invoice-42.pdf"]["type"] == "application/pdf"
    inline = next(a for a in payload["attachments"] if a.get("disposition") == "inline")
    assert inline["content_id"] == "logo@example.com"
    assert base64.b64decode(inline["content"]) == PNG
    assert payload["headers"]["X-Invoice"] == "42"


def test_should_send_bcc_recipients_only_from_the_envelope(
    relay: RelayProcess, stack: RunningHost, standin: SendGridStandIn
) -> None:
    mail = message(Cc="Carol <carol@partner.example.net>")

    with smtp(relay, stack) as session:
        message_id = sent(
            session,
            mail,
            ["ann@customer.example.org", "carol@partner.example.net", "audit@example.com"],
        )

    personalization = delivered(standin, message_id)["personalizations"][0]
    assert [r["email"] for r in personalization["to"]] == ["ann@customer.example.org"]
    assert [r["email"] for r in personalization["cc"]] == ["carol@partner.example.net"]
    assert personalization["bcc"] == [{"email": "audit@example.com"}]


def test_should_deliver_to_many_recipients_in_one_mail(
    relay: RelayProcess, stack: RunningHost, standin: SendGridStandIn
) -> None:
    recipients = [f"reader{n}@list.example.org" for n in range(300)]
    mail = message(To=", ".join(recipients))

    with smtp(relay, stack) as session:
        message_id = sent(session, mail, recipients)

    personalization = delivered(standin, message_id)["personalizations"][0]
    assert sorted(r["email"] for r in personalization["to"]) == sorted(recipients)


def test_should_deliver_an_smtputf8_mail_to_an_internationalised_domain(
    relay: RelayProcess, stack: RunningHost, standin: SendGridStandIn
) -> None:
    mail = message(To="Ünï <ann@bücher.example>", Subject="Grüße")

    with smtp(relay, stack) as session:
        assert session.has_extn("smtputf8")
        assert session.has_extn("8bitmime")
        message_id = sent(
            session,
            mail,
            ["ann@bücher.example"],
            mail_options=["SMTPUTF8", "BODY=8BITMIME"],
            utf8=True,
        )

    status = settled(stack, message_id)
    assert status["status"] == "sent", status.get("last_error")
    payload = delivered(standin, message_id)
    # The same address, its domain as SendGrid takes it.
    assert payload["personalizations"][0]["to"] == [
        {"email": "ann@xn--bcher-kva.example", "name": "Ünï"}
    ]
    assert payload["subject"] == "Grüße"


def test_should_refuse_a_recipient_with_a_non_ascii_local_part_with_553(
    relay: RelayProcess, stack: RunningHost
) -> None:
    with smtp(relay, stack) as session:
        session.mail(SENDER, ["SMTPUTF8"])
        code, reply = session.rcpt("üñï@customer.example.org")

    assert code == 553, reply
    assert b"5.6.7" in reply


def test_should_refuse_a_wrong_key_with_535_and_slow_down_repeated_failures(
    relay: RelayProcess, stack: RunningHost
) -> None:
    answers: list[tuple[int, float]] = []
    for _ in range(3):
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=60) as session:
            session.ehlo()
            started = time.monotonic()
            with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
                auth_plain(session, stack.client_name, "mg_wrong_" + "x" * 43)
            answers.append((refused.value.smtp_code, time.monotonic() - started))

    assert [code for code, _ in answers] == [535, 535, 535]
    # The second failure in a row waits 1 s, the third 2 s.
    assert answers[2][1] >= 2.0
    assert answers[2][1] > answers[0][1]
    # A success forgets them: the next failure is answered at once again.
    forget_failures(relay, stack)
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=60) as session:
        started = time.monotonic()
        with pytest.raises(smtplib.SMTPAuthenticationError):
            auth_plain(session, stack.client_name, "mg_wrong_" + "x" * 43)
        assert time.monotonic() - started < 1.0
    forget_failures(relay, stack)


def test_should_refuse_another_clients_name_for_a_key_with_535(
    relay: RelayProcess, stack: RunningHost
) -> None:
    with (
        smtplib.SMTP("127.0.0.1", relay.port, timeout=60) as session,
        pytest.raises(smtplib.SMTPAuthenticationError) as refused,
    ):
        auth_plain(session, "someone-else", stack.client_key)
    forget_failures(relay, stack)

    assert refused.value.smtp_code == 535


def test_should_answer_530_to_mail_without_auth(relay: RelayProcess) -> None:
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=60) as session:
        session.ehlo()
        code, reply = session.mail(SENDER)

    assert code == 530, reply


def test_should_refuse_a_sender_the_client_may_not_use_with_553(
    relay: RelayProcess, stack: RunningHost
) -> None:
    with smtp(relay, stack) as session:
        session.mail(SENDER)
        session.rcpt("ann@customer.example.org")
        code, reply = session.data(wire(message(From="ceo@elsewhere.example")))

    assert code == 553, reply
    assert b"#/from" in reply


def test_should_refuse_what_the_api_cannot_express_with_554(
    relay: RelayProcess, stack: RunningHost
) -> None:
    mail = message()
    mail.add_alternative("BEGIN:VCALENDAR\nMETHOD:REQUEST\nEND:VCALENDAR\n", subtype="calendar")

    with smtp(relay, stack) as session:
        session.mail(SENDER)
        session.rcpt("ann@customer.example.org")
        code, reply = session.data(wire(mail))

    assert code == 554, reply
    assert b"calendar" in reply


def test_should_answer_451_while_the_gateway_is_down_then_deliver_the_mail_once(
    relay: RelayProcess, stack: RunningHost, standin: SendGridStandIn, gateway_line: TcpProxy
) -> None:
    mail = message(Subject=f"Retried {uuid.uuid4()}")
    with smtp(relay, stack) as session:
        gateway_line.cut()
        try:
            session.mail(SENDER)
            session.rcpt("ann@customer.example.org")
            code, reply = session.data(wire(mail))
        finally:
            gateway_line.restore()
        assert code == 451, reply
        # The sending MTA keeps the mail and sends it again, on the same or a new connection.
        message_id = sent(session, mail, ["ann@customer.example.org"])

    delivered(standin, message_id)
    subject = str(mail["Subject"])
    assert copies(standin, message_id) == 1
    assert sum(1 for m in standin.mails() if m["payload"]["subject"] == subject) == 1


def test_should_answer_a_mail_sent_again_with_its_first_id_and_send_it_once(
    relay: RelayProcess, stack: RunningHost, standin: SendGridStandIn
) -> None:
    # As an MTA does when the line broke after mailgate accepted the mail but before the 250.
    mail = message(Subject=f"Sent twice {uuid.uuid4()}")

    with smtp(relay, stack) as session:
        first = sent(session, mail, ["ann@customer.example.org"])
    with smtp(relay, stack) as session:
        second = sent(session, mail, ["ann@customer.example.org"])

    assert second == first
    delivered(standin, first)
    assert copies(standin, first) == 1


def test_should_advertise_the_gateways_size_limit_after_auth(
    relay: RelayProcess, stack: RunningHost
) -> None:
    with smtp(relay, stack) as session:
        session.ehlo()
        size = session.esmtp_features["size"]

    assert int(size) == 30_000_000


def test_should_refuse_a_message_over_the_size_limit_with_552(
    small_relay: RelayProcess, stack: RunningHost
) -> None:
    big = message()
    big.add_attachment(
        os.urandom(SMALL_LIMIT), maintype="application", subtype="octet-stream", filename="big.bin"
    )

    with smtp(small_relay, stack) as session:
        assert int(session.esmtp_features["size"]) == SMALL_LIMIT
        # smtplib announces the size (SIZE=) with MAIL: refused before the data is sent.
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            session.send_message(big, to_addrs=["ann@customer.example.org"])

    assert refused.value.smtp_code == 552


def run_swaks(swaks: str, relay: RelayProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            swaks,
            "--server",
            "127.0.0.1",
            "--port",
            str(relay.port),
            "--helo",
            "test.example",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def swaks_auth(stack: RunningHost, key: str | None = None) -> list[str]:
    return [
        "--auth",
        "PLAIN",
        "--auth-user",
        stack.client_name,
        "--auth-password",
        key or stack.client_key,
    ]


def test_should_deliver_a_plain_mail_sent_with_swaks(
    swaks: str, relay: RelayProcess, stack: RunningHost, standin: SendGridStandIn
) -> None:
    result = run_swaks(
        swaks,
        relay,
        *swaks_auth(stack),
        "--from",
        SENDER,
        "--to",
        "ann@customer.example.org",
        "--header",
        "Subject: From swaks",
        "--body",
        "Sent by swaks.",
    )

    assert result.returncode == 0, result.stdout
    payload = delivered(standin, queued_id(result.stdout))
    assert payload["subject"] == "From swaks"
    assert payload["content"][0]["value"].strip() == "Sent by swaks."


def test_should_deliver_an_attachment_sent_with_swaks_and_auth_login(
    swaks: str, relay: RelayProcess, stack: RunningHost, standin: SendGridStandIn, tmp_path: Path
) -> None:
    report = tmp_path / "report.pdf"
    report.write_bytes(PDF)

    result = run_swaks(
        swaks,
        relay,
        "--auth",
        "LOGIN",
        "--auth-user",
        stack.client_name,
        "--auth-password",
        stack.client_key,
        "--from",
        SENDER,
        "--to",
        "ann@customer.example.org",
        "--header",
        "Subject: Report",
        "--body",
        "Attached.",
        "--attach-type",
        "application/pdf",
        "--attach-name",
        "report.pdf",
        "--attach",
        f"@{report}",
    )

    assert result.returncode == 0, result.stdout
    payload = delivered(standin, queued_id(result.stdout))
    attachment = payload["attachments"][0]
    assert attachment["filename"] == "report.pdf"
    assert base64.b64decode(attachment["content"]) == PDF


def test_should_refuse_swaks_with_a_wrong_key_or_without_auth(
    swaks: str, relay: RelayProcess, stack: RunningHost
) -> None:
    wrong = run_swaks(
        swaks,
        relay,
        *swaks_auth(stack, "mg_x_" + "y" * 43),
        "--from",
        SENDER,
        "--to",
        "a@example.org",
    )
    forget_failures(relay, stack)
    none = run_swaks(swaks, relay, "--from", SENDER, "--to", "a@example.org")

    assert "<** 535 5.7.8" in wrong.stdout, wrong.stdout
    assert "<** 530 5.7.0" in none.stdout, none.stdout
    assert wrong.returncode != 0
    assert none.returncode != 0


def test_should_refuse_an_oversized_message_from_swaks_after_its_data_with_552(
    swaks: str, small_relay: RelayProcess, stack: RunningHost
) -> None:
    # swaks announces no SIZE: the relay counts the data as it comes and refuses at its end.
    result = run_swaks(
        swaks,
        small_relay,
        *swaks_auth(stack),
        "--from",
        SENDER,
        "--to",
        "ann@customer.example.org",
        "--body",
        "x" * 70 + ("\n" + "x" * 70) * (SMALL_LIMIT // 70),
    )

    assert "<** 552" in result.stdout, result.stdout[-2000:]


def test_should_never_log_keys_addresses_or_bodies(
    relay: RelayProcess, stack: RunningHost, standin: SendGridStandIn
) -> None:
    secret_body = f"body-{uuid.uuid4()}"
    mail = message(To="Ann <ann.secret@customer.example.org>")
    mail.set_content(secret_body)
    with smtp(relay, stack) as session:
        message_id = sent(session, mail, ["ann.secret@customer.example.org"])
    delivered(standin, message_id)

    log = relay.log()
    assert message_id in log
    assert "customer.example.org" in log
    assert "ann.secret" not in log
    assert secret_body not in log
    assert stack.client_key not in log
    assert SENDER not in log
