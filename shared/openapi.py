"""The API contract: an OpenAPI 3.1 document built from the models the gateway validates with.

Request bodies are described by the very models that parse them (`MailRequest`, SendGrid's
`MailSend`, `DeadLetterSelection`, `SendGridEvent`), so the document cannot drift from what the
routes accept.
Responses are described by the small models below; `make test` runs schemathesis against the
local host with this document and fails on any response that does not match it.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from shared.clients import KEY_PREFIX
from shared.dead_letters import DeadLetterSelection
from shared.delivery_events import MAX_TIMELINE_EVENTS, DeliveryState, SendGridEvent
from shared.errors import MAX_PROBLEMS_SHOWN
from shared.json_limits import MAX_JSON_DEPTH, MAX_JSON_VALUES
from shared.models import (
    MAX_PROVIDER_ERRORS,
    MAX_PROVIDER_FIELD_CHARS,
    MAX_PROVIDER_MESSAGE_CHARS,
    MailRequest,
)
from shared.poison_walk import DEFAULT_PAGE_LIMIT, MAX_CONTINUATION_LENGTH, MAX_PAGE_LIMIT
from shared.replay_advice import CAUSES, Replay
from shared.sendgrid_v3.schema import MailSend
from shared.status import MessageState
from shared.webhook_signature import (
    MAX_EVENT_BATCH_BYTES,
    MAX_SIGNATURE_SKEW,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
)

VERSION = "1.0.0"
REF_TEMPLATE = "#/components/schemas/{model}"
PROBLEM_JSON = "application/problem+json"
JSON = "application/json"


class _Document(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Accepted(_Document):
    """A message durably queued."""

    id: str = Field(description="The gateway's message id.")
    status: Literal["queued"]


class ClientDocument(_Document):
    """The calling client, and the gateway's limits for its requests."""

    name: str = Field(description="The client the key belongs to.")
    max_request_bytes: int = Field(
        description="The largest request body accepted (MAX_REQUEST_BYTES); larger is 413."
    )


class ProviderErrorDocument(_Document):
    """One of SendGrid's own errors: its message (any address cut to *@domain, the mail's own
    text left out, bounded) and the field it names."""

    message: str = Field(max_length=MAX_PROVIDER_MESSAGE_CHARS)
    field: str | None = Field(max_length=MAX_PROVIDER_FIELD_CHARS)


_PROVIDER_ERRORS = Field(
    default=None,
    max_length=MAX_PROVIDER_ERRORS,
    description=f"SendGrid's own errors, the first {MAX_PROVIDER_ERRORS}; absent without any.",
)
_CAUSE = Field(
    default=None,
    description="Why it failed, one of: " + ", ".join(CAUSES) + ". Absent when unknown.",
)
_REPLAY = Field(
    default=None,
    description="Whether a replay can help: `helps` (as it is), `after_fix` (once what "
    "`action` names is fixed), `no` (the mail itself is refused: it fails again).",
)
_ACTION = Field(default=None, description="What an operator should do, in a sentence or two.")


class LastError(_Document):
    """The last failed attempt: a status code and a short reason, never mail content."""

    status_code: int | None
    reason: str | None = Field(
        description="Why, with SendGrid's own messages and the fields they name, if any."
    )
    ambiguous: bool = Field(
        description="The attempt timed out after sending: SendGrid may have accepted the mail."
    )
    provider_errors: list[ProviderErrorDocument] | None = _PROVIDER_ERRORS
    cause: str | None = _CAUSE
    replay: Replay | None = _REPLAY
    action: str | None = _ACTION


class TimelineEvent(_Document):
    """One of SendGrid's events for the message: never an address, nor a link's query."""

    event: str = Field(description="SendGrid's event type: processed, delivered, bounce, ...")
    at: datetime = Field(description="When it happened, by SendGrid's clock.")
    sg_event_id: str
    recipient_domain: str | None = Field(default=None, description="The recipient's domain.")
    status: str | None = Field(default=None, description="The SMTP status code, e.g. 5.1.1.")
    reason: str | None = Field(
        default=None, description="Why, in short; any address cut to *@domain."
    )
    bounce_type: str | None = Field(default=None, description="bounce or blocked.")
    url: str | None = Field(
        default=None, description="A clicked link, without its query or fragment."
    )


