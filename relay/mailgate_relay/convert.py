"""A message received over SMTP, as the JSON body of mailgate's `POST /api/v1/messages`.

The message is parsed with the standard library (`email`, `policy.default`): headers decoded
from RFC 2047 (and RFC 6532's raw UTF-8), bodies from their transfer encoding and charset.
What the API can carry is carried; what it cannot (a signed or encrypted body, a calendar
invitation, a second text body...) raises NotExpressible with the reason, which the relay
answers with 554 rather than send the mail other than it was written.

Recipients come from the envelope (RCPT TO), never from the headers: an address in the To
header goes as `to`, one in Cc as `cc`, and one in neither (a Bcc recipient, which appears only
in the envelope) as `bcc`. An address in a header but not in this envelope is not sent to: the
sending MTA delivers it in another transaction.
"""

from __future__ import annotations

import base64
import mimetypes
from collections.abc import Sequence
from dataclasses import dataclass, field
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.parser import BytesParser
from typing import Any

import idna

# The gateway's own bounds (shared/models.py), applied before a request is built: a message
# over them would be refused anyway, and a relay that stops early does less work for it.
MAX_RECIPIENTS = 1000
MAX_ATTACHMENTS = 1000
MAX_HEADERS = 100
# MIME parts walked at most: attachments, bodies and the multiparts around them.
MAX_PARTS = MAX_ATTACHMENTS + 100
MAX_DEPTH = 20
MAX_REASON_CHARS = 300

# Headers the API sets from its own fields, or SendGrid sets itself: not passed on.
HEADERS_FROM_FIELDS = frozenset(
    {"from", "to", "cc", "bcc", "subject", "reply-to"}
    | {"date", "mime-version", "content-type", "content-transfer-encoding", "content-id"}
    | {"content-disposition", "content-description", "content-language", "content-location"}
    # Added by the MTAs on the way (the sending MTA, this relay's client): SendGrid adds its own.
    | {"received", "return-path", "delivered-to", "x-original-to", "dkim-signature"}
    | {"authentication-results", "arc-seal", "arc-message-signature", "arc-authentication-results"}
    # SendGrid's own, on a mail that went through SendGrid before: it sets them anew.
    | {"x-sg-id", "x-sg-eid"}
    # SendGrid gives the mail its own Message-ID; passing the app's would need the client's
    # feature `headers.message-id` and fail every client without it.
    | {"message-id", "user-agent"}
)
# Headers other than X- ones that say how a mail is to be handled, passed on as they are.
# Sender and Resent-* are passed too: the gateway's policy decides (a client feature).
HEADERS_PASSED = frozenset(
    {"in-reply-to", "references", "list-unsubscribe", "list-unsubscribe-post", "list-id"}
    | {"auto-submitted", "precedence", "importance", "priority", "sensitivity", "keywords"}
    | {"sender", "resent-from", "resent-to", "resent-cc", "resent-date", "resent-sender"}
    | {"resent-message-id", "comments", "organization", "thread-topic", "thread-index"}
)
# Content the API cannot express, by MIME type: the reason the mail is refused.
UNEXPRESSIBLE_TYPES = {
    "multipart/signed": "it is signed (S/MIME or OpenPGP): re-sent by mailgate, the signature "
    "would no longer verify",
    "multipart/encrypted": "it is encrypted (OpenPGP): mailgate cannot re-send an encrypted body",
    "application/pkcs7-mime": "it is an S/MIME message (signed or encrypted): mailgate cannot "
    "re-send it as it is",
    "application/x-pkcs7-mime": "it is an S/MIME message (signed or encrypted): mailgate cannot "
    "re-send it as it is",
    "multipart/report": "it is a delivery or read report (multipart/report): mailgate sends "
    "only ordinary mail",
    "text/calendar": "it holds a calendar invitation or reply (text/calendar) as a body: the API "
    "sends only text and HTML bodies, and would turn it into an attachment",
}
# Multiparts whose children are walked: bodies, alternatives, related (inline) parts, files.
WALKED_MULTIPARTS = frozenset({"multipart/mixed", "multipart/alternative", "multipart/related"})


