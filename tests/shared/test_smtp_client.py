"""The smtp provider: a mail as a MIME message, and what each SMTP failure means."""

from __future__ import annotations

import base64
import smtplib
from collections.abc import Callable
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import pytest

from shared.errors import DeliveryError, PermanentDeliveryError, RetryableDeliveryError
from shared.models import QueueEnvelope
from shared.smtp_client import (
    TERMINATOR,
    _refusal,
    _transact,
    _wire_bytes,
    build_mime,
    envelope_recipients,
)
from tests.samples import NOW, PNG_BASE64, envelope, without

MESSAGE_ID = "3f0c2a5e-1b7d-4c8e-9a6f-0d2e4b6c8a1f"


def mime(**fields: Any) -> EmailMessage:
    """The MIME message built for `message(**fields)`, read back from its wire bytes."""
    built = build_mime(envelope(id=MESSAGE_ID, **fields), NOW)
    parsed = message_from_bytes(built.as_bytes(), policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def test_should_map_from_to_cc_reply_to_and_subject_to_headers() -> None:
    sent = mime(
        **{
            "from": "Mailgate Sender <noreply@example.com>",
            "to": ["Ann <ann@example.net>", "bob@example.net"],
            "cc": ["Carol <carol@example.net>"],
            "reply_to": {"email": "support@example.com", "name": "Support"},
            "subject": "Your order",
        }
    )

    assert sent["From"] == "Mailgate Sender <noreply@example.com>"
    assert sent["To"] == "Ann <ann@example.net>, bob@example.net"
    assert sent["Cc"] == "Carol <carol@example.net>"
    assert sent["Reply-To"] == "Support <support@example.com>"
    assert sent["Subject"] == "Your order"


def test_should_never_put_bcc_in_a_header_but_give_it_to_the_relay() -> None:
    queued = envelope(bcc=['"Dee, Auditor" <dee@example.net>'], cc=["carol@example.net"])

    built = build_mime(queued, NOW)

    assert "dee@example.net" not in built.as_string()
    assert built["Bcc"] is None
    assert queued.message is not None
    assert envelope_recipients(queued.message) == [
        "someone@example.net",
        "carol@example.net",
        "dee@example.net",
    ]


def test_should_quote_a_display_name_with_a_comma() -> None:
    sent = mime(to=['"Doe, Jane" <jane@example.net>'])

    assert sent["To"].addresses[0].display_name == "Doe, Jane"
    assert sent["To"].addresses[0].addr_spec == "jane@example.net"


def test_should_encode_a_subject_and_name_beyond_ascii() -> None:
    sent = mime(subject="Grüße ✓ ñ", to=["Zoë <zoe@example.net>"])
    raw = build_mime(envelope(subject="Grüße ✓ ñ"), NOW).as_bytes()

    assert sent["Subject"] == "Grüße ✓ ñ"
    assert sent["To"].addresses[0].display_name == "Zoë"
    # 7-bit on the wire: no relay needs 8BITMIME or SMTPUTF8 for it.
    assert raw.isascii()


def test_should_send_text_alone_as_text_plain() -> None:
    sent = mime(text="Hi there")

    assert sent.get_content_type() == "text/plain"
    assert sent.get_content().strip() == "Hi there"


def test_should_send_html_alone_as_text_html() -> None:
    sent = mime(**without({"html": "<p>Hi</p>"}, "text"), text=None)

    assert sent.get_content_type() == "text/html"
    assert sent.get_content().strip() == "<p>Hi</p>"


def test_should_send_text_and_html_as_multipart_alternative_text_first() -> None:
    sent = mime(text="Plain body", html="<p>HTML body</p>")

    assert sent.get_content_type() == "multipart/alternative"
    parts = list(sent.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert [p.get_content().strip() for p in parts] == ["Plain body", "<p>HTML body</p>"]


def test_should_keep_long_lines_and_non_ascii_bodies_intact() -> None:
    text = "é" * 2000 + "\n" + "x" * 5000 + "\n.leading dot\n"

    sent = mime(text=text)

    # Mail's lines end in CRLF on the wire, whatever the client sent.
    assert sent.get_content().replace("\r\n", "\n") == text


def test_should_carry_attachments_byte_for_byte_with_their_names_and_types() -> None:
    pdf = base64.b64encode(b"%PDF-1.4\n" + bytes(range(256))).decode()
    sent = mime(
        text="see attached",
        attachments=[
            {"filename": "invoice.pdf", "content": pdf, "content_type": "application/pdf"},
            {"filename": "data.bin", "content": "AAEC"},
        ],
    )

    assert sent.get_content_type() == "multipart/mixed"
    attachments = list(sent.iter_attachments())
    assert [a.get_filename() for a in attachments] == ["invoice.pdf", "data.bin"]
    assert [a.get_content_type() for a in attachments] == [
        "application/pdf",
        "application/octet-stream",
    ]
    assert attachments[0].get_content() == base64.b64decode(pdf)
    assert attachments[1].get_content() == b"\x00\x01\x02"


def test_should_relate_inline_parts_to_the_html_by_content_id() -> None:
    sent = mime(
        text="Plain",
        html='<img src="cid:logo">',
        attachments=[
            {
                "filename": "logo.png",
                "content": PNG_BASE64,
                "content_type": "image/png",
                "disposition": "inline",
                "content_id": "logo",
            },
            {"filename": "terms.txt", "content": "dGVybXM=", "content_type": "text/plain"},
        ],
    )

    assert sent.get_content_type() == "multipart/mixed"
    body, attachment = sent.iter_parts()
    assert body.get_content_type() == "multipart/alternative"
    text, related = body.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert related.get_content_type() == "multipart/related"
    html, image = related.iter_parts()
    assert html.get_content_type() == "text/html"
    assert image["Content-ID"] == "<logo>"
    assert image.get_content_disposition() == "inline"
    assert image.get_content() == base64.b64decode(PNG_BASE64)
    assert attachment.get_filename() == "terms.txt"


def test_should_set_custom_headers_as_given() -> None:
    sent = mime(headers={"X-Campaign": "spring", "List-Unsubscribe": "<mailto:u@example.com>"})

    assert sent["X-Campaign"] == "spring"
    assert sent["List-Unsubscribe"] == "<mailto:u@example.com>"


def test_should_give_a_message_id_of_the_gateway_id_at_the_senders_domain() -> None:
    sent = mime()

    assert sent["Message-ID"] == f"<{MESSAGE_ID}@example.com>"
    assert sent["Date"].datetime == NOW


def test_should_keep_the_clients_own_message_id() -> None:
    sent = mime(headers={"Message-ID": "<mine@example.com>"})

    assert sent.get_all("Message-ID") == ["<mine@example.com>"]


def test_should_double_leading_dots_and_end_with_the_terminator() -> None:
    built = build_mime(envelope(text="line\n.hidden\n..two"), NOW)

    wire = _wire_bytes(built, utf8=False) + TERMINATOR

    assert wire.endswith(b"\r\n.\r\n")
    assert b"\r\n..hidden\r\n...two" in wire
    assert b"\n.\r\n" not in wire[:-5]
    assert b"\n" not in wire.replace(b"\r\n", b"")


def test_should_refuse_a_v3_body_permanently() -> None:
    v3 = QueueEnvelope(id="m", accepted_at=NOW, sendgrid={"personalizations": [{}]})

    with pytest.raises(PermanentDeliveryError) as refused:
        build_mime(v3, NOW)

    assert refused.value.cause == "no_provider"


class ScriptedSmtp:
    """The calls _transact makes on smtplib.SMTP, answered from a script."""

    def __init__(self, **answers: Any) -> None:
        self.answers = answers
        self.calls: list[str] = []
        self.extensions = answers.get("extensions", set())

    def _answer(self, name: str, default: Any) -> Any:
        self.calls.append(name)
        answer = self.answers.get(name, default)
        if isinstance(answer, Callable):  # type: ignore[arg-type]
            answer = answer()
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def has_extn(self, name: str) -> bool:
        return name in self.extensions

    def mail(self, sender: str, options: list[str]) -> tuple[int, bytes]:
        return self._answer("mail", (250, b"OK"))  # type: ignore[no-any-return]

    def rcpt(self, recipient: str) -> tuple[int, bytes]:
        return self._answer("rcpt", (250, b"OK"))  # type: ignore[no-any-return]

    def docmd(self, command: str) -> tuple[int, bytes]:
        return self._answer("data", (354, b"go ahead"))  # type: ignore[no-any-return]

    def send(self, data: bytes) -> None:
        self._answer("send", None)

    def getreply(self) -> tuple[int, bytes]:
        return self._answer("reply", (250, b"queued"))  # type: ignore[no-any-return]


def transact(smtp: ScriptedSmtp, utf8: bool = False, **fields: Any) -> None:
    queued = envelope(**fields)
    assert queued.message is not None
    _transact(
        smtp,  # type: ignore[arg-type]
        queued.message.from_.email,
        envelope_recipients(queued.message),
        build_mime(queued, NOW),
        utf8,
        "",
    )


def test_should_send_mail_from_each_rcpt_then_data() -> None:
    smtp = ScriptedSmtp()

    transact(smtp, cc=["carol@example.net"])

    assert smtp.calls == ["mail", "rcpt", "rcpt", "data", "send", "send", "reply"]


@pytest.mark.parametrize(
    ("stage", "answer"),
    [
        ("mail", (451, b"4.3.0 try later")),
        ("rcpt", (450, b"4.2.1 mailbox busy")),
        ("data", (421, b"4.7.0 closing")),
        ("reply", (452, b"4.3.1 insufficient storage")),
        ("mail", smtplib.SMTPServerDisconnected("Connection unexpectedly closed")),
        ("rcpt", TimeoutError("timed out")),
        ("data", ConnectionResetError()),
        # sendall raised: the terminator was never handed over whole.
        ("send", smtplib.SMTPServerDisconnected("Server not connected")),
    ],
)
def test_should_retry_a_4xx_or_lost_connection_before_the_terminator(
    stage: str, answer: Any
) -> None:
    with pytest.raises(RetryableDeliveryError) as failed:
        transact(ScriptedSmtp(**{stage: answer}))

    assert failed.value.ambiguous is False
    assert failed.value.cause == "unavailable"
    assert failed.value.status_code is None


@pytest.mark.parametrize(
    "lost",
    [smtplib.SMTPServerDisconnected("Connection unexpectedly closed: timed out"), TimeoutError()],
)
def test_should_call_a_failure_after_the_terminator_ambiguous(lost: BaseException) -> None:
    with pytest.raises(RetryableDeliveryError) as failed:
        transact(ScriptedSmtp(reply=lost))

    assert failed.value.ambiguous is True
    assert failed.value.cause == "outcome_unknown"


@pytest.mark.parametrize(
    ("stage", "code"),
    [("mail", 553), ("rcpt", 550), ("data", 554), ("reply", 552), ("reply", 550)],
)
def test_should_refuse_for_good_on_a_5xx(stage: str, code: int) -> None:
    with pytest.raises(PermanentDeliveryError) as refused:
        transact(ScriptedSmtp(**{stage: (code, b"5.0.0 refused")}))

    assert refused.value.cause == "smtp_rejected"
    assert f"answered {code}" in refused.value.reason


def test_should_refuse_the_whole_mail_when_one_recipient_is_refused() -> None:
    answers = iter([(250, b"OK"), (550, b"5.1.1 no such user")])
    smtp = ScriptedSmtp(rcpt=lambda: next(answers))

    with pytest.raises(PermanentDeliveryError):
        transact(smtp, cc=["carol@example.net", "dan@example.net"])

    # Never DATA: a relay's partial acceptance would reach some recipients only.
    assert "data" not in smtp.calls


def test_should_refuse_an_address_beyond_ascii_without_smtputf8() -> None:
    with pytest.raises(PermanentDeliveryError) as refused:
        transact(ScriptedSmtp(), utf8=True)

    assert "SMTPUTF8" in refused.value.reason


@pytest.mark.parametrize("code", [530, 534, 535, 538])
def test_should_take_an_auth_refusal_for_the_credentials(code: int) -> None:
    error = _refusal("AUTH", code, b"5.7.8 Authentication credentials invalid", "")

    assert isinstance(error, PermanentDeliveryError)
    assert error.cause == "smtp_auth"


def test_should_take_a_5xx_greeting_for_the_wrong_server() -> None:
    error = _refusal("the greeting", 554, b"no SMTP service here", "")

    assert isinstance(error, PermanentDeliveryError)
    assert error.cause == "smtp_config"


def test_should_mask_addresses_and_the_mails_own_text_in_a_reply() -> None:
    mail = "\0".join(["quarterly numbers for the board"])
    error: DeliveryError = _refusal(
        "RCPT TO",
        550,
        b"5.1.1 <ann.smith@example.net>: Recipient address rejected: "
        b"quarterly numbers for the board",
        mail,
    )

    assert "ann.smith" not in error.reason
    assert "*@example.net" in error.reason
    assert "quarterly numbers" not in error.reason
    assert error.provider_errors[0].message in error.reason


def test_should_bound_a_long_reply() -> None:
    error = _refusal("DATA", 554, b"x" * 100_000, "")

    assert len(error.reason) < 300
    assert len(error.provider_errors[0].message) <= 200
