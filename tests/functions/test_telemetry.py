"""One trace per message, from the HTTP request through the queue to SendGrid and the status
writes; the metrics of a send; and the mailgate_id on every log line about a message.

The spans and metrics are read with OpenTelemetry's in-memory exporter and reader, installed
as the process's providers (once: OpenTelemetry allows one global provider per process). The
requests go through the real functions and gateway; storage is in memory and SendGrid answers
through httpx's mock transport, so the gateway's own HTTP client and its span are exercised.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from typing import Any, cast

import azure.functions as func
import httpx
import pytest
from azure.data.tables import TableClient
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import shared.gateway
from functions.delivery import deliver_message
from functions.messages import submit_message
from shared.clients import ClientStore
from shared.delivery_events import DeliveryEventStore
from shared.gateway import Gateway
from shared.sendgrid_client import SendGridClient
from shared.settings import Settings
from shared.telemetry import _aad_client_id, configure_telemetry
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


@pytest.fixture(scope="module", autouse=True)
def providers() -> None:
    """The in-memory exporter and reader as the process's providers, set once."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_spans))
        trace.set_tracer_provider(provider)
        metrics.set_meter_provider(MeterProvider(metric_readers=[_metrics]))


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
        client,
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
    assert writes == ["queued", "sending", "sent"]
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


@pytest.mark.parametrize(
    ("authentication", "client_id"),
    [
        ("Authorization=AAD;ClientId=0f1e2d3c", "0f1e2d3c"),
        ("Authorization=AAD", ""),
        ("", None),
        ("Authorization=Key", None),
    ],
)
def test_should_read_the_identity_application_insights_takes(
    authentication: str, client_id: str | None
) -> None:
    assert _aad_client_id(authentication) == client_id