class MessageStatusDocument(_Document):
    """What became of a message."""

    id: str
    status: MessageState
    attempts: int = Field(ge=0)
    accepted_at: datetime
    updated_at: datetime
    next_attempt_at: datetime | None = None
    last_error: LastError | None = None
    sendgrid_message_id: str | None = Field(
        default=None, description="SendGrid's X-Message-Id, when SendGrid sent it."
    )
    provider_message_id: str | None = Field(
        default=None,
        description="The id the provider that sent it gave it (an SMTP relay's: the Message-ID; "
        "ACS's: its send operation's id, the message's own id).",
    )
    provider: str | None = Field(
        default=None, description="The provider that sent it (see MAIL_PROVIDERS)."
    )
    providers_tried: list[str] | None = Field(
        default=None,
        description="Every provider an attempt used, in the order first used; absent before "
        "the first attempt.",
    )
    providers_skipped: list[str] | None = Field(
        default=None,
        description="Providers an attempt passed over because their circuit breaker was open "
        "(they were failing), in the order first passed over; absent when none was.",
    )
    delivery: DeliveryState | None = Field(
        default=None,
        description="How far SendGrid's events took the mail; absent until the first event.",
    )
    delivery_updated_at: datetime | None = Field(
        default=None, description="When the gateway last recorded an event for it."
    )
    timeline: list[TimelineEvent] | None = Field(
        default=None,
        max_length=MAX_TIMELINE_EVENTS,
        description=f"SendGrid's events, oldest first; the newest {MAX_TIMELINE_EVENTS} at most.",
    )


class FieldProblemDocument(_Document):
    """One offending field, located by a JSON Pointer into the request body."""

    pointer: str
    detail: str


class ProblemDocument(_Document):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldProblemDocument] | None = None


class HealthStatusDocument(_Document):
    """Whether the gateway works; the details are for the admin key (`/health/details`)."""

    status: Literal["healthy", "unhealthy"]


class ProviderGuard(_Document):
    """A provider's circuit breaker as the answering instance sees it, and its brake."""

    max_emails_per_second: float | None = Field(
        description="Its send-rate brake (<PROVIDER>_MAX_EMAILS_PER_SECOND); null: none."
    )
    breaker: Literal["closed", "open", "half_open", "off"]
    failures: int | None = Field(default=None, ge=0, description="Retryable failures in a row.")
    opened: int | None = Field(default=None, ge=0, description="How many times it opened.")
    tried_again_in_seconds: int | None = Field(
        default=None, ge=0, description="While not closed: until a trial may go to it."
    )


class HealthDocument(_Document):
    """Each check's result, the queue depths, and whether the Event Webhook is configured."""

    status: Literal["healthy", "unhealthy"]
    checks: dict[str, str]
    queues: dict[str, int]
    event_webhook: Literal["configured", "not configured", "not checked"] = Field(
        description="Whether SENDGRID_WEBHOOK_PUBLIC_KEY is set; optional, so not a check."
    )
    providers: dict[str, ProviderGuard] | None = Field(
        default=None,
        description="Each provider of MAIL_PROVIDERS: its circuit breaker and brake; not checks.",
    )


class EventBatchReport(_Document):
    """What became of the events of one batch."""

    received: int = Field(ge=0, description="Events in the batch.")
    recorded: int = Field(ge=0, description="Events recorded now.")
    duplicates: int = Field(ge=0, description="Events recorded before (SendGrid retries).")
    unknown: int = Field(
        ge=0, description="Events without a mailgate_id, or for an id that is no message here."
    )
    ignored: int = Field(ge=0, description="Events of types the gateway does not record.")


