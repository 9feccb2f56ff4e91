"""Helper processes in their own process group: start, wait until ready, stop, reap at exit.

Azurite and the SendGrid stand-in run as child processes of tests and ``make run``. Each is
started in a new session, so that it and whatever it spawns (Azurite's node, for one) form one
process group that can be paused, continued and stopped as a whole. Its output goes to a log
file, which is polled for the line that says it is ready. If the owner never stops it (a
crashed test run, a forgotten object), the group is still reaped when the ``ManagedProcess`` is
garbage-collected or the interpreter exits.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class StartupFailed(Exception):
    """The process exited, or did not say it was ready in time, during start-up."""

    def __init__(self, *, exited: bool, timeout: float, output: str) -> None:
        """Keep what happened and the process output, for the owner's own error message."""
        self.exited = exited
        self.output = output
        self.reason = (
            "exited during start-up" if exited else f"did not start within {timeout:.0f} s"
        )
        super().__init__(self.reason)


class ManagedProcess:
    """One command running in its own session and process group, its output in a log file."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        log_path: Path,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        cleanup_dir: Path | None = None,
    ) -> None:
        """Start the command; cleanup_dir is removed too if the group has to be reaped at exit."""
        self.log_path = log_path
        with log_path.open("wb") as log:
            # A file, not a pipe: nobody has to keep draining it, so the process never blocks
            # on its own output.
            self._popen = subprocess.Popen(
                list(command),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        # If the owner never calls stop() (a crashed test run), still leave no process behind.
        self._finalizer = weakref.finalize(
            self,
            reap_at_exit,
            self._popen.pid,
            str(cleanup_dir) if cleanup_dir is not None else None,
        )

    @property
    def pid(self) -> int:
        """The process id, which is also its process group id."""
        return self._popen.pid

    @property
    def running(self) -> bool:
        """Tell whether the process is alive (a stopped one counts as alive)."""
        return self._popen.poll() is None

    def output(self) -> str:
        """What the process printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_until_ready(
        self, parse: Callable[[str], T | None], *, timeout: float, interval: float
    ) -> T:
        """Poll the output until parse finds what it looks for; StartupFailed if it never does."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.output()
            found = parse(text)
            if found is not None:
                return found
            exited = not self.running
            if exited or time.monotonic() > deadline:
                raise StartupFailed(exited=exited, timeout=timeout, output=text)
            time.sleep(interval)

    def signal_group(self, sig: signal.Signals) -> None:
        """Send a signal to the whole process group."""
        os.killpg(self._popen.pid, sig)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the whole process group (see stop_process_group); the log file stays."""
        self._finalizer.detach()
        stop_process_group(self._popen, timeout)


def stop_process_group(process: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """Terminate a process and its group, killing it if it does not exit in time."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)
    # Anything still in the group (there should be nothing) goes too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def reap_at_exit(pid: int, cleanup_dir: str | None, timeout: float = 3.0) -> None:
    """Stop a process group whose owner was never stopped (crashed test, forgotten object)."""
    # SIGCONT first: a stopped (paused) process only acts on SIGTERM once continued.
    for sig in (signal.SIGCONT, signal.SIGTERM):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                break
        except ChildProcessError:
            # Already reaped elsewhere: done once nothing is left in the group.
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                break
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    if cleanup_dir is not None:
        shutil.rmtree(cleanup_dir, ignore_errors=True)
