"""Tests of the Azurite helper: start-up, ports, connection string, pause and clean stop."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ServiceRequestError, ServiceResponseError
from azure.storage.queue import (
    QueueClient,
    TextBase64DecodePolicy,
    TextBase64EncodePolicy,
)

from devstack.azurite import ACCOUNT_KEY, ACCOUNT_NAME, DEFAULT_EXECUTABLE, Azurite, AzuriteError

pytestmark = pytest.mark.skipif(
    not DEFAULT_EXECUTABLE.exists(), reason="Azurite is not installed: run `npm ci`"
)


@pytest.fixture(scope="module")
def azurite() -> Iterator[Azurite]:
    """One in-memory Azurite on free ports for this module."""
    with Azurite() as running:
        yield running


def queue_client(azurite: Azurite, name: str, **kwargs: Any) -> QueueClient:
    """A queue client encoding like the Functions host expects (base64)."""
    return QueueClient.from_connection_string(
        azurite.connection_string,
        name,
        message_encode_policy=TextBase64EncodePolicy(),
        message_decode_policy=TextBase64DecodePolicy(),
        **kwargs,
    )


def group_is_gone(pgid: int) -> bool:
    """Tell whether no process is left in a process group."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def test_should_start_on_free_ports_and_describe_them_in_the_connection_string(
    azurite: Azurite,
) -> None:
    ports = {azurite.blob_port, azurite.queue_port, azurite.table_port}
    assert len(ports) == 3
    assert all(port > 0 for port in ports)
    parts = dict(item.split("=", 1) for item in azurite.connection_string.rstrip(";").split(";"))
    assert parts["AccountName"] == ACCOUNT_NAME
    assert parts["AccountKey"] == ACCOUNT_KEY
    assert parts["BlobEndpoint"] == f"http://127.0.0.1:{azurite.blob_port}/devstoreaccount1"
    assert parts["QueueEndpoint"] == f"http://127.0.0.1:{azurite.queue_port}/devstoreaccount1"
    assert parts["TableEndpoint"] == f"http://127.0.0.1:{azurite.table_port}/devstoreaccount1"


def test_should_round_trip_a_queue_message(azurite: Azurite) -> None:
    client = queue_client(azurite, "roundtrip")
    client.create_queue()
    client.send_message('{"mailgate_id": "mg_1"}')
    received = list(client.receive_messages(max_messages=1))
    assert [message.content for message in received] == ['{"mailgate_id": "mg_1"}']
    client.delete_message(received[0])


def test_should_make_storage_calls_time_out_while_paused_and_work_after_resume(
    azurite: Azurite,
) -> None:
    client = queue_client(azurite, "paused", retry_total=0, connection_timeout=1, read_timeout=1)
    client.create_queue()
    azurite.pause()
    try:
        started = time.monotonic()
        with pytest.raises((ServiceResponseError, ServiceRequestError)):
            client.send_message("while paused")
        assert time.monotonic() - started < 5
    finally:
        azurite.resume()
    client.send_message("after resume")
    # The timed-out send sat in the socket buffer and is served on resume: a timeout is an
    # ambiguous outcome, as with real storage.
    contents = [m.content for m in client.receive_messages(max_messages=32)]
    assert "after resume" in contents
    assert set(contents) <= {"after resume", "while paused"}


def test_should_leave_no_process_after_stop() -> None:
    azurite = Azurite().start()
    pgid = azurite.pid
    assert pgid is not None
    azurite.stop()
    assert group_is_gone(pgid)
    assert not azurite.running
    assert "successfully listening" in azurite.output()


def test_should_stop_cleanly_even_while_paused() -> None:
    azurite = Azurite().start()
    pgid = azurite.pid
    assert pgid is not None
    azurite.pause()
    azurite.stop()
    assert group_is_gone(pgid)


def test_should_persist_into_the_location_folder(tmp_path: Path) -> None:
    location = tmp_path / "azurite-data"
    with Azurite(in_memory=False, location=location) as azurite:
        queue_client(azurite, "persisted").create_queue()
    assert location.is_dir()
    assert any(path.name.startswith("__azurite_db_queue") for path in location.iterdir())


def test_should_refuse_in_memory_together_with_a_location(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exclude each other"):
        Azurite(in_memory=True, location=tmp_path)


def test_should_tell_the_user_to_run_npm_ci_when_azurite_is_missing(tmp_path: Path) -> None:
    with pytest.raises(AzuriteError, match="npm ci"):
        Azurite(executable=tmp_path / "node_modules" / ".bin" / "azurite").start()


def test_should_report_azurite_output_when_a_port_is_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(AzuriteError, match="EADDRINUSE") as failure:
            Azurite(queue_port=port).start()
    assert "exited during start-up" in str(failure.value)


def test_should_time_out_with_a_clear_error_and_no_process_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[int] = []
    real_popen = subprocess.Popen

    def spy(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        process: subprocess.Popen[bytes] = real_popen(*args, **kwargs)
        started.append(process.pid)
        return process

    monkeypatch.setattr(subprocess, "Popen", spy)
    azurite = Azurite(startup_timeout=0.2)
    with pytest.raises(AzuriteError, match="did not start within") as failure:
        azurite.start()
    assert "Its output:" in str(failure.value)
    assert len(started) == 1
    assert group_is_gone(started[0])
