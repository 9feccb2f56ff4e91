"""The local Functions host as a child process that tests and benchmarks start, kill and restart."""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

import httpx

from devstack.processes import ManagedProcess

REPO = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT = 30.0
_LISTENING = re.compile(r"Listening on http://127\.0\.0\.1:(\d+)")


class LocalHostProcess:
    """`python -m devstack.host` on an app (the real function_app.py unless told otherwise)."""

    def __init__(
        self,
        settings: Mapping[str, str],
        log_dir: Path,
        *,
        app_dir: Path = REPO,
        log_name: str = "host",
        port: int = 0,
        library_log_level: str = "WARNING",
    ) -> None:
        # Only the given settings: nothing from this shell aimed at other storage or SendGrid
        # may leak in.
        self.settings = dict(settings)
        self._env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SENDGRID_", "Azure", "LOCAL_", "MAILGATE_STORAGE"))
        }
        self._env.update(self.settings)
        self._app_dir = app_dir
        self._log_dir = log_dir
        self._log_name = log_name
        self._library_log_level = library_log_level
        self._runs: list[ManagedProcess] = []
        self.port = port
        self._start()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.http = httpx.Client(base_url=self.base_url, timeout=30)

    def _start(self) -> None:
        process = ManagedProcess(
            [
                sys.executable,
                "-m",
                "devstack.host",
                "--app-dir",
                str(self._app_dir),
                "--port",
                str(self.port),
                # The given settings alone: a developer's local.settings.json must not leak in.
                "--environment-only",
                "--library-log-level",
                self._library_log_level,
            ],
            log_path=self._log_dir / f"{self._log_name}-{len(self._runs) + 1}.log",
            cwd=REPO,
            env=self._env,
        )
        self._runs.append(process)
        try:
            self.port = int(
                process.wait_until_ready(_started_port, timeout=STARTUP_TIMEOUT, interval=0.05)
            )
        except BaseException:
            process.stop()
            raise

    @property
    def pid(self) -> int:
        """The process id of the running host."""
        return self._runs[-1].pid

    def __enter__(self) -> LocalHostProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log(self) -> str:
        """Everything every run of the host logged, in order."""
        return "".join(run.output() for run in self._runs)

    def kill(self) -> None:
        """SIGKILL the host: invocations in flight die where they are."""
        run = self._runs[-1]
        run.signal_group(signal.SIGKILL)
        run.stop()

    def restart(self) -> None:
        """Start the host again on the same port."""
        self._start()

    def stop(self) -> None:
        """Stop the host (SIGTERM, then SIGKILL) and close the client."""
        self._runs[-1].stop(timeout=15)
        self.http.close()


def _started_port(output: str) -> str | None:
    if "Host started" not in output:
        return None
    match = _LISTENING.search(output)
    return match[1] if match else None
