from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from shared.errors import FieldProblem
from shared.models import (
    ADDRESSES_KEPT,
    WRITTEN_BY_GATEWAY,
    Address,
    Attachment,
    DeadLetter,
    MailRequest,
    QueueEnvelope,
    StoredBody,
    field_problems,
    normal_address,
)
from tests.samples import (
    ACCEPTED,
    NOW,
    REFUSED,
    RESERVED_HEADER_NAMES,
    SENDER,
    Refusal,
    envelope,
    everything_message,
    message,
    sendgrid_envelope,
    sendgrid_mail,
    without,
)


def validate(document: dict[str, Any], now: datetime | None = NOW) -> MailRequest:
    """Validate as the gateway does when it accepts a request (time rules relative to `now`)."""
    return MailRequest.model_validate(document, context={"now": now})


def problems_of(document: dict[str, Any], now: datetime | None = NOW) -> tuple[FieldProblem, ...]:
    with pytest.raises(ValidationError) as caught:
        validate(document, now)
    return field_problems(caught.value)


@pytest.mark.parametrize("document", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_should_accept_a_valid_message(document: dict[str, Any]) -> None:
    request = validate(document)

    assert request.from_.email
    assert len(request.to) == len(document["to"])


@pytest.mark.parametrize("case", REFUSED.values(), ids=REFUSED.keys())
def test_should_refuse_an_invalid_message_pointing_at_the_field(case: Refusal) -> None:
    problems = problems_of(case.document)

    assert [p.pointer for p in problems] == [case.pointer]
    assert case.detail in problems[0].detail


@pytest.mark.parametrize("name", RESERVED_HEADER_NAMES)
def test_should_refuse_reserved_headers_whatever_their_case(name: str) -> None:
    problems = problems_of(message(headers={"X-Fine": "1", name: "value"}))

    assert [p.pointer for p in problems] == ["#/headers"]
    assert "reserved" in problems[0].detail
    assert name in problems[0].detail


@pytest.mark.parametrize(
    ("given", "email", "name"),
    [
        ("ann@example.net", "ann@example.net", None),
        ("  ann@example.net  ", "ann@example.net", None),
        ("Ann Smith <ann@example.net>", "ann@example.net", "Ann Smith"),
        ("<ann@example.net>", "ann@example.net", None),
        ('"Smith, Ann" <ann@example.net>', "ann@example.net", "Smith, Ann"),
        ('"Ann" <ann@example.net>', "ann@example.net", "Ann"),
        ({"email": "ann@example.net"}, "ann@example.net", None),
        ({"email": "ann@example.net", "name": "Smith, Ann"}, "ann@example.net", "Smith, Ann"),
        ("Ann Smith <ann@EXAMPLE.net>", "ann@example.net", "Ann Smith"),
        # An internationalised domain in the ASCII form SendGrid takes, whichever form came.
        ("ann@bücher.example", "ann@xn--bcher-kva.example", None),
        ("ann@xn--bcher-kva.example", "ann@xn--bcher-kva.example", None),
    ],
)
def test_should_accept_each_address_form(given: Any, email: str, name: str | None) -> None:
    request = validate(message(to=[given]))

    assert request.to == [Address(email=email, name=name)]


def test_should_accept_an_address_form_for_from_and_reply_to() -> None:
    request = validate(
        message(**{"from": f"Mailgate <{SENDER}>", "reply_to": '"Help, Desk" <help@example.com>'})
    )

    assert request.from_ == Address(email=SENDER, name="Mailgate")
    assert request.reply_to == Address(email="help@example.com", name="Help, Desk")


def test_should_refuse_from_spelt_as_the_python_attribute() -> None:
    # The API field is "from"; populate_by_name also lets "from_" in, an undocumented alias.
    problems = problems_of({**without(message(), "from"), "from_": SENDER})

    assert {p.pointer for p in problems} == {"#/from", "#/from_"}


def test_should_report_every_invalid_field_at_once() -> None:
    problems = problems_of(
        message(to=["nope"], subject="a\nb", categories=[f"c{i}" for i in range(11)])
    )

    assert {p.pointer for p in problems} == {"#/to/0/email", "#/subject", "#/categories"}


def test_should_report_both_missing_subject_and_content() -> None:
    problems = problems_of(without(message(), "subject", "text"))

    assert [p.pointer for p in problems] == ["#/subject", "#/text"]


def test_should_report_every_repeated_address() -> None:
    problems = problems_of(
        message(to=["a@example.net", "b@example.net"], cc=["B@example.net"], bcc=["A@example.net"])
    )

    assert [p.pointer for p in problems] == ["#/cc/0/email", "#/bcc/0/email"]


def test_should_escape_json_pointer_characters_in_field_names() -> None:
    problems = problems_of(message(headers={"X-A/B~C": "bad\r\nvalue"}))

    assert [p.pointer for p in problems] == ["#/headers/X-A~1B~0C"]


def test_should_apply_the_send_at_window_only_when_accepting() -> None:
    past = (NOW - timedelta(days=3)).isoformat()

    request = MailRequest.model_validate(message(send_at=past))

    assert request.send_at == NOW - timedelta(days=3)


def test_should_still_require_a_timezone_on_send_at_when_not_accepting() -> None:
    with pytest.raises(ValidationError):
        MailRequest.model_validate(message(send_at="2026-03-02T12:00:00"))


def test_should_list_distinct_recipient_domains_for_logs() -> None:
    request = validate(
        message(to=["a@example.net", "b@Example.NET"], cc=["c@example.org"], bcc=["d@a.example"])
    )

    assert request.recipient_domains() == ["a.example", "example.net", "example.org"]


def test_should_list_the_recipient_domains_of_a_v3_body_in_every_personalization() -> None:
    assert sendgrid_envelope().recipient_domains() == [
        "elsewhere.example",
        "example.com",
        "example.net",
        "partner.example.org",
    ]


def test_should_list_the_domain_of_the_bcc_settings_hidden_recipient_when_it_is_on() -> None:
    body = {
        "personalizations": [{"to": [{"email": "a@one.example"}]}],
        "mail_settings": {"bcc": {"enable": True, "email": "archive@Hidden.example"}},
    }
    off = {**body, "mail_settings": {"bcc": {"enable": False, "email": "x@off.example"}}}

    on_queue = QueueEnvelope(id="m", accepted_at=NOW, sendgrid=body)

    assert on_queue.recipient_domains() == ["hidden.example", "one.example"]
    assert QueueEnvelope(id="m", accepted_at=NOW, sendgrid=off).recipient_domains() == [
        "one.example"
    ]


def test_should_list_v3_recipient_domains_even_from_a_body_edited_on_the_queue() -> None:
    body = {
        "personalizations": [
            {"to": [{"email": "a@one.example"}, {"name": "no address"}, "b@two.example"]},
            "not an object",
            {"cc": {"email": "c@three.example"}, "bcc": [{"email": "nobody"}]},
        ]
    }

    queued = QueueEnvelope(id="m", accepted_at=NOW, sendgrid=body)

    assert queued.recipient_domains() == ["one.example"]
    assert QueueEnvelope(id="m", accepted_at=NOW, sendgrid={"x": 1}).recipient_domains() == []


def test_should_refuse_an_attachment_without_content() -> None:
    with pytest.raises(ValidationError):
        Attachment(filename="a.txt", content="")


def everything_envelope(**changes: Any) -> QueueEnvelope:
    request = validate(everything_message())
    return QueueEnvelope(id="msg-42", accepted_at=NOW, message=request, **changes)


@pytest.mark.parametrize(
    "queued",
    [
        QueueEnvelope(id="msg-1", accepted_at=NOW, message=validate(message())),
        everything_envelope(),
        everything_envelope(attempt=5),
        QueueEnvelope(
            id="msg-2",
            accepted_at=NOW,
            message=validate(
                without(message(template_id="d-1", template_data={"a": None, "b": [1]}), "text")
            ),
        ),
        everything_envelope(
            dead_letter=DeadLetter(
                reason="SendGrid refused the message with 400",
                status_code=400,
                provider_error='{"errors":[]}',
                attempts=1,
                at=NOW,
            )
        ),
        sendgrid_envelope(attempt=3),
    ],
    ids=[
        "minimal",
        "everything",
        "fifth attempt",
        "template with nulls",
        "dead letter",
        "SendGrid v3 body",
    ],
)
def test_should_round_trip_an_envelope_through_json(queued: QueueEnvelope) -> None:
    assert QueueEnvelope.model_validate_json(queued.to_json()) == queued


def test_should_decode_a_queued_envelope_whose_send_at_has_passed() -> None:
    queued = everything_envelope()
    assert queued.message is not None
    assert queued.message.send_at is not None
    hours_later = queued.message.send_at + timedelta(hours=1)
    with pytest.raises(ValidationError):
        validate(everything_message(), now=hours_later)

    # The time rules apply only when a request is accepted, never to a queued message.
    decoded = QueueEnvelope.model_validate_json(queued.to_json())

    assert decoded == queued


def test_should_queue_readable_versioned_json() -> None:
    document = json.loads(everything_envelope().to_json())

    assert document["version"] == 1
    assert document["id"] == "msg-42"
    assert document["attempt"] == 1
    assert document["accepted_at"].startswith("2026-03-02T09:30:00")
    assert document["message"]["from"] == {"email": SENDER, "name": "Mailgate Sender"}
    assert "from_" not in document["message"]
    assert "dead_letter" not in document


def test_should_queue_a_v3_body_exactly_as_the_client_sent_it() -> None:
    document = json.loads(sendgrid_envelope(id="msg-v3").to_json())

    assert document["sendgrid"] == sendgrid_mail()
    assert "message" not in document


def test_should_refuse_an_envelope_of_another_version() -> None:
    document = json.loads(everything_envelope().to_json())

    with pytest.raises(ValidationError):
        QueueEnvelope.model_validate({**document, "version": 3})


def test_should_keep_the_fields_of_an_envelope_it_does_not_know_and_write_them_back() -> None:
    # A newer worker's envelope of the same version, as a rolling deploy leaves on the queue.
    document = json.loads(everything_envelope().to_json())
    unknown = {"priority": "high", "route": {"provider": "acs"}}

    read = QueueEnvelope.model_validate({**document, **unknown})
    copied = read.model_copy(update={"attempt": 2})

    assert json.loads(copied.to_json()) == {**document, **unknown, "attempt": 2}
    assert json.loads(read.claim_checked("b.json")[0].to_json())["priority"] == "high"


def test_should_still_refuse_unknown_fields_in_the_message_itself() -> None:
    # What is sent is not extended within a version: a new message field takes a new version.
    document = json.loads(everything_envelope().to_json())
    document["message"]["amp_html"] = "<p>new</p>"

    with pytest.raises(ValidationError, match="amp_html"):
        QueueEnvelope.model_validate(document)


@pytest.mark.parametrize(
    "bodies",
    [{}, {"sendgrid": {"from": {"email": "a@example.com"}}, "blob": "large/1"}],
    ids=["none", "two"],
)
def test_should_refuse_an_envelope_without_exactly_one_body(bodies: dict[str, object]) -> None:
    document = {"id": "m-1", "accepted_at": "2026-01-01T00:00:00Z", **bodies}
    with pytest.raises(ValidationError, match="exactly one of message, sendgrid or blob"):
        QueueEnvelope.model_validate(document)


# --- claim-check: the body in a blob, the envelope naming it ---------------------------------


def test_should_split_an_envelope_into_a_small_one_naming_the_blob_and_the_body() -> None:
    full = everything_envelope(attempt=3)

    small, body = full.claim_checked("live/msg-42.json")

    assert (small.id, small.accepted_at, small.attempt) == ("msg-42", NOW, 3)
    assert (small.blob, small.message, small.sendgrid) == ("live/msg-42.json", None, None)
    # Version 2: workers from before live/ put it back for a newer worker, not dead-letter it.
    assert json.loads(small.to_json()) == {
        "version": 2,
        "id": "msg-42",
        "accepted_at": "2026-03-02T09:30:00Z",
        "attempt": 3,
        "blob": "live/msg-42.json",
    }
    assert (body.version, body.id, body.message) == (1, "msg-42", full.message)


def test_should_put_the_body_back_into_the_envelope_as_it_was() -> None:
    full = everything_envelope()
    small, body = full.claim_checked("msg-42.json")

    stored = StoredBody.model_validate_json(body.to_json())

    assert small.with_body(stored) == full
    assert small.with_body(stored).to_json() == full.to_json()
    assert full.version == small.with_body(stored).version == 1


def test_should_store_the_body_as_readable_versioned_json() -> None:
    _, body = everything_envelope().claim_checked("msg-42.json")

    document = json.loads(body.to_json())

    assert (document["version"], document["id"]) == (1, "msg-42")
    assert document["message"]["from"] == {"email": SENDER, "name": "Mailgate Sender"}
    assert set(document) == {"version", "id", "message"}


def test_should_refuse_to_claim_check_an_envelope_twice() -> None:
    small, _ = everything_envelope().claim_checked("msg-42.json")

    with pytest.raises(ValueError, match="already"):
        small.claim_checked("msg-42.json")


def test_should_refuse_the_body_of_another_message() -> None:
    small, _ = everything_envelope().claim_checked("msg-42.json")
    other = StoredBody(id="msg-43", message=validate(message()))

    with pytest.raises(ValueError, match="msg-43"):
        small.with_body(other)


@pytest.mark.parametrize(
    "document",
    [
        {"version": 1, "id": "msg-1"},
        {"version": 1, "id": "msg-1", "message": message(), "sendgrid": {"a": 1}},
        {"version": 2, "id": "msg-1", "message": message()},
    ],
    ids=["no body", "two bodies", "another version"],
)
def test_should_refuse_a_stored_body_that_is_not_exactly_one_body_of_this_version(
    document: dict[str, Any],
) -> None:
    with pytest.raises(ValidationError):
        StoredBody.model_validate(document)


def test_should_check_addresses_on_accept_but_not_again_in_an_envelope_it_wrote() -> None:
    written = envelope(id="msg-m1").model_dump(mode="json", by_alias=True, exclude_none=True)
    written["message"]["to"][0]["email"] = "not an address"
    text = json.dumps(written)

    with pytest.raises(ValidationError, match="value is not a valid email address"):
        QueueEnvelope.model_validate_json(text)
    read = QueueEnvelope.model_validate_json(text, context=WRITTEN_BY_GATEWAY)

    assert read.message is not None
    assert read.message.to[0].email == "not an address"
    with pytest.raises(ValidationError, match="Input should be a valid string"):
        QueueEnvelope.model_validate_json(
            text.replace('"not an address"', "42"), context=WRITTEN_BY_GATEWAY
        )


def test_should_read_back_an_envelope_an_older_version_accepted_with_bidi_controls() -> None:
    # Older versions let bidirectional overrides through: their envelopes must still deliver.
    written = envelope(id="msg-m2").model_dump(mode="json", by_alias=True, exclude_none=True)
    written["message"]["subject"] = "invoice\u202efdp.exe"
    text = json.dumps(written)

    with pytest.raises(ValidationError, match="bidirectional"):
        QueueEnvelope.model_validate_json(text)
    read = QueueEnvelope.model_validate_json(text, context=WRITTEN_BY_GATEWAY)

    assert read.message is not None
    assert read.message.subject == "invoice\u202efdp.exe"


def test_should_normalise_addresses_as_emailstr_does() -> None:
    request = MailRequest.model_validate(message(to=["Ann <Ann.Lee@EXAMPLE.com>"]))

    assert request.to[0].email == "Ann.Lee@example.com"


def test_should_check_a_repeated_address_once_and_an_invalid_one_every_time() -> None:
    normal_address.cache_clear()
    for _ in range(3):
        request = MailRequest.model_validate(message(to=["Ann <Ann.Lee@EXAMPLE.com>"]))
        assert request.to[0].email == "Ann.Lee@example.com"
        with pytest.raises(ValidationError, match="value is not a valid email address"):
            MailRequest.model_validate(message(to=["Ann <Ann.Lee@>"]))

    checked = normal_address.cache_info()
    # Checked: the address and the sender once each, the invalid address all 3 times; the
    # other 7 lookups were answered from the 2 kept.
    assert (checked.misses, checked.hits, checked.currsize) == (5, 7, 2)


def test_should_keep_a_bounded_number_of_checked_addresses() -> None:
    for n in range(ADDRESSES_KEPT + 500):
        MailRequest.model_validate(message(to=[f"user{n}@example.com"]))

    assert normal_address.cache_info().currsize == ADDRESSES_KEPT
