"""One trace per message, from the HTTP request through the queue to SendGrid and the status
writes; the metrics of a send; the mailgate_id on every log line about a message; and each log
line exported once, through the one exporter the Python worker sets up.

The spans, metrics and logs are read with OpenTelemetry's in-memory exporters and reader,
installed as the process's providers (once: OpenTelemetry allows one global provider per
process). The requests go through the real functions and gateway; storage is in memory and
SendGrid answers through httpx's mock transport, so the gateway's own HTTP client and its span
are exercised.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, cast

import azure.functions as func
import azure.monitor.opentelemetry
import httpx
import pytest
from azure.data.tables import TableClient
from opentelemetry import _logs, metrics, trace
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import shared.gateway
from functions.delivery import deliver_message
from functions.messages import submit_message
from shared.activity import ActivityEvent, ActivityLog
from shared.clients import ClientStore
from shared.delivery_events import DeliveryEventStore
from shared.gateway import Gateway
from shared.providers import SendGridSender
from shared.sendgrid_client import SendGridClient
from shared.settings import Settings
from shared.status import MessageState
from shared.telemetry import QUIET_LOGGERS, configure_telemetry
from tests.fakes import (
    FakeActivityLog,
    FakeIdempotencyStore,
    FakeMailQueue,
    FakeMessageBodyStore,
    FakeStatusStore,
    FakeTableClient,
    JitterAt,
)
from tests.functions.conftest import APP_AUTH
from tests.functions.test_delivery import queue_message
from tests.samples import NOW, body, message

SECRET_VALUES = ("Quarterly numbers", "Hello Ada", "ada.lovelace", "charles.babbage", "QmVybm91")

_spans = InMemorySpanExporter()
_metrics = InMemoryMetricReader()
_logs_exported = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
_log_provider = LoggerProvider()
_log_provider.add_log_record_processor(SimpleLogRecordProcessor(_logs_exported))
# The app settings infra/app/api.bicep gives the Function App (the connection string's values
# are never used: the worker's exporter is the in-memory one here).
AZURE = {
    "APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=" + str(uuid.UUID(int=0)),
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "ClientId=0f1e2d3c;Authorization=AAD",
    "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY": "true",
}


@pytest.fixture(scope="module", autouse=True)
def providers() -> None:
    """The in-memory exporters and reader as the process's providers, set once."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_spans))
        trace.set_tracer_provider(provider)
        metrics.set_meter_provider(MeterProvider(metric_readers=[_metrics]))
    if not isinstance(_logs.get_logger_provider(), LoggerProvider):
        _logs.set_logger_provider(_log_provider)


