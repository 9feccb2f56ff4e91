"""A loopback stand-in for SendGrid's v3 Mail Send API, for tests and the local stack.

It validates every payload with pydantic models that encode SendGrid's published request
schema and its documented limits, answers like SendGrid (401/400/413/202/200), writes each
accepted mail to an outbox folder as ``<x-message-id>.json`` and ``<x-message-id>.eml``, and
offers a control API under ``/_standin/`` so tests can script failures, dropped connections
and latency.

Run it with ``python -m devstack.sendgrid_standin [--port 0]``, or from tests with
``SendGridStandIn().start()``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import email.utils
import hmac
import ipaddress
import json
import logging
import mimetypes
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import types
import typing
import weakref
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.headerregistry import Address
from email.message import EmailMessage
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
import uvicorn
from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.utils import get_remote_addr

logger = logging.getLogger(__name__)

DEFAULT_API_KEY = "SG.local-standin-key"
API_KEY_ENV = "SENDGRID_STANDIN_API_KEY"
DEFAULT_OUTBOX = Path(".devstack") / "outbox"
DEFAULT_PORT = 7072
READY_LINE_PREFIX = "SendGrid stand-in listening on "

# SendGrid: "The total size of your email, including attachments, must be less than 30MB."
MAX_BODY_BYTES = 30 * 1024 * 1024
MAX_PERSONALIZATIONS = 1000
MAX_RECIPIENTS = 1000
MAX_CUSTOM_ARGS_BYTES = 10_000
MAX_SEND_AT_AHEAD_SECONDS = 72 * 3600
MAX_EMAIL_LENGTH = 320

RESERVED_HEADERS = frozenset(
    name.lower()
    for name in (
        "x-sg-id",
        "x-sg-eid",
        "received",
        "dkim-signature",
        "Content-Type",
        "Content-Transfer-Encoding",
        "To",
        "From",
        "Subject",
        "Reply-To",
        "CC",
        "BCC",
    )
)

UNAUTHORIZED_BODY: dict[str, Any] = {
    "errors": [
        {
            "message": "The provided authorization grant is invalid, expired, or revoked",
            "field": None,
            "help": None,
        }
    ]
}

# The custom error type whose context carries several (relative path, message) problems, so a
# single cross-field validator can report one error entry per problem.
_PROBLEMS = "sendgrid_problems"

Problem = tuple[tuple[str | int, ...], str]


# --------------------------------------------------------------------------------------------
# Validation: SendGrid's request schema and documented limits as pydantic models
# --------------------------------------------------------------------------------------------


def _problems(problems: list[Problem]) -> PydanticCustomError:
    """Bundle cross-field problems into one pydantic error that the converter expands."""
    return PydanticCustomError(
        _PROBLEMS, "{count} problem(s)", {"count": len(problems), "problems": problems}
    )


def _check_email(value: str) -> str:
    """Refuse what SendGrid (and Prism's format check) would not take as an address."""
    if len(value) > MAX_EMAIL_LENGTH:
        raise PydanticCustomError(
            "email_too_long", "The email exceeds the maximum total length of 320 characters."
        )
    # Prism's format check refuses non-ASCII addresses; SendGrid wants IDN domains in punycode.
    if not value.isascii():
        raise PydanticCustomError("invalid_email", "Does not contain a valid address.")
    try:
        # test_environment allows the reserved `.test` domain that local setups like to use;
        # deliverability (DNS) is never checked: nothing but loopback is reachable.
        validate_email(
            value, check_deliverability=False, allow_smtputf8=False, test_environment=True
        )
    except EmailNotValidError:
        raise PydanticCustomError("invalid_email", "Does not contain a valid address.") from None
    return value


def _check_no_crlf(value: str) -> str:
    """Refuse CR and LF, which SendGrid forbids in attachment filenames and content ids."""
    if "\r" in value or "\n" in value:
        raise PydanticCustomError("crlf", "Cannot contain CRLF characters.")
    return value


def _check_mime_type(value: str) -> str:
    """Refuse ';' and CRLF in a MIME type, as SendGrid does for content and attachment types."""
    if ";" in value or "\r" in value or "\n" in value:
        raise PydanticCustomError("mime_type", "Cannot contain ';', or CRLF characters.")
    return value


def _check_base64(value: str) -> str:
    """Refuse attachment content that is not standard, padded base64."""
    # Line breaks are tolerated, as SendGrid's decoder skips them (MIME-style wrapped base64).
    compact = value.replace("\r", "").replace("\n", "")
    try:
        base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise PydanticCustomError(
            "base64", "The attachment content must be base64 encoded."
        ) from None
    return value


def _check_header_name(name: str) -> str:
    """Refuse header names SendGrid refuses: non-ASCII, spaces, or one of the reserved ones."""
    if (
        not name
        or not name.isascii()
        or any(c == ":" or not c.isprintable() or c.isspace() for c in name)
    ):
        raise PydanticCustomError(
            "header_key", "Header keys cannot contain non-ASCII characters or empty spaces."
        )
    if name.lower() in RESERVED_HEADERS:
        raise PydanticCustomError(
            "reserved_header",
            "Header can not be one of the reserved keys ({name}). Reserved: x-sg-id, x-sg-eid, "
            "received, dkim-signature, Content-Type, Content-Transfer-Encoding, To, From, "
            "Subject, Reply-To, CC, BCC.",
            {"name": name},
        )
    return name


def _check_unique_header_names(headers: dict[str, str]) -> dict[str, str]:
    """Refuse two keys naming the same header (header names are case-insensitive)."""
    seen: set[str] = set()
    for name in headers:
        if name.lower() in seen:
            raise PydanticCustomError(
                "duplicate_header", "The headers cannot contain duplicate keys."
            )
        seen.add(name.lower())
    return headers


def _check_not_empty(value: dict[str, str]) -> dict[str, str]:
    """Refuse an empty custom_args object, as SendGrid does."""
    if not value:
        raise PydanticCustomError("empty_custom_args", "custom_args cannot be empty.")
    return value


def _check_category(value: str) -> str:
    """Refuse non-ASCII category names."""
    if not value.isascii():
        raise PydanticCustomError(
            "category_ascii", "Categories can not contain non-ASCII characters."
        )
    return value


def _check_unique_categories(values: list[str]) -> list[str]:
    """Refuse a category listed twice."""
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise PydanticCustomError(
                "duplicate_category",
                "The categories must be a unique list, and you have included {category} more "
                "than once.",
                {"category": value},
            )
        seen.add(value)
    return values


def _check_send_at(value: int, info: ValidationInfo) -> int:
    """Refuse a send_at more than 72 hours ahead (a past one means "now" to SendGrid)."""
    context = info.context if isinstance(info.context, Mapping) else {}
    now = context.get("now")
    now_ts = float(now) if isinstance(now, int | float) else time.time()
    if value > now_ts + MAX_SEND_AT_AHEAD_SECONDS:
        raise PydanticCustomError(
            "send_at_too_far", "Scheduling more than 72 hours in advance is forbidden."
        )
    return value


EmailAddress = Annotated[str, AfterValidator(_check_email)]
HeaderName = Annotated[str, AfterValidator(_check_header_name)]
Headers = Annotated[dict[HeaderName, str], AfterValidator(_check_unique_header_names)]
CustomArgs = Annotated[dict[str, str], Field(max_length=10_000), AfterValidator(_check_not_empty)]
Category = Annotated[str, Field(max_length=255), AfterValidator(_check_category)]
SendAt = Annotated[int, AfterValidator(_check_send_at)]
MimeType = Annotated[str, Field(min_length=1), AfterValidator(_check_mime_type)]


def _json_type_of_annotation(annotation: object) -> str:
    """Name the JSON type a field annotation expects, for "given: null" messages."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _json_type_of_annotation(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        inner = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return _json_type_of_annotation(inner[0]) if len(inner) == 1 else "value"
    if origin is list:
        return "array"
    if origin is dict or (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return "object"
    if origin is Literal:
        return "string"
    return {str: "string", int: "integer", bool: "boolean", float: "number"}.get(
        annotation if isinstance(annotation, type) else object, "value"
    )


class _Strict(BaseModel):
    """Base of the request models: JSON types exactly, no unknown fields, no nulls."""

    model_config = ConfigDict(strict=True, extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _refuse_null(cls, value: object, info: ValidationInfo) -> object:
        """Refuse an explicit null, as the schema (and Prism) do: absent is fine, null is not."""
        if value is None:
            name = info.field_name or ""
            annotation = cls.model_fields[name].annotation if name in cls.model_fields else None
            raise PydanticCustomError(
                "null_value",
                "Invalid type. Expected: {expected}, given: null.",
                {"expected": _json_type_of_annotation(annotation)},
            )
        return value


class _Settings(_Strict):
    """Base of settings objects: typed known fields, unknown ones tolerated (legacy settings)."""

    model_config = ConfigDict(strict=True, extra="allow")


class EmailObject(_Strict):
    """An address object: {"email": ..., "name": ...}."""

    email: EmailAddress
    name: str | None = None


class Personalization(_Strict):
    """One envelope of the mail: its recipients and per-recipient overrides."""

    to: list[EmailObject] = Field(min_length=1)
    cc: list[EmailObject] | None = Field(default=None, max_length=MAX_RECIPIENTS)
    bcc: list[EmailObject] | None = Field(default=None, max_length=MAX_RECIPIENTS)
    from_: EmailObject | None = Field(default=None, alias="from")
    subject: str | None = Field(default=None, min_length=1)
    headers: Headers | None = None
    substitutions: dict[str, str] | None = Field(default=None, max_length=10_000)
    dynamic_template_data: dict[str, Any] | None = None
    custom_args: CustomArgs | None = None
    send_at: SendAt | None = None

    def recipients(self) -> list[tuple[str, EmailObject]]:
        """List (kind, address) for to, cc and bcc, in that order."""
        out = [("to", item) for item in self.to]
        out += [("cc", item) for item in self.cc or []]
        out += [("bcc", item) for item in self.bcc or []]
        return out

    @model_validator(mode="after")
    def _unique_addresses(self) -> Personalization:
        """Refuse an address repeated across to, cc and bcc of one personalization."""
        problems: list[Problem] = []
        seen: set[str] = set()
        for kind in ("to", "cc", "bcc"):
            for index, item in enumerate(getattr(self, kind) or []):
                key = item.email.lower()
                if key in seen:
                    problems.append(
                        (
                            (kind, index, "email"),
                            "Each unique email address in the personalization block should only "
                            f"be included once. You have included {item.email} more than once.",
                        )
                    )
                seen.add(key)
        if problems:
            raise _problems(problems)
        return self


class Content(_Strict):
    """One body part: {"type": "text/plain", "value": ...}."""

    type: MimeType
    value: str = Field(min_length=1)


class Attachment(_Strict):
    """One attachment, its content base64-encoded."""

    content: Annotated[str, Field(min_length=1), AfterValidator(_check_base64)]
    type: MimeType | None = None
    filename: Annotated[str, Field(min_length=1), AfterValidator(_check_no_crlf)]
    disposition: Literal["inline", "attachment"] | None = None
    content_id: Annotated[str, AfterValidator(_check_no_crlf)] | None = None


class Asm(_Settings):
    """Unsubscribe group settings."""

    group_id: int
    groups_to_display: list[int] | None = Field(default=None, max_length=25)


class Enable(_Settings):
    """A setting that is only switched on or off."""

    enable: bool | None = None


class Footer(_Settings):
    """The footer mail setting."""

    enable: bool | None = None
    text: str | None = None
    html: str | None = None


class BccSetting(_Settings):
    """The legacy bcc mail setting."""

    enable: bool | None = None
    email: EmailAddress | None = None


class SpamCheck(_Settings):
    """The legacy spam_check mail setting."""

    enable: bool | None = None
    threshold: Annotated[int, Field(ge=1, le=10)] | None = None
    post_to_url: Annotated[str, Field(pattern=r"^https?://")] | None = None


class MailSettings(_Settings):
    """How SendGrid handles the mail (sandbox mode, bypass filters, footer)."""

    bypass_list_management: Enable | None = None
    bypass_spam_management: Enable | None = None
    bypass_bounce_management: Enable | None = None
    bypass_unsubscribe_management: Enable | None = None
    footer: Footer | None = None
    sandbox_mode: Enable | None = None
    bcc: BccSetting | None = None
    spam_check: SpamCheck | None = None

    @model_validator(mode="after")
    def _bypass_alone(self) -> MailSettings:
        """Refuse bypass_list_management combined with another bypass filter."""
        if not (self.bypass_list_management and self.bypass_list_management.enable):
            return self
        others = (
            "bypass_spam_management",
            "bypass_bounce_management",
            "bypass_unsubscribe_management",
        )
        problems: list[Problem] = [
            ((name,), "This filter cannot be combined with the bypass_list_management filter.")
            for name in others
            if (setting := getattr(self, name)) is not None and setting.enable
        ]
        if problems:
            raise _problems(problems)
        return self


class ClickTracking(_Settings):
    """Click tracking settings."""

    enable: bool | None = None
    enable_text: bool | None = None


class OpenTracking(_Settings):
    """Open tracking settings."""

    enable: bool | None = None
    substitution_tag: str | None = None


class SubscriptionTracking(_Settings):
    """Subscription tracking settings."""

    enable: bool | None = None
    text: str | None = None
    html: str | None = None
    substitution_tag: str | None = None


class Ganalytics(_Settings):
    """Google Analytics settings."""

    enable: bool | None = None
    utm_source: str | None = None
    utm_medium: str | None = None
    utm_term: str | None = None
    utm_content: str | None = None
    utm_campaign: str | None = None


class TrackingSettings(_Settings):
    """Tracking settings."""

    click_tracking: ClickTracking | None = None
    open_tracking: OpenTracking | None = None
    subscription_tracking: SubscriptionTracking | None = None
    ganalytics: Ganalytics | None = None


class MailSend(_Strict):
    """The body of POST /v3/mail/send."""

    personalizations: list[Personalization] = Field(min_length=1, max_length=MAX_PERSONALIZATIONS)
    from_: EmailObject = Field(alias="from")
    reply_to: EmailObject | None = None
    reply_to_list: list[EmailObject] | None = Field(default=None, max_length=1000)
    subject: str | None = Field(default=None, min_length=1)
    content: list[Content] | None = None
    attachments: list[Attachment] | None = None
    template_id: str | None = None
    headers: Headers | None = None
    categories: Annotated[list[Category], AfterValidator(_check_unique_categories)] | None = Field(
        default=None, max_length=10
    )
    # SendGrid takes an object of strings. The published schema says "string" here, which is a
    # known mistake in it: SendGrid refuses a string and Prism refuses the object.
    custom_args: CustomArgs | None = None
    send_at: SendAt | None = None
    batch_id: str | None = None
    asm: Asm | None = None
    ip_pool_name: str | None = Field(default=None, min_length=2, max_length=64)
    mail_settings: MailSettings | None = None
    tracking_settings: TrackingSettings | None = None
    # Legacy, not in the published schema but still accepted by SendGrid.
    sections: dict[str, str] | None = None

    def recipient_count(self) -> int:
        """Count to + cc + bcc across all personalizations."""
        return sum(len(p.recipients()) for p in self.personalizations)

    def recipient_domains(self) -> list[str]:
        """List the distinct recipient domains (safe to log, unlike addresses)."""
        domains = {
            item.email.rpartition("@")[2].lower()
            for p in self.personalizations
            for _, item in p.recipients()
        }
        return sorted(domains)

    def is_sandbox(self) -> bool:
        """Tell whether sandbox mode is on (SendGrid validates, answers 200 and sends nothing)."""
        sandbox = self.mail_settings.sandbox_mode if self.mail_settings else None
        return bool(sandbox and sandbox.enable)

    @model_validator(mode="after")
    def _cross_field_rules(self) -> MailSend:
        """Check the rules that span several fields."""
        problems: list[Problem] = []
        if self.reply_to is not None and self.reply_to_list is not None:
            problems.append(
                (("reply_to_list",), "reply_to is mutually exclusive with reply_to_list.")
            )
        seen: set[str] = set()
        for index, item in enumerate(self.reply_to_list or []):
            if item.email.lower() in seen:
                problems.append(
                    (
                        ("reply_to_list", index, "email"),
                        "Each email address in the reply_to_list should be unique.",
                    )
                )
            seen.add(item.email.lower())
        if self.recipient_count() > MAX_RECIPIENTS:
            problems.append(
                (
                    ("personalizations",),
                    "There is a limit of 1000 total recipients (to + cc + bcc) per request.",
                )
            )
        if self.template_id is None:
            if self.subject is None and not all(p.subject for p in self.personalizations):
                problems.append(
                    (
                        ("subject",),
                        "The subject is required. You can get around this requirement if you use a "
                        "template with a subject defined or if every personalization has a subject "
                        "defined.",
                    )
                )
            if self.content is None:
                problems.append(
                    (
                        ("content",),
                        "The content param is required unless you are using a transactional "
                        "template and have defined a template_ID.",
                    )
                )
            elif not self.content:
                problems.append(
                    (
                        ("content",),
                        "There must be at least one defined content block. We typically suggest "
                        "both text/plain and text/html blocks are included, but only one block is "
                        "required.",
                    )
                )
        if self.content and not _content_order_ok([c.type for c in self.content]):
            problems.append(
                (
                    ("content",),
                    "Following RFC 1341, section 7.2, if either text/html or text/plain are to be "
                    "sent in your email: text/plain needs to be first, followed by text/html, "
                    "followed by any other content.",
                )
            )
        if _custom_args_size(self.custom_args or {}) > MAX_CUSTOM_ARGS_BYTES:
            problems.append(
                (("custom_args",), "Total custom_args size may not exceed 10,000 bytes.")
            )
        for index, personalization in enumerate(self.personalizations):
            merged = {**(self.custom_args or {}), **(personalization.custom_args or {})}
            if personalization.custom_args and _custom_args_size(merged) > MAX_CUSTOM_ARGS_BYTES:
                problems.append(
                    (
                        ("personalizations", index, "custom_args"),
                        "The combined size of both global and personalization custom arguments may "
                        "not exceed 10,000 bytes per personalization.",
                    )
                )
        if problems:
            raise _problems(problems)
        return self


def _content_order_ok(content_types: list[str]) -> bool:
    """Tell whether text/plain (if any) comes first, then text/html (if any), then the rest."""
    rank = {"text/plain": 0, "text/html": 1}
    ranks = [rank.get(t.strip().lower(), 2) for t in content_types]
    return ranks == sorted(ranks)


def _custom_args_size(custom_args: Mapping[str, str]) -> int:
    """Measure custom_args as SendGrid carries them: compact JSON, in UTF-8 bytes."""
    if not custom_args:
        return 0
    return len(json.dumps(custom_args, ensure_ascii=False, separators=(",", ":")).encode())


# ---- turning pydantic errors into SendGrid error entries -------------------------------------

_DICT_FIELDS = frozenset(
    {"headers", "custom_args", "substitutions", "sections", "dynamic_template_data"}
)

_TYPE_NAMES = {
    "string_type": "string",
    "int_type": "integer",
    "bool_type": "boolean",
    "list_type": "array",
    "dict_type": "object",
    "model_type": "object",
    "model_attributes_type": "object",
}

# Doubled braces: every message below goes through str.format.
_EMAIL_EXAMPLE = (
    'e.g. {{"email": "example@example.com"}} or '
    '{{"email": "example@example.com", "name": "Example Recipient"}}'
)

# Messages from SendGrid's Mail Send error reference, keyed by (error kind, schema path).
_MESSAGES: dict[tuple[str, str], str] = {
    ("missing", "personalizations"): "You must have at least one personalization.",
    ("too_short", "personalizations"): "You must have at least one personalization.",
    ("too_long", "personalizations"): (
        "The personalization block is limited to 1000 personalizations per API request. You have "
        "provided {actual} personalizations. Please consider splitting this into multiple "
        "requests and resending your request."
    ),
    (
        "missing",
        "personalizations.to",
    ): "The to parameter is required for all personalization objects.",
    ("too_short", "personalizations.to"): (
        "The to array must at least have an email parameter with a valid email address and it "
        "may also contain a name parameter. " + _EMAIL_EXAMPLE
    ),
    ("missing", "personalizations.to.email"): (
        'Each "to" object must at least have an email address and may also contain a name. '
        + _EMAIL_EXAMPLE
    ),
    ("missing", "personalizations.cc.email"): (
        "Each recipient object must at least have an email address and may also contain a name. "
        + _EMAIL_EXAMPLE
    ),
    ("missing", "personalizations.bcc.email"): (
        "Each recipient object must at least have an email address and may also contain a name. "
        + _EMAIL_EXAMPLE
    ),
    ("missing", "from"): (
        "The from object must be provided for every email send. It is an object that requires "
        "the email parameter, but may also contain a name parameter. " + _EMAIL_EXAMPLE
    ),
    ("missing", "from.email"): (
        "The from object must at least have an email parameter with a valid email address and may "
        "also contain a name parameter. " + _EMAIL_EXAMPLE
    ),
    ("missing", "reply_to.email"): (
        "The reply_to object, when used, must at least have an email parameter with a valid email "
        "address and it may also contain a name parameter. " + _EMAIL_EXAMPLE
    ),
    ("missing", "reply_to_list.email"): "The reply_to_list email parameter is required.",
    (
        "too_long",
        "reply_to_list",
    ): "There is a limit of 1000 reply_to emails per mail/send request.",
    (
        "too_short",
        "subject",
    ): "The subject of your email must be a string at least one character in length.",
    ("too_short", "personalizations.subject"): (
        "The subject of your email must be a string at least one character in length."
    ),
    (
        "type",
        "subject",
    ): "The subject of your email must be a string at least one character in length.",
    (
        "missing",
        "content.type",
    ): "A content type is required, this tells email clients how to display the email.",
    (
        "too_short",
        "content.type",
    ): "Your content type must be a string with length of at least one character.",
    (
        "missing",
        "content.value",
    ): "A content value is required, this is the content of the email you are sending.",
    (
        "too_short",
        "content.value",
    ): "The content value must be a string at least one character in length.",
    (
        "missing",
        "attachments.content",
    ): "The attachment content must be a string at least one character in length.",
    ("too_short", "attachments.content"): (
        "The attachment content must be a string at least one character in length."
    ),
    ("missing", "attachments.filename"): "filename is required.",
    ("too_short", "attachments.filename"): "filename is required.",
    ("type", "attachments.filename"): "The filename of your attachment must be a string.",
    (
        "too_short",
        "attachments.type",
    ): "The attachment type must be a string and at least one character in length.",
    ("type", "attachments.content_id"): "The content ID of your attachment must be a string.",
    ("literal", "attachments.disposition"): (
        'The disposition of your attachment can be either "inline" or "attachment". '
        "You provided {input}."
    ),
    ("too_long", "categories"): (
        "There is a limit of 10 categories for each email that is sent. "
        "You provided {actual} categories."
    ),
    (
        "string_too_long",
        "categories",
    ): "Each category must not be longer than 255 characters. {input} exceeds this limit",
    ("type", "categories"): "Categories must be an array of strings.",
    ("type", "headers.*"): "The header values must be strings.",
    ("type", "personalizations.headers.*"): "All values of the headers object must be strings.",
    ("type", "custom_args.*"): "All values of custom arguments object must be strings",
    (
        "type",
        "personalizations.custom_args.*",
    ): "All values of custom arguments object must be strings",
    ("type", "personalizations.substitutions.*"): (
        "The substitution values must be an object of key/value pairs, "
        "where the values are all strings."
    ),
    ("too_long", "personalizations.substitutions"): "You are limited to 10,000 substitutions.",
    ("type", "sections.*"): "The section values must be strings.",
    ("type", "send_at"): (
        "The send_at parameter is expecting a Unix timestamp as an integer. We will send "
        "immediately if you include a send_at timestamp that is in the past."
    ),
    ("type", "personalizations.send_at"): (
        "The send_at parameter is expecting a Unix timestamp as an integer. We will send "
        "immediately if you include a send_at timestamp that is in the past."
    ),
    ("type", "batch_id"): "The batch_id must be a string.",
    ("type", "template_id"): "The template ID must be a string, you provided {input}.",
    ("type", "ip_pool_name"): "The name of your IP pool must be a string.",
    ("too_short", "ip_pool_name"): "The IP pool name must be between 2 and 64 characters long.",
    (
        "string_too_long",
        "ip_pool_name",
    ): "The IP pool name must be between 2 and 64 characters long.",
    ("range", "mail_settings.spam_check.threshold"): (
        "The spam check threshold is between 1 and 10, with the lower numbers being the most "
        "strict filtering."
    ),
    ("missing", "asm.group_id"): "The ASM group ID is required when asm is used.",
    ("type", "asm.group_id"): "The ASM group ID must be an integer.",
    ("type", "asm.groups_to_display"): "The ASM Group IDs to display must be an array of integers.",
    ("too_long", "asm.groups_to_display"): (
        "There is a limit of 25 unsubscribe groups that can be displayed to a user at a time."
    ),
}


_LENGTH_AND_RANGE_KINDS = {
    "too_short": "too_short",
    "string_too_short": "too_short",
    "too_long": "too_long",
    "string_too_long": "string_too_long",
    "missing": "missing",
    "literal_error": "literal",
    "greater_than_equal": "range",
    "less_than_equal": "range",
}


def _schema_path(loc: Sequence[str | int]) -> str:
    """Turn an error location into SendGrid's index-free path, e.g. personalizations.to.email."""
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int) or item == "[key]" or item.isdigit():
            continue
        if parts and parts[-1] in _DICT_FIELDS:
            parts.append("*")
            break
        parts.append(item)
    return ".".join(parts)


