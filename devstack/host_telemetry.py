"""The Python worker's telemetry set-up, which the local host does in its place.

With `PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY` true (as the worker reads it), the worker
calls the Azure Monitor distro's `configure_azure_monitor` once, with
`APPLICATIONINSIGHTS_CONNECTION_STRING` and the logger `PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME`
names (the root logger by default), before it imports function_app.py; a failure is logged and
the app loads without an exporter (Azure/azure-functions-python-worker,
workers/azure_functions_worker/dispatcher.py `initialize_azure_monitor` and
`_handle__worker_init_request`, constants.py, utils/common.py `is_true_like`). The local host
does the same before it imports the app, so that the app meets the exporter it meets in Azure
(shared/telemetry.py).

One difference: without a connection string the worker calls the distro anyway and logs its
failure; here that is the usual case (`make run`), so the host only says nothing is exported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

logger = logging.getLogger(__name__)

ENABLE_TELEMETRY = "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"
CONNECTION_STRING = "APPLICATIONINSIGHTS_CONNECTION_STRING"
LOGGER_NAME = "PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME"
# The worker sets this default before it calls the distro, for the Functions resource attributes.
RESOURCE_DETECTORS = "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS"

Configure = Callable[..., Any]


def is_true_like(value: str | None) -> bool:
    """Whether the worker reads an app setting's value as true."""
    return value is not None and value.strip().lower() in {"1", "true", "t", "yes", "y"}


def start_worker_telemetry(
    settings: Mapping[str, str],
    environ: MutableMapping[str, str],
    configure: Configure | None = None,
) -> bool:
    """Set up the Azure Monitor exporter as the worker does; True if it was set up.

    `configure` stands in for the distro's `configure_azure_monitor` (tests).
    """
    if not is_true_like(settings.get(ENABLE_TELEMETRY)):
        return False
    connection_string = settings.get(CONNECTION_STRING, "")
    if not connection_string.strip():
        logger.info(
            "Telemetry: %s is true but %s is not set: nothing is exported",
            ENABLE_TELEMETRY,
            CONNECTION_STRING,
        )
        return False
    environ.setdefault(RESOURCE_DETECTORS, "azure_functions")
    try:
        if configure is None:
            from azure.monitor.opentelemetry import configure_azure_monitor

            configure = configure_azure_monitor
        configure(connection_string=connection_string, logger_name=settings.get(LOGGER_NAME, ""))
    except Exception as error:  # as the worker: logged, and the app loads without an exporter
        logger.error(
            "Telemetry: the Azure Monitor distro could not be set up: %s: %s",
            type(error).__name__,
            error,
        )
        return False
    logger.info("Telemetry: the Azure Monitor distro is set up, as the Python worker does")
    return True
