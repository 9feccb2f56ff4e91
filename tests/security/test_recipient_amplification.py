"""Threat: a client multiplies its rate by the recipients one request can carry.

Attacker: an app holding a valid client key. A request may carry 1,000 recipients (to, cc and
bcc, across personalizations on v3), and the `bcc` mail setting adds a hidden one per
personalization; a rate that counted requests would let a client with 600 a minute send
600,000 emails a minute on the shared SendGrid account, and its reputation.

What the gateway does: the rate counts emails, as SendGrid does: one per recipient, plus one
per personalization for an enabled `bcc` setting (which also counts towards the 1,000
recipients of a request). A request needing more than the client has left this minute is 429
with `Retry-After` (seconds to the next minute) and nothing queued; one needing more than the
client's whole rate could never pass and is 400 naming the recipients. Validation comes first:
a 400 or 403 costs nothing, an Idempotency-Key replay costs nothing, a 429 releases the key,
and a request that could not be queued gives its emails back. A client this instance knows to
be spent is refused before its body is parsed (a replay too: it waits for the next minute).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.clients import CLIENT_ROW
from tests.samples import NOW, SENDER, addresses
from tests.security.client_stack import ClientStack, fields, install, refusal


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch) -> ClientStack:
    return install(monkeypatch)


def v1_message(to: int, cc: int = 0, bcc: int = 0) -> dict[str, Any]:
    """A v1 message to `to + cc + bcc` distinct recipients."""
    return {
        "from": SENDER,
        "to": addresses(to, prefix="to"),
        "cc": addresses(cc, prefix="cc"),
        "bcc": addresses(bcc, prefix="bcc"),
        "subject": "Hi",
        "text": "Hi",
    }


def v3_mail(*personalizations: tuple[int, int, int], bcc_setting: bool = False) -> dict[str, Any]:
    """A v3 mail with one personalization per (to, cc, bcc) count."""
    document: dict[str, Any] = {
        "personalizations": [
            {
                "to": [{"email": a} for a in addresses(to, prefix=f"p{n}to")],
                **({"cc": [{"email": a} for a in addresses(cc, prefix=f"p{n}cc")]} if cc else {}),
                **(
                    {"bcc": [{"email": a} for a in addresses(bcc, prefix=f"p{n}bcc")]}
                    if bcc
                    else {}
                ),
            }
            for n, (to, cc, bcc) in enumerate(personalizations)
        ],
        "from": {"email": SENDER},
        "subject": "Hi",
        "content": [{"type": "text/plain", "value": "Hi"}],
    }
    if bcc_setting:
        document["mail_settings"] = {"bcc": {"enable": True, "email": "archive@example.com"}}
    return document


def counted(stack: ClientStack, name: str) -> int:
    """The emails the client's row counts this minute (leased tokens included)."""
    row = stack.table.rows[(name, CLIENT_ROW)]
    return int(row["count"]) if row["window"] == int(stack.clock.now // 60) else 0


def test_should_count_every_recipient_so_a_rate_of_600_is_600_emails_not_600_requests(
    stack: ClientStack,
) -> None:
    key = stack.client("bulk", rate=600)

    answers = [stack.post("v1", v1_message(to=60, cc=20, bcc=20), key) for _ in range(10)]

    assert [a.status_code for a in answers] == [202] * 6 + [429] * 4
    assert len(stack.queue.envelopes) == 6
    assert counted(stack, "bulk") == 600


def test_should_count_to_cc_and_bcc_across_personalizations_on_v3(stack: ClientStack) -> None:
    # 2 + 1 + 1 and 3 + 0 + 2: 9 emails a request.
    key = stack.client("bulk", rate=20)
    document = v3_mail((2, 1, 1), (3, 0, 2))

    answers = [stack.post("v3", document, key) for _ in range(3)]

    assert [a.status_code for a in answers] == [202, 202, 429]
    assert len(stack.queue.envelopes) == 2


def test_should_count_the_bcc_setting_as_one_more_email_per_personalization(
    stack: ClientStack,
) -> None:
    # 3 personalizations of 1 recipient, each copied to the bcc setting's address: 6 emails.
    key = stack.client("archiving", rate=10, features="mail_settings.bcc")
    document = v3_mail((1, 0, 0), (1, 0, 0), (1, 0, 0), bcc_setting=True)

    first = stack.post("v3", document, key)
    second = stack.post("v3", document, key)

    assert (first.status_code, second.status_code) == (202, 429)
    assert "makes 6 and 4 are left" in refusal(second)["errors"][0]["message"]


def test_should_answer_429_with_the_seconds_to_the_next_minute_and_queue_nothing(
    stack: ClientStack,
) -> None:
    key = stack.client("bulk", rate=10)
    stack.clock.now = NOW.timestamp() + 15  # 45 s left in the minute
    assert stack.post("v1", v1_message(to=6), key).status_code == 202

    response = stack.post("v1", v1_message(to=5), key)

    assert response.status_code == 429
    assert response.headers["Retry-After"] == "45"
    assert "makes 5 and 4 are left" in refusal(response)["detail"]
    assert len(stack.queue.envelopes) == 1
    # What was left is still there for a request that fits.
    assert stack.post("v1", v1_message(to=4), key).status_code == 202
    stack.clock.now += 45
    assert stack.post("v1", v1_message(to=10), key).status_code == 202


@pytest.mark.parametrize(
    ("api", "document", "field"),
    [
        ("v1", v1_message(to=40, cc=30, bcc=31), "#/to"),
        ("v3", v3_mail((40, 30, 31)), "personalizations"),
    ],
    ids=["v1", "v3"],
)
def test_should_refuse_with_400_a_request_larger_than_the_whole_rate_which_could_never_pass(
    stack: ClientStack, api: str, document: dict[str, Any], field: str
) -> None:
    key = stack.client("small", rate=100)

    response = stack.post(api, document, key)

    assert response.status_code == 400
    assert fields(response) == [field]
    assert "never" in json.dumps(refusal(response))
    assert "Retry-After" not in response.headers
    assert counted(stack, "small") == 0
    assert stack.queue.messages == []


def test_should_count_the_bcc_setting_towards_the_1000_recipients_of_a_request(
    stack: ClientStack,
) -> None:
    key = stack.client("archiving", rate=100_000, features="mail_settings.bcc")
    # 999 + 1 recipients, and the setting's copy makes 1,001.
    document = v3_mail((999, 1, 0), bcc_setting=True)

    response = stack.post("v3", document, key)

    assert response.status_code == 400
    assert fields(response) == ["mail_settings.bcc"]
    assert stack.queue.messages == []


def test_should_take_nothing_for_a_request_refused_with_400_or_403(stack: ClientStack) -> None:
    key = stack.client("one", rate=1)
    invalid = {**v1_message(to=1), "to": ["not an address"]}
    forbidden = {**v1_message(to=1), "headers": {"Sender": "ceo@bank.example"}}

    assert stack.post("v1", invalid, key).status_code == 400
    assert stack.post("v1", forbidden, key).status_code == 403
    assert stack.post("v1", v1_message(to=1), key).status_code == 202


def test_should_take_nothing_for_an_idempotent_replay(stack: ClientStack) -> None:
    key = stack.client("careful", rate=4)
    retry = {"Idempotency-Key": "order-42"}

    first = stack.post("v1", v1_message(to=3), key, retry)
    again = stack.post("v1", v1_message(to=3), key, retry)

    assert (first.status_code, again.status_code) == (202, 202)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert counted(stack, "careful") == 3
    # The one email left is still there.
    assert stack.post("v1", v1_message(to=1), key).status_code == 202


def test_should_release_the_idempotency_key_of_a_request_refused_with_429(
    stack: ClientStack,
) -> None:
    key = stack.client("careful", rate=4)
    stack.clock.now = NOW.timestamp() + 55
    assert stack.post("v1", v1_message(to=3), key).status_code == 202

    refused = stack.post("v1", v1_message(to=2), key, {"Idempotency-Key": "order-43"})
    # Retried when told, long before a claim left pending would be taken over.
    stack.clock.now += int(refused.headers["Retry-After"])
    retried = stack.post("v1", v1_message(to=2), key, {"Idempotency-Key": "order-43"})

    assert (refused.status_code, retried.status_code) == (429, 202)
    assert "Idempotent-Replayed" not in retried.headers


def test_should_give_back_the_emails_of_a_request_that_could_not_be_queued(
    stack: ClientStack,
) -> None:
    key = stack.client("unlucky", rate=5)
    stack.queue.fail_next("enqueue")

    failed = stack.post("v1", v1_message(to=5), key)
    sent = stack.post("v1", v1_message(to=5), key)

    assert (failed.status_code, sent.status_code) == (503, 202)
    assert len(stack.queue.envelopes) == 1


def test_should_refuse_a_spent_client_before_reading_its_body(stack: ClientStack) -> None:
    key = stack.client("spent", rate=2)
    assert stack.post("v1", v1_message(to=2), key).status_code == 202

    # Not JSON at all: a client with emails left gets 400, a spent one 429 without parsing.
    assert stack.post("v1", b"{not json", stack.client("fresh")).status_code == 400
    response = stack.post("v1", b"{not json", key)

    assert response.status_code == 429
    assert response.headers["Retry-After"] == "60"
