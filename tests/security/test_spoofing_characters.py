"""Threat: a name, subject or file name that shows other than it reads.

Attacker: any client, against the people who read its mail, but under the account's name and
reputation. Unicode's bidirectional overrides reorder what follows them: the attachment
`"invoice\\u202efdp.exe"` shows as "invoiceexe.pdf", a program dressed as a document; a sender
name can hide its real end the same way. Control characters (C0, DEL, C1) do what the reading
program makes of them: ring, move the cursor, end a header. Both routes passed them.

What the gateway does: display names (from, reply_to, to, cc, bcc), subjects (and each
personalization's) and attachment file names refuse C0 and C1 control characters, DEL, and the
bidirectional embeddings, overrides and isolates (U+202A to U+202E, U+2066 to U+2069), on both
routes, naming the field. Every other character stays allowed: names in any script, emoji.
The v3 route also refuses NUL in an attachment's content_id (as it did CR and LF).
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

SHOWN_AS_READ: dict[str, tuple[Route, str]] = {
    "v1 from name": ("v1", "#/from/name"),
    "v1 to name": ("v1", "#/to/0/name"),
    "v1 cc name": ("v1", "#/cc/0/name"),
    "v1 bcc name": ("v1", "#/bcc/0/name"),
    "v1 reply_to name": ("v1", "#/reply_to/name"),
    "v1 subject": ("v1", "#/subject"),
    "v1 attachment filename": ("v1", "#/attachments/0/filename"),
    "v3 from name": ("v3", "#/from/name"),
    "v3 to name": ("v3", "#/personalizations/0/to/0/name"),
    "v3 cc name": ("v3", "#/personalizations/0/cc/0/name"),
    "v3 bcc name": ("v3", "#/personalizations/0/bcc/0/name"),
    "v3 reply_to name": ("v3", "#/reply_to/name"),
    "v3 subject": ("v3", "#/subject"),
    "v3 personalization subject": ("v3", "#/personalizations/0/subject"),
    "v3 attachment filename": ("v3", "#/attachments/0/filename"),
}
SPOOFING = {
    "right-to-left override": "invoice\u202efdp.exe",
    "left-to-right embedding": "\u202aBilling",
    "pop directional formatting": "Billing\u202c",
    "left-to-right override": "\u202dBilling",
    "left-to-right isolate": "\u2066Billing\u2069",
    "first strong isolate": "\u2068Billing",
    "bell": "Billing\x07",
    "escape": "\x1b[31mBilling",
    "tab": "Bill\ting",
    "delete": "Billing\x7f",
    "next line (C1)": "Billing\x85",
    "control sequence introducer (C1)": "\x9bBilling",
}
READABLE = {
    "accents": "Zoë Åström",
    "arabic, right to left by itself": "فاتورة",
    "cjk": "請求書",
    "emoji": "Invoice 🧾",
    "punctuation": "O'Brien & Co. (Billing) — #42",
}


def sample(route: Route) -> dict[str, object]:
    return v1_message() if route == "v1" else v3_mail()


@pytest.mark.parametrize("text", SPOOFING.values(), ids=SPOOFING.keys())
@pytest.mark.parametrize(("route", "pointer"), SHOWN_AS_READ.values(), ids=SHOWN_AS_READ.keys())
def test_should_refuse_text_that_shows_other_than_it_reads_naming_the_field(
    route: Route, pointer: str, text: str
) -> None:
    gateway = InMemoryGateway()

    rejection = gateway.refusal(route, with_value(sample(route), pointer, text))

    assert pointers_in(route, rejection) == [field_name(route, pointer)]
    assert "bidirectional" in rejection.problems[0].detail


@pytest.mark.parametrize("text", READABLE.values(), ids=READABLE.keys())
@pytest.mark.parametrize(("route", "pointer"), SHOWN_AS_READ.values(), ids=SHOWN_AS_READ.keys())
def test_should_accept_text_in_any_script(route: Route, pointer: str, text: str) -> None:
    gateway = InMemoryGateway()

    gateway.accept(route, with_value(sample(route), pointer, text))

    assert len(gateway.queue.messages) == 1


@pytest.mark.parametrize("pointer", ["#/attachments/0/filename", "#/attachments/0/content_id"])
def test_should_refuse_nul_in_a_v3_attachments_names(pointer: str) -> None:
    rejection = InMemoryGateway().refusal("v3", with_value(v3_mail(), pointer, "inv\x0042"))

    assert pointers_in("v3", rejection) == [field_name("v3", pointer)]
    assert "NUL" in rejection.problems[0].detail
