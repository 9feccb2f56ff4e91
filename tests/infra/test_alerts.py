"""The alert on the queue monitor's warning matches what the monitor logs, at its cadence."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest
from azure.functions.timer import TimerRequest

from functions import monitor
from shared.queue import QueueMeasurement, QueueReport
from tests.infra.conftest import INFRA, parse_bicep

POISON_QUEUE = "mail-outbound-poison"
# App Insights' severityLevel for a Python WARNING, as the Functions host forwards it.
WARNING_SEVERITY = 2


def waiting_alert() -> dict[str, Any]:
    """The properties of the dead-letters-waiting alert rule."""
    resources = parse_bicep(INFRA / "app" / "alerts.bicep")["resources"]
    properties: dict[str, Any] = resources["deadLettersWaitingAlert"]["config"]["properties"]
    return properties


def logged_warning(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> str:
    """The warning monitor_queues logs for one dead letter in the poison queue."""

    class Gateway:
        def measure_queues(self) -> QueueReport:
            return QueueReport(
                QueueMeasurement("mail-outbound", 0, None), QueueMeasurement(POISON_QUEUE, 1, 60)
            )

    monkeypatch.setattr(monitor, "get_gateway", Gateway)
    with caplog.at_level(logging.INFO, logger=monitor.__name__):
        monitor.monitor_queues(TimerRequest(past_due=False))
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    return warning.getMessage()


def test_should_alert_on_exactly_the_warning_the_monitor_logs(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    [criterion] = waiting_alert()["criteria"]["allOf"]
    query = criterion["query"].replace("${poisonQueueName}", POISON_QUEUE)
    match = re.fullmatch(
        r'traces \| where severityLevel == (\d) and message startswith "([^"]+)"', query
    )
    assert match, query

    assert int(match[1]) == WARNING_SEVERITY
    assert logged_warning(monkeypatch, caplog).startswith(match[2])
    assert (criterion["operator"], criterion["threshold"]) == ("GreaterThan", 0)


def test_should_look_back_over_several_runs_of_the_monitor() -> None:
    alert = waiting_alert()
    # The monitor runs every 5 minutes: a window of three runs survives one lost trace.
    assert monitor.SCHEDULE == "0 */5 * * * *"
    assert (alert["evaluationFrequency"], alert["windowSize"]) == ("PT5M", "PT15M")
    assert alert["autoMitigate"] is True