class NotExpressible(Exception):
    """The message has something mailgate's API cannot carry; the text says what (554)."""

    def __init__(self, reason: str) -> None:
        super().__init__(one_line(reason, MAX_REASON_CHARS))
        self.reason = str(self)


def one_line(text: str, most: int) -> str:
    """The text on one line of printable ASCII, cut to `most` characters (for an SMTP reply)."""
    flat = " ".join(text.split())
    printable = "".join(c if " " <= c <= "~" else "?" for c in flat)
    return printable if len(printable) <= most else printable[: most - 3] + "..."


def parse(raw: bytes) -> EmailMessage:
    """The message as the standard library reads it (policy.default)."""
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


def mail_request(raw: bytes, mail_from: str, recipients: Sequence[str]) -> dict[str, Any]:
    """The `POST /api/v1/messages` body for a message and its envelope; NotExpressible when
    the API cannot carry it."""
    if len(recipients) > MAX_RECIPIENTS:
        raise NotExpressible(f"more than {MAX_RECIPIENTS} recipients")
    _check_header_bytes(raw)
    message = parse(raw)
    request: dict[str, Any] = {"from": _sender(message, mail_from)}
    request.update(_recipients(message, recipients))
    reply_to = _addresses(message, "Reply-To")
    if len(reply_to) > 1:
        raise NotExpressible(
            f"Reply-To lists {len(reply_to)} addresses: the API sends a mail with one"
        )
    if reply_to:
        request["reply_to"] = _address_json(reply_to[0])
    subject = message.get("Subject")
    if subject is None or not str(subject).strip():
        raise NotExpressible("it has no Subject: the API sends a mail only with one")
    request["subject"] = str(subject)
    parts = _Parts()
    parts.walk(message, depth=0)
    # An empty body is no body to the API, which takes text and html of one character or more.
    if not parts.text and not parts.html:
        raise NotExpressible(
            "it has no text/plain or text/html body, or only an empty one: the API sends a "
            "mail only with some text"
        )
    if parts.text:
        request["text"] = parts.text
    if parts.html:
        request["html"] = parts.html
    if parts.attachments:
        request["attachments"] = parts.attachments
    headers = _custom_headers(message)
    if headers:
        request["headers"] = headers
    return request


def _check_header_bytes(raw: bytes) -> None:
    # 8-bit bytes in headers are UTF-8 (RFC 6532) or nothing: the parser would read any other
    # as U+FFFD, and the subject or a name would arrive other than written.
    end = raw.find(b"\r\n\r\n")
    headers = raw if end < 0 else raw[:end]
    try:
        headers.decode("utf-8")
    except UnicodeDecodeError:
        raise NotExpressible(
            "its headers have 8-bit bytes that are not UTF-8: encode them (RFC 2047) or send "
            "UTF-8 (SMTPUTF8)"
        ) from None


def _fixed(text: str) -> str:
    # The parser reads raw UTF-8 in headers (RFC 6532, SMTPUTF8) as surrogate escapes, which
    # the address headers keep: turn them back into the characters they are.
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8")
    except UnicodeError:
        raise NotExpressible("a header has bytes that are not UTF-8") from None


def sendable_address(address: str) -> str:
    """The address as SendGrid takes it: an internationalised domain in its ASCII form
    (punycode, the same address); NotExpressible for a non-ASCII local part, which SendGrid's
    API refuses (shared/sendgrid_v3/schema.py) and so no mail to it could be delivered."""
    local, at, domain = address.rpartition("@")
    if not at or not local.isascii():
        raise NotExpressible(
            f"{'a non-ASCII' if at else 'an incomplete'} address: SendGrid, which sends "
            "mailgate's mail, takes only ASCII local parts"
        )
    if domain.isascii():
        return address
    try:
        return f"{local}@{idna.encode(domain, uts46=True).decode('ascii')}"
    except idna.IDNAError:
        raise NotExpressible("an address has a domain that is not a valid IDN") from None


