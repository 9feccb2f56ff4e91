"""Threat: a value passes a pattern check with a newline at its end, and smuggles it onward.

Attacker: any client, or anyone who can reach a route that reads a header or name. In Python,
`re.match("^...$")` accepts a final "\\n": `$` matches before it. A header name "Bcc\\n" passed
the check of `POST /api/v1/messages` (`^[...]+$`), was not recognised as the reserved Bcc, and
went to SendGrid, which writes it into the mail: `{"headers": {"From\\n": "ceo@bank.example",
"Bcc\\n": "spy@evil.example"}}` forged the sender and copied the mail to a stranger. The same
pattern guarded idempotency keys, client names and keys, the Event Webhook's timestamp and the
message ids in SendGrid's events; one with a newline in it ends up as a Table key, which the
service refuses (control characters are disallowed in key fields), so a batch of events failed
as a whole and SendGrid sent it again and again.

What the gateway does: every pattern that guards input is matched whole (`re.fullmatch`), so a
final newline is refused like any other character the pattern does not allow. Patterns given to
pydantic (`Field(pattern=...)`) run on Rust's regex engine, where `$` is the end of the text;
the OpenAPI document's patterns are ECMA-262, read by clients, where `$` is the end too. End to
end: tests/e2e/test_hostile_input.py (such a header never reaches the SendGrid stand-in).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from shared.clients import KEY_PREFIX, bearer_key, check_name, client_name_of
from shared.delivery_events import DeliveryEventStore, SendGridEvent, record_event_batch
from shared.errors import InvalidMessage, SignatureRejected, StorageUnavailable, Unauthorized
from shared.idempotency import check_key
from shared.openapi import openapi_document
from shared.status import MessageState, MessageStatus
from shared.webhook_signature import SIGNATURE_HEADER, TIMESTAMP_HEADER, SignatureVerifier
from tests.event_webhook_samples import WebhookSigner, sendgrid_event
from tests.fakes import FakeStatusStore, FakeTableClient
from tests.samples import NOW, message
from tests.security.hostile_requests import InMemoryGateway, Route, field_name

SMUGGLED = {"From\n": "ceo@bank.example", "Bcc\n": "spy@evil.example"}
MESSAGE_ID = "5d0c6a52-7c9e-4a57-9a4e-1f1f6d3b2c10"
A_KEY = f"{KEY_PREFIX}app_{'a' * 43}"
SIGNER = WebhookSigner()


def with_smuggled_headers(route: Route) -> dict[str, Any]:
    if route == "v1":
        return message(headers=SMUGGLED)
    return {
        "personalizations": [{"to": [{"email": "ann@example.net"}], "headers": SMUGGLED}],
        "from": {"email": "noreply@example.com"},
        "subject": "Hello",
        "content": [{"type": "text/plain", "value": "Hi"}],
    }


@pytest.mark.parametrize("route", ["v1", "v3"])
def test_should_refuse_header_names_ending_in_a_newline(route: Route) -> None:
    gateway = InMemoryGateway()

    rejection = gateway.refusal(route, with_smuggled_headers(route))

    pointer = "#/headers" if route == "v1" else "#/personalizations/0/headers/From\n"
    assert [p.pointer for p in rejection.problems] == [pointer]
    assert gateway.queue.messages == []
    assert field_name(route, pointer) is not None


@pytest.mark.parametrize(
    ("check", "value"),
    [
        (check_key, "retry-42\n"),
        (check_name, "app\n"),
        (bearer_key, f"Bearer {A_KEY}\n"),
    ],
    ids=["Idempotency-Key", "client name", "Authorization"],
)
def test_should_refuse_a_value_with_a_final_newline_that_is_otherwise_valid(
    check: Callable[[str], object], value: str
) -> None:
    check(value.rstrip("\n"))
    with pytest.raises((InvalidMessage, Unauthorized, ValueError)):
        check(value)


def test_should_not_take_a_key_with_a_final_newline_for_a_clients_key() -> None:
    assert client_name_of(A_KEY) == "app"
    assert client_name_of(A_KEY + "\n") is None


def test_should_refuse_a_webhook_timestamp_with_a_final_newline() -> None:
    signed = SIGNER.sign([sendgrid_event("delivered", MESSAGE_ID, "ev-1", NOW)], NOW)
    signature, timestamp = signed.headers[SIGNATURE_HEADER], signed.headers[TIMESTAMP_HEADER]

    with pytest.raises(SignatureRejected, match="whole seconds"):
        SignatureVerifier(SIGNER.public_key).verify(signed.body, signature, timestamp + "\n", NOW)


def _refusing_control_characters(message_id: str) -> None:
    # The Table service refuses control characters (U+0000 to U+001F, U+007F to U+009F) in
    # PartitionKey and RowKey: Microsoft's "Understanding the Table service data model",
    # "Characters disallowed in key fields". The gateway maps that refusal to StorageUnavailable.
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in message_id):
        raise StorageUnavailable("table mailstatus: OutOfRangeInput")


def test_should_count_an_event_for_an_id_with_a_final_newline_as_unknown() -> None:
    statuses = FakeStatusStore()
    statuses.add(
        MessageStatus(id=MESSAGE_ID, state=MessageState.SENT, accepted_at=NOW, updated_at=NOW)
    )
    statuses.after_get = _refusing_control_characters
    store = DeliveryEventStore(FakeTableClient("mailstatus"))  # type: ignore[arg-type]
    events = [
        SendGridEvent.model_validate(sendgrid_event("delivered", MESSAGE_ID + "\n", "ev-1", NOW)),
        SendGridEvent.model_validate(sendgrid_event("delivered", MESSAGE_ID, "ev-2", NOW)),
    ]

    report = record_event_batch(events, statuses, store, NOW)

    assert (report.recorded, report.unknown) == (1, 1)


def test_should_refuse_an_event_id_with_a_final_newline_in_the_pydantic_pattern() -> None:
    event = sendgrid_event("delivered", MESSAGE_ID, "ev-1\n", NOW)

    with pytest.raises(ValidationError):
        SendGridEvent.model_validate(event)


def _documented_patterns(node: Any, where: str = "#") -> list[tuple[str, str]]:
    if isinstance(node, dict):
        found = [(where, node["pattern"])] if isinstance(node.get("pattern"), str) else []
        for key, value in node.items():
            found += _documented_patterns(value, f"{where}/{key}")
        return found
    if isinstance(node, list):
        return [
            p for i, item in enumerate(node) for p in _documented_patterns(item, f"{where}/{i}")
        ]
    return []


# Where the document states a pattern, the Python check that guards the same input, and a
# value the pattern takes; a whole-value pattern must not take it with "\n" added.
GUARDS: dict[str, tuple[Callable[[str], object], str]] = {
    "^[\\x20-\\x7e]{1,255}$": (check_key, "retry-42"),
    "^[0-9]{1,12}$": (
        lambda timestamp: SignatureVerifier(SIGNER.public_key).verify(
            b"[]",
            SIGNER.signature(b"[]", timestamp),
            timestamp,
            datetime.fromtimestamp(0, timezone.utc),
        ),
        "0",
    ),
    "^[\\x21-\\x7e]{1,256}$": (
        lambda sg_event_id: SendGridEvent.model_validate(
            sendgrid_event("delivered", MESSAGE_ID, sg_event_id, NOW)
        ),
        "ev-1",
    ),
    "^https?://": (lambda url: None, ""),  # a prefix: what follows it is free
}


def test_should_guard_every_pattern_the_document_states_with_a_whole_match() -> None:
    documented = {pattern for _, pattern in _documented_patterns(openapi_document())}

    assert documented == set(GUARDS)
    for pattern, (guard, valid) in GUARDS.items():
        assert pattern.startswith("^")
        if not pattern.endswith("$"):
            continue
        # What Python's `$` would let through: the very reason the guards match whole.
        assert re.match(pattern, valid + "\n")
        guard(valid)
        with pytest.raises((InvalidMessage, SignatureRejected, ValidationError)):
            guard(valid + "\n")
