"""``SendGridStandIn``: the stand-in as a subprocess on loopback, and its control API client."""

from __future__ import annotations

import os
import re
import shutil
import ssl
import sys
import tempfile
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from devstack.processes import ManagedProcess, StartupFailed
from devstack.sendgrid_standin.server import DEFAULT_API_KEY

# The command line's contract with this wrapper: the key comes in through the environment,
# where ps does not show it, and this line (printed once listening) gives the base URL.
API_KEY_ENV = "SENDGRID_STANDIN_API_KEY"
READY_LINE_PREFIX = "SendGrid stand-in listening on "

_READY_RE = re.compile(re.escape(READY_LINE_PREFIX) + r"(http://\S+)")
_REPO_ROOT = Path(__file__).resolve().parents[2]
_LOG_NAME = "standin.log"


class StandInError(RuntimeError):
    """The stand-in process could not be started or answered unexpectedly."""


class SendGridStandIn:
    """Run the stand-in as a subprocess on loopback and drive its control API."""

    # What a stand-in of the same shape (its module, its key's variable, its ready line and
    # its name) changes: devstack/acs_standin subclasses this.
    module = "devstack.sendgrid_standin"
    key_variable = API_KEY_ENV
    ready_pattern = _READY_RE
    name = "SendGrid stand-in"

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        outbox: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_ms: int = 0,
        startup_timeout: float = 15.0,
        write_eml: bool = True,
    ) -> None:
        """Configure; nothing starts until start(). Without an outbox, a temp folder is used;
        `write_eml=False` writes only each mail's .json record there."""
        self.api_key = api_key
        self._outbox_arg = Path(outbox) if outbox is not None else None
        self.host = host
        self.port = port
        self.latency_ms = latency_ms
        self.startup_timeout = startup_timeout
        self.write_eml = write_eml
        self.base_url = ""
        self._outbox: Path | None = None
        self._workdir: Path | None = None
        self._process: ManagedProcess | None = None
        self._client: httpx.Client | None = None
        self._output = ""

    @property
    def outbox(self) -> Path:
        """The folder accepted mails are written to."""
        if self._outbox is None:
            raise StandInError("the stand-in is not started")
        return self._outbox

    @property
    def mail_send_url(self) -> str:
        """The full URL of POST /v3/mail/send."""
        return f"{self.base_url}/v3/mail/send"

    @property
    def pid(self) -> int | None:
        """The process id while running."""
        return self._process.pid if self._process is not None else None

    def start(self) -> SendGridStandIn:
        """Start the process and wait until it listens."""
        if self._process is not None:
            return self
        prefix = self.module.rpartition(".")[2].replace("_", "-") + "-"
        self._workdir = Path(tempfile.mkdtemp(prefix=prefix))
        self._outbox = self._outbox_arg.resolve() if self._outbox_arg else self._workdir / "outbox"
        env = dict(os.environ)
        env[self.key_variable] = self.api_key  # not on the command line, where ps shows it
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        env["PYTHONUNBUFFERED"] = "1"
        command = [
            sys.executable,
            "-m",
            self.module,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--outbox",
            str(self._outbox),
            "--latency-ms",
            str(self.latency_ms),
            *([] if self.write_eml else ["--no-eml"]),
            *self._more_arguments(),
        ]
        self._process = ManagedProcess(
            command, log_path=self._workdir / _LOG_NAME, env=env, cleanup_dir=self._workdir
        )
        try:
            self.base_url = self._process.wait_until_ready(
                self._ready_url, timeout=self.startup_timeout, interval=0.02
            )
        except StartupFailed as failure:
            self.stop()
            raise StandInError(f"{self.name} {failure.reason}. Output:\n{failure.output}") from None
        self._client = httpx.Client(base_url=self.base_url, timeout=10.0, verify=self._verify())
        self._client.get("/_standin/health").raise_for_status()
        return self

    def stop(self) -> None:
        """Stop the process group and remove the temp folder (not a caller-given outbox)."""
        if self._client is not None:
            self._client.close()
            self._client = None
        process, self._process = self._process, None
        if process is not None:
            process.stop()
            self._output = process.output()
        if self._workdir is not None:
            if self._outbox_arg is None:
                self._outbox = None
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def output(self) -> str:
        """The process output so far (logs; never mail content)."""
        return self._process.output() if self._process is not None else self._output

    def __enter__(self) -> SendGridStandIn:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ---- control API helpers ----

    @property
    def client(self) -> httpx.Client:
        """An httpx client on the stand-in's base URL."""
        if self._client is None:
            raise StandInError("the stand-in is not started")
        return self._client

    def auth_headers(self) -> dict[str, str]:
        """Headers that authenticate a mail send."""
        return {"Authorization": f"Bearer {self.api_key}"}

    def mails(self) -> list[dict[str, Any]]:
        """Received mails in arrival order: {"x_message_id", "received_at", "payload"}."""
        response = self.client.get("/_standin/mails")
        response.raise_for_status()
        return typing.cast(list[dict[str, Any]], response.json())

    def clear_mails(self) -> None:
        """Forget received mails (the outbox files stay)."""
        self.client.delete("/_standin/mails").raise_for_status()

    def script(self, responses: Sequence[Mapping[str, Any]]) -> None:
        """Queue scripted responses, each consumed by one mail-send request."""
        self.client.post(
            "/_standin/responses", json={"responses": list(responses)}
        ).raise_for_status()

    def clear_script(self) -> None:
        """Drop any scripted responses not yet consumed."""
        self.client.delete("/_standin/responses").raise_for_status()

    def requests(self) -> list[dict[str, Any]]:
        """Every mail-send request so far: {"at", "received_at", "status", "outcome", ...}."""
        response = self.client.get("/_standin/requests")
        response.raise_for_status()
        return typing.cast(list[dict[str, Any]], response.json()["requests"])

    def set_latency(self, latency_ms: int) -> None:
        """Set the default latency of every mail send."""
        self.client.post("/_standin/config", json={"latency_ms": latency_ms}).raise_for_status()

    def reset(self) -> None:
        """Forget mails, script and request log, and set the latency back to 0."""
        self.client.post("/_standin/reset").raise_for_status()

    def _more_arguments(self) -> list[str]:
        """Command-line arguments a stand-in of the same shape adds (none here)."""
        return []

    def _verify(self) -> ssl.SSLContext | bool:
        """How the control API client verifies TLS (the default trust; this one is http)."""
        return True

    def _ready_url(self, output: str) -> str | None:
        """Find the base URL in the stand-in's ready line; None until it is printed."""
        match = self.ready_pattern.search(output)
        return match.group(1) if match else None
