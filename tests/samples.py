"""Sample settings, messages and envelopes, and the table of validation rules they exercise."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from shared.clients import Client
from shared.models import MailRequest, QueueEnvelope
from shared.policy import FEATURES
from shared.settings import Settings

NOW = datetime(2026, 3, 2, 9, 30, tzinfo=timezone.utc)
SENDER = "noreply@example.com"
RECIPIENT = "someone@example.net"
SENDGRID_API_KEY = "SG.test-secret-key"
STORAGE_ACCOUNT_KEY = "c2VjcmV0LWFjY291bnQta2V5"

BASE_ENV: dict[str, str] = {
    "AzureWebJobsStorage": (
        "DefaultEndpointsProtocol=https;AccountName=mailgatetest;"
        f"AccountKey={STORAGE_ACCOUNT_KEY};EndpointSuffix=core.windows.net"
    ),
    "ALLOWED_SENDERS": f"{SENDER},@example.org",
    "SENDGRID_API_KEY": SENDGRID_API_KEY,
}

PNG_BASE64 = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(32)).decode()


# Every feature, as `make client ... FEATURES=` takes them.
ALL_FEATURES = ",".join(FEATURES)

# The client most tests submit as: the same senders as the gateway's ALLOWED_SENDERS, and every
# feature, since the samples use every field that must pass through (tests/security refuses
# them to clients without).
CLIENT = Client(
    name="app",
    senders=(SENDER, "@example.org"),
    rate_per_minute=6_000,
    enabled=True,
    key_digest="sha256:unused-here",
    created_at=NOW,
    features=frozenset(FEATURES),
)


def settings_with(**overrides: str) -> Settings:
    """Valid settings, with some app settings replaced."""
    return Settings.from_env({**BASE_ENV, **overrides})


def message(**fields: Any) -> dict[str, Any]:
    """A minimal valid message as JSON-ready data; keyword arguments replace or add fields.

    `from` is a Python keyword: pass it as `message(**{"from": ...})`.
    """
    return {"from": SENDER, "to": [RECIPIENT], "subject": "Hello", "text": "Hi there", **fields}


def without(document: dict[str, Any], *names: str) -> dict[str, Any]:
    """The document without the named fields."""
    return {k: v for k, v in document.items() if k not in names}


def body(document: dict[str, Any]) -> bytes:
    """The document as a request body."""
    return json.dumps(document).encode()


def addresses(count: int, domain: str = "example.net", prefix: str = "user") -> list[str]:
    """`count` distinct addresses."""
    return [f"{prefix}{i}@{domain}" for i in range(count)]


def envelope(
    *, id: str = "msg-0001", attempt: int = 1, accepted_at: datetime = NOW, **fields: Any
) -> QueueEnvelope:
    """An envelope around `message(**fields)`, as the gateway queues it."""
    return QueueEnvelope(
        id=id,
        accepted_at=accepted_at,
        attempt=attempt,
        client=CLIENT.name,
        message=MailRequest.model_validate(message(**fields)),
    )


def sendgrid_mail(**fields: Any) -> dict[str, Any]:
    """A SendGrid v3 Mail Send body as an app sends it, using every field that must pass through.

    Keyword arguments replace or add top-level fields; `from` is passed as `**{"from": ...}`.
    """
    send_at = int((NOW + timedelta(hours=2)).timestamp())
    return {
        "personalizations": [
            {
                "to": [{"email": "ann@example.net", "name": "Ann"}, {"email": "bob@Example.NET"}],
                "cc": [{"email": "carol@partner.example.org"}],
                "bcc": [{"email": "audit@example.com"}],
                "dynamic_template_data": {"name": "Ann", "items": [{"sku": "A-1", "qty": 2}]},
                "custom_args": {"order": "42"},
                "send_at": send_at,
            },
            {
                "to": [{"email": "dee@elsewhere.example"}],
                "subject": "For Dee",
                "headers": {"X-Campaign": "spring"},
                "dynamic_template_data": {"name": "Dee", "vip": True, "balance": None},
            },
        ],
        "from": {"email": SENDER, "name": "Mailgate Sender"},
        "reply_to": {"email": "support@example.com"},
        "subject": "Your order",
        "content": [
            {"type": "text/plain", "value": "Plain body"},
            {"type": "text/html", "value": "<p>HTML body</p>"},
        ],
        "attachments": [{"content": PNG_BASE64, "filename": "logo.png", "type": "image/png"}],
        "template_id": "d-0123456789abcdef0123456789abcdef",
        "categories": ["orders"],
        "custom_args": {"tenant": "acme"},
        "send_at": send_at,
        "batch_id": "YOUR_BATCH_ID_0123456789",
        "asm": {"group_id": 123, "groups_to_display": [123, 456]},
        "ip_pool_name": "transactional",
        "mail_settings": {
            "sandbox_mode": {"enable": True},
            "bypass_list_management": {"enable": False},
            "footer": {"enable": False},
        },
        "tracking_settings": {
            "click_tracking": {"enable": True, "enable_text": False},
            "open_tracking": {"enable": True, "substitution_tag": "%open%"},
            "subscription_tracking": {"enable": False},
            "ganalytics": {"enable": True, "utm_source": "mailgate"},
        },
        **fields,
    }


def sendgrid_envelope(
    *, id: str = "msg-0001", attempt: int = 1, accepted_at: datetime = NOW, **fields: Any
) -> QueueEnvelope:
    """An envelope around `sendgrid_mail(**fields)`, as the gateway queues a v3 request."""
    return QueueEnvelope(
        id=id, accepted_at=accepted_at, attempt=attempt, sendgrid=sendgrid_mail(**fields)
    )


def everything_message() -> dict[str, Any]:
    """A message that uses every field."""
    return message(
        **{
            "from": "Mailgate Sender <noreply@example.com>",
            "to": ["Ann <ann@example.net>", {"email": "bob@example.net", "name": "Bob"}],
            "cc": ["carol@example.net"],
            "bcc": ['"Dee, Auditor" <dee@example.net>'],
            "reply_to": {"email": "support@example.com", "name": "Support"},
            "subject": "Your order",
            "text": "Plain body",
            "html": "<p>HTML body</p>",
            "headers": {"X-Campaign": "spring", "List-Unsubscribe": "<mailto:u@example.com>"},
            "categories": ["orders", "receipts"],
            "custom_args": {"order": "42", "tenant": "acme"},
            "send_at": (NOW + timedelta(hours=2)).isoformat(),
            "attachments": [
                {
                    "filename": "invoice.pdf",
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
        }
    )


@dataclass(frozen=True)
class Refusal:
    """A message the gateway must refuse, and where and why."""

    document: dict[str, Any]
    pointer: str
    detail: str


def _crowd(to: int, cc: int, bcc: int) -> dict[str, Any]:
    return message(
        to=addresses(to, prefix="to"),
        cc=addresses(cc, prefix="cc"),
        bcc=addresses(bcc, prefix="bcc"),
    )


UUID_LENGTH = 36


def custom_args_totalling(size: int) -> dict[str, str]:
    """Custom args whose JSON, once the gateway adds its UUID as mailgate_id, is `size` bytes."""
    overhead = len(json.dumps({"payload": "", "mailgate_id": "0" * UUID_LENGTH}).encode())
    return {"payload": "x" * (size - overhead)}


ACCEPTED: dict[str, dict[str, Any]] = {
    "text only": message(),
    "html only": without(message(html="<p>Hi</p>"), "text"),
    "text and html": message(html="<p>Hi</p>"),
    "template without subject or content": without(
        message(template_id="d-0123456789abcdef"), "subject", "text"
    ),
    "template with template data": without(
        message(template_id="d-0123", template_data={"name": "Ann", "items": [1, None]}), "text"
    ),
    "every field": everything_message(),
    "1000 recipients across to, cc and bcc": _crowd(998, 1, 1),
    "1000 recipients in to": message(to=addresses(1000)),
    "10 categories": message(categories=[f"category-{i}" for i in range(10)]),
    "custom args with string values": message(custom_args={"order": "42", "empty": ""}),
    "custom args well under 10000 bytes": message(custom_args=custom_args_totalling(9_950)),
    "send_at one second ahead": message(send_at=(NOW + timedelta(seconds=1)).isoformat()),
    "send_at exactly 72 hours ahead": message(send_at=(NOW + timedelta(hours=72)).isoformat()),
    "send_at with a non-UTC offset": message(send_at="2026-03-02T12:00:00+02:00"),
    "attachment with default disposition": message(
        attachments=[{"filename": "a.txt", "content": "aGVsbG8="}]
    ),
    "inline attachment with content_id": message(
        attachments=[
            {"filename": "l.png", "content": PNG_BASE64, "disposition": "inline", "content_id": "l"}
        ]
    ),
    "custom header": message(headers={"X-Campaign": "spring", "List-Id": "<news.example.com>"}),
    "the same address in from and to": message(to=[SENDER]),
}

REFUSED: dict[str, Refusal] = {
    "from not an address": Refusal(message(**{"from": "noreply"}), "#/from/email", "valid email"),
    "from missing": Refusal(without(message(), "from"), "#/from", "Field required"),
    "to missing": Refusal(without(message(), "to"), "#/to", "Field required"),
    "to empty": Refusal(message(to=[]), "#/to", "at least 1 item"),
    "to not a list": Refusal(message(to=RECIPIENT), "#/to", "should be a valid"),
    "to with two @": Refusal(message(to=["a@@example.net"]), "#/to/0/email", "valid email"),
    "to without domain dot": Refusal(message(to=["a@localhost"]), "#/to/0/email", "valid email"),
    "to name form with a bad address": Refusal(
        message(to=["Ann <ann.example.net>"]), "#/to/0/email", "valid email"
    ),
    "to with spaces": Refusal(message(to=["ann smith@example.net"]), "#/to/0/email", "valid email"),
    "cc invalid": Refusal(message(cc=["carol@example.net", "nope"]), "#/cc/1/email", "valid email"),
    "bcc object invalid": Refusal(message(bcc=[{"email": "x"}]), "#/bcc/0/email", "valid email"),
    "reply_to invalid": Refusal(message(reply_to="support"), "#/reply_to/email", "valid email"),
    "address object with an unknown field": Refusal(
        message(to=[{"email": RECIPIENT, "nick": "S"}]), "#/to/0/nick", "not a known field"
    ),
    "address object without email": Refusal(
        message(to=[{"name": "Ann"}]), "#/to/0/email", "Field required"
    ),
    "1001 recipients across to, cc and bcc": Refusal(
        _crowd(999, 1, 1), "#/to", "at most 1000 recipients"
    ),
    "1001 recipients in to": Refusal(message(to=addresses(1001)), "#/to", "at most 1000"),
    "the same address twice in to": Refusal(
        message(to=["ann@example.net", "bob@example.net", "ann@example.net"]),
        "#/to/2/email",
        "more than once",
    ),
    "the same address in to and cc, differing in case": Refusal(
        message(to=["Ann@Example.net"], cc=["ann@example.NET"]), "#/cc/0/email", "more than once"
    ),
    "the same address in to and bcc, in name form": Refusal(
        message(to=["ann@example.net"], bcc=["Ann <ANN@example.net>"]),
        "#/bcc/0/email",
        "more than once",
    ),
    "11 categories": Refusal(
        message(categories=[f"c{i}" for i in range(11)]), "#/categories", "at most 10"
    ),
    "repeated category, differing in case": Refusal(
        message(categories=["News", "news"]), "#/categories", "distinct"
    ),
    "empty category": Refusal(message(categories=[""]), "#/categories", "1 to 255 characters"),
    "category with a line break": Refusal(
        message(categories=["a\nb"]), "#/categories/0", "CR, LF or NUL"
    ),
    "custom arg with a number value": Refusal(
        message(custom_args={"order": 42}), "#/custom_args/order", "valid string"
    ),
    "custom arg with an object value": Refusal(
        message(custom_args={"order": {"id": "42"}}), "#/custom_args/order", "valid string"
    ),
    "custom args over 10000 bytes": Refusal(
        message(custom_args=custom_args_totalling(10_050)), "#/custom_args", "10000 bytes"
    ),
    "custom arg mailgate_id": Refusal(
        message(custom_args={"mailgate_id": "mine"}), "#/custom_args", "reserved"
    ),
    "send_at without a timezone": Refusal(
        message(send_at="2026-03-02T12:00:00"), "#/send_at", "timezone"
    ),
    "send_at in the past": Refusal(
        message(send_at=(NOW - timedelta(minutes=1)).isoformat()), "#/send_at", "in the future"
    ),
    "send_at now": Refusal(message(send_at=NOW.isoformat()), "#/send_at", "in the future"),
    "send_at 72 hours and a second ahead": Refusal(
        message(send_at=(NOW + timedelta(hours=72, seconds=1)).isoformat()),
        "#/send_at",
        "at most 72 hours",
    ),
    "send_at not a date": Refusal(message(send_at="tomorrow"), "#/send_at", "datetime"),
    "attachment not base64": Refusal(
        message(attachments=[{"filename": "a.txt", "content": "not base64!"}]),
        "#/attachments/0/content",
        "valid base64",
    ),
    "attachment with bad base64 padding": Refusal(
        message(attachments=[{"filename": "a.txt", "content": "aGVsbG8"}]),
        "#/attachments/0/content",
        "valid base64",
    ),
    "attachment in base64url": Refusal(
        message(attachments=[{"filename": "a.bin", "content": "-_-_"}]),
        "#/attachments/0/content",
        "valid base64",
    ),
    "attachment with an unknown disposition": Refusal(
        message(attachments=[{"filename": "a.txt", "content": "aGk=", "disposition": "download"}]),
        "#/attachments/0/disposition",
        "'attachment' or 'inline'",
    ),
    "inline attachment without content_id": Refusal(
        message(attachments=[{"filename": "l.png", "content": "aGk=", "disposition": "inline"}]),
        "#/attachments/0",
        "content_id",
    ),
    "attachment without filename": Refusal(
        message(attachments=[{"content": "aGk="}]), "#/attachments/0/filename", "Field required"
    ),
    "attachment filename with a line break": Refusal(
        message(attachments=[{"filename": "a\r\n.txt", "content": "aGk="}]),
        "#/attachments/0/filename",
        "CR, LF or NUL",
    ),
    "subject with CR LF": Refusal(
        message(subject="Hi\r\nBcc: victim@example.net"), "#/subject", "CR, LF or NUL"
    ),
    "subject with LF": Refusal(message(subject="Hi\nthere"), "#/subject", "CR, LF or NUL"),
    "subject with CR": Refusal(message(subject="Hi\rthere"), "#/subject", "CR, LF or NUL"),
    "subject with NUL": Refusal(message(subject="Hi\x00there"), "#/subject", "CR, LF or NUL"),
    "subject empty": Refusal(message(subject=""), "#/subject", "at least 1"),
    "display name with CR LF in name form": Refusal(
        message(to=["Ann\r\nBcc: victim@example.net <ann@example.net>"]),
        "#/to/0/name",
        "CR, LF or NUL",
    ),
    "display name with LF in object form": Refusal(
        message(to=[{"email": "ann@example.net", "name": "Ann\nSmith"}]),
        "#/to/0/name",
        "CR, LF or NUL",
    ),
    "from display name with NUL": Refusal(
        message(**{"from": {"email": SENDER, "name": "No\x00reply"}}),
        "#/from/name",
        "CR, LF or NUL",
    ),
    "reply_to display name with CR": Refusal(
        message(reply_to={"email": SENDER, "name": "Help\rdesk"}),
        "#/reply_to/name",
        "CR, LF or NUL",
    ),
    "header value with CR LF": Refusal(
        message(headers={"X-Campaign": "a\r\nBcc: victim@example.net"}),
        "#/headers/X-Campaign",
        "CR, LF or NUL",
    ),
    "header value with NUL": Refusal(
        message(headers={"X-Campaign": "a\x00b"}), "#/headers/X-Campaign", "CR, LF or NUL"
    ),
    "header name with a colon": Refusal(
        message(headers={"X-Bad:": "1"}), "#/headers", "printable ASCII"
    ),
    "header name with a space": Refusal(
        message(headers={"X Bad": "1"}), "#/headers", "printable ASCII"
    ),
    "header name with CR LF": Refusal(
        message(headers={"X-Bad\r\nBcc": "victim@example.net"}), "#/headers", "printable ASCII"
    ),
    "header name not ASCII": Refusal(
        message(headers={"X-Grüße": "1"}), "#/headers", "printable ASCII"
    ),
    "unknown top-level field": Refusal(
        message(priority="high"), "#/priority", "is not a known field"
    ),
    "subject missing without a template": Refusal(
        without(message(), "subject"), "#/subject", "required unless template_id"
    ),
    "text and html missing without a template": Refusal(
        without(message(), "text"), "#/text", "text or html is required"
    ),
    "template_data without template_id": Refusal(
        message(template_data={"name": "Ann"}), "#/template_data", "needs a template_id"
    ),
}

RESERVED_HEADER_NAMES = [
    "From",
    "to",
    "CC",
    "bcc",
    "Subject",
    "Reply-To",
    "reply-to",
    "Content-Type",
    "CONTENT-TRANSFER-ENCODING",
    "MIME-Version",
    "Date",
    "Received",
    "DKIM-Signature",
    "X-SG-ID",
    "x-sg-eid",
]