class DeadLetterDocument(_Document):
    """One message in the poison queue, with the reason it is there."""

    id: str | None
    reason: str
    attempts: int | None
    dead_lettered_at: datetime | None
    replayable: bool
    blob: str | None = Field(default=None, description="Where a large message's body is.")
    status_code: int | None = Field(default=None, description="SendGrid's status, if it answered.")
    provider_errors: list[ProviderErrorDocument] | None = _PROVIDER_ERRORS
    cause: str | None = _CAUSE
    replay: Replay | None = _REPLAY
    action: str | None = _ACTION


_CONTINUATION = (
    "Pass it back (with the same selection) for the next call of this walk through the poison "
    "queue; null once the walk is over."
)


class DeadLetterList(_Document):
    """Dead letters met by this call of a walk through the poison queue."""

    dead_letters: list[DeadLetterDocument]
    continuation: str | None = Field(description=_CONTINUATION)


class DeadLetterReport(_Document):
    """What this call of a replay or purge did, message by message."""

    done: list[str]
    skipped: dict[str, str]
    not_found: list[str] = Field(
        description="The chosen ids the walk did not find: filled in by its last call."
    )
    continuation: str | None = Field(description=_CONTINUATION)


class QueueDepthDocument(_Document):
    """One queue and its approximate number of messages."""

    name: str
    depth: int = Field(ge=0)


class ConsoleQueues(_Document):
    """The mail queue and its poison queue."""

    mail: QueueDepthDocument
    poison: QueueDepthDocument


class MinuteCounts(_Document):
    """Delivery outcomes in one minute."""

    minute: datetime = Field(description="The minute's start (UTC).")
    sent: int = Field(ge=0)
    retried: int = Field(ge=0, description="Failed attempts that were scheduled to retry.")
    failed: int = Field(ge=0, description="Messages dead-lettered.")


class ActivityCoverage(_Document):
    """How much of the hour the counts cover: all of it unless more rows than the limit."""

    rows_read: int = Field(ge=0)
    limit: int = Field(ge=1)
    complete: bool
    covers_from: datetime


class ConsoleMessageDocument(MessageStatusDocument):
    """A message's status record as the operator sees it, with the client that sent it."""

    client: str | None = None


class ConsoleSummary(_Document):
    """What the operator console shows at a glance."""

    generated_at: datetime
    queues: ConsoleQueues
    minutes: list[MinuteCounts] = Field(description="The last 60 minutes, oldest first.")
    activity: ActivityCoverage
    latest: list[ConsoleMessageDocument] = Field(
        description="The messages with the newest delivery outcomes, newest first."
    )


class ActivityEventDocument(_Document):
    """One delivery outcome of a message."""

    state: MessageState
    attempt: int = Field(ge=0)
    at: datetime


class ConsoleMessage(_Document):
    """Any message's status record and the latest delivery outcomes it keeps."""

    status: ConsoleMessageDocument
    activity: list[ActivityEventDocument]


class SendGridError(_Document):
    """One entry of SendGrid's error body."""

    message: str
    field: str | None
    help: Any | None


class SendGridErrors(_Document):
    """SendGrid's error body."""

    errors: list[SendGridError]


REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    MailRequest,
    MailSend,
    DeadLetterSelection,
    SendGridEvent,
)
RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    Accepted,
    ClientDocument,
    MessageStatusDocument,
    ProblemDocument,
    HealthStatusDocument,
    HealthDocument,
    DeadLetterList,
    DeadLetterReport,
    SendGridErrors,
    ConsoleSummary,
    ConsoleMessage,
    EventBatchReport,
)

_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Makes a retry of the same request safe: the same key and body answer the "
    "first 202 again; another body is 422.",
    "schema": {"type": "string", "pattern": "^[\\x20-\\x7e]{1,255}$"},
}
# What no JSON Schema keyword states: checked on the body before it is parsed.
_BODY_BOUNDS = (
    f"At most {MAX_JSON_DEPTH} levels of arrays and objects and {MAX_JSON_VALUES:,} values in "
    "all; no NaN, Infinity, or number beyond a double."
)
_MESSAGE_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "The message id the gateway gave (a UUID); any other text is 404.",
    "schema": {"type": "string", "format": "uuid"},
}
_RETRY_AFTER = {"Retry-After": {"schema": {"type": "string"}, "description": "Seconds to wait."}}

