"""The acs provider's sender through the real SDK (HMAC signing, its pipeline, the storage
transport) against the ACS Email stand-in (devstack/acs_standin), which checks the signature."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.core.rest import HttpRequest

from devstack.acs_standin import AcsEmailStandIn
from shared.acs_client import AcsSender, email_client_from_settings
from shared.errors import PermanentDeliveryError, RetryableDeliveryError
from shared.models import QueueEnvelope
from shared.replay_advice import ACS_CONFIG, ACS_FAILED, ACS_REJECTED, OUTCOME_UNKNOWN, UNAVAILABLE
from shared.settings import Settings
from tests.samples import envelope, settings_with

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(16)).decode()


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AcsEmailStandIn]:
    with AcsEmailStandIn(outbox=tmp_path_factory.mktemp("acs-outbox")) as running:
        yield running


@pytest.fixture
def fresh(standin: AcsEmailStandIn) -> AcsEmailStandIn:
    standin.reset()
    return standin


def acs_settings(connection_string: str) -> Settings:
    return settings_with(
        MAIL_PROVIDERS="acs",
        ACS_EMAIL_CONNECTION_STRING=connection_string,
        ACS_EMAIL_SENDERS="@example.com",
    )


def sender_for(standin: AcsEmailStandIn, **options: Any) -> AcsSender:
    return AcsSender(email_client_from_settings(acs_settings(standin.connection_string)), **options)


def mail(subject: str = "Hello") -> QueueEnvelope:
    return envelope(
        id=str(uuid.uuid4()),
        subject=subject,
        to=["Ann <ann@example.net>"],
        html='<p><img src="cid:logo"></p>',
        attachments=[
            {"filename": "logo.png", "content": PNG, "disposition": "inline", "content_id": "logo"}
        ],
    )


def test_should_send_signed_and_return_the_operation_id(fresh: AcsEmailStandIn) -> None:
    sent = mail("Signed")

    provider_id = sender_for(fresh).send(sent)

    assert provider_id == sent.id
    [record] = fresh.mails()
    assert record["operation_id"] == sent.id
    assert record["payload"]["content"]["subject"] == "Signed"
    assert record["payload"]["attachments"][0]["contentId"] == "logo"
    assert (Path(fresh.outbox) / f"{sent.id}.json").is_file()
    assert (Path(fresh.outbox) / f"{sent.id}.eml").is_file()


def test_should_refuse_an_unsigned_or_badly_signed_request_with_401(
    fresh: AcsEmailStandIn,
) -> None:
    unsigned = httpx.post(
        f"{fresh.base_url}/emails:send?api-version=2025-09-01",
        json={"senderAddress": "a@example.com"},
    )
    # The SDK's own signing, with the right body but another key.
    wrong = base64.b64encode(b"w" * 32).decode()
    signed = acs_settings(f"endpoint={fresh.base_url}/;accesskey={wrong}")
    client = email_client_from_settings(signed)
    answer = client.send_request(HttpRequest("GET", "/emails/operations/x?api-version=2025-09-01"))

    assert unsigned.status_code == 401
    assert unsigned.json()["error"]["code"] == "Denied"
    assert answer.status_code == 401


def test_should_fail_for_good_with_the_wrong_access_key(fresh: AcsEmailStandIn) -> None:
    wrong = base64.b64encode(b"w" * 32).decode()
    client = email_client_from_settings(
        acs_settings(f"endpoint={fresh.base_url}/;accesskey={wrong}")
    )

    with pytest.raises(PermanentDeliveryError) as refused:
        AcsSender(client).send(mail())

    assert refused.value.cause == ACS_CONFIG
    assert refused.value.status_code == 401
    assert fresh.mails() == []


@pytest.mark.parametrize("status", [503, 429, 500])
def test_should_retry_a_busy_or_failing_acs(fresh: AcsEmailStandIn, status: int) -> None:
    fresh.script([{"status": status, "headers": {"Retry-After": "7"}}])

    with pytest.raises(RetryableDeliveryError) as failed:
        sender_for(fresh).send(mail())

    assert failed.value.cause == UNAVAILABLE
    assert failed.value.status_code == status
    assert not failed.value.ambiguous
    assert failed.value.retry_after_seconds == 7.0
    assert fresh.mails() == []


def test_should_refuse_for_good_what_acs_finds_invalid(fresh: AcsEmailStandIn) -> None:
    fresh.script(
        [
            {
                "status": 400,
                "body": {
                    "error": {
                        "code": "InvalidSenderUserName",
                        "message": "The sender noreply@example.com is not allowed",
                        "target": "senderAddress",
                    }
                },
            }
        ]
    )

    with pytest.raises(PermanentDeliveryError) as refused:
        sender_for(fresh).send(mail())

    assert refused.value.cause == ACS_REJECTED
    assert "InvalidSenderUserName" in refused.value.reason
    assert "noreply@" not in refused.value.reason
    assert refused.value.provider_errors[0].field == "senderAddress"


def test_should_fail_for_good_when_the_operation_fails(fresh: AcsEmailStandIn) -> None:
    fresh.script([{"operation": "Failed", "error": {"code": "EmailDropped", "message": "dropped"}}])

    with pytest.raises(PermanentDeliveryError) as refused:
        sender_for(fresh, poll_seconds=0.05).send(mail())

    assert refused.value.cause == ACS_FAILED
    assert "EmailDropped: dropped" in refused.value.reason
    assert fresh.mails() == []


def test_should_count_a_send_without_an_answer_as_ambiguous(fresh: AcsEmailStandIn) -> None:
    fresh.script([{"delay_ms": 2500}])

    with pytest.raises(RetryableDeliveryError) as failed:
        sender_for(fresh, read_timeout=1.0).send(mail())

    assert failed.value.ambiguous
    assert failed.value.cause == OUTCOME_UNKNOWN
    # ACS took it after all (the case the word means); waited for, so no later test sees it.
    deadline = time.monotonic() + 10
    while [r["outcome"] for r in fresh.requests()] != ["accepted"]:
        assert time.monotonic() < deadline, fresh.requests()
        time.sleep(0.05)
    assert len(fresh.mails()) == 1


def test_should_not_send_twice_when_the_same_message_is_sent_again(
    fresh: AcsEmailStandIn,
) -> None:
    # The ambiguous case's next attempt: the same id, so ACS takes it for the same operation.
    sent = mail("Once")
    sender = sender_for(fresh, poll_seconds=0.05)

    assert sender.send(sent) == sent.id
    assert sender.send(sent) == sent.id

    assert [m["operation_id"] for m in fresh.mails()] == [sent.id]
    assert [r["outcome"] for r in fresh.requests()] == ["accepted", "repeated"]


def test_should_record_sent_without_waiting_past_the_bound(fresh: AcsEmailStandIn) -> None:
    fresh.set_running_polls(1000)
    sent = mail("Slow")
    started = time.monotonic()

    provider_id = sender_for(fresh, wait_seconds=0.6, poll_seconds=0.1).send(sent)

    assert provider_id == sent.id
    assert time.monotonic() - started < 3
    assert [m["operation_id"] for m in fresh.mails()] == [sent.id]


def test_should_retry_when_nothing_listens() -> None:
    key = base64.b64encode(b"k" * 32).decode()
    client = email_client_from_settings(
        acs_settings(f"endpoint=http://127.0.0.1:9/;accesskey={key}")
    )

    with pytest.raises(RetryableDeliveryError) as failed:
        AcsSender(client, connect_timeout=1.0).send(mail())

    assert not failed.value.ambiguous
    assert failed.value.cause == UNAVAILABLE
