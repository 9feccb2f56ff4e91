"""The relay's MIME to JSON conversion: what mailgate's API can carry is carried, as the
gateway's own model reads it; what it cannot is refused with a reason."""

from __future__ import annotations

import base64
from email.message import EmailMessage
from typing import Any

import pytest
from mailgate_relay.convert import MAX_RECIPIENTS, NotExpressible, mail_request, sendable_address

from shared.models import MailRequest

SENDER = "app@example.com"
PNG = b"\x89PNG\r\n\x1a\n not really a png"
PDF = b"%PDF-1.4 not really a pdf\n"


def simple(**headers: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = f"App <{SENDER}>"
    message["To"] = "Ann Example <ann@example.org>"
    message["Subject"] = "Hello"
    for name, value in headers.items():
        del message[name.replace("_", "-")]
        message[name.replace("_", "-")] = value
    message.set_content("Plain body.\n")
    return message


def convert(message: EmailMessage | bytes, recipients: list[str] | None = None) -> dict[str, Any]:
    raw = message if isinstance(message, bytes) else message.as_bytes()
    request = mail_request(raw, SENDER, recipients or ["ann@example.org"])
    # Whatever the relay builds, the gateway's own model must accept as it is.
    MailRequest.model_validate(request)
    return request


def refusal(message: EmailMessage | bytes, recipients: list[str] | None = None) -> str:
    raw = message if isinstance(message, bytes) else message.as_bytes()
    with pytest.raises(NotExpressible) as caught:
        mail_request(raw, SENDER, recipients or ["ann@example.org"])
    return caught.value.reason


def test_should_carry_a_plain_single_part_message() -> None:
    request = convert(simple())

    assert request == {
        "from": {"email": SENDER, "name": "App"},
        "to": [{"email": "ann@example.org", "name": "Ann Example"}],
        "subject": "Hello",
        "text": "Plain body.\n",
    }


def test_should_carry_text_and_html_from_multipart_alternative() -> None:
    message = simple()
    message.add_alternative("<p>HTML body.</p>\n", subtype="html")

    request = convert(message)

    assert request["text"] == "Plain body.\n"
    assert request["html"] == "<p>HTML body.</p>\n"


def test_should_leave_out_an_empty_text_part_beside_html() -> None:
    raw = (
        b"From: app@example.com\r\nTo: ann@example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/alternative; boundary="b"\r\n\r\n--b\r\n'
        b"Content-Type: text/plain\r\n\r\n\r\n--b\r\nContent-Type: text/html\r\n\r\n"
        b"<p>HTML.</p>\r\n--b--\r\n"
    )

    request = convert(raw)

    assert "text" not in request
    assert request["html"] == "<p>HTML.</p>"


def test_should_refuse_a_message_whose_only_body_is_empty() -> None:
    raw = b"From: app@example.com\r\nTo: ann@example.org\r\nSubject: Rebooted\r\n\r\n"

    assert "only an empty one" in refusal(raw)


def test_should_carry_an_html_only_message() -> None:
    message = simple()
    message.set_content("<p>Only HTML.</p>", subtype="html")

    request = convert(message)

    assert "text" not in request
    assert request["html"] == "<p>Only HTML.</p>\n"


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        ("=?utf-8?b?R3LDvMOfZSDinJM=?=", "Grüße ✓"),
        ("=?iso-8859-1?q?Caf=E9_cr=E8me?=", "Café crème"),
        ("=?koi8-r?b?8NLJ18XU?=", "Привет"),
        ("=?shift_jis?b?k/qWe4zq?=", "日本語"),
        ("Plain =?utf-8?q?and_=C3=A9ncoded?= words", "Plain and éncoded words"),
    ],
)
def test_should_decode_rfc2047_subjects_in_any_charset(encoded: str, decoded: str) -> None:
    raw = simple().as_bytes().replace(b"Subject: Hello", f"Subject: {encoded}".encode())

    assert convert(raw)["subject"] == decoded


def test_should_decode_rfc2047_display_names() -> None:
    raw = (
        simple()
        .as_bytes()
        .replace(b"From: App", b"From: =?utf-8?q?J=C3=B6rg_M=C3=BCller?=")
        .replace(b"To: Ann Example", b"To: =?iso-8859-1?q?Andr=E9?=")
    )

    request = convert(raw)

    assert request["from"]["name"] == "Jörg Müller"
    assert request["to"][0]["name"] == "André"