# Why each refusal happens, per route family; every one comes with a body (see _refusal).
_MAIL_REFUSALS = {
    "400": "Invalid JSON or an invalid field, one entry per field (the first "
    f"{MAX_PROBLEMS_SHOWN} listed and the rest counted); or more recipients (emails) than the "
    "client's whole rate per minute, which could never pass.",
    "401": "No client key, or one that is malformed, unknown or disabled.",
    "403": "A `from` outside the client's senders or ALLOWED_SENDERS, or a field that needs a "
    "feature the client is not allowed (an account-wide SendGrid control or a sensitive "
    "header); one entry per field.",
    "409": "A request with the same Idempotency-Key is still being accepted.",
    "413": "The body is over MAX_REQUEST_BYTES.",
    "415": "The body is not application/json.",
    "422": "The Idempotency-Key was used before with another body; or no provider of "
    "MAIL_PROVIDERS can carry the mail (a SendGrid template, send_at, categories or custom_args "
    "with only an SMTP relay; a v3 body without SendGrid), one entry per field.",
    "429": "The request's emails (one per recipient) are more than the client has left of its "
    "rate this minute; nothing was queued.",
    "503": "Storage is unavailable, or a setting is wrong (named in the detail): nothing was "
    "queued.",
}


def _schema(name: str) -> dict[str, str]:
    return {"$ref": REF_TEMPLATE.format(model=name)}


def _refusal(description: str, media_type: str, schema: str, status: str) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {media_type: {"schema": _schema(schema)}},
    }
    if status in ("429", "503"):
        response["headers"] = _RETRY_AFTER
    if status == "401":
        response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    return response


def _refusals(
    statuses: dict[str, str], media_type: str = PROBLEM_JSON, schema: str = "ProblemDocument"
) -> dict[str, Any]:
    return {
        status: _refusal(description, media_type, schema, status)
        for status, description in statuses.items()
    }


def _json_body(schema: str, description: str, example: dict[str, Any]) -> dict[str, Any]:
    return {
        "required": True,
        "description": description,
        "content": {JSON: {"schema": _schema(schema), "example": example}},
    }


MESSAGE_EXAMPLE = {
    "from": "App <app@example.com>",
    "to": ["someone@example.org"],
    "subject": "Hello",
    "text": "Sent through mailgate.",
    "custom_args": {"order": "42"},
}
MAIL_SEND_EXAMPLE = {
    "personalizations": [{"to": [{"email": "someone@example.org"}]}],
    "from": {"email": "app@example.com", "name": "App"},
    "subject": "Hello",
    "content": [{"type": "text/plain", "value": "Sent through mailgate."}],
}


def _ok(schema: str, description: str, status: str = "200") -> dict[str, Any]:
    return {status: {"description": description, "content": {JSON: {"schema": _schema(schema)}}}}


EVENT_BATCH_EXAMPLE = [
    {
        "event": "delivered",
        "sg_event_id": "ZGVsaXZlcmVkLTAtMjQ0NjE2NzItMA",
        "timestamp": 1_700_000_000,
        "mailgate_id": "6f1c0e0e-2b4e-4c4f-9a43-0c7d2b9a1e55",
        "email": "someone@example.org",
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
        "response": "250 OK",
    }
]
_SKEW_SECONDS = int(MAX_SIGNATURE_SKEW.total_seconds())

_ADMIN_REFUSALS = {
    # The host itself refuses a missing or wrong admin key, with an empty body.
    "401": {"description": "No admin key, or the wrong one (answered by the host)."},
    **_refusals({"503": "Storage is unavailable, or a setting is wrong (named in the detail)."}),
}


_NO_STORE = {"Cache-Control": {"schema": {"type": "string"}}}


