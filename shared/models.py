"""The message an app submits, and the envelope that carries it through the queue."""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import idna
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.networks import validate_email
from pydantic_core import PydanticCustomError

from shared.errors import FieldProblem, json_pointer
from shared.json_limits import ItemLimit, JsonLimits, Path, item_limits

MAX_RECIPIENTS = 1000
MAX_CATEGORIES = 10
# The gateway's own bounds on what SendGrid leaves unbounded but for the 30 MB of a request:
# far above what mail needs, they bound the work one request can cause (both routes).
MAX_ATTACHMENTS = 1000
MAX_HEADERS = 100
MAX_CONTENT_BLOCKS = 100
# Members of custom_args (and SendGrid's substitutions and sections): their JSON must be under
# 10,000 bytes anyway; this bounds their count before their values are read.
MAX_STRING_MAP_MEMBERS = 10_000
MAX_CUSTOM_ARGS_BYTES = 10_000
MAX_SEND_AT_AHEAD = timedelta(hours=72)
MAILGATE_ID_ARG = "mailgate_id"
MAX_MESSAGE_ID_LENGTH = 64

# SendGrid refuses these in `headers`; the gateway sets the rest from the message fields.
# Message-ID is not among them: it needs the client's feature `headers.message-id`, as on the
# v3 route (shared/policy.py).
RESERVED_HEADERS = frozenset(
    h.lower()
    for h in (
        "From",
        "To",
        "Cc",
        "Bcc",
        "Subject",
        "Reply-To",
        "Content-Type",
        "Content-Transfer-Encoding",
        "MIME-Version",
        "Date",
        "Received",
        "DKIM-Signature",
        "X-SG-ID",
        "X-SG-EID",
    )
)


class FieldErrors(ValueError):
    """Cross-field problems found by a model validator, each with its own JSON Pointer."""

    def __init__(self, problems: list[FieldProblem]) -> None:
        super().__init__("; ".join(f"{p.pointer}: {p.detail}" for p in problems))
        self.problems = tuple(problems)


_LINE_BREAKS = re.compile(r"[\r\n\x00]")
# What makes text show other than it reads: C0 and C1 controls (DEL too), and the bidirectional
# embeddings, overrides and isolates ("invoice\u202efdp.exe" shows as "invoiceexe.pdf").
SPOOFING_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
SPOOFING_RULE = (
    "must not contain control characters (C0, C1) nor bidirectional embeddings, overrides or "
    "isolates (U+202A to U+202E, U+2066 to U+2069)"
)
# RFC 5322 field names: printable US-ASCII except the colon.
_HEADER_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")


def _single_line(value: str) -> str:
    if _LINE_BREAKS.search(value):
        raise ValueError("must not contain CR, LF or NUL")
    return value


def _display_text(value: str, info: ValidationInfo) -> str:
    # Not checked again in what the gateway wrote: an envelope an older version accepted must
    # still read back at delivery.
    if SPOOFING_CHARACTERS.search(value) and not (info.context or {}).get("written_by_gateway"):
        raise ValueError(SPOOFING_RULE)
    return value


# A header value, an id: one line.
SingleLine = Annotated[str, AfterValidator(_single_line)]
# What a recipient reads as it is shown (a display name, a subject, a file name): one line,
# and shown as it is written.
DisplayText = Annotated[str, AfterValidator(_single_line), AfterValidator(_display_text)]


def _split_address(value: Any) -> Any:
    """Accept "a@example.com" and "Name <a@example.com>" as well as {"email", "name"}."""
    if not isinstance(value, str):
        return value
    # "Name <address>": the address is between the last "<" and a final ">". Read with string
    # methods, in one pass: a regular expression for it backtracked for seconds on a long run
    # of spaces.
    text = value.strip()
    opening = text.rfind("<")
    if not text.endswith(">") or opening < 0 or ">" in text[opening + 1 : -1]:
        return {"email": text}
    name = text[:opening].strip()
    if len(name) >= 2 and name[0] == name[-1] == '"':
        name = name[1:-1]
    return {"email": text[opening + 1 : -1].strip(), "name": name or None}


# Validation context for a queue envelope or stored body this gateway wrote: its addresses
# were checked (and normalised) when the message was accepted, and are not checked again.
WRITTEN_BY_GATEWAY = {"written_by_gateway": True}


def _email(value: Any, info: ValidationInfo) -> str:
    """pydantic's EmailStr check (the same errors), skipped for what the gateway wrote."""
    if not isinstance(value, str):
        raise PydanticCustomError("string_type", "Input should be a valid string")
    if (info.context or {}).get("written_by_gateway"):
        return value
    return normal_address(value)


