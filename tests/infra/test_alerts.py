"""The alert on the queue monitor's warning matches what the monitor logs, at its cadence."""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import pytest
from azure.functions.timer import TimerRequest

import shared.gateway
from functions import monitor
from shared.errors import StorageUnavailable
from shared.queue import QueueMeasurement, QueueReport
from tests.infra.conftest import INFRA, parse_bicep

POISON_QUEUE = "mail-outbound-poison"
# App Insights' severityLevel for a Python WARNING and ERROR.
WARNING_SEVERITY = 2
ERROR_SEVERITY = 3


def alert(name: str) -> dict[str, Any]:
    """The properties of one alert rule in alerts.bicep."""
    resources = parse_bicep(INFRA / "app" / "alerts.bicep")["resources"]
    properties: dict[str, Any] = resources[name]["config"]["properties"]
    return properties


def waiting_alert() -> dict[str, Any]:
    """The properties of the dead-letters-waiting alert rule."""
    return alert("deadLettersWaitingAlert")


def logged_warning(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> str:
    """The warning monitor_queues logs for one dead letter in the poison queue."""

    def measure_queues() -> QueueReport:
        return QueueReport(
            QueueMeasurement("mail-outbound", 0, None), QueueMeasurement(POISON_QUEUE, 1, 60)
        )

    monkeypatch.setattr(monitor, "measure_queues", measure_queues)
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


def test_should_alert_on_exactly_the_error_logged_while_the_settings_are_wrong(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(shared.gateway, "_gateway", None)
    monkeypatch.setattr(
        shared.gateway,
        "_mail_queue_for",
        lambda storage, name: (_ for _ in ()).throw(StorageUnavailable("not reached")),
    )
    monkeypatch.setattr(os, "environ", {"AzureWebJobsStorage": "UseDevelopmentStorage=true"})
    with caplog.at_level(logging.ERROR):
        monitor.monitor_queues(TimerRequest(past_due=False))
    logged = next(r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)

    rule = alert("notConfiguredAlert")
    [criterion] = rule["criteria"]["allOf"]
    match = re.fullmatch(
        r'traces \| where severityLevel == (\d) and message startswith "([^"]+)"',
        criterion["query"],
    )
    assert match, criterion["query"]
    assert int(match[1]) == ERROR_SEVERITY
    assert logged.startswith(match[2])
    # The monitor logs it every 5 minutes for as long as the settings are wrong.
    assert (rule["evaluationFrequency"], rule["windowSize"], rule["autoMitigate"]) == (
        "PT5M",
        "PT15M",
        True,
    )