def _json_type(value: object) -> str:
    """Name the JSON type of a decoded value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _message(error: Mapping[str, Any], loc: Sequence[str | int]) -> str:
    """Word one pydantic error the way SendGrid's reference words it."""
    kind = str(error["type"])
    path = _schema_path(loc)
    value = error.get("input")
    if kind in _TYPE_NAMES:
        generic = f"Invalid type. Expected: {_TYPE_NAMES[kind]}, given: {_json_type(value)}."
        return _MESSAGES.get(("type", path), generic).format(input=value)
    if kind in _LENGTH_AND_RANGE_KINDS:
        template = _MESSAGES.get((_LENGTH_AND_RANGE_KINDS[kind], path))
        if template is not None:
            actual = len(value) if isinstance(value, list | str | dict) else ""
            return template.format(input=value, actual=actual)
        if kind == "missing":
            return f"The {path.rpartition('.')[2] or path} parameter is required."
    if kind == "extra_forbidden":
        return f"Additional property {loc[-1]} is not allowed."
    return str(error["msg"])


def _error_entry(message: str, loc: Sequence[str | int]) -> dict[str, Any]:
    """Build one SendGrid error entry."""
    field_path = ".".join(str(item) for item in loc if item != "[key]")
    return {"message": message, "field": field_path or None, "help": None}


