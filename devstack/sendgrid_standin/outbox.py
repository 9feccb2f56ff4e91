"""The outbox: a ``<x-message-id>.json`` record and a readable ``.eml`` per accepted mail."""

from __future__ import annotations

import base64
import contextlib
import email.utils
import json
import logging
import mimetypes
import os
import secrets
import tempfile
from collections.abc import Mapping
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from shared.sendgrid_v3.schema import EmailObject, MailSend

logger = logging.getLogger(__name__)


def new_message_id() -> str:
    """Make a SendGrid-like X-Message-Id: 22 URL-safe base64 characters."""
    while True:
        candidate = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("=")
        # A leading dash makes `<id>.eml` awkward on a command line.
        if not candidate.startswith("-"):
            return candidate


def _address(item: EmailObject) -> Address:
    """Turn an address object into an email.headerregistry.Address."""
    try:
        return Address(display_name=item.name or "", addr_spec=item.email)
    except (ValueError, IndexError):
        user, _, domain = item.email.rpartition("@")
        return Address(display_name=item.name or "", username=user, domain=domain)


def _unique_addresses(items: list[EmailObject]) -> list[Address]:
    """Deduplicate addresses (case-insensitive), keeping the first occurrence."""
    seen: set[str] = set()
    out: list[Address] = []
    for item in items:
        if item.email.lower() not in seen:
            seen.add(item.email.lower())
            out.append(_address(item))
    return out


def _set_header(msg: EmailMessage, name: str, value: object) -> None:
    """Set a header, replacing any earlier one; leave out what the email package refuses."""
    try:
        if name in msg:
            del msg[name]
        msg[name] = value
    except (ValueError, TypeError, IndexError):
        logger.warning("outbox: header %s left out of the .eml", name)


def _split_mime(mime: str | None, default: str) -> tuple[str, str]:
    """Split "type/subtype" into its parts, falling back to a default."""
    maintype, _, subtype = (mime or default).strip().lower().partition("/")
    if not maintype or not subtype:
        maintype, _, subtype = default.partition("/")
    return maintype, subtype


def build_eml(mail: MailSend, x_message_id: str, received: datetime) -> bytes:
    """Build a readable RFC 5322 message of an accepted mail (all personalizations merged)."""
    msg = EmailMessage()
    first = mail.personalizations[0]
    msg["From"] = _address(first.from_ or mail.from_)
    _set_header(msg, "To", _unique_addresses([t for p in mail.personalizations for t in p.to]))
    cc = _unique_addresses([c for p in mail.personalizations for c in p.cc or []])
    if cc:
        _set_header(msg, "Cc", cc)
    bcc = _unique_addresses([b for p in mail.personalizations for b in p.bcc or []])
    if bcc:
        # A real mail never shows Bcc; the outbox does, so a developer can see every recipient.
        _set_header(msg, "Bcc", bcc)
    subject = first.subject or mail.subject or f"(SendGrid template {mail.template_id})"
    _set_header(msg, "Subject", subject)
    if mail.reply_to is not None:
        _set_header(msg, "Reply-To", _address(mail.reply_to))
    elif mail.reply_to_list:
        _set_header(msg, "Reply-To", [_address(item) for item in mail.reply_to_list])
    _set_header(msg, "Date", email.utils.format_datetime(received))
    _set_header(msg, "Message-ID", f"<{x_message_id}@sendgrid-standin.invalid>")
    _set_header(msg, "X-Message-Id", x_message_id)
    custom_args = {**(mail.custom_args or {}), **(first.custom_args or {})}
    if "mailgate_id" in custom_args:
        _set_header(msg, "X-Mailgate-Id", custom_args["mailgate_id"])
    if mail.template_id is not None:
        _set_header(msg, "X-SendGrid-Template-Id", mail.template_id)
    if mail.categories:
        _set_header(msg, "X-SendGrid-Categories", ", ".join(mail.categories))
    if len(mail.personalizations) > 1:
        _set_header(msg, "X-Standin-Personalizations", str(len(mail.personalizations)))
    for name, value in {**(mail.headers or {}), **(first.headers or {})}.items():
        _set_header(msg, name, value)

    parts = mail.content or []
    if not parts:
        data = first.dynamic_template_data
        note = f"(Rendered by SendGrid from template {mail.template_id}.)\n"
        if data:
            note += (
                "\ndynamic_template_data:\n" + json.dumps(data, indent=2, ensure_ascii=False) + "\n"
            )
        msg.set_content(note)
    for index, part in enumerate(parts):
        maintype, subtype = _split_mime(part.type, "text/plain")
        body: str | bytes = part.value if maintype == "text" else part.value.encode()
        kwargs: dict[str, Any] = (
            {"subtype": subtype}
            if maintype == "text"
            else {"maintype": maintype, "subtype": subtype}
        )
        if index == 0:
            msg.set_content(body, **kwargs)
        else:
            msg.add_alternative(body, **kwargs)
    for attachment in mail.attachments or []:
        guessed = mimetypes.guess_type(attachment.filename)[0]
        maintype, subtype = _split_mime(attachment.type or guessed, "application/octet-stream")
        data_bytes = base64.b64decode(attachment.content.replace("\r", "").replace("\n", ""))
        cid = f"<{attachment.content_id.strip('<>')}>" if attachment.content_id else None
        msg.add_attachment(
            data_bytes,
            maintype=maintype,
            subtype=subtype,
            filename=attachment.filename,
            disposition=attachment.disposition or "attachment",
            cid=cid,
        )
    return msg.as_bytes()


def _atomic_write(path: Path, data: bytes) -> None:
    """Write a file so that a reader sees either nothing or all of it."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


def write_outbox(
    outbox: Path, record: Mapping[str, Any], eml: bytes | None, name: str | None = None
) -> None:
    """Write <id>.eml (unless None) then <id>.json (the .json last, so its presence means both
    are there); the id is `name`, else the record's x_message_id."""
    outbox.mkdir(parents=True, exist_ok=True)
    x_message_id = name or str(record["x_message_id"])
    if eml is not None:
        _atomic_write(outbox / f"{x_message_id}.eml", eml)
    _atomic_write(
        outbox / f"{x_message_id}.json",
        json.dumps(record, indent=2, ensure_ascii=False).encode() + b"\n",
    )


def build_eml_or_stub(mail: MailSend, x_message_id: str, received: datetime) -> bytes:
    """Build the .eml; if the email package chokes, write a stub rather than refuse the mail."""
    try:
        return build_eml(mail, x_message_id, received)
    except Exception as exc:
        # The exception text may quote mail content, which must stay out of the logs.
        logger.error(
            "outbox: could not build the .eml for %s (%s); writing a stub",
            x_message_id,
            type(exc).__name__,
        )
        stub = EmailMessage()
        stub["X-Message-Id"] = x_message_id
        stub.set_content("The stand-in could not render this mail; see the .json next to it.\n")
        return stub.as_bytes()