def _console_paths(admin_key: list[dict[str, list[str]]]) -> dict[str, Any]:
    return {
        "/console": {
            "get": {
                "operationId": "console",
                "summary": "The operator console: one self-contained HTML page",
                "description": "The same static page for everyone, with no data and no secret. "
                "It asks for the admin key and keeps it in the tab's sessionStorage, sending it "
                "as `x-functions-key` to the routes below, or reads them under `/signed-in/` for "
                "an operator signed in with Microsoft Entra ID.",
                "security": [],
                "responses": {
                    "200": {
                        "description": "The page; its script and style are allowed by hash.",
                        "headers": {
                            "Content-Security-Policy": {"schema": {"type": "string"}},
                            **_NO_STORE,
                        },
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                },
            }
        },
        "/v1/console/summary": {
            "get": {
                "operationId": "console_summary",
                "summary": "Queue depths, outcomes per minute over the last hour, latest messages",
                "security": admin_key,
                "responses": {
                    **_ok("ConsoleSummary", "The summary."),
                    **_ADMIN_REFUSALS,
                },
            }
        },
        "/v1/console/messages/{id}": {
            "get": {
                "operationId": "console_message",
                "summary": "Any client's message: its status and latest outcomes",
                "security": admin_key,
                "parameters": [_MESSAGE_ID],
                "responses": {
                    **_ok("ConsoleMessage", "The message."),
                    **_refusals({"404": "No message has that id."}),
                    **_ADMIN_REFUSALS,
                },
            }
        },
    }


def _paths() -> dict[str, Any]:
    client_key: list[dict[str, list[str]]] = [{"clientKey": []}]
    admin_key: list[dict[str, list[str]]] = [{"adminKey": []}]
    paths = {
        "/v1/messages": {
            "post": {
                "operationId": "submit_message",
                "summary": "Queue a message for delivery",
                "security": client_key,
                "parameters": [_IDEMPOTENCY_KEY],
                "requestBody": _json_body(
                    "MailRequest", f"The message. {_BODY_BOUNDS}", MESSAGE_EXAMPLE
                ),
                "responses": {
                    "202": {
                        "description": "Durably queued.",
                        "headers": {
                            "Location": {"schema": {"type": "string"}},
                            "Idempotent-Replayed": {"schema": {"type": "string"}},
                        },
                        "content": {JSON: {"schema": _schema("Accepted")}},
                    },
                    **_refusals(_MAIL_REFUSALS),
                },
            }
        },
        "/v1/messages/{id}": {
            "get": {
                "operationId": "get_message_status",
                "summary": "What became of one of the client's messages",
                "security": client_key,
                "parameters": [_MESSAGE_ID],
                "responses": {
                    **_ok("MessageStatusDocument", "The message's status record."),
                    **_refusals(
                        {
                            "401": _MAIL_REFUSALS["401"],
                            "404": "No message of this client has that id.",
                            "503": "Storage is unavailable, or a setting is wrong (named in the "
                            "detail).",
                        }
                    ),
                },
            }
        },
        "/v1/client": {
            "get": {
                "operationId": "get_client",
                "summary": "Whose key this is, and the gateway's limits (the SMTP relay's check)",
                "security": client_key,
                "responses": {
                    **_ok("ClientDocument", "The key's client and the largest request body."),
                    **_refusals(
                        {
                            "401": _MAIL_REFUSALS["401"],
                            "503": "Storage is unavailable, or a setting is wrong (named in the "
                            "detail).",
                        }
                    ),
                },
            }
        },
        "/v3/mail/send": {
            "post": {
                "operationId": "sendgrid_mail_send",
                "summary": "SendGrid's v3 Mail Send, answered as SendGrid answers it",
                "security": client_key,
                "parameters": [_IDEMPOTENCY_KEY],
                "requestBody": _json_body(
                    "MailSend",
                    f"SendGrid's v3 Mail Send request. {_BODY_BOUNDS}",
                    MAIL_SEND_EXAMPLE,
                ),
                "responses": {
                    "202": {
                        "description": "Durably queued; the body is empty.",
                        "headers": {
                            "X-Message-Id": {
                                "schema": {"type": "string"},
                                "description": "The gateway's message id.",
                            }
                        },
                    },
                    **_refusals(_MAIL_REFUSALS, JSON, "SendGridErrors"),
                },
            }
        },
        "/v1/events/sendgrid": {
            "post": {
                "operationId": "sendgrid_events",
                "summary": "SendGrid's Event Webhook: record what became of each mail",
                "description": "SendGrid posts batches of events here, signed. Events are matched "
                "to messages by `mailgate_id`, recorded once each by `sg_event_id`, and shown by "
                "`GET /v1/messages/{id}`. A batch received twice changes nothing.",
                "security": [{"sendgridSignature": []}],
                "parameters": [
                    {
                        "name": TIMESTAMP_HEADER,
                        "in": "header",
                        "required": True,
                        "description": "When SendGrid signed the request, in seconds since "
                        f"1970; refused if more than {_SKEW_SECONDS} s from the gateway's clock.",
                        "schema": {"type": "string", "pattern": "^[0-9]{1,12}$"},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "description": "A batch of SendGrid events.",
                    "content": {
                        JSON: {
                            "schema": {"type": "array", "items": _schema("SendGridEvent")},
                            "example": EVENT_BATCH_EXAMPLE,
                        }
                    },
                },
                "responses": {
                    **_ok("EventBatchReport", "Recorded; the counts tell what became of each."),
                    **_refusals(
                        {
                            "400": "Signed, but not a JSON array of SendGrid events.",
                            "401": "Not signed, signed with another key, or the timestamp is "
                            f"more than {_SKEW_SECONDS} s from the gateway's clock.",
                            "413": f"The body is over {MAX_EVENT_BATCH_BYTES} bytes (SendGrid "
                            "posts about 768 KB at most), refused before it is read.",
                            "503": "SENDGRID_WEBHOOK_PUBLIC_KEY is not set, storage is "
                            "unavailable, or a setting is wrong: SendGrid sends the batch again "
                            "later.",
                        }
                    ),
                },
            }
        },
        "/health": {
            "get": {
                "operationId": "health",
                "summary": "Whether the gateway works, for probes: no details",
                "description": "The answer of this instance, at most a few seconds old. Why it "
                "is unhealthy is for the admin key: `/health/details`.",
                "security": [],
                "responses": {
                    **_ok("HealthStatusDocument", "Every check passed."),
                    "503": {
                        "description": "Storage failed a check, or a setting is wrong.",
                        "headers": _RETRY_AFTER,
                        "content": {JSON: {"schema": _schema("HealthStatusDocument")}},
                    },
                },
            }
        },
        "/health/details": {
            "get": {
                "operationId": "health_details",
                "summary": "Each health check, the queue depths and the Event Webhook, now",
                "security": admin_key,
                "responses": {
                    **_ok("HealthDocument", "Every check passed."),
                    "401": _ADMIN_REFUSALS["401"],
                    "503": {
                        "description": "Storage failed a check (the health document), or a "
                        "setting is wrong (a problem naming it).",
                        "headers": _RETRY_AFTER,
                        "content": {
                            JSON: {"schema": _schema("HealthDocument")},
                            PROBLEM_JSON: {"schema": _schema("ProblemDocument")},
                        },
                    },
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": {
                    "200": {
                        "description": "The OpenAPI 3.1 document.",
                        "content": {JSON: {"schema": {"type": "object"}}},
                    }
                },
            }
        },
        "/v1/dead-letters": {
            "get": {
                "operationId": "list_dead_letters",
                "summary": "The poison queue, with each message's reason, a page at a time",
                "security": admin_key,
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "description": "The most messages this call goes through.",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_PAGE_LIMIT,
                            "default": DEFAULT_PAGE_LIMIT,
                        },
                    },
                    {
                        "name": "continuation",
                        "in": "query",
                        "description": "The previous page's `continuation`.",
                        "schema": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": MAX_CONTINUATION_LENGTH,
                        },
                    },
                ],
                "responses": {
                    **_ok("DeadLetterList", "The dead letters this call met."),
                    **_refusals({"400": "A limit out of range, or a bad continuation."}),
                    **_ADMIN_REFUSALS,
                },
            }
        },
        "/v1/dead-letters/replay": {
            "post": {
                "operationId": "replay_dead_letters",
                "summary": "Queue dead letters again as fresh first attempts",
                "security": admin_key,
                "requestBody": _json_body(
                    "DeadLetterSelection", "Some ids, or all.", {"ids": ["6f1c0e0e-..."]}
                ),
                "responses": {
                    **_ok("DeadLetterReport", "What this call replayed."),
                    **_refusals({"400": "An invalid selection, limit or continuation."}),
                    **_ADMIN_REFUSALS,
                },
            }
        },
        "/v1/dead-letters/purge": {
            "post": {
                "operationId": "purge_dead_letters",
                "summary": "Delete dead letters for good (confirm: the poison queue's name)",
                "security": admin_key,
                "requestBody": _json_body(
                    "DeadLetterSelection",
                    "Some ids, or all, confirmed.",
                    {"ids": ["6f1c0e0e-..."], "confirm": "mail-outbound-poison"},
                ),
                "responses": {
                    **_ok("DeadLetterReport", "What this call purged."),
                    **_refusals({"400": "An invalid selection, or no confirmation."}),
                    **_ADMIN_REFUSALS,
                },
            }
        },
        **_console_paths(admin_key),
    }
    return {**paths, **_signed_in_twins(paths)}