def validation_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """Convert a ValidationError from MailSend into SendGrid error entries, one per problem."""
    entries: list[dict[str, Any]] = []
    for error in exc.errors(include_url=False):
        loc = list(error["loc"])
        if error["type"] == _PROBLEMS:
            for relative, message in error["ctx"]["problems"]:
                entries.append(_error_entry(message, [*loc, *relative]))
            continue
        entries.append(_error_entry(_message(error, loc), loc))
    return entries


def validate_mail_send(
    payload: object, *, now: float | None = None
) -> tuple[MailSend | None, list[dict[str, Any]]]:
    """Validate a decoded request body; return the model or SendGrid error entries."""
    context = {"now": time.time() if now is None else now}
    try:
        return MailSend.model_validate(payload, strict=True, context=context), []
    except ValidationError as exc:
        return None, validation_errors(exc)


# --------------------------------------------------------------------------------------------
# Outbox: the .json record and a readable .eml per accepted mail
# --------------------------------------------------------------------------------------------


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


def write_outbox(outbox: Path, record: Mapping[str, Any], eml: bytes) -> None:
    """Write <id>.eml then <id>.json (the .json last, so its presence means both are there)."""
    outbox.mkdir(parents=True, exist_ok=True)
    x_message_id = str(record["x_message_id"])
    _atomic_write(outbox / f"{x_message_id}.eml", eml)
    _atomic_write(
        outbox / f"{x_message_id}.json",
        json.dumps(record, indent=2, ensure_ascii=False).encode() + b"\n",
    )


