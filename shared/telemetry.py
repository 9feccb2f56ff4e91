"""Traces, metrics and logs through OpenTelemetry, exported by the exporter the platform sets up.

In Azure (OpenTelemetry mode, as Azure-Samples/functions-quickstart-python-azd-otel runs it:
host.json `"telemetryMode": "OpenTelemetry"`, app setting
`PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true`, `azure-monitor-opentelemetry` in
requirements.txt and no exporter set up in the app's code):

- The Python worker calls `configure_azure_monitor` itself, once, before it imports
  function_app.py: with `APPLICATIONINSIGHTS_CONNECTION_STRING`, and with its logging handler on
  the logger `PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME` names (the root logger by default). It
  then tells the host `WorkerOpenTelemetryEnabled`, and attaches each invocation's trace
  context before the function runs (Azure/azure-functions-python-worker,
  workers/azure_functions_worker/dispatcher.py `initialize_azure_monitor`,
  `_handle__worker_init_request`, `_run_sync_func`; runtimes/v2/azure_functions_runtime/otel.py
  for Python 3.13).
- The host, told so, stops exporting the log lines the worker still forwards to it
  (Azure/azure-functions-host, src/WebJobs.Script/Diagnostics/OpenTelemetry/
  OpenTelemetryConfigurationExtensions.cs: the `Function.*` categories are filtered while
  `WorkerOpenTelemetryEnabled`). So each line reaches `traces` once, through the worker's
  exporter, with its `extra` fields (`mailgate_id`) as custom dimensions; a line logged off an
  invocation's thread (the activity log's flusher) is exported too, where the host would have
  dropped it for want of an invocation id (GrpcWorkerChannel.cs `Log`).
- The exporter authenticates with `APPLICATIONINSIGHTS_AUTHENTICATION_STRING` itself
  (azure-monitor-opentelemetry-exporter 1.0.0b36 and later, export/_base.py
  `_get_authentication_credential`): the app passes no credential.

The app therefore never calls `configure_azure_monitor`: a second call builds a second set of
exporters and providers (OpenTelemetry refuses to install them; their threads run anyway),
and an app that exports on its own while the worker's setting is off has every line exported
again by the host. (`PYTHON_ENABLE_OPENTELEMETRY`, the worker's other switch, reports the same
capability and attaches trace contexts but leaves the exporter to the app: not used here.) What
the app does is create its tracer, meter and spans through OpenTelemetry's API, which use
whatever providers the worker installed, and, in `configure_telemetry`, turn down the
libraries' request logging and say in the log when the settings cannot export anything.

Locally, the local host imitates the worker (devstack/host_telemetry.py): with both settings,
it sets up the same exporter before it imports the app. Without
`APPLICATIONINSIGHTS_CONNECTION_STRING` (`make run`, the tests) nobody sets one up: the API
hands out no-op tracers and meters, `span` hands out the invalid span, and telemetry costs next
to nothing and never fails.

One trace per message: the accept span's context travels in the queue envelope (W3C
`traceparent`), and every delivery attempt continues that trace, down to the SendGrid call and
the status writes. (In Azure the accept span is a child of the host's request span, whose
context the worker attached; a delivery continues the envelope's trace, not the trigger's.)
Span attributes carry ids, counts, domains and status codes, never mail content or full
addresses.
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
# The Python worker's switch for the exporter it sets up (read with its is_true_like).
ENABLE_TELEMETRY = "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"
# Libraries that log every HTTP request at INFO: the Azure SDK's HttpLoggingPolicy
# (`azure.core.pipeline.policies.http_logging_policy`: each storage call, headers included) and
# httpx (each SendGrid call). Exported, each would be one more line per call without a
# mailgate_id; the local host turns the same ones down (devstack/host.py NOISY_LOGGERS).
QUIET_LOGGERS = ("azure", "httpx")
QUIET_LEVEL = logging.WARNING

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


def configure_telemetry(environ: Mapping[str, str]) -> bool:
    """Fit the app to the exporter the worker set up; True if telemetry is exported.

    Never raises: settings that cannot export are logged as an error and the app runs without
    telemetry. It never sets up an exporter itself (see the module's docstring).
    """
    quiet_library_loggers()
    if not environ.get(CONNECTION_STRING, "").strip():
        return False
    if not is_true_like(environ.get(ENABLE_TELEMETRY)):
        logger.error(
            "Telemetry: %s is set but %s is not true, so the Python worker sets up no exporter "
            "and nothing of the gateway's traces and metrics is exported; set it to true, as "
            "infra/ does",
            CONNECTION_STRING,
            ENABLE_TELEMETRY,
        )
        return False
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        logger.error(
            "Telemetry: %s is true but no exporter was set up before the app loaded (the "
            "Python worker logs why), so nothing is exported",
            ENABLE_TELEMETRY,
        )
        return False
    logger.info("Telemetry goes to Application Insights through the Python worker's exporter")
    return True


def quiet_library_loggers() -> None:
    """Turn the libraries' per-request logging down to warnings, unless a level was chosen.

    In Azure no one sets these loggers' levels, so they inherit the worker's INFO; the local
    host sets them from --library-log-level before it imports the app, and that choice stands.
    """
    for name in QUIET_LOGGERS:
        library = logging.getLogger(name)
        if library.level == logging.NOTSET:
            library.setLevel(QUIET_LEVEL)


def is_true_like(value: str | None) -> bool:
    """Whether the Python worker reads an app setting's value as true (its is_true_like)."""
    return value is not None and value.strip().lower() in {"1", "true", "t", "yes", "y"}


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