def test_should_decode_body_charsets_and_transfer_encodings() -> None:
    message = simple()
    message.set_content("Grüße aus Köln\n", charset="iso-8859-1", cte="quoted-printable")
    message.add_alternative("<p>Привет</p>\n", subtype="html", charset="koi8-r", cte="base64")

    request = convert(message)

    assert request["text"] == "Grüße aus Köln\n"
    assert request["html"] == "<p>Привет</p>\n"


def test_should_read_raw_utf8_headers_and_addresses_of_an_smtputf8_message() -> None:
    raw = (
        "From: Jörg <app@bücher.example>\r\nTo: Ünï <ann@bücher.example>\r\n"
        "Subject: Grüße\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\nGrüße\r\n"
    ).encode()

    request = mail_request(raw, "app@bücher.example", ["ann@bücher.example"])

    # The same addresses, their domains as SendGrid takes them (IDNA, punycode).
    assert request["from"] == {"email": "app@xn--bcher-kva.example", "name": "Jörg"}
    assert request["to"] == [{"email": "ann@xn--bcher-kva.example", "name": "Ünï"}]
    assert request["subject"] == "Grüße"
    assert request["text"] == "Grüße\n"


@pytest.mark.parametrize("address", ["üñï@example.org", "no-at-sign"])
def test_should_refuse_an_address_sendgrid_cannot_take(address: str) -> None:
    with pytest.raises(NotExpressible, match="ASCII local parts"):
        sendable_address(address)


def test_should_refuse_a_sender_with_a_non_ascii_local_part() -> None:
    assert "ASCII local parts" in refusal(simple(From="Jörg <jörg@example.com>"))


def test_should_take_recipients_from_the_envelope_with_bcc_only_there() -> None:
    message = simple(To="Ann <ann@example.org>, Bob <bob@example.org>", Cc="Carol <c@example.net>")

    request = convert(message, ["ANN@example.org", "c@example.net", "hidden@example.com"])

    assert request["to"] == [{"email": "ANN@example.org", "name": "Ann"}]
    assert request["cc"] == [{"email": "c@example.net", "name": "Carol"}]
    assert request["bcc"] == [{"email": "hidden@example.com"}]
    # Bob is in the header but not in this transaction: the MTA delivers him in another.
    assert "bob@example.org" not in str(request)


def test_should_send_each_envelope_recipient_once() -> None:
    request = convert(simple(), ["ann@example.org", "Ann@Example.org", "x@example.com"])

    assert [r["email"] for r in request["to"]] == ["ann@example.org"]
    assert request["bcc"] == [{"email": "x@example.com"}]


def test_should_carry_many_recipients() -> None:
    names = [f"user{n}@example.org" for n in range(MAX_RECIPIENTS)]
    message = simple(To=", ".join(names[:500]))

    request = convert(message, names)

    assert len(request["to"]) == 500
    assert len(request["bcc"]) == MAX_RECIPIENTS - 500


def test_should_refuse_more_recipients_than_the_gateway_takes() -> None:
    names = [f"user{n}@example.org" for n in range(MAX_RECIPIENTS + 1)]

    assert "more than 1000 recipients" in refusal(simple(To=", ".join(names)), names)


def test_should_carry_reply_to() -> None:
    request = convert(simple(Reply_To="Support <support@example.com>"))

    assert request["reply_to"] == {"email": "support@example.com", "name": "Support"}


def test_should_refuse_more_than_one_reply_to_address() -> None:
    reason = refusal(simple(Reply_To="a@example.com, b@example.com"))

    assert "Reply-To lists 2 addresses" in reason


def test_should_refuse_more_than_one_from_address() -> None:
    assert "From lists 2 addresses" in refusal(simple(From="a@example.com, b@example.com"))


def test_should_send_from_the_envelope_sender_without_a_from_header() -> None:
    message = simple()
    del message["From"]

    assert convert(message)["from"] == {"email": SENDER}


def test_should_refuse_a_message_without_from_or_envelope_sender() -> None:
    message = simple()
    del message["From"]

    with pytest.raises(NotExpressible, match="no From header"):
        mail_request(message.as_bytes(), "<>", ["ann@example.org"])


