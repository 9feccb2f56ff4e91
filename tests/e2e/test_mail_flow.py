"""End to end: HTTP in, Azurite queue, queue trigger, HTTP out to the SendGrid stand-in."""

from __future__ import annotations

import base64
import re
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest

import admin.__main__ as admin_main
from devstack.sendgrid_standin import UNVERIFIED_SENDER_REFUSAL, SendGridStandIn
from shared.clients import CLIENT_CHECK_SECONDS, ClientStore
from tests.e2e.conftest import (
    MAX_DELIVERY_ATTEMPTS,
    RETRY_BASE_DELAY_SECONDS,
    Queues,
    RunningHost,
    wait_for,
)

ATTACHMENT = b"%PDF-1.4 not really a pdf\n"


def full_message(**overrides: Any) -> dict[str, Any]:
    """A message using every field the API takes."""
    message: dict[str, Any] = {
        "from": "Billing App <app@example.com>",
        "to": ["Ann Example <ann@customer.example.org>", {"email": "bob@customer.example.org"}],
        "cc": ["carol@partner.example.net"],
        "bcc": [{"email": "audit@example.com", "name": "Audit"}],
        "reply_to": "support@example.com",
        "subject": "Your invoice 42",
        "text": "Invoice 42 is attached.",
        "html": "<p>Invoice <b>42</b> is attached.</p>",
        "headers": {"X-Invoice": "42"},
        "categories": ["invoices"],
        "custom_args": {"invoice": "42"},
        "attachments": [
            {
                "filename": "invoice-42.pdf",
                "content": base64.b64encode(ATTACHMENT).decode(),
                "content_type": "application/pdf",
            }
        ],
    }
    message.update(overrides)
    return message


def mails_for(standin: SendGridStandIn, message_id: str) -> list[dict[str, Any]]:
    """The mails the stand-in accepted that carry this gateway id."""
    return [
        mail
        for mail in standin.mails()
        if mail["payload"]["personalizations"][0].get("custom_args", {}).get("mailgate_id")
        == message_id
    ]


def accept(stack: RunningHost, **overrides: Any) -> str:
    """POST a message and return its id, asserting the 202 contract."""
    response = stack.post_message(full_message(**overrides))
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued"
    assert response.headers["Location"] == f"/api/v1/messages/{body['id']}"
    return str(body["id"])


def dead_letter_for(queues: Queues, message_id: str) -> dict[str, Any] | None:
    """The poison record of this message, if it is there."""
    return next((r for r in queues.poison_records() if r.get("id") == message_id), None)


def test_should_deliver_an_accepted_message_exactly_once_with_all_its_parts(
    stack: RunningHost, standin: SendGridStandIn, queues: Queues
) -> None:
    message_id = accept(stack)

    [mail] = wait_for(lambda: mails_for(standin, message_id))
    time.sleep(2.5)  # a second delivery would show up within two polling intervals

    assert len(mails_for(standin, message_id)) == 1
    payload = mail["payload"]
    [personalization] = payload["personalizations"]
    assert payload["from"] == {"email": "app@example.com", "name": "Billing App"}
    assert [a["email"] for a in personalization["to"]] == [
        "ann@customer.example.org",
        "bob@customer.example.org",
    ]
    assert personalization["cc"] == [{"email": "carol@partner.example.net"}]
    assert personalization["bcc"] == [{"email": "audit@example.com", "name": "Audit"}]
    assert personalization["custom_args"] == {"invoice": "42", "mailgate_id": message_id}
    assert payload["reply_to"] == {"email": "support@example.com"}
    assert payload["subject"] == "Your invoice 42"
    assert payload["content"] == [
        {"type": "text/plain", "value": "Invoice 42 is attached."},
        {"type": "text/html", "value": "<p>Invoice <b>42</b> is attached.</p>"},
    ]
    assert payload["headers"] == {"X-Invoice": "42"}
    assert payload["categories"] == ["invoices"]
    [attachment] = payload["attachments"]
    assert base64.b64decode(attachment["content"]) == ATTACHMENT
    assert attachment["filename"] == "invoice-42.pdf"
    assert attachment["type"] == "application/pdf"
    assert (standin.outbox / f"{mail['x_message_id']}.eml").is_file()
    assert queues.peek(queues.mail) == []
    assert dead_letter_for(queues, message_id) is None


def test_should_keep_addresses_subjects_and_bodies_out_of_the_logs(
    stack: RunningHost, standin: SendGridStandIn
) -> None:
    message_id = accept(stack)
    wait_for(lambda: mails_for(standin, message_id))
    time.sleep(0.5)

    log = stack.log()
    assert message_id in log
    for secret in (
        "ann@customer.example.org",
        "carol@partner.example.net",
        "Your invoice 42",
        "Invoice 42 is attached",
        standin.api_key,
        base64.b64encode(ATTACHMENT).decode(),
    ):
        assert secret not in log


