from __future__ import annotations

import pytest

from shared.models import ProviderError
from shared.replay_advice import (
    API_KEY,
    CAUSES,
    FORBIDDEN,
    INVALID_REQUEST,
    OUTCOME_UNKNOWN,
    REFUSED,
    SENDER_IDENTITY,
    TOO_LARGE,
    UNAVAILABLE,
    Replay,
    advice_for,
    classify,
    is_retryable_status,
)
from shared.sendgrid_v3.error_format import UNVERIFIED_SENDER_BODY

UNVERIFIED = ProviderError(
    message=UNVERIFIED_SENDER_BODY["errors"][0]["message"][:200],
    field=UNVERIFIED_SENDER_BODY["errors"][0]["field"],
)


@pytest.mark.parametrize(
    ("status", "errors", "cause"),
    [
        (403, (UNVERIFIED,), SENDER_IDENTITY),
        # The issue's own example says 400: the words decide, whatever the status.
        (400, (UNVERIFIED,), SENDER_IDENTITY),
        (
            400,
            (ProviderError(message="The subject is required.", field="subject"),),
            INVALID_REQUEST,
        ),
        (400, (), INVALID_REQUEST),
        (401, (), API_KEY),
        (403, (ProviderError(message="access forbidden"),), FORBIDDEN),
        (413, (), TOO_LARGE),
        (404, (), REFUSED),
        (415, (), REFUSED),
        (408, (), UNAVAILABLE),
        (429, (), UNAVAILABLE),
        (500, (), UNAVAILABLE),
        (503, (UNVERIFIED,), UNAVAILABLE),
    ],
)
def test_should_classify_sendgrids_answer(
    status: int, errors: tuple[ProviderError, ...], cause: str
) -> None:
    assert classify(status, errors) == cause


@pytest.mark.parametrize(
    ("status", "retryable", "ambiguous", "cause"),
    [
        (None, True, False, UNAVAILABLE),  # no connection, on every attempt
        (None, True, True, OUTCOME_UNKNOWN),  # a timeout after sending
        (None, False, False, "not_sendable"),  # the gateway's own refusal (a missing blob)
        (None, None, False, None),  # an old status record: nothing tells
        (None, None, True, OUTCOME_UNKNOWN),
    ],
)
def test_should_classify_a_failure_without_an_answer_from_what_is_known(
    status: int | None, retryable: bool | None, ambiguous: bool, cause: str | None
) -> None:
    assert classify(status, retryable=retryable, ambiguous=ambiguous) == cause


@pytest.mark.parametrize(
    ("cause", "replay"),
    [
        (SENDER_IDENTITY, Replay.AFTER_FIX),
        (API_KEY, Replay.AFTER_FIX),
        (FORBIDDEN, Replay.AFTER_FIX),
        (INVALID_REQUEST, Replay.NO),
        (TOO_LARGE, Replay.NO),
        (UNAVAILABLE, Replay.HELPS),
        (OUTCOME_UNKNOWN, Replay.HELPS),
    ],
)
def test_should_say_whether_a_replay_helps(cause: str, replay: Replay) -> None:
    advice = advice_for(cause)

    assert advice is not None
    assert advice.replay is replay


def test_should_tell_an_operator_what_to_do_for_every_cause() -> None:
    for cause, advice in CAUSES.items():
        assert advice.cause == cause
        assert advice.action.endswith("."), cause
        assert 20 <= len(advice.action) <= 200, cause
        assert advice.to_document() == {
            "cause": cause,
            "replay": advice.replay.value,
            "action": advice.action,
        }


def test_should_name_the_fix_in_the_action() -> None:
    assert "Sender Authentication" in CAUSES[SENDER_IDENTITY].action
    assert "SENDGRID_API_KEY" in CAUSES[API_KEY].action
    assert "twice" in CAUSES[OUTCOME_UNKNOWN].action


@pytest.mark.parametrize("cause", [None, "a_cause_from_a_newer_mailgate"])
def test_should_have_no_advice_for_an_unknown_cause(cause: str | None) -> None:
    assert advice_for(cause) is None


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(400, False), (403, False), (404, False), (408, True), (429, True), (500, True), (599, True)],
)
def test_should_retry_only_what_can_succeed_later(status: int, retryable: bool) -> None:
    assert is_retryable_status(status) is retryable
