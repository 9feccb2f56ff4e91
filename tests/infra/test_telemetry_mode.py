"""OpenTelemetry mode, as Azure-Samples/functions-quickstart-python-azd-otel sets it up: the
host in OpenTelemetry mode, the Python worker told to set up the exporter, the distro among the
app's packages. Missing one, each log line is stored twice, or the app's telemetry not at all
(shared/telemetry.py)."""

from __future__ import annotations

import json
import re

from shared.telemetry import is_true_like
from tests.infra.test_settings_agree import resolved_infra_settings
from tests.infra.venvs import ROOT


def test_should_run_the_host_in_opentelemetry_mode() -> None:
    host = json.loads((ROOT / "host.json").read_text(encoding="utf-8"))
    assert host["telemetryMode"] == "OpenTelemetry"


def test_should_tell_the_python_worker_to_set_up_the_exporter_in_azure() -> None:
    settings = resolved_infra_settings()
    # The worker reads it true-like; the exporter's own check wants exactly "true".
    assert settings["PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"] == "true"
    assert is_true_like(settings["PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"])
    assert settings["APPLICATIONINSIGHTS_CONNECTION_STRING"]


def test_should_ship_the_distro_the_worker_imports() -> None:
    # The worker imports azure.monitor.opentelemetry from the app's packages, not its own.
    requirements = (ROOT / "requirements.txt").read_text(encoding="utf-8")
    assert re.search(r"^azure-monitor-opentelemetry\b", requirements, re.MULTILINE)