def test_should_dead_letter_after_one_attempt_when_sendgrid_refuses_the_message(
    stack: RunningHost,
    standin: SendGridStandIn,
    queues: Queues,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # SendGrid's own answer to a sender that is not a verified Sender Identity.
    standin.script([UNVERIFIED_SENDER_REFUSAL])

    message_id = accept(stack)
    record = wait_for(lambda: dead_letter_for(queues, message_id))
    time.sleep(1.5)

    assert len(standin.requests()) == 1
    assert mails_for(standin, message_id) == []
    dead_letter = record["dead_letter"]
    assert dead_letter["status_code"] == 403
    assert dead_letter["attempts"] == 1
    assert "verified Sender Identity" in dead_letter["provider_error"]
    assert record["message"]["subject"] == "Your invoice 42"
    assert queues.peek(queues.mail) == []
    # SendGrid's message and field, and what a replay can do, wherever the reason is shown:
    # the dead letter itself,
    refusal = "SendGrid refused the message with 403: The from address does not match a verified"
    assert dead_letter["reason"].startswith(refusal)
    assert dead_letter["reason"].endswith("(field from)")
    assert dead_letter["cause"] == "sender_identity"
    [error] = dead_letter["provider_errors"]
    assert error["field"] == "from"
    # the status the app reads,
    last_error = wait_for(lambda: stack.status(message_id).get("last_error"))
    assert last_error["reason"] == dead_letter["reason"]
    assert last_error["provider_errors"] == [error]
    assert (last_error["cause"], last_error["replay"]) == ("sender_identity", "after_fix")
    assert last_error["action"].startswith("Verify the sender in SendGrid")
    # the dead-letter route,
    listed = stack.admin("GET", "/api/v1/dead-letters").json()["dead_letters"]
    [entry] = [e for e in listed if e["id"] == message_id]
    assert (entry["reason"], entry["replay"]) == (dead_letter["reason"], "after_fix")
    assert entry["provider_errors"] == [error]
    # `make poison`, with the host's settings,
    for name, value in stack.settings.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(tmp_path)
    assert admin_main.main(["list"]) == 0
    printed = capsys.readouterr().out.splitlines()
    [row] = [line for line in printed if line.startswith(message_id)]
    assert "after fix  SendGrid 403: The from address does not match a verified" in row
    assert any(line.startswith("  sender_identity (") for line in printed)
    # and the log line, without the mail's addresses.
    line = wait_for(
        lambda: next(
            (x for x in stack.log().splitlines() if f"{message_id} dead-lettered" in x), ""
        )
    )
    assert "The from address does not match a verified" in line
    assert "(cause sender_identity, replay after_fix)" in line


def test_should_retry_after_the_scheduled_delay_and_deliver_once(
    stack: RunningHost, standin: SendGridStandIn, queues: Queues
) -> None:
    standin.script([{"status": 503}, {"status": 503}])

    message_id = accept(stack)
    wait_for(lambda: mails_for(standin, message_id), timeout=20)
    time.sleep(1.5)

    requests = standin.requests()
    assert [r["status"] for r in requests] == [503, 503, 202]
    times = [r["at"] for r in requests]
    delays = [
        int(d)
        for d in re.findall(
            rf"Message {message_id} attempt \d failed .*?retrying in (\d+)s", stack.log()
        )
    ]
    # Full jitter within base x 2^(attempt-1); the queue, not a sleep, takes each delay.
    assert len(delays) == 2
    assert RETRY_BASE_DELAY_SECONDS >= delays[0] >= 1
    assert 2 * RETRY_BASE_DELAY_SECONDS >= delays[1] >= 1
    assert times[1] - times[0] >= delays[0] - 0.1
    assert times[2] - times[1] >= delays[1] - 0.1
    assert len(mails_for(standin, message_id)) == 1
    assert dead_letter_for(queues, message_id) is None
    assert stack.status(message_id)["status"] == "sent"
    assert stack.status(message_id)["attempts"] == 3


def test_should_dead_letter_after_the_configured_attempts_when_sendgrid_keeps_failing(
    stack: RunningHost, standin: SendGridStandIn, queues: Queues
) -> None:
    standin.script([{"status": 503}] * MAX_DELIVERY_ATTEMPTS + [{"status": 503}])

    message_id = accept(stack)
    record = wait_for(lambda: dead_letter_for(queues, message_id), timeout=20)

    assert len(standin.requests()) == MAX_DELIVERY_ATTEMPTS
    dead_letter = record["dead_letter"]
    assert dead_letter["attempts"] == MAX_DELIVERY_ATTEMPTS
    assert dead_letter["status_code"] == 503
    assert f"gave up after {MAX_DELIVERY_ATTEMPTS} attempt(s)" in dead_letter["reason"]
    assert queues.peek(queues.mail) == []


def test_should_retry_when_sendgrid_drops_the_connection(
    stack: RunningHost, standin: SendGridStandIn
) -> None:
    standin.script([{"drop_connection": True}])

    message_id = accept(stack)
    wait_for(lambda: mails_for(standin, message_id), timeout=20)

    assert len(standin.requests()) == 2
    assert "outcome unknown" in stack.log()


def test_should_poison_a_raw_text_message_without_calling_the_function_as_the_host_does(
    stack: RunningHost, standin: SendGridStandIn, queues: Queues
) -> None:
    # azure-storage-queue sends raw text unless told to encode; the host cannot decode it.
    queues.mail.send_message('{"not": "base64"}')

    wait_for(lambda: '{"not": "base64"}' in queues.peek(queues.poison))

    assert "Moving message to queue 'mail-e2e-poison'" in stack.log()
    assert standin.requests() == []


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key"},
        {"Authorization": "Basic YXBwOmtleQ=="},
        {"x-functions-key": "e2e-admin-key"},
    ],
    ids=["no key", "unknown key", "other scheme", "host key instead"],
)
def test_should_refuse_a_request_without_a_client_key_with_401(
    stack: RunningHost, headers: dict[str, str]
) -> None:
    response = stack.http.post("/api/v1/messages", json=full_message(), headers=headers)
    status = stack.http.get("/api/v1/messages/any-id", headers=headers)

    assert (response.status_code, status.status_code) == (401, 401)
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="mailgate"'
    assert response.headers["Content-Type"].startswith("application/problem+json")


