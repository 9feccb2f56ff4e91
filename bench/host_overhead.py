"""The local host's own cost: the no-op app's queue drain and HTTP throughput.

Same host, same host.json limits, same storage and the same load generator as the gateway's
scenarios; the functions only read their input. What the gateway adds is the difference.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from azure.storage.queue import QueueClient, TextBase64EncodePolicy

from bench.accept import post_factory
from bench.load import CpuMeter, LoadResult, run_closed_loop
from bench.mail import typical_body, typical_envelope
from bench.stack import NOOP_APP
from bench.storage import StallWatch, fresh_storage
from devstack.azurite import Azurite
from devstack.host_process import LocalHostProcess

NOOP_PATH = "/api/noop"
NOOP_QUEUE = "bench-noop"
FILL_THREADS = 16
SAMPLE_SECONDS = 0.1


@dataclass
class NoopResult:
    """The no-op app's drain and HTTP runs."""

    messages: int
    drain_seconds: float = 0.0
    drained: int = 0
    timed_out: bool = False
    drain_cpu: dict[str, float] = field(default_factory=dict)
    storage_stall: float = 0.0
    http: list[LoadResult] = field(default_factory=list)

    @property
    def drain_rate(self) -> float:
        """Messages settled per second."""
        return self.drained / self.drain_seconds if self.drain_seconds > 0 else 0.0

    @property
    def drain_cpu_per_message(self) -> float | None:
        """Host CPU seconds per settled message."""
        return self.drain_cpu["host"] / self.drained if self.drained else None


def noop_settings(connection_string: str, function_key: str) -> dict[str, str]:
    """The no-op app's settings."""
    return {
        "FUNCTIONS_WORKER_RUNTIME": "python",
        "AzureWebJobsStorage": connection_string,
        "NOOP_QUEUE_NAME": NOOP_QUEUE,
        "LOCAL_FUNCTION_KEY": function_key,
    }


def run_noop(
    *,
    azurite: Azurite,
    settings: dict[str, str],
    messages: int,
    levels: Sequence[int],
    seconds: float,
    warmup: float,
    timeout: float,
    log_dir: Path,
) -> NoopResult:
    """Drain `messages` queued envelopes with the no-op host, then load its HTTP function.

    Each part gets a fresh Azurite and its own host, as the gateway's scenarios do.
    """
    result = NoopResult(messages)
    fresh_storage(azurite, queues=[NOOP_QUEUE])
    connection = settings["AzureWebJobsStorage"]
    text = typical_envelope().to_json()
    queue = QueueClient.from_connection_string(
        connection, NOOP_QUEUE, message_encode_policy=TextBase64EncodePolicy()
    )
    with queue:
        with ThreadPoolExecutor(FILL_THREADS) as pool:
            list(pool.map(lambda _: queue.send_message(text), range(messages)))
        with LocalHostProcess(
            settings, log_dir, app_dir=NOOP_APP, log_name="noop-host-drain"
        ) as host:
            meter = CpuMeter({"host": host.pid, "azurite": azurite.pid or 0})
            watch = StallWatch(connection)
            meter.start()
            watch.start()
            started = time.monotonic()
            left = messages
            while left > 0:
                if time.monotonic() - started > timeout:
                    result.timed_out = True
                    break
                time.sleep(SAMPLE_SECONDS)
                # Counts invisible (in-flight) messages too: 0 means all were deleted.
                left = queue.get_queue_properties().approximate_message_count or 0
            result.drain_seconds = time.monotonic() - started
            result.drain_cpu = meter.stop()
            watch.stop()
            result.storage_stall = watch.worst
            result.drained = messages - left
    fresh_storage(azurite, queues=[NOOP_QUEUE])
    body = typical_body()
    with LocalHostProcess(settings, log_dir, app_dir=NOOP_APP, log_name="noop-host-http") as host:
        pids = {"host": host.pid, "azurite": azurite.pid or 0}
        for concurrency in levels:
            result.http.append(
                run_closed_loop(
                    post_factory(
                        host.base_url,
                        NOOP_PATH,
                        body,
                        {
                            "x-functions-key": settings["LOCAL_FUNCTION_KEY"],
                            "Content-Type": "application/json",
                        },
                    ),
                    concurrency=concurrency,
                    seconds=seconds,
                    warmup=warmup,
                    meter=CpuMeter(pids),
                )
            )
    return result