def _eml_or_fallback(mail: MailSend, x_message_id: str, received: datetime) -> bytes:
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


# --------------------------------------------------------------------------------------------
# State, control API and the mail-send endpoint
# --------------------------------------------------------------------------------------------


class ScriptedResponse(BaseModel):
    """One entry of the response script, consumed by one mail-send request."""

    model_config = ConfigDict(extra="forbid")

    status: int | None = Field(default=None, ge=100, le=599)
    body: Any = None
    headers: dict[str, str] = Field(default_factory=dict)
    # Overrides the default latency for this request when given.
    delay_ms: int | None = Field(default=None, ge=0)
    # Close the connection without an HTTP response (FIN): httpx sees RemoteProtocolError.
    drop_connection: bool = False
    # Close it with a TCP reset instead (RST): httpx sees ReadError.
    reset_connection: bool = False
    # With drop/reset: first handle the mail normally (store it if valid), then drop: the
    # "accepted, but the answer was lost" case behind SendGrid's ambiguous timeouts.
    accept: bool = False

    @model_validator(mode="after")
    def _status_or_drop(self) -> ScriptedResponse:
        """Require a status unless the entry drops the connection."""
        if self.status is None and not (self.drop_connection or self.reset_connection):
            raise ValueError("give a status, or drop_connection / reset_connection")
        return self


