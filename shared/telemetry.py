"""Traces and metrics through OpenTelemetry, exported to Application Insights when configured.

Without `APPLICATIONINSIGHTS_CONNECTION_STRING` nothing is configured: the OpenTelemetry API
then hands out no-op tracers and meters, so the code below costs next to nothing and never
fails. With it, `configure_telemetry` sets up the Azure Monitor distro once per process.

One trace per message: the accept span's context travels in the queue envelope (W3C
`traceparent`), and every delivery attempt continues that trace, down to the SendGrid call and
the status writes. Span attributes carry ids, counts, domains and status codes, never mail
content or full addresses.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import metrics, propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

logger = logging.getLogger(__name__)

CONNECTION_STRING = "APPLICATIONINSIGHTS_CONNECTION_STRING"
AUTHENTICATION_STRING = "APPLICATIONINSIGHTS_AUTHENTICATION_STRING"

tracer = trace.get_tracer("mailgate")
_meter = metrics.get_meter("mailgate")
accepted = _meter.create_counter("mailgate.messages.accepted", description="Messages queued.")
sent = _meter.create_counter("mailgate.messages.sent", description="Messages SendGrid took.")
retried = _meter.create_counter(
    "mailgate.messages.retried", description="Attempts that failed and were scheduled again."
)
dead_lettered = _meter.create_counter(
    "mailgate.messages.dead_lettered", description="Messages moved to the poison queue."
)
latency = _meter.create_histogram(
    "mailgate.messages.latency",
    unit="s",
    description="From accepted to sent (SendGrid's 202), retries included.",
)
sendgrid_responses = _meter.create_counter(
    "mailgate.sendgrid.responses",
    description="SendGrid's answers by status code (0: no answer).",
)

_configured = False


def configure_telemetry(environ: Mapping[str, str]) -> bool:
    """Export traces, metrics and logs to Application Insights if a connection string is set.

    Returns whether it did. With `APPLICATIONINSIGHTS_AUTHENTICATION_STRING` of the form
    `Authorization=AAD;ClientId=<id>` (as infra/ sets it) the export uses that managed identity.
    """
    global _configured
    connection_string = environ.get(CONNECTION_STRING, "").strip()
    if not connection_string or _configured:
        return _configured
    from azure.monitor.opentelemetry import configure_azure_monitor

    options: dict[str, Any] = {"connection_string": connection_string}
    client_id = _aad_client_id(environ.get(AUTHENTICATION_STRING, ""))
    if client_id is not None:
        from azure.identity import ManagedIdentityCredential

        options["credential"] = ManagedIdentityCredential(client_id=client_id or None)
    configure_azure_monitor(**options)
    _configured = True
    logger.info("Telemetry goes to Application Insights")
    return True


def _aad_client_id(authentication: str) -> str | None:
    """The client id of `Authorization=AAD;ClientId=...` ("" for the system identity)."""
    parts = dict(part.split("=", 1) for part in authentication.split(";") if "=" in part.strip())
    if parts.get("Authorization", "").strip().upper() != "AAD":
        return None
    return parts.get("ClientId", "").strip()


def current_trace_context() -> dict[str, str] | None:
    """The active span's context as W3C headers, to carry in a queue envelope."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier or None


def context_from(carrier: Mapping[str, str] | None) -> Context | None:
    """The context an envelope carried, to continue its trace."""
    return propagate.extract(dict(carrier)) if carrier else None


@contextmanager
def span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    context: Context | None = None,
    **attributes: Any,
) -> Iterator[Span]:
    """A span with `mailgate.*` attributes (None values left out); errors mark it failed.

    With telemetry off (no tracer provider was ever set) there is nothing to record, and the
    API's no-op span would still cost a context switch per call: the invalid span is handed
    out instead, at no cost.
    """
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        yield trace.INVALID_SPAN
        return
    with tracer.start_as_current_span(
        name,
        context=context,
        kind=kind,
        attributes={f"mailgate.{k}": v for k, v in attributes.items() if v is not None},
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        try:
            yield current
        except Exception as error:
            # The type only: exception messages may quote request values.
            current.set_status(Status(StatusCode.ERROR, type(error).__name__))
            raise
