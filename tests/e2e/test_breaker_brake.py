"""Through the whole local stack (HTTP in, Azurite, the local host's queue trigger, the SendGrid
stand-in and a real SMTP relay): SendGrid's circuit breaker opening and closing, and a send-rate
brake held by two host processes at once.

The hosts here have status tables of their own, where the breakers' and brakes' rows live, so
that nothing they open reaches another test's host.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import pytest

from devstack.azurite import Azurite
from devstack.sendgrid_standin import SendGridStandIn
from tests.e2e.conftest import Queues, RunningHost, gateway_settings, wait_for
from tests.smtp_relay import PASSWORD, USERNAME, SmtpRelay

FAILURES = 2
COOLDOWN_SECONDS = 4
RATE = 5


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpRelay]:
    with SmtpRelay(tmp_path_factory.mktemp("breaker-relay")) as running:
        yield running


@pytest.fixture(scope="module")
def own_standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SendGridStandIn]:
    """A stand-in of the module's own: its scripts reach no other test's host."""
    with SendGridStandIn(outbox=tmp_path_factory.mktemp("breaker-outbox")) as running:
        yield running


@pytest.fixture(scope="module")
def breaker_host(
    azurite: Azurite,
    own_standin: SendGridStandIn,
    relay: SmtpRelay,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningHost]:
    host = RunningHost(
        {
            **gateway_settings(azurite.connection_string, own_standin),
            "MAIL_QUEUE_NAME": "mail-breaker",
            "STATUS_TABLE_NAME": "mailstatusbreaker",
            "MAIL_PROVIDERS": "sendgrid,smtp",
            "SMTP_HOST": relay.host,
            "SMTP_PORT": str(relay.port),
            "SMTP_USERNAME": USERNAME,
            "SMTP_PASSWORD": PASSWORD,
            "SSL_CERT_FILE": str(relay.ca_bundle),
            "PROVIDER_BREAKER_FAILURES": str(FAILURES),
            "PROVIDER_BREAKER_COOLDOWN_SECONDS": str(COOLDOWN_SECONDS),
        },
        tmp_path_factory.mktemp("breaker-host"),
    )
    yield host
    host.stop()


def mail(subject: str) -> dict[str, Any]:
    return {"from": "app@example.com", "to": ["ann@example.net"], "subject": subject, "text": "t"}


def accepted(host: RunningHost, subject: str) -> str:
    response = host.post_message(mail(subject))
    assert response.status_code == 202, response.text
    message_id: str = response.json()["id"]
    return message_id


def settled(host: RunningHost, message_id: str, timeout: float = 60) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        status = host.status(message_id)
        return status if status["status"] in ("sent", "failed") else None

    return wait_for(final, timeout=timeout, interval=0.2)


def test_should_pass_a_failing_sendgrid_over_and_return_to_it_once_it_answers(
    breaker_host: RunningHost, own_standin: SendGridStandIn, relay: SmtpRelay
) -> None:
    own_standin.reset()
    relay.reset()
    run = uuid.uuid4().hex[:8]
    own_standin.script([{"status": 503, "body": {"errors": [{"message": "down"}]}}] * 500)

    # SendGrid refuses every mail: each of the first FAILURES fails there once, then goes by
    # smtp, and the breaker opens.
    for index in range(FAILURES):
        status = settled(breaker_host, accepted(breaker_host, f"{run} before {index}"))
        assert (status["provider"], status["providers_tried"]) == ("smtp", ["sendgrid", "smtp"])
    opened_at = time.monotonic()
    asked_before = len(own_standin.requests())
    assert asked_before == FAILURES

    # While it is open, mail goes by smtp without trying SendGrid first, but for the one trial
    # each cool-down lets through.
    batch = [accepted(breaker_host, f"{run} open {index}") for index in range(6)]
    statuses = [settled(breaker_host, message_id) for message_id in batch]
    elapsed = time.monotonic() - opened_at
    trials = len(own_standin.requests()) - asked_before
    assert trials <= 1 + elapsed / COOLDOWN_SECONDS
    assert all(s["status"] == "sent" and s["provider"] == "smtp" for s in statuses)
    passed_over = [s for s in statuses if s["providers_tried"] == ["smtp"]]
    assert len(passed_over) >= len(batch) - trials
    assert all(s["providers_skipped"] == ["sendgrid"] for s in passed_over)
    assert all(s["attempts"] == 1 for s in passed_over)
    console = breaker_host.admin("GET", f"/api/v1/console/messages/{passed_over[0]['id']}")
    assert console.json()["status"]["providers_skipped"] == ["sendgrid"]
    guards = breaker_host.admin("GET", "/api/health/details").json()["providers"]
    assert guards["sendgrid"]["breaker"] in ("open", "half_open")
    assert guards["smtp"]["breaker"] == "closed"

    # SendGrid answers again: after the cool-down a trial goes to it, and the breaker closes.
    own_standin.clear_script()

    probes = iter(range(1000))

    def sent_by_sendgrid() -> dict[str, Any] | None:
        status = settled(breaker_host, accepted(breaker_host, f"{run} probe {next(probes)}"))
        return status if status["provider"] == "sendgrid" else None

    closing = wait_for(sent_by_sendgrid, timeout=4 * COOLDOWN_SECONDS + 30, interval=0.5)
    assert closing["attempts"] == 1
    after = [accepted(breaker_host, f"{run} closed {index}") for index in range(3)]
    for message_id in after:
        status = settled(breaker_host, message_id)
        assert (status["provider"], status["providers_tried"]) == ("sendgrid", ["sendgrid"])
        assert "providers_skipped" not in status

    # Nothing lost, nothing sent twice: every mail once, by one provider or the other.
    by_relay = [m.message["Subject"] for m in relay.mails if m.message["Subject"].startswith(run)]
    by_sendgrid = [m["payload"]["subject"] for m in own_standin.mails()]
    everything = by_relay + by_sendgrid
    assert len(everything) == len(set(everything))
    assert set(everything) >= {f"{run} before {i}" for i in range(FAILURES)} | {
        f"{run} open {i}" for i in range(6)
    } | {f"{run} closed {i}" for i in range(3)}
    assert all(s.startswith((f"{run} closed", f"{run} probe")) for s in by_sendgrid)


# ---- the brake across two host processes -------------------------------------------------


@pytest.fixture(scope="module")
def brake_hosts(
    azurite: Azurite, own_standin: SendGridStandIn, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[RunningHost]]:
    settings = {
        **gateway_settings(azurite.connection_string, own_standin),
        "MAIL_QUEUE_NAME": "mail-brake",
        "STATUS_TABLE_NAME": "mailstatusbrake",
        "SENDGRID_MAX_EMAILS_PER_SECOND": str(RATE),
    }
    hosts = [RunningHost(settings, tmp_path_factory.mktemp(f"brake-host-{i}")) for i in range(2)]
    yield hosts
    for host in hosts:
        host.stop()


def fits_the_rate(windows: list[tuple[int, int]], rate: int) -> bool:
    """Whether each mail can be given a second within its (first, last) seconds, no second
    given more than `rate` mails: earliest deadline first, which finds such a plan if any
    exists."""
    used: Counter[int] = Counter()
    for first, last in sorted(windows, key=lambda w: (w[1], w[0])):
        second = next((s for s in range(first, last + 1) if used[s] < rate), None)
        if second is None:
            return False
        used[second] += 1
    return True


def test_should_hold_a_send_rate_across_two_host_processes(
    brake_hosts: list[RunningHost], own_standin: SendGridStandIn, azurite: Azurite
) -> None:
    own_standin.reset()
    count = 6 * RATE
    subjects = [f"braked {uuid.uuid4().hex[:8]} {index}" for index in range(count)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = list(
            pool.map(lambda pair: accepted(brake_hosts[pair[0] % 2], pair[1]), enumerate(subjects))
        )

    def all_arrived() -> list[dict[str, Any]] | None:
        mails = [m for m in own_standin.mails() if m["payload"]["subject"] in subjects]
        return mails if len(mails) >= count else None

    arrived = wait_for(all_arrived, timeout=120, interval=0.5)
    by_id = {m["payload"]["personalizations"][0]["custom_args"]["mailgate_id"]: m for m in arrived}
    # Every mail once: none lost to the brake, none sent twice.
    assert len(arrived) == count
    assert sorted(by_id) == sorted(ids)
    # Each status is its own client's to read: the host's that accepted it.
    statuses = {
        message_id: settled(brake_hosts[index % 2], message_id)
        for index, message_id in enumerate(ids)
    }
    # Held back is no attempt, and never a dead letter.
    assert all(s["status"] == "sent" and s["attempts"] == 1 for s in statuses.values())
    assert Queues(azurite.connection_string, "mail-brake").poison_records() == []
    # A mail takes its token after it was accepted and before it reaches the stand-in: the
    # seconds of those two times bound the second its token was counted in. Were more than
    # RATE mails sent in some second, no plan would fit them all (the times are this
    # machine's one clock for the hosts and the stand-in alike).
    windows = [
        (
            int(datetime.fromisoformat(statuses[i]["accepted_at"]).timestamp()),
            int(datetime.fromisoformat(by_id[i]["received_at"].replace("Z", "+00:00")).timestamp()),
        )
        for i in ids
    ]
    assert fits_the_rate(windows, RATE)


def test_should_find_that_mail_sent_all_at_once_does_not_fit_a_rate() -> None:
    # The check above can fail: 12 mails accepted and arrived within the same two seconds.
    assert not fits_the_rate([(100, 101)] * 12, RATE)
    assert fits_the_rate([(100, 101)] * 10, RATE)