# An app's sender, reply-to and copies repeat on every request: each check costs 20-30 us of
# email-validator. Only valid addresses are kept (an error is raised again each time), at most
# ADDRESSES_KEPT of them: each valid, so 254 characters once normalised, and pydantic reads at
# most 2,048 of an input.
ADDRESSES_KEPT = 1024


@functools.lru_cache(maxsize=ADDRESSES_KEPT)
def normal_address(value: str) -> str:
    """An address in the normal form accepted mail carries; pydantic's EmailStr errors."""
    normalized = validate_email(value)[1]
    # email-validator's normal form has an internationalised domain in Unicode; SendGrid takes
    # it only in its ASCII form (punycode, the same domain), and refused the Unicode one at
    # delivery (shared/sendgrid_v3/schema.py _check_email).
    local, _, domain = normalized.rpartition("@")
    return normalized if domain.isascii() else f"{local}@{idna.encode(domain).decode('ascii')}"


# EmailStr, whose check an envelope read back from the queue can skip (WRITTEN_BY_GATEWAY).
Email = Annotated[
    str, PlainValidator(_email), WithJsonSchema({"type": "string", "format": "email"})
]


class Address(BaseModel):
    """An email address with an optional display name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    email: Email
    name: DisplayText | None = Field(default=None, max_length=256)

    @property
    def domain(self) -> str:
        """The part after the @, safe to log."""
        return self.email.rpartition("@")[2]


# The schema says what is accepted: the object, or "a@example.com" / "Name <a@example.com>".
AddressIn = Annotated[
    Address, BeforeValidator(_split_address, json_schema_input_type=str | Address)
]


class Attachment(BaseModel):
    """A file sent with the message, its content base64-encoded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    filename: DisplayText = Field(min_length=1, max_length=255)
    content: str = Field(min_length=1)
    content_type: SingleLine | None = Field(default=None, min_length=1, max_length=255)
    disposition: Literal["attachment", "inline"] = "attachment"
    content_id: SingleLine | None = Field(default=None, min_length=1, max_length=255)

    @field_validator("content")
    @classmethod
    def _content_is_base64(cls, value: str) -> str:
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("must be valid base64 (RFC 4648, standard alphabet)") from None
        return value

    @model_validator(mode="after")
    def _inline_needs_content_id(self) -> Attachment:
        if self.disposition == "inline" and not self.content_id:
            raise ValueError("an inline attachment needs a content_id")
        return self