def test_should_refuse_a_message_without_a_subject() -> None:
    message = simple()
    del message["Subject"]

    assert "no Subject" in refusal(message)


def test_should_refuse_a_message_whose_recipients_are_all_bcc() -> None:
    reason = refusal(simple(To="undisclosed-recipients:;"), ["hidden@example.com"])

    assert "at least one To recipient" in reason


def test_should_carry_attachments_with_their_names_and_types() -> None:
    message = simple()
    message.add_attachment(PDF, maintype="application", subtype="pdf", filename="invoice.pdf")
    message.add_attachment("a,b\n1,2\n", subtype="csv", filename="Übersicht 2026.csv")

    attachments = convert(message)["attachments"]

    assert attachments == [
        {
            "filename": "invoice.pdf",
            "content": base64.b64encode(PDF).decode(),
            "content_type": "application/pdf",
        },
        {
            "filename": "Übersicht 2026.csv",
            "content": base64.b64encode(b"a,b\n1,2\n").decode(),
            "content_type": "text/csv",
        },
    ]


def test_should_carry_an_inline_image_with_its_content_id() -> None:
    message = simple()
    message.add_alternative('<p><img src="cid:logo@example.com"></p>', subtype="html")
    html = list(message.iter_parts())[1]
    assert isinstance(html, EmailMessage)
    html.add_related(PNG, "image", "png", cid="<logo@example.com>", filename="logo.png")

    request = convert(message)

    assert request["html"].startswith('<p><img src="cid:logo@example.com">')
    assert request["attachments"] == [
        {
            "filename": "logo.png",
            "content": base64.b64encode(PNG).decode(),
            "content_type": "image/png",
            "disposition": "inline",
            "content_id": "logo@example.com",
        }
    ]


def test_should_name_an_attachment_without_a_file_name_by_its_type() -> None:
    raw = (
        b"From: app@example.com\r\nTo: ann@example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        b"Content-Type: text/plain\r\n\r\nbody\r\n--b\r\nContent-Type: image/png\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.b64encode(PNG) + b"\r\n--b--\r\n"
    )

    assert convert(raw)["attachments"][0]["filename"] == "part-1.png"


def test_should_carry_an_attached_mail_as_its_bytes() -> None:
    inner = simple(Subject="Forwarded")
    message = simple()
    message.add_attachment(inner, filename="original.eml")

    attachment = convert(message)["attachments"][0]

    assert attachment["content_type"] == "message/rfc822"
    assert b"Subject: Forwarded" in base64.b64decode(attachment["content"])


def test_should_pass_custom_x_headers_and_handling_headers_but_not_transport_ones() -> None:
    message = simple(
        X_Invoice="42",
        X_Mailer="=?utf-8?q?M=C3=A4iler?=",
        List_Unsubscribe="<https://example.com/u>",
        In_Reply_To="<earlier@example.com>",
        Message_ID="<abc@example.com>",
        Received="from a by b",
        Date="Thu, 03 Dec 2026 10:00:00 +0000",
        Organization="Example",
    )

    assert convert(message)["headers"] == {
        "X-Invoice": "42",
        "X-Mailer": "Mäiler",
        "List-Unsubscribe": "<https://example.com/u>",
        "In-Reply-To": "<earlier@example.com>",
        "Organization": "Example",
    }


def test_should_refuse_a_custom_header_given_twice() -> None:
    raw = simple().as_bytes().replace(b"Subject:", b"X-Tag: a\r\nX-Tag: b\r\nSubject:")

    assert "X-Tag appears more than once" in refusal(raw)


def test_should_refuse_more_custom_headers_than_the_gateway_takes() -> None:
    lines = b"".join(b"X-H%d: v\r\n" % n for n in range(101))
    raw = simple().as_bytes().replace(b"Subject:", lines + b"Subject:")

    assert "more than 100 headers" in refusal(raw)


def signed() -> bytes:
    return (
        b"From: app@example.com\r\nTo: ann@example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; '
        b'micalg=sha-256; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nbody\r\n'
        b"--b\r\nContent-Type: application/pkcs7-signature; name=smime.p7s\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nMIAGCSqGSIb3DQEHAqCAMIACAQEx\r\n--b--\r\n"
    )


def with_calendar() -> EmailMessage:
    message = simple()
    message.add_alternative("BEGIN:VCALENDAR\nMETHOD:REQUEST\nEND:VCALENDAR\n", subtype="calendar")
    return message