def _addresses(message: Message, name: str) -> list[Address]:
    values = message.get_all(name) or []
    found: list[Address] = []
    for value in values:
        # policy.default reads an address header as an AddressHeader (typed as a str).
        addresses = getattr(value, "addresses", None)
        if not isinstance(addresses, tuple):
            raise NotExpressible(f"the {name} header cannot be read as addresses")
        found.extend(addresses)
        if len(found) > MAX_RECIPIENTS:
            raise NotExpressible(f"the {name} header lists more than {MAX_RECIPIENTS} addresses")
    return found


def _address_json(address: Address) -> dict[str, str]:
    document = {"email": sendable_address(_fixed(address.addr_spec))}
    if address.display_name:
        document["name"] = _fixed(address.display_name)
    return document


def _sender(message: Message, mail_from: str) -> dict[str, str]:
    senders = _addresses(message, "From")
    if len(senders) > 1:
        raise NotExpressible(f"From lists {len(senders)} addresses: the API sends from one")
    if senders:
        return _address_json(senders[0])
    # No From header (some scripts): the envelope's sender is who sends it.
    if mail_from and mail_from != "<>":
        return {"email": sendable_address(mail_from)}
    raise NotExpressible("it has no From header and a null envelope sender (MAIL FROM:<>)")


def _recipients(message: Message, envelope: Sequence[str]) -> dict[str, list[dict[str, str]]]:
    in_to = {_header_key(a): a for a in _addresses(message, "To")}
    in_cc = {_header_key(a): a for a in _addresses(message, "Cc")}
    fields: dict[str, list[dict[str, str]]] = {"to": [], "cc": [], "bcc": []}
    seen: set[str] = set()
    for address in envelope:
        recipient = sendable_address(address)
        key = recipient.lower()
        if key in seen:
            continue
        seen.add(key)
        if key in in_to:
            fields["to"].append({**_address_json(in_to[key]), "email": recipient})
        elif key in in_cc:
            fields["cc"].append({**_address_json(in_cc[key]), "email": recipient})
        else:
            fields["bcc"].append({"email": recipient})
    if not fields["to"]:
        raise NotExpressible(
            "none of its recipients in this transaction is in its To header (all are Cc or "
            "Bcc): the API sends a mail only with at least one To recipient"
        )
    return {name: addresses for name, addresses in fields.items() if addresses}


def _header_key(address: Address) -> str:
    # A header's address that SendGrid could not take is simply not matched: the envelope's
    # recipients are the ones checked.
    try:
        return sendable_address(_fixed(address.addr_spec)).lower()
    except NotExpressible:
        return _fixed(address.addr_spec).lower()


def _custom_headers(message: Message) -> dict[str, str]:
    headers: dict[str, str] = {}
    seen: set[str] = set()
    for name in message.keys():  # noqa: SIM118 (a Message iterates over its payload)
        lowered = name.lower()
        if lowered in HEADERS_FROM_FIELDS:
            continue
        if not lowered.startswith("x-") and lowered not in HEADERS_PASSED:
            continue
        if lowered in seen:
            raise NotExpressible(
                f"the header {name} appears more than once: the API sends each header once"
            )
        seen.add(lowered)
        value = " ".join(_fixed(str(message[name])).split())
        headers[name] = value
        if len(headers) > MAX_HEADERS:
            raise NotExpressible(f"more than {MAX_HEADERS} headers to pass on")
    return headers