class MailRequest(BaseModel):
    """A message as submitted to `POST /api/v1/messages`, validated to SendGrid's limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    from_: AddressIn = Field(alias="from")
    to: list[AddressIn] = Field(min_length=1, max_length=MAX_RECIPIENTS)
    cc: list[AddressIn] = Field(default_factory=list, max_length=MAX_RECIPIENTS)
    bcc: list[AddressIn] = Field(default_factory=list, max_length=MAX_RECIPIENTS)
    reply_to: AddressIn | None = None
    subject: DisplayText | None = Field(default=None, min_length=1, max_length=998)
    text: str | None = Field(default=None, min_length=1)
    html: str | None = Field(default=None, min_length=1)
    template_id: SingleLine | None = Field(default=None, min_length=1, max_length=255)
    template_data: dict[str, Any] | None = None
    # fail_fast: one problem per map, however many of its values are wrong.
    headers: dict[str, SingleLine] = Field(
        default_factory=dict, max_length=MAX_HEADERS, fail_fast=True
    )
    categories: list[SingleLine] = Field(default_factory=list, max_length=MAX_CATEGORIES)
    custom_args: dict[str, str] = Field(
        default_factory=dict, max_length=MAX_STRING_MAP_MEMBERS, fail_fast=True
    )
    send_at: AwareDatetime | None = None
    attachments: list[Attachment] = Field(default_factory=list, max_length=MAX_ATTACHMENTS)

    @field_validator("headers")
    @classmethod
    def _headers_are_custom(cls, headers: dict[str, str]) -> dict[str, str]:
        for name in headers:
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(
                    f"header name {name!r} must be printable ASCII without spaces or colons"
                )
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"header {name!r} is reserved: set it through its own field")
        return headers

    @field_validator("categories")
    @classmethod
    def _categories_are_distinct(cls, categories: list[str]) -> list[str]:
        if any(not c or len(c) > 255 for c in categories):
            raise ValueError("each category must have 1 to 255 characters")
        if len({c.lower() for c in categories}) != len(categories):
            raise ValueError("categories must be distinct")
        return categories

    @field_validator("custom_args")
    @classmethod
    def _custom_args_fit(cls, args: dict[str, str]) -> dict[str, str]:
        if MAILGATE_ID_ARG in args:
            raise ValueError(f"{MAILGATE_ID_ARG!r} is reserved for the gateway's message id")
        # Leave room for the gateway's own id, which travels in the same object.
        with_id = {**args, MAILGATE_ID_ARG: "0" * MAX_MESSAGE_ID_LENGTH}
        size = len(json.dumps(with_id, ensure_ascii=False).encode())
        if size >= MAX_CUSTOM_ARGS_BYTES:
            raise ValueError(f"must be under {MAX_CUSTOM_ARGS_BYTES} bytes as JSON, is {size}")
        return args

    @field_validator("send_at")
    @classmethod
    def _send_at_in_window(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        # Only checked when a request is accepted: a queued message may outlive its send_at.
        now = (info.context or {}).get("now")
        if value is None or now is None:
            return value
        if value <= now:
            raise ValueError("must be in the future")
        if value - now > MAX_SEND_AT_AHEAD:
            raise ValueError("must be at most 72 hours ahead")
        return value

    @model_validator(mode="after")
    def _message_is_complete(self) -> MailRequest:
        problems: list[FieldProblem] = []
        if self.template_id is None:
            if self.template_data is not None:
                problems.append(FieldProblem("#/template_data", "needs a template_id"))
            if self.subject is None:
                problems.append(
                    FieldProblem("#/subject", "is required unless template_id is given")
                )
            if self.text is None and self.html is None:
                problems.append(
                    FieldProblem("#/text", "text or html is required unless template_id is given")
                )
        recipients = [
            (f"#/{field}/{index}/email", address)
            for field, addresses in (("to", self.to), ("cc", self.cc), ("bcc", self.bcc))
            for index, address in enumerate(addresses)
        ]
        if len(recipients) > MAX_RECIPIENTS:
            problems.append(
                FieldProblem(
                    "#/to",
                    f"at most {MAX_RECIPIENTS} recipients in to, cc and bcc together, "
                    f"got {len(recipients)}",
                )
            )
        seen: set[str] = set()
        for pointer, address in recipients:
            key = address.email.lower()
            if key in seen:
                problems.append(FieldProblem(pointer, "appears more than once in to, cc and bcc"))
            seen.add(key)
        if problems:
            raise FieldErrors(problems)
        return self

    def recipient_domains(self) -> list[str]:
        """The distinct recipient domains, which may be logged (full addresses may not)."""
        return sorted({a.domain for a in (*self.to, *self.cc, *self.bcc)})


def _too_many(path: Path, most: int, is_object: bool) -> str:
    items = "members" if is_object else "items"
    return f"has more than {most} {items}: at most {most} are accepted"


# What a `POST /api/v1/messages` body may hold, checked on its bytes before it is parsed: the
# bounds of MailRequest's lists and maps, and the recipients together.
MAIL_REQUEST_LIMITS = JsonLimits(
    each=item_limits(MailRequest, _too_many),
    together=(
        (
            frozenset({("to",), ("cc",), ("bcc",)}),
            ItemLimit(
                MAX_RECIPIENTS,
                f"at most {MAX_RECIPIENTS} recipients in to, cc and bcc together",
                is_object=False,
                # Where MailRequest's own check reports it.
                pointer="#/to",
            ),
        ),
    ),
)


# The envelope (and stored body) version this code writes and reads. Within a version, a newer
# mailgate may add fields that do not change what is sent (as `status_etag` and `postponed`
# were): older workers keep them and ignore them. Whatever would change what is sent (a new
# field of the message itself) takes a new version, which older workers leave on the queue for
# newer ones (see shared/delivery.py) rather than dead-letter: old and new workers share the
# queue during a rolling deploy.
#
# Version 2 is a claim-checked envelope, whose body is under live/ or dead-letters/
# (shared/blobs.py): workers from before those prefixes refuse such a blob name as not the
# message's own and dead-letter the message, where a newer version they put back for a newer
# worker. Every other envelope is still written as version 1, which every worker reads.
ENVELOPE_VERSION: Literal[2] = 2
CLAIM_CHECKED_VERSION: Literal[2] = 2
# A stored body's version: still 1.
STORED_BODY_VERSION: Literal[1] = 1
# Fields this version does not know are kept (and written back with every copy), not refused.
_KEEPS_UNKNOWN_FIELDS = ConfigDict(extra="allow", frozen=True)


# What a reason keeps of SendGrid's error body (shared/sendgrid_client.py provider_errors).
MAX_PROVIDER_ERRORS = 3
MAX_PROVIDER_MESSAGE_CHARS = 200
MAX_PROVIDER_FIELD_CHARS = 100
MAX_CAUSE_CHARS = 64


class ProviderError(BaseModel):
    """One entry of SendGrid's error body as the gateway keeps it: its message (addresses cut
    to `*@domain`, the mail's own text left out, bounded) and the field it names."""

    model_config = ConfigDict(frozen=True)

    message: str = Field(max_length=MAX_PROVIDER_MESSAGE_CHARS)
    field: str | None = Field(default=None, max_length=MAX_PROVIDER_FIELD_CHARS)

    def __str__(self) -> str:
        return f"{self.message} (field {self.field})" if self.field else self.message


