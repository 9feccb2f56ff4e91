"""End to end: every accepted message is sent once or dead-lettered with its reason."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from devstack.azurite import Azurite
from devstack.sendgrid_standin import UNVERIFIED_SENDER_REFUSAL, SendGridStandIn
from shared.settings import Settings
from shared.status import MessageState, StatusStore
from tests.e2e.conftest import (
    MAX_DELIVERY_ATTEMPTS,
    SENDGRID_TIMEOUT_SECONDS,
    Queues,
    RunningHost,
    gateway_settings,
    wait_for,
)
from tests.e2e.test_mail_flow import accept, dead_letter_for, full_message, mails_for

FINAL = {"sent", "failed"}


def final_statuses(host: RunningHost, ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    """Wait until every message is sent or failed; return their status documents."""

    def all_final() -> dict[str, dict[str, Any]] | None:
        documents = {i: host.status(i) for i in ids}
        return documents if all(d["status"] in FINAL for d in documents.values()) else None

    return wait_for(all_final, timeout=timeout, interval=0.5)


def sent_counts(standin: SendGridStandIn) -> Counter[str]:
    """How often the stand-in accepted each gateway id."""
    return Counter(
        m["payload"]["personalizations"][0]["custom_args"]["mailgate_id"] for m in standin.mails()
    )


def test_should_show_each_message_status_and_404_for_an_unknown_id(
    stack: RunningHost, standin: SendGridStandIn
) -> None:
    message_id = accept(stack)
    wait_for(lambda: stack.status(message_id)["status"] == "sent")

    document = stack.status(message_id)
    unknown = stack.http.get("/api/v1/messages/no-such-id", headers=stack.client_headers())

    assert document["attempts"] == 1
    assert document["sendgrid_message_id"] == mails_for(standin, message_id)[0]["x_message_id"]
    assert unknown.status_code == 404
    assert unknown.headers["Content-Type"].startswith("application/problem+json")


def test_should_accept_an_idempotency_key_once_and_refuse_it_with_another_body(
    stack: RunningHost, standin: SendGridStandIn
) -> None:
    key = {"Idempotency-Key": f"order-42-{time.time_ns()}"}

    first = stack.post_message(full_message(), headers=key)
    again = stack.post_message(full_message(), headers=key)
    other = stack.post_message(full_message(subject="Another body"), headers=key)
    wait_for(lambda: mails_for(standin, first.json()["id"]))
    time.sleep(1.5)

    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert other.status_code == 422
    assert len(standin.mails()) == 1


def test_should_queue_one_message_for_twenty_concurrent_requests_with_one_key(
    stack: RunningHost, standin: SendGridStandIn
) -> None:
    key = {"Idempotency-Key": f"burst-{time.time_ns()}"}
    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(
            pool.map(lambda _: stack.post_message(full_message(), headers=key), range(20))
        )
    accepted = {r.json()["id"] for r in responses if r.status_code == 202}
    time.sleep(2.5)

    assert {r.status_code for r in responses} <= {202, 409}
    assert len(accepted) == 1
    assert sent_counts(standin) == Counter({accepted.pop(): 1})


def test_should_replay_a_dead_letter_once_the_fault_is_gone(
    stack: RunningHost, standin: SendGridStandIn, queues: Queues
) -> None:
    # The sender was not verified in SendGrid; by the replay it is.
    standin.script([UNVERIFIED_SENDER_REFUSAL])
    message_id = accept(stack)
    wait_for(lambda: dead_letter_for(queues, message_id))
    assert stack.status(message_id)["status"] == "failed"

    listed = stack.admin("GET", "/api/v1/dead-letters").json()["dead_letters"]
    refused = stack.http.post("/api/v1/dead-letters/replay", json={"all": True})
    replayed = stack.admin("POST", "/api/v1/dead-letters/replay", json={"ids": [message_id]})
    wait_for(lambda: stack.status(message_id)["status"] == "sent")
    time.sleep(1.5)

    assert [(e["id"], e["attempts"]) for e in listed] == [(message_id, 1)]
    assert "403" in listed[0]["reason"]
    assert listed[0]["replay"] == "after_fix"
    assert refused.status_code == 401
    assert replayed.json() == {
        "done": [message_id],
        "skipped": {},
        "not_found": [],
        "continuation": None,
    }
    assert sent_counts(standin) == Counter({message_id: 1})
    assert queues.poison_records() == []


def test_should_purge_only_with_the_poison_queue_named(
    stack: RunningHost, standin: SendGridStandIn, queues: Queues
) -> None:
    standin.script([{"status": 400}])
    message_id = accept(stack)
    wait_for(lambda: dead_letter_for(queues, message_id))

    unconfirmed = stack.admin("POST", "/api/v1/dead-letters/purge", json={"all": True})
    confirmed = stack.admin(
        "POST", "/api/v1/dead-letters/purge", json={"all": True, "confirm": "mail-e2e-poison"}
    )

    assert unconfirmed.status_code == 400
    assert confirmed.json()["done"] == [message_id]
    assert queues.poison_records() == []


def test_should_send_every_message_once_or_dead_letter_it_under_a_seeded_mix_of_faults(
    stack: RunningHost, standin: SendGridStandIn, queues: Queues
) -> None:
    rng = random.Random(20261127)
    faults: list[dict[str, Any]] = [
        {"status": 500},
        {"status": 503},
        {"status": 429, "headers": {"Retry-After": "1"}},
        # Past the client's timeout.
        {"status": 503, "delay_ms": SENDGRID_TIMEOUT_SECONDS * 1000 + 500},
        {"drop_connection": True},
    ]
    script = [rng.choice(faults) if rng.random() < 0.4 else {"status": 202} for _ in range(60)]
    standin.script(script)

    ids = [accept(stack, subject=f"Mix {n}") for n in range(20)]
    statuses = final_statuses(stack, ids, timeout=90)
    counts = sent_counts(standin)
    poisoned = {r["id"]: r for r in queues.poison_records()}

    for message_id, status in statuses.items():
        if status["status"] == "sent":
            assert counts[message_id] == 1, message_id
            assert message_id not in poisoned
        else:
            assert counts[message_id] == 0, message_id
            assert poisoned[message_id]["dead_letter"]["attempts"] == MAX_DELIVERY_ATTEMPTS
            assert poisoned[message_id]["dead_letter"]["reason"].startswith("gave up after")
    assert sum(counts.values()) == sum(s["status"] == "sent" for s in statuses.values())


@pytest.fixture
def own_host(
    azurite: Azurite, standin: SendGridStandIn, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[RunningHost]:
    """A host of its own, on its own queue and table, that a test may kill."""
    name = request.node.name.split("_")[-1][:10]
    settings = {
        **gateway_settings(azurite.connection_string, standin),
        "MAIL_QUEUE_NAME": f"mail-{name}",
        "STATUS_TABLE_NAME": f"status{name}",
    }
    standin.reset()
    host = RunningHost(settings, tmp_path)
    yield host
    host.stop()


def test_should_lose_nothing_and_resend_only_in_the_crash_window_when_the_host_is_killed(
    own_host: RunningHost, standin: SendGridStandIn
) -> None:
    standin.set_latency(1500)
    ids = [accept(own_host, subject=f"Kill {n}") for n in range(12)]
    wait_for(lambda: len(standin.requests()) >= 3 or None)

    own_host.kill()
    statuses = StatusStore.from_settings(Settings.from_env(own_host.settings))
    crash_window = {
        i for i in ids if (s := statuses.get(i)) is not None and s.state is MessageState.SENDING
    }
    time.sleep(2)  # the sends in flight at the stand-in finish on their own
    standin.set_latency(0)
    own_host.restart()
    final = final_statuses(own_host, ids, timeout=90)
    counts = sent_counts(standin)

    assert {s["status"] for s in final.values()} == {"sent"}
    assert all(counts[i] >= 1 for i in ids)
    duplicates = {i for i in ids if counts[i] > 1}
    assert duplicates <= crash_window
    assert all(counts[i] <= 2 for i in ids)


def test_should_lose_no_accepted_message_when_storage_restarts_mid_run(
    standin: SendGridStandIn, tmp_path: Path
) -> None:
    standin.reset()
    with Azurite(in_memory=False, location=tmp_path / "azurite") as storage:
        host = RunningHost(
            {
                **gateway_settings(storage.connection_string, standin),
                "MAIL_QUEUE_NAME": "mail-restart",
            },
            tmp_path,
        )
        try:
            standin.set_latency(300)
            ids = [accept(host, subject=f"Restart {n}") for n in range(10)]
            storage.stop()
            during = host.post_message(full_message())
            time.sleep(1)
            storage.restart()
            standin.set_latency(0)
            final = final_statuses(host, ids, timeout=90)
        finally:
            host.stop()

    assert during.status_code == 503
    assert {s["status"] for s in final.values()} == {"sent"}
    counts = sent_counts(standin)
    assert all(counts[i] >= 1 for i in ids)
