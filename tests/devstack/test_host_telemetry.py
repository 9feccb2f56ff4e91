"""The local host sets up the Azure Monitor exporter where the Python worker would, as it would.

The distro itself is replaced by a recorder: calling it for real would install the process's
OpenTelemetry providers, once for the whole test run.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from devstack.host_telemetry import start_worker_telemetry

CONNECTION = "InstrumentationKey=00000000-0000-0000-0000-000000000000"
AZURE = {
    "APPLICATIONINSIGHTS_CONNECTION_STRING": CONNECTION,
    "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY": "true",
}


class Distro:
    """What `configure_azure_monitor` was called with; it fails when told to."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.error = error

    def __call__(self, **options: Any) -> None:
        self.calls.append(options)
        if self.error is not None:
            raise self.error


def test_should_set_up_the_distro_with_the_workers_arguments() -> None:
    distro = Distro()
    environ: dict[str, str] = {}

    assert start_worker_telemetry(AZURE, environ, distro) is True

    assert distro.calls == [{"connection_string": CONNECTION, "logger_name": ""}]
    assert environ == {"OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "azure_functions"}


def test_should_pass_the_logger_name_setting_and_keep_a_chosen_resource_detector() -> None:
    distro = Distro()
    environ = {"OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "azure_app_service"}
    settings = {**AZURE, "PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME": "shared"}

    assert start_worker_telemetry(settings, environ, distro) is True

    assert distro.calls == [{"connection_string": CONNECTION, "logger_name": "shared"}]
    assert environ == {"OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "azure_app_service"}


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"APPLICATIONINSIGHTS_CONNECTION_STRING": CONNECTION},
        {**AZURE, "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY": "false"},
        {**AZURE, "APPLICATIONINSIGHTS_CONNECTION_STRING": " "},
        {"PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY": "true"},
    ],
)
def test_should_set_up_nothing_without_the_switch_and_a_connection_string(
    settings: dict[str, str],
) -> None:
    distro = Distro()
    environ: dict[str, str] = {}

    assert start_worker_telemetry(settings, environ, distro) is False

    assert distro.calls == []
    assert environ == {}


@pytest.mark.parametrize("switch", ["True", "1", " yes "])
def test_should_read_the_switch_as_the_worker_does(switch: str) -> None:
    distro = Distro()
    settings = {**AZURE, "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY": switch}

    assert start_worker_telemetry(settings, {}, distro) is True
    assert len(distro.calls) == 1


def test_should_log_a_distro_that_fails_and_load_the_app_without_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    distro = Distro(ValueError("Invalid instrumentation key"))

    assert start_worker_telemetry(AZURE, {}, distro) is False

    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "ValueError: Invalid instrumentation key" in error.getMessage()
