"""End to end: the queue monitor's timer on the local host, before and after a dead letter."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.azurite import Azurite
from devstack.sendgrid_standin import SendGridStandIn
from tests.e2e.conftest import Queues, RunningHost, gateway_settings, wait_for

# A queue of its own: the session's host, polling the shared one, must not take this mail.
MONITOR_QUEUE = "mail-monitor-e2e"
POISON_QUEUE = f"{MONITOR_QUEUE}-poison"
RECIPIENT = "dora@customer.example.org"
SUBJECT = "Monitor me not"


@pytest.fixture
def monitored(azurite: Azurite, standin: SendGridStandIn, tmp_path: Path) -> Iterator[RunningHost]:
    """The gateway with its monitor every 2 seconds instead of every 5 minutes."""
    settings = {
        **gateway_settings(azurite.connection_string, standin),
        "MAIL_QUEUE_NAME": MONITOR_QUEUE,
        "LOCAL_TIMER_SCHEDULE_monitor_queues": "*/2 * * * * *",
    }
    standin.reset()
    Queues(azurite.connection_string, MONITOR_QUEUE).clear()
    host = RunningHost(settings, tmp_path)
    yield host
    host.stop()


def monitor_lines(host: RunningHost) -> list[str]:
    """The lines the monitor function logged, in order."""
    return [line for line in host.log().splitlines() if "[functions.monitor]" in line]


def poison_ages(host: RunningHost) -> list[int]:
    """The oldest-message ages the monitor reported for the poison queue holding one message."""
    pattern = rf"INFO .*queue={POISON_QUEUE} depth=1 oldest_age_seconds=(\d+)$"
    return [int(m[1]) for line in monitor_lines(host) if (m := re.search(pattern, line))]


def test_should_log_depths_and_ages_and_warn_only_while_a_dead_letter_waits(
    monitored: RunningHost, standin: SendGridStandIn, azurite: Azurite
) -> None:
    host = monitored
    queues = Queues(azurite.connection_string, MONITOR_QUEUE)
    wait_for(
        lambda: any(
            f"queue={POISON_QUEUE} depth=0 oldest_age_seconds=none" in line
            for line in monitor_lines(host)
        )
    )
    assert not any("WARNING" in line for line in monitor_lines(host))

    standin.script([{"status": 400, "body": {"errors": [{"message": "refused", "field": None}]}}])
    response = host.post_message(
        {"from": "app@example.com", "to": [RECIPIENT], "subject": SUBJECT, "text": "Body text."}
    )
    assert response.status_code == 202, response.text
    wait_for(lambda: queues.poison_records())
    # Two reports with the dead letter: it is warned about, and its age grows.
    wait_for(lambda: len(poison_ages(host)) >= 2, timeout=20)

    lines = monitor_lines(host)
    warnings = [line for line in lines if " WARNING " in line]
    assert warnings
    assert all(
        f"Poison queue not empty: queue={POISON_QUEUE} depth=1;" in line for line in warnings
    )
    # No warning before the first report that saw the dead letter.
    first_seen = next(i for i, line in enumerate(lines) if f"queue={POISON_QUEUE} depth=1" in line)
    assert not any(" WARNING " in line for line in lines[:first_seen])
    ages = poison_ages(host)
    assert ages == sorted(ages)
    assert ages[-1] - ages[0] >= 1
    assert any(
        re.search(rf"INFO .*queue={MONITOR_QUEUE} depth=0 oldest_age_seconds=none$", line)
        for line in lines
    )
    text = "\n".join(lines)
    for secret in (RECIPIENT, SUBJECT, "Body text", "refused"):
        assert secret not in text
    assert "Executed 'Functions.monitor_queues' (Succeeded" in host.log()
