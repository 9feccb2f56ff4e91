"""Which provider can carry a mail, and which one each attempt uses."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from shared.errors import NotDeliverable
from shared.models import MailRequest, QueueEnvelope
from shared.providers import (
    cannot_carry,
    check_deliverable,
    eligible,
    next_provider,
    provider_for_attempt,
)
from tests.samples import NOW, envelope, everything_message, message, sendgrid_envelope


def request(**fields: Any) -> MailRequest:
    return MailRequest.model_validate(message(**fields))


SENDGRID_ONLY = [
    ({"template_id": "d-123", "subject": None, "text": None}, "#/template_id"),
    ({"template_id": "d-123", "template_data": {"name": "Ann"}}, "#/template_data"),
    ({"send_at": (NOW + timedelta(hours=1)).isoformat()}, "#/send_at"),
    ({"categories": ["orders"]}, "#/categories"),
    ({"custom_args": {"order": "42"}}, "#/custom_args"),
]


@pytest.mark.parametrize(("fields", "pointer"), SENDGRID_ONLY)
def test_should_keep_sendgrid_only_fields_off_smtp(fields: dict[str, Any], pointer: str) -> None:
    problems = cannot_carry("smtp", request(**fields))

    assert pointer in [p.pointer for p in problems]
    assert cannot_carry("sendgrid", request(**fields)) == ()


def test_should_let_smtp_carry_everything_else() -> None:
    plain = {
        k: v
        for k, v in everything_message().items()
        if k not in ("categories", "custom_args", "send_at")
    }

    assert cannot_carry("smtp", MailRequest.model_validate(plain)) == ()


def test_should_name_every_field_smtp_cannot_carry() -> None:
    problems = cannot_carry("smtp", MailRequest.model_validate(everything_message()))

    assert [p.pointer for p in problems] == ["#/send_at", "#/categories", "#/custom_args"]


def test_should_keep_a_v3_body_on_sendgrid_only() -> None:
    v3 = sendgrid_envelope()

    assert eligible(("smtp", "sendgrid"), v3) == ("sendgrid",)
    assert [p.pointer for p in cannot_carry("smtp", None, v3.sendgrid)] == ["#"]


def test_should_list_the_eligible_providers_in_the_order_configured() -> None:
    assert eligible(("smtp", "sendgrid"), envelope()) == ("smtp", "sendgrid")
    assert eligible(("smtp", "sendgrid"), envelope(categories=["x"])) == ("sendgrid",)
    assert eligible(("smtp",), envelope(categories=["x"])) == ()


def test_should_accept_what_one_provider_of_several_can_carry() -> None:
    check_deliverable(("smtp", "sendgrid"), request(categories=["orders"]))
    check_deliverable(("smtp",), request())


def test_should_refuse_what_no_provider_can_carry_naming_the_fields() -> None:
    with pytest.raises(NotDeliverable) as refused:
        check_deliverable(("smtp",), request(categories=["orders"], custom_args={"a": "b"}))

    assert refused.value.status == 422
    assert "MAIL_PROVIDERS (smtp)" in refused.value.detail
    assert [p.pointer for p in refused.value.problems] == ["#/categories", "#/custom_args"]


def test_should_refuse_a_v3_body_without_sendgrid() -> None:
    with pytest.raises(NotDeliverable) as refused:
        check_deliverable(("smtp",), None, sendgrid_envelope().sendgrid)

    assert [p.pointer for p in refused.value.problems] == ["#"]


def test_should_start_with_the_first_eligible_provider() -> None:
    assert provider_for_attempt(("sendgrid", "smtp"), None) == "sendgrid"


def test_should_use_the_provider_the_envelope_names() -> None:
    assert provider_for_attempt(("sendgrid", "smtp"), "smtp") == "smtp"


def test_should_fall_back_to_the_first_when_the_named_one_is_no_longer_eligible() -> None:
    assert provider_for_attempt(("sendgrid",), "smtp") == "sendgrid"


@pytest.mark.parametrize(
    ("candidates", "failed", "expected"),
    [
        (("sendgrid", "smtp"), "sendgrid", "smtp"),
        # After the last, the first again: a provider that recovers gets its mail back.
        (("sendgrid", "smtp"), "smtp", "sendgrid"),
        (("sendgrid",), "sendgrid", "sendgrid"),
        # A provider no longer among the candidates gives way to the first.
        (("smtp",), "sendgrid", "smtp"),
    ],
)
def test_should_move_on_after_a_retryable_failure(
    candidates: tuple[str, ...], failed: str, expected: str
) -> None:
    chosen = next_provider(candidates, failed, ambiguous=False, failover_on_ambiguous=False)

    assert chosen == expected


def test_should_stay_after_an_ambiguous_failure_unless_allowed() -> None:
    candidates = ("sendgrid", "smtp")

    assert (
        next_provider(candidates, "sendgrid", ambiguous=True, failover_on_ambiguous=False)
        == "sendgrid"
    )
    assert (
        next_provider(candidates, "sendgrid", ambiguous=True, failover_on_ambiguous=True) == "smtp"
    )


def test_should_walk_attempts_through_the_providers_deterministically() -> None:
    candidates = ("sendgrid", "smtp")
    used = [provider_for_attempt(candidates, None)]
    for _ in range(4):
        used.append(
            next_provider(candidates, used[-1], ambiguous=False, failover_on_ambiguous=False)
        )

    assert used == ["sendgrid", "smtp", "sendgrid", "smtp", "sendgrid"]


def test_should_read_an_envelope_without_a_provider_as_before_providers() -> None:
    text = envelope().to_json()

    assert '"provider"' not in text
    assert QueueEnvelope.model_validate_json(text).provider is None


def test_should_keep_an_address_beyond_ascii_before_the_at_off_sendgrid_only() -> None:
    mail = request(
        **{"from": "jörg@example.com", "to": ["ann@example.org", "zoë@example.org"]},
        reply_to="ann@bücher.example",  # a domain goes as punycode: SendGrid takes it
    )

    assert [p.pointer for p in cannot_carry("sendgrid", mail)] == ["#/from", "#/to/1"]
    assert cannot_carry("smtp", mail) == ()
    check_deliverable(("sendgrid", "smtp"), mail)
    with pytest.raises(NotDeliverable):
        check_deliverable(("sendgrid",), mail)
    assert cannot_carry("sendgrid", request()) == ()