@dataclass
class _Parts:
    """The bodies and attachments found walking the MIME tree."""

    text: str | None = None
    html: str | None = None
    attachments: list[dict[str, str]] = field(default_factory=list)
    seen: int = 0

    def walk(self, part: Message, depth: int, in_related: bool = False) -> None:
        self.seen += 1
        if self.seen > MAX_PARTS or depth > MAX_DEPTH:
            raise NotExpressible(
                f"it has more than {MAX_PARTS} MIME parts or nests them deeper than {MAX_DEPTH}"
            )
        content_type = part.get_content_type()
        disposition = part.get_content_disposition()
        if content_type in UNEXPRESSIBLE_TYPES and disposition != "attachment":
            raise NotExpressible(UNEXPRESSIBLE_TYPES[content_type])
        # An attached mail (message/rfc822) reads as multipart too: it is one attachment.
        if part.is_multipart() and part.get_content_maintype() != "message":
            if content_type not in WALKED_MULTIPARTS:
                raise NotExpressible(
                    f"it has a {content_type} part: the API sends text, HTML and attachments"
                )
            related = content_type == "multipart/related"
            for child in part.iter_parts() if isinstance(part, EmailMessage) else ():
                self.walk(child, depth + 1, in_related=in_related or related)
            return
        # A text part is a body unless it is a file: marked attachment, or inline with a name.
        named_inline = disposition == "inline" and bool(part.get_filename())
        if content_type in ("text/plain", "text/html") and not (
            disposition == "attachment" or named_inline
        ):
            self._body(part, content_type)
            return
        self._attachment(part, in_related)

    def _body(self, part: Message, content_type: str) -> None:
        slot = "text" if content_type == "text/plain" else "html"
        if getattr(self, slot) is not None:
            raise NotExpressible(
                f"it has more than one {content_type} body: the API sends one of each"
            )
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        charset = part.get_content_charset() or "us-ascii"
        try:
            # Strictly: the standard library would put U+FFFD for what the charset does not
            # allow, and the recipient would read other text than was written.
            content = data.decode(charset)
        except LookupError:
            raise NotExpressible(
                f"a {content_type} body is in a charset Python does not know ({charset})"
            ) from None
        except UnicodeDecodeError:
            raise NotExpressible(
                f"a {content_type} body has bytes its charset ({charset}) does not allow"
            ) from None
        # SMTP's line ends are CRLF on the wire; a body in JSON has the plain text's own.
        setattr(self, slot, content.replace("\r\n", "\n"))

    def _attachment(self, part: Message, in_related: bool) -> None:
        if len(self.attachments) >= MAX_ATTACHMENTS:
            raise NotExpressible(f"more than {MAX_ATTACHMENTS} attachments")
        content_type = part.get_content_type()
        if part.get_content_maintype() == "message":
            # An attached mail (message/rfc822): its bytes as they came.
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                data = inner[0].as_bytes()
            else:
                data = str(inner).encode("utf-8", "surrogateescape")
        else:
            payload = part.get_payload(decode=True)
            data = payload if isinstance(payload, bytes) else b""
        if not data:
            raise NotExpressible(
                f"an attachment ({content_type}) is empty: the API sends only files with content"
            )
        content_id = part.get("Content-ID")
        attachment = {
            "filename": _filename(part, len(self.attachments) + 1),
            "content": base64.b64encode(data).decode("ascii"),
            "content_type": content_type,
        }
        # In multipart/related a part with a Content-ID is one the HTML shows, whatever its
        # disposition says (some generators mark embedded images "attachment").
        shown = in_related or part.get_content_disposition() != "attachment"
        if content_id is not None and shown:
            cid = str(content_id).strip().removeprefix("<").removesuffix(">").strip()
            if cid:
                attachment["disposition"] = "inline"
                attachment["content_id"] = cid
        elif in_related and part.get("Content-Location") is not None:
            raise NotExpressible(
                "an inline part is referred to by Content-Location: the API names inline "
                "parts only by Content-ID"
            )
        self.attachments.append(attachment)


def _filename(part: Message, number: int) -> str:
    name = part.get_filename()
    if name:
        return _fixed(name)
    extension = mimetypes.guess_extension(part.get_content_type()) or ".bin"
    return f"part-{number}{extension}"
