"""Per-client policy: feature names, which fields need which feature, and counting emails."""

from __future__ import annotations

from typing import Any

import pytest

from shared.errors import FeatureNotAllowed, FieldProblem, InvalidMessage
from shared.models import MailRequest
from shared.policy import (
    FEATURES,
    check_allowed,
    check_v3_recipient_limit,
    check_within_rate,
    header_feature,
    parse_features,
    v1_emails,
    v1_refusals,
    v3_emails,
    v3_refusals,
)
from shared.sendgrid_v3.schema import MailSend
from tests.samples import SENDER, addresses, message


def mail_send(*recipients: int, **fields: Any) -> MailSend:
    """A v3 body with one personalization of that many `to` recipients per argument."""
    return MailSend.model_validate(
        {
            "personalizations": [
                {"to": [{"email": a} for a in addresses(count, prefix=f"p{n}-")]}
                for n, count in enumerate(recipients)
            ],
            "from": {"email": SENDER},
            "subject": "Hi",
            "content": [{"type": "text/plain", "value": "Hi"}],
            **fields,
        },
        strict=True,
    )


BCC_ON = {"mail_settings": {"bcc": {"enable": True, "email": "archive@example.com"}}}


def test_should_parse_feature_names_with_spaces_and_none_for_no_feature() -> None:
    assert parse_features(" asm , batch_id,") == {"asm", "batch_id"}
    assert parse_features("none") == frozenset()
    assert parse_features("") == frozenset()


@pytest.mark.parametrize("text", ["asm,mail_settings.bypass", "none,asm", "ASM"])
def test_should_refuse_an_unknown_feature_naming_it_and_listing_the_features(text: str) -> None:
    with pytest.raises(ValueError, match="is not a feature; the features are") as caught:
        parse_features(text)

    assert all(name in str(caught.value) for name in FEATURES)


@pytest.mark.parametrize(
    ("name", "feature"),
    [
        ("Sender", "headers.sender"),
        ("RETURN-PATH", "headers.return-path"),
        ("message-id", "headers.message-id"),
        ("Resent-To", "headers.resent"),
        ("resent-date", "headers.resent"),
        ("X-Resent", None),
        ("List-Unsubscribe", None),
        ("In-Reply-To", None),
    ],
)
def test_should_know_which_headers_need_a_feature(name: str, feature: str | None) -> None:
    assert header_feature(name) == feature


def test_should_map_every_feature_to_a_field_it_unlocks() -> None:
    everything = {
        "mail_settings": {
            name.removeprefix("mail_settings."): {"enable": False}
            for name in FEATURES
            if name.startswith("mail_settings.")
        },
        "tracking_settings": {"open_tracking": {"enable": False}},
        "asm": {"group_id": 1},
        "ip_pool_name": "pool",
        "batch_id": "batch",
        "headers": {"Sender": "a@example.com", "Return-Path": "<a@example.com>"},
        "personalizations": [
            {
                "to": [{"email": "ann@example.net"}],
                "headers": {"Resent-From": "a@example.com", "Message-ID": "<1@example.com>"},
            }
        ],
    }
    mail = mail_send(1, **everything)

    refused = v3_refusals(mail, frozenset())
    allowed = v3_refusals(mail, frozenset(FEATURES))

    assert len(refused) == len(FEATURES)
    assert allowed == []
    for feature in FEATURES:
        assert sum(repr(feature) in p.detail for p in refused) == 1, feature


def test_should_refuse_only_headers_on_v1() -> None:
    request = MailRequest.model_validate(message(headers={"Sender": "a@example.com", "X-A": "b"}))

    assert v1_refusals(request, frozenset()) == [
        FieldProblem("#/headers/Sender", v1_refusals(request, frozenset())[0].detail)
    ]
    assert v1_refusals(request, frozenset({"headers.sender"})) == []


def test_should_raise_403_with_every_problem_or_nothing() -> None:
    check_allowed([], "app")
    problems = [FieldProblem("#/asm", "x"), FieldProblem("#/batch_id", "y")]

    with pytest.raises(FeatureNotAllowed) as caught:
        check_allowed(problems, "app")

    assert caught.value.status == 403
    assert caught.value.problems == tuple(problems)


def test_should_count_one_email_per_recipient_and_per_personalization_with_the_bcc_setting() -> (
    None
):
    request = MailRequest.model_validate(
        message(to=addresses(3), cc=addresses(2, prefix="c"), bcc=addresses(4, prefix="b"))
    )

    assert v1_emails(request) == 9
    assert v3_emails(mail_send(2, 3)) == 5
    assert v3_emails(mail_send(2, 3, **BCC_ON)) == 7
    off = {"mail_settings": {"bcc": {"enable": False, "email": "archive@example.com"}}}
    assert v3_emails(mail_send(2, 3, **off)) == 5


def test_should_refuse_the_bcc_setting_only_when_it_takes_a_mail_past_1000_recipients() -> None:
    check_v3_recipient_limit(mail_send(499, 499, **BCC_ON))  # 998 + 2 = 1,000

    with pytest.raises(InvalidMessage) as caught:
        check_v3_recipient_limit(mail_send(500, 499, **BCC_ON))

    assert [p.pointer for p in caught.value.problems] == ["#/mail_settings/bcc"]
    assert "1001 in all" in caught.value.problems[0].detail


def test_should_refuse_a_request_larger_than_the_whole_rate_naming_where_its_recipients_are() -> (
    None
):
    check_within_rate(100, 100, "app", "#/to")

    with pytest.raises(InvalidMessage) as caught:
        check_within_rate(101, 100, "app", "#/to")

    assert caught.value.status == 400
    assert [p.pointer for p in caught.value.problems] == ["#/to"]
    assert "at most 100 per minute" in caught.value.problems[0].detail
