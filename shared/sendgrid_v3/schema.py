"""SendGrid's v3 Mail Send request schema and documented limits, as strict pydantic models.

``validate_mail_send`` checks a decoded request body against them and returns either the
model or the error entries SendGrid would answer with.

The models also carry the gateway's own rules, the same as on its v1 route: bounds on what
SendGrid leaves to the 30 MB of a request (attachments, content blocks, headers, the members
of custom_args, substitutions and sections: see shared/models.py), no CR, LF or NUL in
one-line text, no control characters or bidirectional overrides in text a recipient reads as
shown. The SendGrid stand-in validates with these models too, so it is that much stricter than
SendGrid.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal

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

from shared.models import (
    MAX_ATTACHMENTS,
    MAX_CONTENT_BLOCKS,
    MAX_HEADERS,
    MAX_STRING_MAP_MEMBERS,
    SPOOFING_CHARACTERS,
)
from shared.sendgrid_v3.error_format import Problem, problems_error, validation_errors

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


def _check_single_line(value: str) -> str:
    """Refuse CR and LF (as SendGrid does in attachment filenames and content ids), and NUL."""
    if "\r" in value or "\n" in value:
        raise PydanticCustomError("crlf", "Cannot contain CRLF characters.")
    if "\x00" in value:
        raise PydanticCustomError("nul", "Cannot contain NUL characters.")
    return value


def _check_display_text(value: str) -> str:
    """Refuse what would make a name, subject or file name show other than it reads: line
    breaks, other control characters, bidirectional overrides (the v1 API's rules)."""
    _check_single_line(value)
    if SPOOFING_CHARACTERS.search(value):
        raise PydanticCustomError(
            "spoofing_characters",
            "Cannot contain control characters (C0, C1) nor bidirectional embeddings, "
            "overrides or isolates (U+202A to U+202E, U+2066 to U+2069).",
        )
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
SingleLine = Annotated[str, AfterValidator(_check_single_line)]
DisplayText = Annotated[str, AfterValidator(_check_display_text)]
# The gateway's bound (shared/models.py), not SendGrid's; fail_fast: one problem per map, however
# many of its members are wrong.
Headers = Annotated[
    dict[HeaderName, SingleLine],
    Field(max_length=MAX_HEADERS, fail_fast=True),
    AfterValidator(_check_unique_header_names),
]
StringMap = Annotated[dict[str, str], Field(max_length=MAX_STRING_MAP_MEMBERS, fail_fast=True)]
CustomArgs = Annotated[StringMap, AfterValidator(_check_not_empty)]
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
    name: DisplayText | None = None


class Personalization(_Strict):
    """One envelope of the mail: its recipients and per-recipient overrides."""

    to: list[EmailObject] = Field(min_length=1, max_length=MAX_RECIPIENTS)
    cc: list[EmailObject] | None = Field(default=None, max_length=MAX_RECIPIENTS)
    bcc: list[EmailObject] | None = Field(default=None, max_length=MAX_RECIPIENTS)
    from_: EmailObject | None = Field(default=None, alias="from")
    subject: DisplayText | None = Field(default=None, min_length=1)
    headers: Headers | None = None
    substitutions: StringMap | None = None
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
            raise problems_error(problems)
        return self


class Content(_Strict):
    """One body part: {"type": "text/plain", "value": ...}."""

    type: MimeType
    value: str = Field(min_length=1)


class Attachment(_Strict):
    """One attachment, its content base64-encoded."""

    content: Annotated[str, Field(min_length=1), AfterValidator(_check_base64)]
    type: MimeType | None = None
    filename: Annotated[DisplayText, Field(min_length=1)]
    disposition: Literal["inline", "attachment"] | None = None
    content_id: SingleLine | None = None


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
            raise problems_error(problems)
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
    subject: DisplayText | None = Field(default=None, min_length=1)
    content: list[Content] | None = Field(default=None, max_length=MAX_CONTENT_BLOCKS)
    attachments: list[Attachment] | None = Field(default=None, max_length=MAX_ATTACHMENTS)
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
    sections: StringMap | None = None

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
        # "Less than 10,000 bytes" (PLATFORM.md): exactly 10,000 is already too many.
        if custom_args_size(self.custom_args or {}) >= MAX_CUSTOM_ARGS_BYTES:
            problems.append(
                (("custom_args",), "Total custom_args size may not exceed 10,000 bytes.")
            )
        for index, personalization in enumerate(self.personalizations):
            merged = {**(self.custom_args or {}), **(personalization.custom_args or {})}
            if personalization.custom_args and custom_args_size(merged) >= MAX_CUSTOM_ARGS_BYTES:
                problems.append(
                    (
                        ("personalizations", index, "custom_args"),
                        "The combined size of both global and personalization custom arguments may "
                        "not exceed 10,000 bytes per personalization.",
                    )
                )
        if problems:
            raise problems_error(problems)
        return self


def _content_order_ok(content_types: list[str]) -> bool:
    """Tell whether text/plain (if any) comes first, then text/html (if any), then the rest."""
    rank = {"text/plain": 0, "text/html": 1}
    ranks = [rank.get(t.strip().lower(), 2) for t in content_types]
    return ranks == sorted(ranks)


def custom_args_size(custom_args: Mapping[str, str]) -> int:
    """Measure custom_args as SendGrid carries them: compact JSON, in UTF-8 bytes."""
    if not custom_args:
        return 0
    return len(json.dumps(custom_args, ensure_ascii=False, separators=(",", ":")).encode())


def validate_mail_send(
    payload: object, *, now: float | None = None
) -> tuple[MailSend | None, list[dict[str, Any]]]:
    """Validate a decoded request body; return the model or SendGrid error entries."""
    context = {"now": time.time() if now is None else now}
    try:
        return MailSend.model_validate(payload, strict=True, context=context), []
    except ValidationError as exc:
        return None, validation_errors(exc)
