"""Start and stop the pinned Azurite (Azure Storage emulator) on loopback, for tests and `make run`.

Tests use ``Azurite()`` (in memory, free ports); the local stack uses
``Azurite(in_memory=False, blob_port=10000, queue_port=10001, table_port=10002)``, which keeps
its data under ``.devstack/azurite``. ``python -m devstack.azurite`` runs it in the foreground.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from devstack.local_tls import LocalTls
from devstack.processes import ManagedProcess, StartupFailed

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_EXECUTABLE = REPO_ROOT / "node_modules" / ".bin" / "azurite"
DEFAULT_LOCATION = Path(".devstack") / "azurite"
DEFAULT_PORTS = {"blob": 10000, "queue": 10001, "table": 10002}

ACCOUNT_NAME = "devstoreaccount1"
# Azurite's well-known development key: public, documented, and only valid against the emulator.
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

_LISTENING_RE = re.compile(
    r"Azurite (Blob|Queue|Table) service is successfully listening at https?://(\S+):(\d+)"
)
_LOG_NAME = "azurite.log"


class AzuriteError(RuntimeError):
    """Azurite could not be found, started or controlled."""


class Azurite:
    """One Azurite process (blob, queue and table services) in its own process group."""

    def __init__(
        self,
        *,
        in_memory: bool = True,
        location: str | os.PathLike[str] | None = None,
        blob_port: int = 0,
        queue_port: int = 0,
        table_port: int = 0,
        host: str = "127.0.0.1",
        startup_timeout: float = 20.0,
        access_log: bool = False,
        executable: str | os.PathLike[str] | None = None,
        tls: LocalTls | None = None,
        oauth: bool = False,
        debug_log: Path | None = None,
    ) -> None:
        """Configure; nothing starts until start(). Port 0 means a free port.

        With `tls`, the services speak HTTPS with its certificate; `oauth` then makes them
        accept Microsoft Entra bearer tokens too (`--oauth basic`: audience, issuer and
        lifetime are checked, the signature is not), the account key still working.
        `debug_log` is a file for Azurite's debug log, which records every request's headers.
        """
        if in_memory and location is not None:
            raise ValueError(
                "in_memory and location exclude each other: Azurite persists to one or the other"
            )
        if oauth and tls is None:
            # Azurite refuses a bearer token over http, as Azure does.
            raise ValueError("oauth needs tls: Azurite accepts bearer tokens over HTTPS only")
        self.in_memory = in_memory
        self.location = None if in_memory else Path(location or DEFAULT_LOCATION).resolve()
        self.host = host
        self.requested_ports = {"blob": blob_port, "queue": queue_port, "table": table_port}
        self.startup_timeout = startup_timeout
        self.access_log = access_log
        self.executable = Path(executable) if executable is not None else DEFAULT_EXECUTABLE
        self.tls = tls
        self.oauth = oauth
        self.debug_log = debug_log
        self._ports: dict[str, int] = {}
        self._process: ManagedProcess | None = None
        self._tempdir: Path | None = None
        self._paused = False
        self._output = ""

    # ---- lifecycle ----

    def start(self) -> Azurite:
        """Start Azurite and wait until its three services listen."""
        if self._process is not None:
            return self
        self._launch(self.requested_ports)
        return self

    def stop(self) -> None:
        """Stop the whole process group; in-memory data is gone afterwards."""
        process, self._process = self._process, None
        if process is not None:
            if self._paused:
                # A stopped process only acts on SIGTERM once continued.
                with contextlib.suppress(ProcessLookupError):
                    process.signal_group(signal.SIGCONT)
            process.stop()
            self._output = process.output()
        self._paused = False
        if self._tempdir is not None:
            shutil.rmtree(self._tempdir, ignore_errors=True)
            self._tempdir = None

    def restart(self) -> Azurite:
        """Stop and start again on the same ports (in-memory data does not survive)."""
        ports = dict(self._ports) or dict(self.requested_ports)
        self.stop()
        self._launch(ports)
        return self

    def pause(self) -> None:
        """Freeze Azurite (SIGSTOP): connections hang, as with storage that stopped answering."""
        self._require_process().signal_group(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Continue a paused Azurite (SIGCONT)."""
        self._require_process().signal_group(signal.SIGCONT)
        self._paused = False

    @property
    def running(self) -> bool:
        """Tell whether the process is alive (paused counts as alive)."""
        return self._process is not None and self._process.running

    @property
    def pid(self) -> int | None:
        """The process id (also its process group id) while running."""
        return self._process.pid if self._process is not None else None

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ---- endpoints ----

    @property
    def blob_port(self) -> int:
        """The blob service's port."""
        return self._port("blob")

    @property
    def queue_port(self) -> int:
        """The queue service's port."""
        return self._port("queue")

    @property
    def table_port(self) -> int:
        """The table service's port."""
        return self._port("table")

    @property
    def scheme(self) -> str:
        """`https` with TLS, else `http`."""
        return "https" if self.tls is not None else "http"

    @property
    def blob_endpoint(self) -> str:
        """The blob service URL of the development account."""
        return f"{self.scheme}://{self.host}:{self.blob_port}/{ACCOUNT_NAME}"

    @property
    def queue_endpoint(self) -> str:
        """The queue service URL of the development account."""
        return f"{self.scheme}://{self.host}:{self.queue_port}/{ACCOUNT_NAME}"

    @property
    def table_endpoint(self) -> str:
        """The table service URL of the development account."""
        return f"{self.scheme}://{self.host}:{self.table_port}/{ACCOUNT_NAME}"

    @property
    def connection_string(self) -> str:
        """A connection string for the development account with the actual ports."""
        return (
            f"DefaultEndpointsProtocol={self.scheme};AccountName={ACCOUNT_NAME};"
            f"AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.blob_endpoint};QueueEndpoint={self.queue_endpoint};"
            f"TableEndpoint={self.table_endpoint};"
        )

    def output(self) -> str:
        """What Azurite printed so far."""
        return self._process.output() if self._process is not None else self._output

    # ---- internals ----

    def _port(self, service: str) -> int:
        if service not in self._ports:
            raise AzuriteError("Azurite is not started")
        return self._ports[service]

    def _require_process(self) -> ManagedProcess:
        if self._process is None:
            raise AzuriteError("Azurite is not started")
        return self._process

    def _command(self, ports: dict[str, int]) -> list[str]:
        command = [
            str(self.executable),
            "--blobHost",
            self.host,
            "--queueHost",
            self.host,
            "--tableHost",
            self.host,
            "--blobPort",
            str(ports["blob"]),
            "--queuePort",
            str(ports["queue"]),
            "--tablePort",
            str(ports["table"]),
            "--disableTelemetry",
            # Current azure-storage-* packages send an API version newer than Azurite knows.
            "--skipApiVersionCheck",
        ]
        if self.in_memory:
            command.append("--inMemoryPersistence")
        else:
            assert self.location is not None
            command += ["--location", str(self.location)]
        if not self.access_log:
            command.append("--silent")
        if self.tls is not None:
            # Azurite runs in its own working directory: absolute paths.
            command += ["--cert", str(self.tls.cert_chain.resolve())]
            command += ["--key", str(self.tls.key.resolve())]
        if self.oauth:
            command += ["--oauth", "basic"]
        if self.debug_log is not None:
            command += ["--debug", str(self.debug_log.resolve())]
        return command

    def _launch(self, ports: dict[str, int]) -> None:
        if not self.executable.exists():
            raise AzuriteError(
                f"Azurite is not installed ({self.executable} is missing). "
                "Run `npm ci` in the repository root to install the pinned version."
            )
        if self.in_memory:
            # Azurite writes debug and lock files into its working directory: not into the repo.
            self._tempdir = Path(tempfile.mkdtemp(prefix="azurite-"))
            workdir = self._tempdir
        else:
            assert self.location is not None
            self.location.mkdir(parents=True, exist_ok=True)
            workdir = self.location
        self._process = ManagedProcess(
            self._command(ports),
            log_path=workdir / _LOG_NAME,
            cwd=workdir,
            cleanup_dir=self._tempdir,
        )
        self._ports = {}
        try:
            found = self._process.wait_until_ready(
                _listening_ports, timeout=self.startup_timeout, interval=0.05
            )
        except StartupFailed as failure:
            self.stop()
            raise AzuriteError(f"Azurite {failure.reason}. Its output:\n{failure.output}") from None
        self._ports = found
        logger.info(
            "Azurite listening: blob %s, queue %s, table %s",
            found["blob"],
            found["queue"],
            found["table"],
        )