def test_should_serve_each_client_alone_and_stop_a_disabled_one(
    stack: RunningHost, standin: SendGridStandIn, clients: ClientStore
) -> None:
    name = f"other-{time.time_ns()}"
    _, other_key = clients.create(name, "@apps.example.com")
    mine = stack.post_message(full_message())
    theirs = stack.post_message(full_message(**{"from": "x@apps.example.com"}), key=other_key)
    assert (mine.status_code, theirs.status_code) == (202, 202)

    peek = stack.http.get(
        f"/api/v1/messages/{mine.json()['id']}", headers=stack.client_headers(other_key)
    )
    narrow = stack.post_message(full_message(), key=other_key)
    clients.set_enabled(name, False)
    # An instance checks its copy of the client's row at least every CLIENT_CHECK_SECONDS.
    time.sleep(CLIENT_CHECK_SECONDS + 0.2)
    disabled = stack.post_message(full_message(**{"from": "x@apps.example.com"}), key=other_key)

    assert peek.status_code == 404
    assert narrow.status_code == 403
    assert disabled.status_code == 401
    assert "disabled" in disabled.json()["detail"]
    # Both delivered before the next test looks at the stand-in.
    for message_id in (mine.json()["id"], theirs.json()["id"]):
        wait_for(partial(mails_for, standin, message_id))


def test_should_answer_429_with_retry_after_past_the_clients_rate(
    stack: RunningHost, standin: SendGridStandIn, clients: ClientStore
) -> None:
    # Not across a minute boundary, where the count starts again.
    if time.time() % 60 > 50:
        time.sleep(61 - time.time() % 60)
    # The message has 4 recipients: 4 emails of a rate of 8 emails a minute.
    _, key = clients.create(f"slow-{time.time_ns()}", "@apps.example.com", 8)
    message = full_message(**{"from": "x@apps.example.com"})

    answers = [stack.post_message(message, key=key) for _ in range(3)]

    assert [a.status_code for a in answers] == [202, 202, 429]
    assert int(answers[2].headers["Retry-After"]) in range(1, 61)
    assert "8 email(s) per minute" in answers[2].json()["detail"]
    for accepted in answers[:2]:
        wait_for(partial(mails_for, standin, accepted.json()["id"]))


def test_should_refuse_a_sender_outside_allowed_senders_with_403_and_queue_nothing(
    stack: RunningHost, standin: SendGridStandIn, queues: Queues
) -> None:
    response = stack.post_message(full_message(**{"from": "someone@elsewhere.example.net"}))
    time.sleep(1.5)

    assert response.status_code == 403
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert response.json()["errors"] == [
        {"pointer": "#/from", "detail": "is not an allowed sender"}
    ]
    assert standin.requests() == []
    assert queues.peek(queues.mail) == []


def test_should_refuse_an_invalid_message_with_one_problem_per_field(stack: RunningHost) -> None:
    # Two categories alike: a list within its bound (11 would be refused before the rest is
    # read, tests/security/test_unbounded_work.py), with an invalid item.
    response = stack.post_message(full_message(to=["not-an-address"], categories=["a", "a"]))

    assert response.status_code == 400
    pointers = sorted(e["pointer"] for e in response.json()["errors"])
    assert pointers == ["#/categories", "#/to/0/email"]


def test_should_report_health(stack: RunningHost) -> None:
    probe = stack.http.get("/api/health")
    response = stack.admin("GET", "/api/health/details")

    assert (probe.status_code, probe.json()) == (200, {"status": "healthy"})
    assert response.status_code == 200
    document = response.json()
    assert document["status"] == "healthy"
    assert document["checks"] == {"configuration": "ok", "storage": "ok"}
    assert document["queues"] == {"mail-e2e": 0, "mail-e2e-poison": 0}