def smime_encrypted() -> bytes:
    return (
        b"From: app@example.com\r\nTo: ann@example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nMIAGCSqGSIb3DQEHA6CAMIACAQAx\r\n"
    )


def report() -> bytes:
    return (
        b"From: app@example.com\r\nTo: ann@example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nundeliverable\r\n"
        b"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n--b--\r\n"
    )


def second_text_body() -> bytes:
    return (
        b"From: app@example.com\r\nTo: ann@example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n'
        b"\r\nfirst\r\n--b\r\nContent-Type: text/plain\r\n\r\nfooter\r\n--b--\r\n"
    )


def no_body() -> bytes:
    return (
        b"From: app@example.com\r\nTo: ann@example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.b64encode(PDF)
        + b"\r\n"
    )


def unknown_charset() -> bytes:
    return (
        b"From: app@example.com\r\nTo: ann@example.org\r\nSubject: s\r\n"
        b"Content-Type: text/plain; charset=x-no-such-charset\r\n\r\nbody\r\n"
    )


def empty_attachment() -> EmailMessage:
    message = simple()
    message.add_attachment(b"", maintype="application", subtype="octet-stream", filename="e.bin")
    return message


def latin1_header() -> bytes:
    return b"From: app@example.com\r\nTo: ann@example.org\r\nSubject: Gr\xfc\xdfe\r\n\r\nbody\r\n"


def undeclared_8bit_body() -> bytes:
    return b"From: app@example.com\r\nTo: ann@example.org\r\nSubject: s\r\n\r\nCaf\xc3\xa9\r\n"


def other_multipart() -> bytes:
    return (
        b"From: app@example.com\r\nTo: ann@example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/digest; boundary="b"\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n'
    )


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (signed(), "it is signed (S/MIME or OpenPGP)"),
        (smime_encrypted(), "it is an S/MIME message"),
        (with_calendar(), "calendar invitation"),
        (report(), "delivery or read report"),
        (second_text_body(), "more than one text/plain body"),
        (no_body(), "no text/plain or text/html body"),
        (unknown_charset(), "charset Python does not know (x-no-such-charset)"),
        (empty_attachment(), "is empty"),
        (other_multipart(), "multipart/digest part"),
        (latin1_header(), "8-bit bytes that are not UTF-8"),
        (undeclared_8bit_body(), "bytes its charset (us-ascii) does not allow"),
    ],
    ids=[
        "signed",
        "S/MIME",
        "calendar",
        "report",
        "two text bodies",
        "no body",
        "unknown charset",
        "empty attachment",
        "digest",
        "latin-1 header",
        "8-bit body without charset",
    ],
)
def test_should_refuse_what_the_api_cannot_express_with_a_reason(
    message: EmailMessage | bytes, reason: str
) -> None:
    assert reason in refusal(message)


def test_should_carry_a_calendar_file_that_is_only_an_attachment() -> None:
    message = simple()
    message.add_attachment(
        "BEGIN:VCALENDAR\nEND:VCALENDAR\n", subtype="calendar", filename="event.ics"
    )

    assert convert(message)["attachments"][0]["filename"] == "event.ics"


def test_should_refuse_more_attachments_than_the_gateway_takes() -> None:
    boundary = b"--b\r\nContent-Type: application/octet-stream\r\n\r\nx\r\n"
    raw = (
        b"From: app@example.com\r\nTo: ann@example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nbody\r\n" + boundary * 1200 + b"--b--\r\n"
    )

    assert "more than 1000 attachments" in refusal(raw)


def test_should_refuse_parts_nested_deeper_than_it_walks() -> None:
    head = b"From: app@example.com\r\nTo: ann@example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
    opening = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (n, n)
        for n in range(25)
    )
    closing = b"".join(b"\r\n--b%d--\r\n" % n for n in reversed(range(25)))

    reason = refusal(head + opening + b"Content-Type: text/plain\r\n\r\nbody" + closing)

    assert "nests them deeper than 20" in reason


def test_should_keep_reasons_on_one_short_ascii_line() -> None:
    reason = refusal(
        simple(X_Tag="é" * 10).as_bytes().replace(b"Subject:", b"X-Tag: 2\r\nSubject:")
    )

    assert reason.isascii()
    assert "\n" not in reason
    assert len(reason) <= 300