_OPERATOR_SIGN_IN_REFUSALS = _refusals(
    {
        "401": "No operator signed in, or operator sign-in is off (OPERATOR_PRINCIPAL_IDS).",
        "403": "Signed in, but not as an operator OPERATOR_PRINCIPAL_IDS lists.",
        "503": "Storage is unavailable, or a setting is wrong (named in the detail), or "
        "OPERATOR_PRINCIPAL_IDS is set without App Service Authentication.",
    }
)


def _signed_in_twins(paths: dict[str, Any]) -> dict[str, Any]:
    # Each admin-key route has a twin under /signed-in/ for an operator signed in with Entra ID
    # (functions/auth.py operator_route): the same operation but for its credential.
    twins: dict[str, Any] = {}
    for path, operations in paths.items():
        for method, operation in operations.items():
            if operation.get("security") != [{"adminKey": []}]:
                continue
            responses = {
                status: response
                for status, response in operation["responses"].items()
                if status not in _ADMIN_REFUSALS
            }
            twins.setdefault(f"/signed-in{path}", {})[method] = {
                **operation,
                "operationId": f"{operation['operationId']}_signed_in",
                "security": [{"operatorSignIn": []}],
                "responses": {**responses, **_OPERATOR_SIGN_IN_REFUSALS},
            }
    return twins


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The whole document, built once per process."""
    _, requests = models_json_schema(
        [(model, "validation") for model in REQUEST_MODELS], ref_template=REF_TEMPLATE
    )
    _, responses = models_json_schema(
        [(model, "serialization") for model in RESPONSE_MODELS], ref_template=REF_TEMPLATE
    )
    schemas = {**requests.get("$defs", {}), **responses.get("$defs", {})}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mailgate",
            "version": VERSION,
            "description": "An email gateway for Azure Functions: apps queue mail over HTTPS; "
            "the gateway delivers it through SendGrid's v3 API with retries and a poison queue.",
        },
        "servers": [{"url": "/api"}],
        "paths": _paths(),
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "clientKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": f"A client key ({KEY_PREFIX}<client>_<secret>), made with "
                    "`make client`.",
                },
                "adminKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "x-functions-key",
                    "description": "The Function App's admin (master) key.",
                },
                "operatorSignIn": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "AppServiceAuthSession",
                    "description": "A sign-in with Microsoft Entra ID by App Service "
                    "Authentication (/.auth/login/aad), of an operator OPERATOR_PRINCIPAL_IDS "
                    "lists; the platform also takes an Entra access token as a Bearer header.",
                },
                "sendgridSignature": {
                    "type": "apiKey",
                    "in": "header",
                    "name": SIGNATURE_HEADER,
                    "description": "SendGrid's ECDSA P-256 signature (base64) of the "
                    f"{TIMESTAMP_HEADER} header followed by the raw body, checked with "
                    "SENDGRID_WEBHOOK_PUBLIC_KEY.",
                },
            },
        },
    }
