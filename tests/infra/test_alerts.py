"""The alert on the queue monitor's warning matches what the monitor logs, at its cadence."""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import azure.functions as func
import pytest
from azure.functions.timer import TimerRequest

import shared.gateway
import shared.refusals
from functions import monitor
from functions.messages import submit_message
from shared.errors import StorageUnavailable
from shared.queue import QueueMeasurement, QueueReport
from tests.functions.conftest import (  # noqa: F401 (fixtures, found by name)
    clients,
    event_table,
    gateway,
    settings,
)
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


# --- the burst of 401s, from the refusal log's lines -----------------------------------------

# KQL's `parse ... with` pattern: "*" skips text, "<literal>" must follow, name:type captures.
_KQL_PARSE = re.compile(r"\| parse message with (?P<pattern>.+?) \| where (?P<filter>.+)$")
_KQL_TOKEN = re.compile(r'\*|"(?P<literal>[^"]*)"|(?P<column>\w+):(?P<type>int|long)')


def parse_pattern_as_regex(pattern: str) -> re.Pattern[str]:
    """The regular expression that KQL's `parse message with <pattern>` applies."""
    regex = ""
    for token in _KQL_TOKEN.finditer(pattern):
        if token["literal"] is not None:
            regex += re.escape(token["literal"])
        elif token["column"]:
            regex += rf"(?P<{token['column']}>-?\d+)"
        else:
            regex += ".*?"
    assert _KQL_TOKEN.sub("", pattern).strip() == "", pattern
    return re.compile(regex)


def logged_401_line(caplog: pytest.LogCaptureFixture) -> str:
    """The line the refusal log writes for requests refused with 401 on a mail route."""
    request = func.HttpRequest(
        method="POST",
        url="http://localhost:7071/api/v1/messages",
        headers={"Authorization": "Bearer mg_app_guess", "client-ip": "203.0.113.7:50123"},
        body=b"{}",
    )
    with caplog.at_level(logging.WARNING, logger="shared.refusals"):
        for _ in range(3):
            assert submit_message(request).status_code == 401
        shared.refusals._refusals.flush()
    [first, rest] = [r for r in caplog.records if r.name == "shared.refusals"]
    assert first.levelno == logging.WARNING
    assert rest.getMessage().endswith(" count=2")
    return rest.getMessage()


@pytest.mark.usefixtures("gateway")
def test_should_alert_on_the_sum_of_the_counts_the_refusal_log_writes_for_401s(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rule = alert("refusedKeysAlert")
    [criterion] = rule["criteria"]["allOf"]
    query = criterion["query"]
    start = re.match(
        r'traces \| where severityLevel == (\d) and message startswith "([^"]+)" ', query
    )
    assert start, query
    parse = _KQL_PARSE.search(query)
    assert parse, query
    line = logged_401_line(caplog)

    assert int(start[1]) == WARNING_SEVERITY
    assert start[2] == f"{shared.refusals.REFUSED}: "
    assert line.startswith(start[2])
    columns = parse_pattern_as_regex(parse["pattern"]).fullmatch(line)
    assert columns, (parse["pattern"], line)
    # The filter keeps the 401 lines, and the alert adds up their counts.
    assert parse["filter"] == "status == 401"
    assert int(columns["status"]) == 401
    assert criterion["metricMeasureColumn"] == "refused"
    assert int(columns["refused"]) == 2
    assert (criterion["timeAggregation"], criterion["operator"]) == ("Total", "GreaterThan")


def test_should_look_back_over_longer_than_the_refusal_log_holds_a_count() -> None:
    rule = alert("refusedKeysAlert")

    # A count is written at most REFUSAL_LOG_SECONDS after the refusals it counts.
    assert shared.refusals.REFUSAL_LOG_SECONDS <= 60
    assert (rule["evaluationFrequency"], rule["windowSize"]) == ("PT5M", "PT5M")
    assert rule["autoMitigate"] is True