@pytest.fixture
def worker_logging(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Logging as the Python worker leaves it in Azure before it imports the app.

    Its `configure_azure_monitor` call (logger_name "", the worker's default) puts one
    OpenTelemetry LoggingHandler, the distro's class, on the root logger, feeding the global
    logger provider; the worker sets the root logger to INFO; no one sets the libraries' levels.
    Here the provider exports to memory. Anything that added a second handler on the way to it
    would export every line twice.
    """
    root = logging.getLogger()
    handler = LoggingHandler(logger_provider=_logs.get_logger_provider())
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    caplog.set_level(logging.INFO)
    root.addHandler(handler)
    _logs_exported.clear()
    try:
        yield
    finally:
        root.removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def exported_lines() -> list[tuple[str, dict[str, Any]]]:
    """The exported log records: (body, attributes)."""
    return [
        (str(r.log_record.body), dict(r.log_record.attributes or {}))
        for r in _logs_exported.get_finished_logs()
    ]


class SendGrid:
    """SendGrid's side of the mock transport: scripted status codes, then 202."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        status = self.statuses.pop(0) if self.statuses else 202
        return httpx.Response(status, headers={"X-Message-Id": "sg-1"}, json={"errors": []})


@pytest.fixture
def sendgrid() -> SendGrid:
    return SendGrid()


@pytest.fixture
def traced_gateway(
    monkeypatch: pytest.MonkeyPatch,
    settings: Settings,
    fake_queue: FakeMailQueue,
    fake_bodies: FakeMessageBodyStore,
    fake_statuses: FakeStatusStore,
    clients: ClientStore,
    sendgrid: SendGrid,
    fake_activity: FakeActivityLog,
    event_table: FakeTableClient,
) -> Iterator[Gateway]:
    client = SendGridClient(
        "https://api.sendgrid.test", "SG.key", transport=httpx.MockTransport(sendgrid)
    )
    gateway = Gateway(
        settings,
        fake_queue,
        fake_bodies,
        fake_statuses,
        SendGridSender(client),
        clients,
        now=lambda: NOW,
        rng=JitterAt(1.0),
        keys=FakeIdempotencyStore(),
        activity=fake_activity,
        events=DeliveryEventStore(cast(TableClient, event_table)),
    )
    monkeypatch.setattr(shared.gateway, "_gateway", gateway)
    _spans.clear()
    yield gateway
    client.close()


def full_message(subject: str = "Quarterly numbers") -> dict[str, Any]:
    return message(
        to=["Ada <ada.lovelace@example.net>"],
        cc=["charles.babbage@example.org"],
        subject=subject,
        text="Hello Ada",
        attachments=[{"filename": "n.txt", "content": base64.b64encode(b"Bernoulli").decode()}],
    )


def post(document: dict[str, Any]) -> str:
    response = submit_message(
        func.HttpRequest(
            method="POST",
            url="http://localhost/api/v1/messages",
            headers={**APP_AUTH, "Content-Type": "application/json"},
            body=body(document),
        )
    )
    assert response.status_code == 202, response.get_body()
    message_id: str = json.loads(response.get_body())["id"]
    return message_id


def deliver_all(queue: FakeMailQueue) -> None:
    """Run the queue trigger on every queued message, as the host would (delays ignored)."""
    while queue.messages:
        queued = queue.messages.pop(0)
        deliver_message(queue_message(queued.text.encode()))


def spans_by_name() -> dict[str, list[ReadableSpan]]:
    found: dict[str, list[ReadableSpan]] = {}
    for finished in _spans.get_finished_spans():
        found.setdefault(finished.name, []).append(finished)
    return found


def metric_points() -> dict[str, list[Any]]:
    data = _metrics.get_metrics_data()
    points: dict[str, list[Any]] = {}
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
    return points


def counted(name: str, **attributes: Any) -> int:
    return sum(
        int(point.value)
        for point in metric_points().get(name, [])
        if all(point.attributes.get(k) == v for k, v in attributes.items())
    )


@pytest.mark.usefixtures("traced_gateway")
def test_should_make_one_connected_trace_from_the_request_to_sendgrid(
    fake_queue: FakeMailQueue,
) -> None:
    message_id = post(full_message())
    deliver_all(fake_queue)

    spans = spans_by_name()
    [accept] = spans["mailgate.accept"]
    [deliver] = spans["mailgate.deliver"]
    [send] = spans["mailgate.sendgrid.send"]
    assert accept.context is not None
    assert deliver.context is not None
    trace_id = accept.context.trace_id
    assert {s.context.trace_id for s in _spans.get_finished_spans() if s.context} == {trace_id}
    # The delivery continues the accept's trace through the queue envelope.
    assert deliver.parent is not None
    assert deliver.parent.span_id == accept.context.span_id
    assert send.parent is not None
    assert send.parent.span_id == deliver.context.span_id
    assert send.attributes is not None
    assert send.attributes["http.response.status_code"] == 202
    writes = [
        s.attributes["mailgate.state"] for s in spans["mailgate.status.write"] if s.attributes
    ]
    # The accept writes no record: delivery's claim inserts it (shared/message_ids.py).
    assert writes == ["sending", "sent"]
    assert accept.attributes is not None
    assert accept.attributes["mailgate.id"] == message_id
    assert spans["mailgate.enqueue"][0].attributes == {
        "mailgate.id": message_id,
        "mailgate.attempt": 1,
    }


@pytest.mark.usefixtures("traced_gateway")
def test_should_keep_mail_content_and_addresses_out_of_every_span(
    fake_queue: FakeMailQueue,
) -> None:
    post(full_message())
    deliver_all(fake_queue)

    for finished in _spans.get_finished_spans():
        values = " ".join(str(v) for v in (finished.attributes or {}).values())
        assert "@" not in values, finished.name
        for secret in SECRET_VALUES:
            assert secret not in values, (finished.name, secret)


@pytest.mark.usefixtures("traced_gateway")
def test_should_continue_the_trace_over_a_retry_and_count_it(
    fake_queue: FakeMailQueue, sendgrid: SendGrid
) -> None:
    sendgrid.statuses = [503]
    before = {
        name: counted(name) for name in ("mailgate.messages.sent", "mailgate.messages.retried")
    }
    before_503 = counted("mailgate.sendgrid.responses", **{"http.response.status_code": 503})

    post(full_message())
    deliver_all(fake_queue)

    spans = spans_by_name()
    assert len(spans["mailgate.deliver"]) == 2
    assert len({s.context.trace_id for s in _spans.get_finished_spans() if s.context}) == 1
    assert [
        s.attributes["mailgate.attempt"] for s in spans["mailgate.deliver"] if s.attributes
    ] == [1, 2]
    assert counted("mailgate.messages.retried") == before["mailgate.messages.retried"] + 1
    assert counted("mailgate.messages.sent") == before["mailgate.messages.sent"] + 1
    assert (
        counted("mailgate.sendgrid.responses", **{"http.response.status_code": 503})
        == before_503 + 1
    )
    assert metric_points()["mailgate.messages.latency"]


@pytest.mark.usefixtures("traced_gateway")
def test_should_count_a_dead_letter(fake_queue: FakeMailQueue, sendgrid: SendGrid) -> None:
    sendgrid.statuses = [400]
    before = counted("mailgate.messages.dead_lettered")

    post(full_message())
    deliver_all(fake_queue)

    assert counted("mailgate.messages.dead_lettered") == before + 1
    [deliver] = spans_by_name()["mailgate.deliver"]
    assert deliver.attributes is not None
    assert deliver.attributes["mailgate.result"] == "dead_lettered"


@pytest.mark.usefixtures("traced_gateway")
def test_should_put_the_mailgate_id_on_every_log_line_about_a_message(
    fake_queue: FakeMailQueue,
    sendgrid: SendGrid,
    fake_statuses: FakeStatusStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sendgrid.statuses = [503, 400]
    caplog.set_level(logging.DEBUG)

    first = post(full_message())
    fake_statuses.fail_next("create")  # a status write that fails is logged too
    ids = [first, post(full_message(subject="Second"))]
    deliver_all(fake_queue)

    about_messages = [r for r in caplog.records if any(i in r.getMessage() for i in ids)]
    assert len(about_messages) >= 4
    for record in about_messages:
        assert getattr(record, "mailgate_id", None) in ids, record.getMessage()


def test_should_export_nothing_without_a_connection_string() -> None:
    assert configure_telemetry({}) is False
    assert configure_telemetry({"APPLICATIONINSIGHTS_CONNECTION_STRING": " "}) is False
    assert configure_telemetry({"PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY": "true"}) is False


@pytest.mark.usefixtures("traced_gateway", "worker_logging")
def test_should_export_each_log_line_of_a_delivery_once_with_its_mailgate_id(
    fake_queue: FakeMailQueue, sendgrid: SendGrid, caplog: pytest.LogCaptureFixture
) -> None:
    assert configure_telemetry(AZURE) is True  # as function_app.py calls it, at import
    message_id = post(full_message())
    sendgrid.statuses = [503]  # a retry, then the send: two attempts' lines
    caplog.clear()
    _logs_exported.clear()

    deliver_all(fake_queue)

    exported = exported_lines()
    logged = [record.getMessage() for record in caplog.records]
    # Every line the delivery logged, exported once, in order: not twice, and none lost.
    assert [body for body, _ in exported] == logged
    assert any(f"Message {message_id} attempt 1 failed" in body for body, _ in exported)
    assert any(f"Message {message_id} sent" in body for body, _ in exported)
    # SendGrid's calls go through httpx, which logs each at INFO without the id: turned down.
    for line, attributes in exported:
        assert attributes.get("mailgate_id") == message_id, line


@pytest.mark.usefixtures("worker_logging")
def test_should_leave_the_exporter_the_worker_set_up_as_it_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(
        azure.monitor.opentelemetry, "configure_azure_monitor", lambda **kw: calls.append(kw)
    )
    root_handlers = list(logging.getLogger().handlers)
    providers = (trace.get_tracer_provider(), metrics.get_meter_provider())
    log_provider = _logs.get_logger_provider()

    assert configure_telemetry(AZURE) is True

    assert calls == []  # a second configure_azure_monitor would be a second pipeline
    assert logging.getLogger().handlers == root_handlers
    assert (trace.get_tracer_provider(), metrics.get_meter_provider()) == providers
    assert _logs.get_logger_provider() is log_provider


@pytest.mark.usefixtures("worker_logging")
def test_should_export_a_line_logged_on_the_activity_logs_flush_thread_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    configure_telemetry(AZURE)
    _logs_exported.clear()
    table = FakeTableClient("mailstatus")
    table.make_unavailable(["create", "upsert"])
    activity = ActivityLog(cast(TableClient, table), flush_seconds=0.01)

    # Written, and failing, on the flusher thread: outside any invocation, where the host would
    # drop a forwarded line for want of an invocation id.
    activity.record(ActivityEvent("m-1", MessageState.SENT, 1, NOW + timedelta(seconds=1)))
    deadline = time.monotonic() + 10
    while not exported_lines() and time.monotonic() < deadline:
        time.sleep(0.01)
    activity.close()

    [(body, _)] = exported_lines()
    assert body.startswith("Activity log: 1 outcome(s) were not written")
    [record] = [r for r in caplog.records if r.getMessage() == body]
    assert record.threadName == "mailgate-activity-flusher"


@pytest.mark.usefixtures("worker_logging")
def test_should_turn_the_libraries_request_logging_down_unless_a_level_was_chosen() -> None:
    configure_telemetry(AZURE)
    _logs_exported.clear()

    policy = logging.getLogger("azure.core.pipeline.policies.http_logging_policy")
    policy.info("Request URL: 'https://st.queue.core.windows.net/mail-outbound/messages'")
    logging.getLogger("httpx").info("HTTP Request: POST https://api.sendgrid.com/v3/mail/send")
    policy.warning("Transient error")
    assert [body for body, _ in exported_lines()] == ["Transient error"]

    # A level the local host chose (--library-log-level INFO) before it imported the app stays.
    logging.getLogger("httpx").setLevel(logging.INFO)
    configure_telemetry(AZURE)
    _logs_exported.clear()
    logging.getLogger("httpx").info("HTTP Request: POST http://127.0.0.1:7072/v3/mail/send")
    assert [body for body, _ in exported_lines()] == [
        "HTTP Request: POST http://127.0.0.1:7072/v3/mail/send"
    ]


@pytest.mark.usefixtures("worker_logging")
@pytest.mark.parametrize("switch", [None, "", "false", "maybe"])
def test_should_say_why_nothing_is_exported_when_the_worker_is_not_told_to(
    switch: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    settings = {
        k: v for k, v in AZURE.items() if k != "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"
    }
    if switch is not None:
        settings["PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"] = switch

    assert configure_telemetry(settings) is False

    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY is not true" in error.getMessage()


@pytest.mark.parametrize("switch", ["true", "True", " 1 ", "yes"])
def test_should_read_the_workers_switch_as_the_worker_does(switch: str) -> None:
    assert configure_telemetry({**AZURE, "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY": switch})