@dataclass
class StandInState:
    """Everything the stand-in remembers: received mails, the script, the request log."""

    api_key: str = DEFAULT_API_KEY
    outbox: Path = DEFAULT_OUTBOX
    latency_ms: int = 0
    max_body_bytes: int = MAX_BODY_BYTES
    mails: list[dict[str, Any]] = field(default_factory=list)
    script: deque[ScriptedResponse] = field(default_factory=deque)
    requests: list[dict[str, Any]] = field(default_factory=list)
    # Open connections by client address, filled by _TrackingH11Protocol so a scripted
    # drop can close the socket of the request it answers.
    transports: dict[tuple[str, int], asyncio.Transport] = field(default_factory=dict)

    def reset(self) -> None:
        """Forget mails, script, request log and latency."""
        self.mails.clear()
        self.script.clear()
        self.requests.clear()
        self.latency_ms = 0


def _utc_iso(moment: datetime) -> str:
    """Format a UTC datetime as ISO 8601 with milliseconds and a Z."""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _error_body(message: str, field_path: str | None = None) -> dict[str, Any]:
    """Build a SendGrid error body with one entry."""
    return {"errors": [{"message": message, "field": field_path, "help": None}]}


class _ClientGone(Exception):
    """The client went away before the request body was read."""


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """Read the request body; None if it exceeds the limit (the rest is drained, not kept)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        else:
            # Keep reading: answering 413 mid-upload would show the client a broken pipe, not a 413.
            chunks.clear()
        if not message.get("more_body", False):
            return b"".join(chunks) if size <= limit else None


def _gunzip(body: bytes, limit: int) -> bytes | None:
    """Inflate a gzip body; None if it inflates past the limit."""
    inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
    data = inflater.decompress(body, limit + 1)
    return None if len(data) > limit or inflater.unconsumed_tail else data


def _refuse_json_constant(name: str) -> float:
    """Refuse NaN and Infinity, which are not JSON."""
    raise ValueError(f"{name} is not valid JSON")


class MailSendEndpoint:
    """The ASGI app behind POST /v3/mail/send (raw ASGI, so it can drop a connection)."""

    def __init__(self, state: StandInState) -> None:
        """Keep the shared state."""
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one mail-send request: script, latency, auth, size, JSON, schema, store."""
        arrived = datetime.now(timezone.utc)
        entry: dict[str, Any] = {
            "at": arrived.timestamp(),
            "received_at": _utc_iso(arrived),
            "status": None,
            "outcome": None,
            "x_message_id": None,
            "scripted": False,
        }
        self.state.requests.append(entry)
        scripted = self.state.script.popleft() if self.state.script else None
        entry["scripted"] = scripted is not None
        try:
            # Read the whole body first in every case: closing or answering with unread data
            # would show the client a reset or a broken pipe instead of what was scripted.
            raw = await _read_body(receive, self.state.max_body_bytes)
        except _ClientGone:
            entry["outcome"] = "client_disconnected"
            return
        delay_ms = self.state.latency_ms
        if scripted is not None and scripted.delay_ms is not None:
            delay_ms = scripted.delay_ms
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000)

        drop = scripted is not None and (scripted.drop_connection or scripted.reset_connection)
        if scripted is not None and drop and not scripted.accept:
            await self._drop(scope, receive, reset=scripted.reset_connection, entry=entry)
            return
        if (
            scripted is not None
            and scripted.status is not None
            and not 200 <= scripted.status < 300
        ):
            entry.update(status=scripted.status, outcome="scripted")
            logger.info("mail send: status=%s (scripted)", scripted.status)
            await self._scripted_response(scripted)(scope, receive, send)
            return

        response = await self._handle(scope, raw, entry)
        if scripted is not None and drop:
            await self._drop(scope, receive, reset=scripted.reset_connection, entry=entry)
            return
        if scripted is not None:
            response.headers.update(scripted.headers)
        await response(scope, receive, send)

    @staticmethod
    def _scripted_response(scripted: ScriptedResponse) -> Response:
        """Build the response a script entry asks for."""
        status = scripted.status or 500
        body = scripted.body
        if body is None and status >= 400:
            try:
                phrase = HTTPStatus(status).phrase
            except ValueError:
                phrase = "Error"
            body = _error_body(phrase)
        if body is None:
            return Response(status_code=status, headers=scripted.headers)
        if isinstance(body, str):
            return Response(
                body, status_code=status, headers=scripted.headers, media_type="text/plain"
            )
        return JSONResponse(body, status_code=status, headers=scripted.headers)

    async def _drop(
        self, scope: Scope, receive: Receive, *, reset: bool, entry: dict[str, Any]
    ) -> None:
        """Close the client's connection without an HTTP response."""
        entry["outcome"] = "reset" if reset else "dropped"
        client = scope.get("client")
        transport = self.state.transports.get((str(client[0]), int(client[1]))) if client else None
        if transport is None:
            # Only the stand-in's own server registers transports (see _TrackingH11Protocol).
            raise ConnectionAbortedError(
                "drop_connection works only under the stand-in's own server"
            )
        logger.info("mail send: connection %s (scripted)", entry["outcome"])
        if reset:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # Linger 0 turns close() into a TCP RST.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        # Wait until uvicorn has seen the loss, or it answers 500 for a response never started.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._until_disconnect(receive), timeout=5)

    @staticmethod
    async def _until_disconnect(receive: Receive) -> None:
        """Consume ASGI messages until the disconnect."""
        while (await receive())["type"] != "http.disconnect":
            pass

    async def _handle(self, scope: Scope, raw: bytes | None, entry: dict[str, Any]) -> Response:
        """Handle a request the normal way and say how SendGrid would answer."""
        request = Request(scope)
        state = self.state
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), state.api_key.encode()
        ):
            entry.update(status=401, outcome="unauthorized")
            logger.info("mail send: status=401 (bad or missing API key)")
            return JSONResponse(UNAUTHORIZED_BODY, status_code=401)

        if (
            raw is not None
            and request.headers.get("content-encoding", "").strip().lower() == "gzip"
        ):
            try:
                raw = _gunzip(raw, state.max_body_bytes)
            except zlib.error:
                return self._refuse(
                    entry, 400, _error_body("The gzip body could not be decompressed.")
                )
        if raw is None:
            return self._refuse(
                entry,
                413,
                _error_body("The JSON payload you have included in your request is too large."),
            )
        media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type != "application/json":
            return self._refuse(entry, 400, _error_body("Content-Type should be application/json."))
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return self._refuse(entry, 415, _error_body("Invalid UTF8 in request"))
        try:
            payload = json.loads(text, parse_constant=_refuse_json_constant)
        except ValueError as exc:
            return self._refuse(
                entry, 400, _error_body(f"Bad Request: the body is not valid JSON ({exc}).")
            )

        mail, errors = validate_mail_send(payload)
        if mail is None:
            fields = sorted(
                {_schema_path(str(e["field"]).split(".")) for e in errors if e["field"]}
            )
            logger.info("mail send: status=400 errors=%d fields=%s", len(errors), ",".join(fields))
            entry.update(status=400, outcome="rejected")
            return JSONResponse({"errors": errors}, status_code=400)

        x_message_id = new_message_id()
        entry["x_message_id"] = x_message_id
        domains = mail.recipient_domains()
        if mail.is_sandbox():
            entry.update(status=200, outcome="sandbox")
            logger.info(
                "mail send: status=200 (sandbox) x_message_id=%s recipients=%d domains=%s",
                x_message_id,
                mail.recipient_count(),
                ",".join(domains[:10]),
            )
            return Response(status_code=200, headers={"X-Message-Id": x_message_id})

        received = datetime.now(timezone.utc)
        record = {
            "x_message_id": x_message_id,
            "received_at": _utc_iso(received),
            "payload": payload,
        }
        state.mails.append(record)
        try:
            eml = await asyncio.to_thread(_eml_or_fallback, mail, x_message_id, received)
            await asyncio.to_thread(write_outbox, state.outbox, record, eml)
        except OSError:
            state.mails.remove(record)
            logger.exception("mail send: could not write %s to the outbox", x_message_id)
            entry.update(status=500, outcome="outbox_error")
            return JSONResponse(
                _error_body("The stand-in could not write its outbox."), status_code=500
            )
        entry.update(status=202, outcome="accepted")
        logger.info(
            "mail send: status=202 x_message_id=%s recipients=%d domains=%s",
            x_message_id,
            mail.recipient_count(),
            ",".join(domains[:10]),
        )
        return Response(status_code=202, headers={"X-Message-Id": x_message_id})

    @staticmethod
    def _refuse(entry: dict[str, Any], status: int, body: dict[str, Any]) -> Response:
        """Answer an error and record it."""
        entry.update(status=status, outcome="rejected")
        logger.info("mail send: status=%s (%s)", status, body["errors"][0]["message"][:80])
        return JSONResponse(body, status_code=status)