class DeadLetter(BaseModel):
    """Why a message was dead-lettered, for the operator reading the poison queue."""

    model_config = _KEEPS_UNKNOWN_FIELDS

    reason: str
    status_code: int | None = None
    # SendGrid's error body as it came (cut to 1,000 characters): for the operator only.
    provider_error: str | None = None
    attempts: int
    at: datetime
    # Absent from dead letters written before they existed: readers derive what they can
    # (shared/dead_letters.py). `cause` is a key of shared/replay_advice.py CAUSES.
    cause: str | None = Field(default=None, max_length=MAX_CAUSE_CHARS)
    provider_errors: list[ProviderError] | None = Field(
        default=None, max_length=MAX_PROVIDER_ERRORS
    )


class QueueEnvelope(BaseModel):
    """The queue message: a versioned, human-readable JSON wrapper around the request."""

    model_config = _KEEPS_UNKNOWN_FIELDS

    version: Literal[1, 2] = 1
    id: str = Field(min_length=1, max_length=MAX_MESSAGE_ID_LENGTH)
    accepted_at: datetime
    attempt: int = Field(default=1, ge=1)
    # The client that submitted the message (absent on envelopes from before clients existed).
    client: str | None = None
    # The body, exactly one of: a `POST /api/v1/messages` request; a `POST /api/v3/mail/send`
    # body as the client sent it (validated on accept); or the name of the blob holding either
    # of those when the message is too large for one queue message (claim-check).
    message: MailRequest | None = None
    sendgrid: dict[str, Any] | None = None
    blob: str | None = Field(default=None, min_length=1, max_length=1024)
    # The W3C trace context of the accept (traceparent, tracestate): every delivery attempt
    # continues that trace. Absent when telemetry is off.
    trace: dict[str, str] | None = None
    # The ETag of the `queued` status record an accept wrote until accepts stopped writing one
    # (shared/message_ids.py): the first attempt of a message queued then claims that record
    # without reading it first, and reads it only if it changed since. Read, never written.
    status_etag: str | None = Field(default=None, max_length=256)
    # How many times this message was put back on the queue for later without an attempt
    # (storage failing, settings wrong): each wait doubles, up to a few minutes.
    postponed: int | None = Field(default=None, ge=1)
    # The provider this attempt uses (shared/providers.py), set on each retry; absent on the
    # first attempt, which uses the first provider that can carry the mail. A worker that does
    # not know it sends through SendGrid, as before providers existed.
    provider: str | None = Field(default=None, max_length=64)
    dead_letter: DeadLetter | None = None

    @model_validator(mode="after")
    def _carries_one_body(self) -> QueueEnvelope:
        carried = [name for name in ("message", "sendgrid", "blob") if getattr(self, name)]
        if len(carried) != 1:
            raise ValueError("an envelope carries exactly one of message, sendgrid or blob")
        return self

    def sender_addresses(self) -> list[str]:
        """Every `from` of the body carried in the queue message itself (v3: each
        personalization's too), read leniently: for a check, not for sending."""
        if self.message is not None:
            return [self.message.from_.email]
        if self.sendgrid is not None:
            return sendgrid_senders(self.sendgrid)
        return []

    def recipient_domains(self) -> list[str]:
        """The distinct recipient domains of the body carried in the queue message itself."""
        if self.message is not None:
            return self.message.recipient_domains()
        if self.sendgrid is not None:
            return sendgrid_recipient_domains(self.sendgrid)
        return []

    def to_json(self) -> str:
        """The envelope as the compact JSON text that goes on the queue."""
        return self.model_dump_json(by_alias=True, exclude_none=True)

    def claim_checked(self, blob: str) -> tuple[QueueEnvelope, StoredBody]:
        """This envelope split in two: a small one naming `blob`, and the body to store there."""
        if self.blob is not None:
            raise ValueError(f"envelope {self.id} already keeps its body in blob {self.blob}")
        body = StoredBody(id=self.id, message=self.message, sendgrid=self.sendgrid)
        # model_copy skips validation: the body was validated once, on accept.
        small = {"message": None, "sendgrid": None, "blob": blob, "version": CLAIM_CHECKED_VERSION}
        return self.model_copy(update=small), body

    def with_body(self, body: StoredBody) -> QueueEnvelope:
        """The envelope with the body from its blob in place of the blob's name."""
        if body.id != self.id:
            raise ValueError(f"blob {self.blob} holds the body of {body.id}, not of {self.id}")
        # With its body inline it is what every version reads.
        inline = {"blob": None, "message": body.message, "sendgrid": body.sendgrid, "version": 1}
        return self.model_copy(update=inline)


