"""Tests of the process-group helper behind the Azurite and SendGrid stand-in wrappers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devstack.processes import ManagedProcess, StartupFailed


def group_is_gone(pgid: int, within: float = 5.0) -> bool:
    """Tell whether the process group empties within a few seconds.

    A group leader is gone once stop() returns; a grandchild killed with it still has to be
    reaped by init, which takes a moment.
    """
    deadline = time.monotonic() + within
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def python(code: str) -> list[str]:
    """A command running a Python snippet."""
    return [sys.executable, "-c", code]


def ready_port(output: str) -> int | None:
    """Parse the 'ready on PORT' line the test commands print."""
    match = re.search(r"ready on (\d+)", output)
    return int(match.group(1)) if match else None


def test_should_return_what_the_ready_line_says_and_stop_the_whole_group(tmp_path: Path) -> None:
    # The shell's child (sleep) is in the same group and must go with it.
    command = ["sh", "-c", "sleep 60 & echo 'ready on 4242'; wait"]
    process = ManagedProcess(command, log_path=tmp_path / "out.log")
    try:
        assert process.wait_until_ready(ready_port, timeout=10, interval=0.02) == 4242
        was_running = process.running
    finally:
        process.stop()
    assert was_running
    assert group_is_gone(process.pid)
    assert not process.running
    assert "ready on 4242" in process.output()


def test_should_report_an_exit_during_start_up_with_the_output(tmp_path: Path) -> None:
    process = ManagedProcess(
        python("print('port taken', flush=True); raise SystemExit(3)"),
        log_path=tmp_path / "out.log",
    )
    with pytest.raises(StartupFailed) as failure:
        process.wait_until_ready(ready_port, timeout=10, interval=0.02)
    process.stop()
    assert failure.value.exited
    assert failure.value.reason == "exited during start-up"
    assert "port taken" in failure.value.output


def test_should_time_out_when_no_ready_line_comes(tmp_path: Path) -> None:
    process = ManagedProcess(python("import time; time.sleep(60)"), log_path=tmp_path / "out.log")
    try:
        with pytest.raises(StartupFailed) as failure:
            process.wait_until_ready(ready_port, timeout=0.2, interval=0.02)
    finally:
        process.stop()
    assert not failure.value.exited
    assert failure.value.reason == "did not start within 0 s"
    assert group_is_gone(process.pid)


def test_should_pass_environment_and_working_directory(tmp_path: Path) -> None:
    code = "import os; print('ready on', os.environ['READY_PORT'], os.getcwd(), flush=True)"
    process = ManagedProcess(
        python(code),
        log_path=tmp_path / "out.log",
        cwd=tmp_path,
        env={**os.environ, "READY_PORT": "7"},
    )
    try:
        assert process.wait_until_ready(ready_port, timeout=10, interval=0.02) == 7
    finally:
        process.stop()
    assert str(tmp_path) in process.output()


def test_should_reap_a_process_whose_owner_never_stopped_it_at_exit(tmp_path: Path) -> None:
    # A test run that crashes, or forgets stop(): the interpreter's exit still reaps the group.
    workdir = tmp_path / "work"
    workdir.mkdir()
    owner = f"""
import sys
from pathlib import Path
from devstack.processes import ManagedProcess
process = ManagedProcess(
    ["sh", "-c", "sleep 60 & echo 'ready on 1'; wait"],
    log_path=Path({str(tmp_path / "out.log")!r}),
    cleanup_dir=Path({str(workdir)!r}),
)
process.wait_until_ready(lambda text: "ready on" in text or None, timeout=10, interval=0.02)
print(process.pid, flush=True)
"""
    repo_root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        python(owner), cwd=repo_root, capture_output=True, text=True, timeout=30, check=True
    )
    pid = int(result.stdout.strip())
    assert group_is_gone(pid)
    assert not workdir.exists()
