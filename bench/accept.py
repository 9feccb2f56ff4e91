"""Accept path: `POST /api/v1/messages` against the SDK's own `send_message` of the envelope.

The gateway runs in the local host (the accept-only app: the real HTTP functions, no queue
trigger to deliver meanwhile); the load generator runs in the bench process, one kept-alive
`http.client` connection per thread (httpx cost 0.7 ms of CPU per request here, on the same two
cores as the gateway; http.client about 0.2 ms). The baseline is what the gateway must do at
the least: `QueueClient.send_message` of the same envelope text (TextBase64EncodePolicy, every
other option the SDK's default), one client shared by all threads as the gateway shares its
own, against the same Azurite. Each concurrency level starts from a fresh Azurite (see
bench.storage) and a fresh host.
"""

from __future__ import annotations

import http.client
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from azure.storage.queue import QueueClient, TextBase64EncodePolicy

from bench.load import Call, CpuMeter, LoadResult, WindowHooks, run_closed_loop
from bench.mail import typical_body, typical_envelope
from bench.profiling import Profiler
from bench.stack import ACCEPT_APP, client_headers, http_client
from bench.storage import StallWatch, fresh_storage
from devstack.azurite import Azurite
from devstack.host_process import LocalHostProcess
from shared.settings import Settings

MESSAGES_PATH = "/api/v1/messages"
BASELINE_QUEUE = "bench-baseline"


@dataclass(frozen=True)
class AcceptLevel:
    """The gateway and its baseline at one concurrency."""

    concurrency: int
    gateway: LoadResult
    baseline: LoadResult


def post_factory(
    base_url: str, path: str, body: bytes, headers: dict[str, str]
) -> Callable[[], tuple[Call, Callable[[], None]]]:
    """Each thread's client POSTs `body` to `path` and expects 202."""

    parts = urlsplit(base_url)

    def factory() -> tuple[Call, Callable[[], None]]:
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)

        def call() -> bool:
            try:
                connection.request("POST", path, body=body, headers=headers)
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                connection.close()  # the next request connects again
                return False
            return response.status == 202

        return call, connection.close

    return factory


def send_message_factory(
    client: QueueClient, text: str
) -> Callable[[], tuple[Call, Callable[[], None]]]:
    """Every thread sends with the one shared client."""

    def factory() -> tuple[Call, Callable[[], None]]:
        def call() -> bool:
            client.send_message(text)
            return True

        return call, lambda: None

    return factory


def clear_queue(connection_string: str, name: str) -> None:
    """Empty a queue between runs, so every run starts from the same Azurite state."""
    with QueueClient.from_connection_string(connection_string, name) as client:
        client.clear_messages()


def run_accept(
    *,
    azurite: Azurite,
    settings: dict[str, str],
    levels: Sequence[int],
    seconds: float,
    warmup: float,
    log_dir: Path,
    profiler: Profiler | None = None,
) -> list[AcceptLevel]:
    """Gateway then baseline at each concurrency, each level on a fresh Azurite and host."""
    # The SDK's per-request logging at INFO would cost the baseline what the host never pays.
    logging.getLogger("azure").setLevel(logging.WARNING)
    # The baseline writes where the gateway's data goes.
    connection = Settings.from_env(settings).storage.connection_string
    assert connection is not None, "the bench runs on Azurite, through a connection string"
    queue = settings["MAIL_QUEUE_NAME"]
    body = typical_body()
    envelope_text = typical_envelope().to_json()
    results = []
    for concurrency in levels:
        fresh_storage(
            azurite,
            queues=[queue, f"{queue}-poison", BASELINE_QUEUE],
            tables=[settings["STATUS_TABLE_NAME"]],
        )
        baseline_client = QueueClient.from_connection_string(
            connection, BASELINE_QUEUE, message_encode_policy=TextBase64EncodePolicy()
        )
        host = LocalHostProcess(
            settings, log_dir, app_dir=ACCEPT_APP, log_name=f"accept-host-c{concurrency}"
        )
        headers = client_headers(settings)
        with baseline_client, host:
            with http_client(host.base_url) as client:
                client.post(MESSAGES_PATH, content=body, headers=headers).raise_for_status()
            pids = {"host": host.pid, "azurite": azurite.pid or 0}
            watch = StallWatch(connection)
            hooks: list[WindowHooks] = [watch]
            if profiler is not None:
                hooks.append(profiler.session(f"accept-c{concurrency}", host.pid))
            gateway = run_closed_loop(
                post_factory(host.base_url, MESSAGES_PATH, body, headers),
                concurrency=concurrency,
                seconds=seconds,
                warmup=warmup,
                meter=CpuMeter(pids),
                window_hooks=hooks,
            )
            gateway.storage_stall = watch.worst
            clear_queue(connection, queue)
            baseline = run_closed_loop(
                send_message_factory(baseline_client, envelope_text),
                concurrency=concurrency,
                seconds=seconds,
                warmup=warmup,
                meter=CpuMeter(pids),
                window_hooks=[watch],
            )
            baseline.storage_stall = watch.worst
        results.append(AcceptLevel(concurrency, gateway, baseline))
    return results