def _is_loopback(scope: Scope) -> bool:
    """Tell whether the request comes from a loopback address."""
    client = scope.get("client")
    if not client:
        return False
    try:
        return ipaddress.ip_address(str(client[0])).is_loopback
    except ValueError:
        return False


def create_app(state: StandInState | None = None) -> Starlette:
    """Build the stand-in's ASGI app around a state (a fresh default one if none)."""
    state = state or StandInState()

    def control(
        handler: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        """Restrict a control endpoint to loopback clients."""

        async def endpoint(request: Request) -> Response:
            if not _is_loopback(request.scope):
                return JSONResponse(
                    _error_body("The control API answers loopback clients only."), status_code=403
                )
            return await handler(request)

        return endpoint

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def list_mails(request: Request) -> Response:
        return JSONResponse(state.mails)

    async def clear_mails(request: Request) -> Response:
        state.mails.clear()
        return Response(status_code=204)

    async def set_script(request: Request) -> Response:
        try:
            body = await request.json()
            entries = [ScriptedResponse.model_validate(item) for item in body["responses"]]
        except (ValueError, KeyError, TypeError) as exc:
            message = " ".join(f'Expected {{"responses": [...]}}: {exc}'.split())
            return JSONResponse(_error_body(message), status_code=400)
        state.script.extend(entries)
        return JSONResponse({"queued": len(state.script)})

    async def clear_script(request: Request) -> Response:
        state.script.clear()
        return Response(status_code=204)

    async def list_requests(request: Request) -> Response:
        return JSONResponse({"count": len(state.requests), "requests": state.requests})

    async def clear_requests(request: Request) -> Response:
        state.requests.clear()
        return Response(status_code=204)

    async def set_config(request: Request) -> Response:
        try:
            body = await request.json()
            latency = body["latency_ms"]
            if not isinstance(latency, int) or isinstance(latency, bool) or latency < 0:
                raise TypeError("latency_ms must be a non-negative integer")
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse(
                _error_body(f'Expected {{"latency_ms": N}}: {exc}'), status_code=400
            )
        state.latency_ms = latency
        return JSONResponse({"latency_ms": state.latency_ms})

    async def reset(request: Request) -> Response:
        state.reset()
        return Response(status_code=204)

    routes = [
        Route("/v3/mail/send", MailSendEndpoint(state), methods=["POST"]),
        Route("/_standin/health", control(health), methods=["GET"]),
        Route("/_standin/mails", control(list_mails), methods=["GET"]),
        Route("/_standin/mails", control(clear_mails), methods=["DELETE"]),
        Route("/_standin/responses", control(set_script), methods=["POST"]),
        Route("/_standin/responses", control(clear_script), methods=["DELETE"]),
        Route("/_standin/requests", control(list_requests), methods=["GET"]),
        Route("/_standin/requests", control(clear_requests), methods=["DELETE"]),
        Route("/_standin/config", control(set_config), methods=["POST"]),
        Route("/_standin/reset", control(reset), methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.standin = state
    return app


# --------------------------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------------------------


def _tracking_protocol(transports: dict[tuple[str, int], asyncio.Transport]) -> type[H11Protocol]:
    """Make an h11 protocol class that records each connection's transport by client address."""

    class _TrackingH11Protocol(H11Protocol):
        """uvicorn's h11 protocol, plus a registry entry while the connection is open."""

        _standin_key: tuple[str, int] | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            # The same address uvicorn puts in scope["client"] (proxy headers are off).
            self._standin_key = get_remote_addr(transport)
            if self._standin_key is not None:
                transports[self._standin_key] = transport

        def connection_lost(self, exc: Exception | None) -> None:
            if self._standin_key is not None:
                transports.pop(self._standin_key, None)
            super().connection_lost(exc)

    return _TrackingH11Protocol


def _format_url(host: str, port: int) -> str:
    """Build the base URL, bracketing IPv6 hosts."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    state: StandInState | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Run the stand-in until SIGINT/SIGTERM; call on_ready with the base URL once listening."""
    state = state or StandInState()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    actual_port = int(sock.getsockname()[1])
    config = uvicorn.Config(
        create_app(state),
        log_config=None,
        access_log=False,
        proxy_headers=False,
        http=_tracking_protocol(state.transports),
        lifespan="off",
        backlog=2048,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            await task
            return
        await asyncio.sleep(0.01)
    url = _format_url(host, actual_port)
    if on_ready is not None:
        on_ready(url)
    await task


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m devstack.sendgrid_standin",
        description="SendGrid v3 Mail Send stand-in (loopback).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="port; 0 picks a free one (default 7072)"
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV, DEFAULT_API_KEY),
        help=f"accepted Bearer key (default ${API_KEY_ENV}, else {DEFAULT_API_KEY})",
    )
    parser.add_argument(
        "--outbox", type=Path, default=DEFAULT_OUTBOX, help="folder for accepted mails"
    )
    parser.add_argument("--latency-ms", type=int, default=0, help="added latency per mail send")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the stand-in from the command line."""
    args = _parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not _host_is_loopback(args.host):
        logger.warning("binding %s: the stand-in is meant for loopback only", args.host)
    args.outbox.mkdir(parents=True, exist_ok=True)
    state = StandInState(
        api_key=args.api_key, outbox=args.outbox, latency_ms=max(0, args.latency_ms)
    )

    def ready(url: str) -> None:
        # Parsed by SendGridStandIn (and handy for people): keep the wording stable.
        print(f"{READY_LINE_PREFIX}{url}", flush=True)
        logger.info("outbox: %s", args.outbox.resolve())

    try:
        asyncio.run(serve(args.host, args.port, state=state, on_ready=ready))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        logger.error("could not listen on %s:%s: %s", args.host, args.port, exc)
        return 1
    return 0


def _host_is_loopback(host: str) -> bool:
    """Tell whether a bind address is a loopback one."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


# --------------------------------------------------------------------------------------------
# Process wrapper for tests
# --------------------------------------------------------------------------------------------

_READY_RE = re.compile(re.escape(READY_LINE_PREFIX) + r"(http://\S+)")
_REPO_ROOT = Path(__file__).resolve().parents[1]


class StandInError(RuntimeError):
    """The stand-in process could not be started or answered unexpectedly."""


class SendGridStandIn:
    """Run the stand-in as a subprocess on loopback and drive its control API."""

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        outbox: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_ms: int = 0,
        startup_timeout: float = 15.0,
    ) -> None:
        """Configure; nothing starts until start(). Without an outbox, a temp folder is used."""
        self.api_key = api_key
        self._outbox_arg = Path(outbox) if outbox is not None else None
        self.host = host
        self.port = port
        self.latency_ms = latency_ms
        self.startup_timeout = startup_timeout
        self.base_url = ""
        self._outbox: Path | None = None
        self._workdir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[[int, str | None], SendGridStandIn] | None = None
        self._client: httpx.Client | None = None
        self._output = ""

    @property
    def outbox(self) -> Path:
        """The folder accepted mails are written to."""
        if self._outbox is None:
            raise StandInError("the stand-in is not started")
        return self._outbox

    @property
    def mail_send_url(self) -> str:
        """The full URL of POST /v3/mail/send."""
        return f"{self.base_url}/v3/mail/send"

    @property
    def pid(self) -> int | None:
        """The process id while running."""
        return self._process.pid if self._process is not None else None

    def start(self) -> SendGridStandIn:
        """Start the process and wait until it listens."""
        if self._process is not None:
            return self
        self._workdir = Path(tempfile.mkdtemp(prefix="sendgrid-standin-"))
        self._outbox = self._outbox_arg.resolve() if self._outbox_arg else self._workdir / "outbox"
        log_path = self._workdir / "standin.log"
        env = dict(os.environ)
        env[API_KEY_ENV] = self.api_key  # not on the command line, where ps would show it
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        env["PYTHONUNBUFFERED"] = "1"
        command = [
            sys.executable,
            "-m",
            "devstack.sendgrid_standin",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--outbox",
            str(self._outbox),
            "--latency-ms",
            str(self.latency_ms),
        ]
        with log_path.open("wb") as log:
            # A file, not a pipe: nobody has to drain it, so the server can never block on a log.
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        # If the owner never calls stop() (a crashed test run), still leave no process behind.
        self._finalizer = weakref.finalize(
            self,
            _reap_group_at_exit,
            self._process.pid,
            str(self._workdir) if self._workdir is not None else None,
        )
        deadline = time.monotonic() + self.startup_timeout
        while True:
            text = log_path.read_text(errors="replace")
            match = _READY_RE.search(text)
            if match:
                self.base_url = match.group(1)
                break
            if self._process.poll() is not None or time.monotonic() > deadline:
                exited = self._process.poll() is not None
                self.stop()
                reason = (
                    "exited during start-up"
                    if exited
                    else f"did not start within {self.startup_timeout:.0f} s"
                )
                raise StandInError(f"SendGrid stand-in {reason}. Output:\n{text}")
            time.sleep(0.02)
        self._client = httpx.Client(base_url=self.base_url, timeout=10.0)
        self._client.get("/_standin/health").raise_for_status()
        return self

    def stop(self) -> None:
        """Stop the process group and remove the temp folder (not a caller-given outbox)."""
        if self._client is not None:
            self._client.close()
            self._client = None
        process, self._process = self._process, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if process is not None:
            _stop_process_group(process)
        if self._workdir is not None:
            log_path = self._workdir / "standin.log"
            if log_path.exists():
                self._output = log_path.read_text(errors="replace")
            if self._outbox_arg is None:
                self._outbox = None
            _remove_tree(self._workdir)
            self._workdir = None

    def output(self) -> str:
        """The process output so far (logs; never mail content)."""
        if self._workdir is not None and (self._workdir / "standin.log").exists():
            return (self._workdir / "standin.log").read_text(errors="replace")
        return self._output

    def __enter__(self) -> SendGridStandIn:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ---- control API helpers ----

    @property
    def client(self) -> httpx.Client:
        """An httpx client on the stand-in's base URL."""
        if self._client is None:
            raise StandInError("the stand-in is not started")
        return self._client

    def auth_headers(self) -> dict[str, str]:
        """Headers that authenticate a mail send."""
        return {"Authorization": f"Bearer {self.api_key}"}

    def mails(self) -> list[dict[str, Any]]:
        """Received mails in arrival order: {"x_message_id", "received_at", "payload"}."""
        response = self.client.get("/_standin/mails")
        response.raise_for_status()
        return typing.cast(list[dict[str, Any]], response.json())

    def clear_mails(self) -> None:
        """Forget received mails (the outbox files stay)."""
        self.client.delete("/_standin/mails").raise_for_status()

    def script(self, responses: Sequence[Mapping[str, Any]]) -> None:
        """Queue scripted responses, each consumed by one mail-send request."""
        self.client.post(
            "/_standin/responses", json={"responses": list(responses)}
        ).raise_for_status()

    def clear_script(self) -> None:
        """Drop any scripted responses not yet consumed."""
        self.client.delete("/_standin/responses").raise_for_status()

    def requests(self) -> list[dict[str, Any]]:
        """Every mail-send request so far: {"at", "received_at", "status", "outcome", ...}."""
        response = self.client.get("/_standin/requests")
        response.raise_for_status()
        return typing.cast(list[dict[str, Any]], response.json()["requests"])

    def set_latency(self, latency_ms: int) -> None:
        """Set the default latency of every mail send."""
        self.client.post("/_standin/config", json={"latency_ms": latency_ms}).raise_for_status()

    def reset(self) -> None:
        """Forget mails, script and request log, and set the latency back to 0."""
        self.client.post("/_standin/reset").raise_for_status()


def _reap_group_at_exit(pid: int, tempdir: str | None, timeout: float = 3.0) -> None:
    """Stop a process group whose owner was never stopped (crashed test, forgotten object)."""
    for sig in (signal.SIGCONT, signal.SIGTERM):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                break
        except ChildProcessError:
            # Already reaped elsewhere: done once nothing is left in the group.
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                break
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    if tempdir is not None:
        shutil.rmtree(tempdir, ignore_errors=True)


def _stop_process_group(process: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """Terminate a process and its group, killing it if it does not exit in time."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)
    # Anything left in the group (there should be nothing) goes too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def _remove_tree(path: Path) -> None:
    """Remove a folder tree, ignoring errors."""
    shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
