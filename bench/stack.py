"""The processes a bench run starts besides Azurite and the stand-in: hosts and helper servers.

Every process runs in its own process group on loopback, writes its output to a log file in
the run's temporary folder, and is stopped by its owner (or reaped when the bench exits).
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from devstack.azurite import Azurite
from devstack.processes import ManagedProcess
from devstack.sendgrid_standin import SendGridStandIn
from shared.clients import MAX_RATE_PER_MINUTE, ClientStore
from shared.settings import Settings

REPO = Path(__file__).resolve().parents[1]
ACCEPT_APP = REPO / "bench" / "accept_app"
NOOP_APP = REPO / "bench" / "noop_app"
# The no-op app's routes run at the host's FUNCTION level; the gateway's take client keys.
FUNCTION_KEY = "bench-key"
STARTUP_TIMEOUT = 30.0
DEPLOYED_MMAP_THRESHOLD = "1048576"
_HELPER_LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")


def gateway_settings(
    azurite: Azurite,
    standin: SendGridStandIn,
    *,
    queue: str,
    table: str,
    host_threads: int | None = None,
) -> dict[str, str]:
    """The gateway's app settings for one scenario (its own queue and status table)."""
    settings = {
        "FUNCTIONS_WORKER_RUNTIME": "python",
        "AzureWebJobsStorage": azurite.connection_string,
        "MAIL_QUEUE_NAME": queue,
        "STATUS_TABLE_NAME": table,
        "ALLOWED_SENDERS": "@example.com",
        "SENDGRID_API_BASE_URL": standin.base_url,
        "SENDGRID_API_KEY": standin.api_key,
        # As infra/ deploys it; unset, the host would leave the retention timer out, in error.
        "RETENTION_SCHEDULE": "0 17 * * * *",
        # As infra/ deploys it: large blocks go back to the system once freed.
        "MALLOC_MMAP_THRESHOLD_": DEPLOYED_MMAP_THRESHOLD,
    }
    if host_threads:
        settings["PYTHON_THREADPOOL_THREAD_COUNT"] = str(host_threads)
    return settings


def client_headers(settings: Mapping[str, str]) -> dict[str, str]:
    """Headers for POSTing JSON as a new client, made in the settings' storage, never limited."""
    store = ClientStore.from_settings(Settings.from_env(settings))
    store.ensure_exists()
    _, key = store.create(
        f"bench-{uuid.uuid4().hex[:12]}", settings["ALLOWED_SENDERS"], MAX_RATE_PER_MINUTE
    )
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


class HelperServer:
    """A bench helper (`python -m bench.<module> ...`) that prints `listening on 127.0.0.1:PORT`."""

    def __init__(self, module: str, arguments: Sequence[str], log_path: Path) -> None:
        self._process = ManagedProcess(
            [sys.executable, "-m", module, *arguments],
            log_path=log_path,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            found = self._process.wait_until_ready(
                _helper_port, timeout=STARTUP_TIMEOUT, interval=0.02
            )
        except BaseException:
            self._process.stop()
            raise
        self.port = int(found)

    @property
    def pid(self) -> int:
        """The helper's process id."""
        return self._process.pid

    def stop(self) -> None:
        """Stop the helper."""
        self._process.stop()

    def __enter__(self) -> HelperServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _helper_port(output: str) -> str | None:
    match = _HELPER_LISTENING.search(output)
    return match[1] if match else None


def http_client(base_url: str) -> httpx.Client:
    """A client for one load-generator thread: one keep-alive connection, no proxies."""
    return httpx.Client(
        base_url=base_url,
        timeout=30.0,
        trust_env=False,
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
    )
