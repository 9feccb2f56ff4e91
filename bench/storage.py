"""Azurite for the bench: a fresh one per segment, and a watch for its pauses.

Azurite's queue service runs a mark-and-sweep every 60 s that deletes the extent of every
message deleted since, one by one, blocking the emulator meanwhile: after 10,000 messages it
answers nothing for about two minutes. Real Azure has no such pause. So each segment of the
bench starts from a freshly restarted Azurite (same ports, empty) and should end within the
first minute; the watch pings storage during every measured window, and the report says when
a window saw storage stall anyway.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence

from azure.core.exceptions import AzureError, ResourceExistsError
from azure.data.tables import TableServiceClient
from azure.storage.queue import QueueServiceClient

from devstack.azurite import Azurite

PING_SECONDS = 0.5
STALL_SECONDS = 1.0


def fresh_storage(
    azurite: Azurite, *, queues: Sequence[str] = (), tables: Sequence[str] = ()
) -> None:
    """Restart Azurite empty on the same ports, then create the given queues and tables."""
    azurite.restart()
    connection = azurite.connection_string
    if queues:
        with QueueServiceClient.from_connection_string(connection) as service:
            for name in queues:
                with contextlib.suppress(ResourceExistsError):
                    service.create_queue(name)
    if tables:
        with TableServiceClient.from_connection_string(connection) as service:
            for name in tables:
                service.create_table_if_not_exists(name)


class StallWatch:
    """Pings the queue service every 0.5 s between start() and stop(); keeps the slowest."""

    def __init__(self, connection_string: str) -> None:
        self._connection_string = connection_string
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.worst = 0.0

    def start(self) -> None:
        """Begin pinging in a background thread."""
        self._stop.clear()
        self.worst = 0.0
        self._thread = threading.Thread(target=self._run, name="stall-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop pinging; `worst` is the slowest answer in seconds."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=300)
            self._thread = None

    @property
    def stalled(self) -> bool:
        """Whether storage took longer than a second to answer at least once."""
        return self.worst > STALL_SECONDS

    def _run(self) -> None:
        with QueueServiceClient.from_connection_string(
            self._connection_string, retry_total=0, connection_timeout=5, read_timeout=300
        ) as service:
            while not self._stop.is_set():
                started = time.perf_counter()
                with contextlib.suppress(AzureError):
                    service.get_service_properties()
                self.worst = max(self.worst, time.perf_counter() - started)
                self._stop.wait(PING_SECONDS)