def _listening_ports(output: str) -> dict[str, int] | None:
    """Find the three services' ports in Azurite's output; None until all three listen."""
    found = {m.group(1).lower(): int(m.group(3)) for m in _LISTENING_RE.finditer(output)}
    return found if len(found) == 3 else None


def main(argv: Sequence[str] | None = None) -> int:
    """Run Azurite in the foreground until Ctrl-C, printing its connection string."""
    parser = argparse.ArgumentParser(prog="python -m devstack.azurite", description=__doc__)
    storage = parser.add_mutually_exclusive_group()
    storage.add_argument("--in-memory", action="store_true", help="keep data in memory only")
    storage.add_argument("--location", type=Path, help=f"data folder (default {DEFAULT_LOCATION})")
    parser.add_argument(
        "--free-ports", action="store_true", help="pick free ports instead of 10000-10002"
    )
    parser.add_argument("--access-log", action="store_true", help="show Azurite's access log")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    ports = {name: 0 for name in DEFAULT_PORTS} if args.free_ports else DEFAULT_PORTS
    azurite = Azurite(
        in_memory=args.in_memory,
        location=args.location,
        blob_port=ports["blob"],
        queue_port=ports["queue"],
        table_port=ports["table"],
        access_log=args.access_log,
    )
    try:
        azurite.start()
    except AzuriteError as exc:
        logger.error("%s", exc)
        return 1
    print(f"AZURE_STORAGE_CONNECTION_STRING={azurite.connection_string}", flush=True)
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stop and azurite.running:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        azurite.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
