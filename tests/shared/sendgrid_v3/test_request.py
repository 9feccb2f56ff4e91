"""A v3 Mail Send body as the gateway accepts it: SendGrid's rules, plus room for its own id."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from shared.errors import InvalidMessage
from shared.sendgrid_v3.request import parse_mail_send
from shared.sendgrid_v3.schema import custom_args_size
from tests.samples import NOW, body, sendgrid_mail


def refusal(document: Any, **options: Any) -> InvalidMessage:
    content = document if isinstance(document, bytes) else body(document)
    with pytest.raises(InvalidMessage) as caught:
        parse_mail_send(content, options.get("now", NOW))
    return caught.value


def pointers(document: Any, **options: Any) -> list[str]:
    return [p.pointer for p in refusal(document, **options).problems]


def args_of_size(size: int, key: str = "k") -> dict[str, str]:
    """One custom arg whose object is `size` bytes as SendGrid measures it."""
    return {key: "x" * (size - custom_args_size({key: ""}))}


def test_should_return_the_body_exactly_as_sent_and_its_model() -> None:
    document, mail = parse_mail_send(body(sendgrid_mail()), NOW)

    assert document == sendgrid_mail()
    assert mail.from_.email == "noreply@example.com"
    assert len(mail.personalizations) == 2


def test_should_keep_what_the_model_would_normalise() -> None:
    # Key order, unknown keys in settings objects and nulls in template data stay as sent.
    sent = {"mail_settings": {"legacy_setting": {"x": 1}}, **sendgrid_mail()}

    document, _ = parse_mail_send(body(sent), NOW)

    assert json.dumps(document) == json.dumps(sent)


def test_should_refuse_an_invalid_field_in_sendgrids_words() -> None:
    document = sendgrid_mail()
    document["personalizations"][0]["to"][1]["email"] = "bob(at)example.net"

    [problem] = refusal(document).problems

    assert problem.pointer == "#/personalizations/0/to/1/email"
    assert problem.detail == "Does not contain a valid address."


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"not json",
        b"\xff\xfe{}",
        b'{"personalizations": [{"dynamic_template_data": {"k": "\\udc00"}}]}',
    ],
    ids=["empty", "truncated", "text", "not UTF-8", "lone surrogate"],
)
def test_should_refuse_a_body_that_is_not_json(content: bytes) -> None:
    # NaN, Infinity and bodies nested too deep are refused naming the field: see
    # tests/security/test_unreadable_at_delivery.py.
    rejection = refusal(content)

    assert rejection.problems == ()
    assert "not valid UTF-8 JSON" in rejection.detail


@pytest.mark.parametrize("content", [b"[]", b'"text"', b"null", b"42"])
def test_should_refuse_json_that_is_not_an_object_pointing_at_the_whole(content: bytes) -> None:
    assert pointers(content) == ["#"]


# --- send_at, relative to the moment of accept ---------------------------------------------


@pytest.mark.parametrize("ahead", [timedelta(hours=-1), timedelta(0), timedelta(hours=72)])
def test_should_accept_send_at_in_the_past_or_up_to_72_hours_ahead(ahead: timedelta) -> None:
    send_at = int((NOW + ahead).timestamp())
    document = sendgrid_mail(send_at=send_at)
    document["personalizations"][0]["send_at"] = send_at

    parse_mail_send(body(document), NOW)


def test_should_refuse_send_at_more_than_72_hours_after_the_accept() -> None:
    send_at = int((NOW + timedelta(hours=72, seconds=1)).timestamp())
    document = sendgrid_mail(send_at=send_at)
    document["personalizations"][1]["send_at"] = send_at

    assert pointers(document) == ["#/personalizations/1/send_at", "#/send_at"]
    # The same body is fine a second later: the window moves with the accept time.
    parse_mail_send(body(document), NOW + timedelta(seconds=1))


# --- custom_args: mailgate_id is the gateway's ---------------------------------------------


def test_should_refuse_a_callers_mailgate_id_at_the_top_level() -> None:
    [problem] = refusal(sendgrid_mail(custom_args={"mailgate_id": "mine"})).problems

    assert problem.pointer == "#/custom_args/mailgate_id"
    assert "reserved" in problem.detail


def test_should_refuse_a_callers_mailgate_id_in_a_personalization() -> None:
    document = sendgrid_mail()
    document["personalizations"][1]["custom_args"] = {"mailgate_id": "mine", "x": "1"}

    assert pointers(document) == ["#/personalizations/1/custom_args/mailgate_id"]


# Merged with other args, "mailgate_id": <64 characters> adds 81 bytes: 9,918 + 81 = 9,999.
ROOM_LEFT = 9_999 - 81


def test_should_accept_custom_args_leaving_room_for_the_longest_gateway_id() -> None:
    document = sendgrid_mail(custom_args=args_of_size(ROOM_LEFT))
    del document["personalizations"][0]["custom_args"]

    parse_mail_send(body(document), NOW)


def test_should_refuse_custom_args_a_byte_short_of_room_for_the_longest_gateway_id() -> None:
    document = sendgrid_mail(custom_args=args_of_size(ROOM_LEFT + 1))
    del document["personalizations"][0]["custom_args"]

    assert pointers(document) == ["#/custom_args"]


def test_should_refuse_personalization_args_that_leave_no_room_for_the_gateway_id() -> None:
    document = sendgrid_mail(custom_args={"tenant": "acme"})
    document["personalizations"][0]["custom_args"] = args_of_size(9_950)

    [problem] = refusal(document).problems

    assert problem.pointer == "#/personalizations/0/custom_args"
    assert "mailgate_id" in problem.detail


def test_should_refuse_global_args_that_leave_no_room_once_for_every_personalization() -> None:
    document = sendgrid_mail(custom_args=args_of_size(9_950))
    del document["personalizations"][0]["custom_args"]

    assert pointers(document) == ["#/custom_args"]


def test_should_refuse_custom_args_sendgrid_itself_refuses_before_the_gateways_rules() -> None:
    assert pointers(sendgrid_mail(custom_args={"mailgate_id": 42})) == ["#/custom_args/mailgate_id"]
    assert "strings" in refusal(sendgrid_mail(custom_args={"mailgate_id": 42})).problems[0].detail