class StoredBody(BaseModel):
    """A claim-checked message's body as its blob holds it: versioned, human-readable JSON."""

    model_config = _KEEPS_UNKNOWN_FIELDS

    version: Literal[1] = STORED_BODY_VERSION
    # The message the body belongs to, so that a blob read on its own says whose it is.
    id: str = Field(min_length=1, max_length=MAX_MESSAGE_ID_LENGTH)
    message: MailRequest | None = None
    sendgrid: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _carries_one_body(self) -> StoredBody:
        if (self.message is None) == (self.sendgrid is None):
            raise ValueError("a stored body is exactly one of message or sendgrid")
        return self

    def to_json(self) -> bytes:
        """The body as the compact UTF-8 JSON that goes into the blob."""
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()


def sendgrid_senders(body: dict[str, Any]) -> list[str]:
    """The top-level and per-personalization `from` addresses of a v3 Mail Send body.

    Read leniently, as sendgrid_recipient_domains: a `from` that is not an address object
    yields "" (which no ALLOWED_SENDERS entry allows).
    """

    def email(holder: Any) -> str:
        sender = holder.get("from") if isinstance(holder, dict) else None
        address = sender.get("email") if isinstance(sender, dict) else None
        return address if isinstance(address, str) else ""

    personalizations = body.get("personalizations")
    return [email(body)] + [
        email(p)
        for p in (personalizations if isinstance(personalizations, list) else [])
        if isinstance(p, dict) and "from" in p
    ]


def sendgrid_recipient_domains(body: dict[str, Any]) -> list[str]:
    """The distinct to, cc, bcc (and bcc setting) domains of a v3 Mail Send body, safe to log
    (addresses are not).

    Read leniently: the body was validated when it was accepted, and a log line must not fail
    on a queue message someone edited since.
    """
    domains: set[str] = set()
    personalizations = body.get("personalizations")
    for personalization in personalizations if isinstance(personalizations, list) else []:
        if not isinstance(personalization, dict):
            continue
        for kind in ("to", "cc", "bcc"):
            recipients = personalization.get(kind)
            for recipient in recipients if isinstance(recipients, list) else []:
                email = recipient.get("email") if isinstance(recipient, dict) else None
                if isinstance(email, str) and "@" in email:
                    domains.add(email.rpartition("@")[2].lower())
    # The bcc mail setting's hidden recipient gets a copy of every email: it is one too.
    settings = body.get("mail_settings")
    bcc = settings.get("bcc") if isinstance(settings, dict) else None
    email = bcc.get("email") if isinstance(bcc, dict) and bcc.get("enable") is True else None
    if isinstance(email, str) and "@" in email:
        domains.add(email.rpartition("@")[2].lower())
    return sorted(domains)


def field_problems(error: ValidationError) -> tuple[FieldProblem, ...]:
    """Translate a pydantic error into one problem per offending field, located by JSON Pointer."""
    problems: list[FieldProblem] = []
    for detail in error.errors(include_url=False):
        base = json_pointer(detail["loc"])
        cause = (detail.get("ctx") or {}).get("error")
        if isinstance(cause, FieldErrors):
            problems.extend(
                FieldProblem(base + p.pointer.removeprefix("#"), p.detail) for p in cause.problems
            )
            continue
        message = detail["msg"].removeprefix("Value error, ")
        if detail["type"] == "extra_forbidden":
            message = "is not a known field"
        problems.append(FieldProblem(base, message))
    return tuple(problems)
