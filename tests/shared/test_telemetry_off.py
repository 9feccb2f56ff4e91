"""With telemetry off, spans cost nothing and envelopes carry no trace (own process: the
telemetry tests install a global tracer provider, which cannot be taken back)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROGRAM = """
from opentelemetry import trace
from shared import telemetry

assert telemetry.configure_telemetry({}) is False  # as function_app.py calls it, at import
with telemetry.span("mailgate.accept", id="msg-1") as outer:
    with telemetry.span("mailgate.enqueue", id="msg-1") as inner:
        context = telemetry.current_trace_context()
try:
    with telemetry.span("mailgate.deliver"):
        raise KeyError("raised through")
except KeyError:
    raised = True
print(outer is trace.INVALID_SPAN, inner is trace.INVALID_SPAN, context, raised)
"""


def test_should_hand_out_the_invalid_span_and_no_trace_context_when_telemetry_is_off() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM], cwd=REPO, capture_output=True, text=True, check=True
    )

    assert result.stdout.split() == ["True", "True", "None", "True"]
