"""Storage calls: what the gateway's storage transport costs and saves per call.

The gateway's three kinds of per-message storage call, made one at a time from the bench
process against Azurite with the SDK's clients, on three transports:

- `replay`: no network at all; every call is answered with a copy of the answer the service
  gave to the same kind of call. What remains is the SDK's own pipeline (signing, serialising,
  retries, tracing, parsing the answer): the floor no transport can go below.
- `gateway`: shared/storage_transport.py, as the gateway's clients use it.
- `requests`: azure-core's default `RequestsTransport`, as an SDK client has it without
  `transport=`.

The transport's own cost per call is `gateway` - `replay`; what it saves, `requests` -
`gateway`. CPU is the bench process's (all threads) per call; Azurite runs in its own process.

Then two choices of how the gateway writes, each against what it replaced, on the gateway's
transport (`WRITE_SHAPES`): a status record inserted with `Prefer: return-no-content` against
one echoed back; and delivery outcomes in the activity log as one packed row (ActivityLog's
flush) against one row each in an entity group transaction of 100, per outcome.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError
from azure.core.pipeline.transport import HttpTransport, RequestsTransport
from azure.core.rest import HttpRequest, HttpResponse
from azure.core.rest._http_response_impl import HttpResponseImpl
from azure.core.utils import case_insensitive_dict
from azure.data.tables import TableClient, TableServiceClient, UpdateMode
from azure.storage.queue import QueueClient, TextBase64EncodePolicy

from bench.load import process_cpu_seconds
from bench.mail import typical_envelope
from devstack.azurite import Azurite
from shared.activity import ActivityEvent, ActivityLog, partition_of
from shared.status import NO_ECHO, MessageState
from shared.storage_transport import StorageTransport

REPLAY = "replay (the SDK's pipeline alone)"
GATEWAY = "gateway (shared/storage_transport.py)"
REQUESTS = "requests (azure-core's default)"
TRANSPORTS = (REPLAY, GATEWAY, REQUESTS)
CALLS = ("queue: put message", "table: replace entity (If-Match)", "table: get entity")
WARMUP_CALLS = 50
INSERT_ECHOED = "table: insert entity, the entity echoed back"
INSERT_NO_ECHO = "table: insert entity, Prefer: return-no-content (shared/status.py NO_ECHO)"
OUTCOMES_IN_TRANSACTION = "activity: an outcome, one row each in a transaction of 100"
OUTCOMES_PACKED = "activity: an outcome, packed 100 to a row (shared/activity.py)"
# Each measured shape and the shape it replaced.
WRITE_SHAPES = ((INSERT_NO_ECHO, INSERT_ECHOED), (OUTCOMES_PACKED, OUTCOMES_IN_TRANSACTION))
OUTCOMES_PER_WRITE = 100


@dataclass(frozen=True)
class CallCost:
    """One kind of call on one transport."""

    call: str
    transport: str
    calls: int
    cpu_seconds: float
    seconds: float

    @property
    def cpu_per_call(self) -> float:
        """CPU seconds of the bench process per call."""
        return self.cpu_seconds / self.calls


@dataclass(frozen=True)
class StorageCallsResult:
    """Every call kind on every transport."""

    costs: list[CallCost]
    # CPU per insert or per outcome, each shape of WRITE_SHAPES, on the gateway's transport.
    shapes: list[CallCost] = field(default_factory=list)

    def shape(self, name: str) -> CallCost | None:
        """The figure for one write shape, if measured."""
        return next((c for c in self.shapes if c.call == name), None)

    def cost(self, call: str, transport: str) -> CallCost | None:
        """The figure for one call kind and transport, if measured."""
        return next((c for c in self.costs if (c.call, c.transport) == (call, transport)), None)


class ReplayTransport(HttpTransport[HttpRequest, HttpResponse]):
    """Answers every request with a copy of one recorded answer: no socket, no parsing of
    HTTP, so that what a call still costs is the SDK's pipeline."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self._status, self._headers, self._body = status, headers, body

    def __enter__(self) -> ReplayTransport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def open(self) -> None:
        """Nothing to open."""

    def close(self) -> None:
        """Nothing to close."""

    def send(self, request: HttpRequest, **kwargs: Any) -> HttpResponse:
        """The recorded answer, for this request."""
        response = _Replayed(
            request=request,
            internal_response=None,
            status_code=self._status,
            reason="OK",
            headers=case_insensitive_dict(self._headers),
            content_type=case_insensitive_dict(self._headers).get("Content-Type"),
            stream_download_generator=None,
        )
        response._content = self._body
        response._is_stream_consumed = True
        return response


class _Replayed(HttpResponseImpl):
    """A recorded answer: read already, with no connection to release."""

    def close(self) -> None:
        """Nothing to release."""
        self._is_closed = True


class RecordingTransport(StorageTransport):
    """The gateway's transport, keeping the last answer it received."""

    last: tuple[int, dict[str, str], bytes] | None = None

    def send(self, request: HttpRequest, **kwargs: Any) -> HttpResponse:
        """Send, and keep the answer."""
        response = super().send(request, **kwargs)
        self.last = (response.status_code, dict(response.headers), response.content)
        return response


def run_storage_calls(azurite: Azurite, calls: int) -> StorageCallsResult:
    """Each call kind `calls` times (after a warm-up) on each transport."""
    connection = azurite.connection_string
    suffix = uuid.uuid4().hex[:8]
    queue_name, table_name = f"bench-calls-{suffix}", f"benchcalls{suffix}"
    envelope = typical_envelope().to_json()
    with TableServiceClient.from_connection_string(connection) as service:
        service.create_table(table_name)
    recorder = RecordingTransport()
    answers = {
        call: _record(connection, queue_name, table_name, call, recorder, envelope)
        for call in CALLS
    }
    costs = []
    for transport_name in TRANSPORTS:
        for call in CALLS:
            transport: HttpTransport[Any, Any] = (
                ReplayTransport(*answers[call])
                if transport_name == REPLAY
                else StorageTransport()
                if transport_name == GATEWAY
                else RequestsTransport()
            )
            operation = _operation(connection, queue_name, table_name, call, transport)
            for _ in range(WARMUP_CALLS):
                next(operation)(envelope)
            cpu = process_cpu_seconds(os.getpid(), descendants=False)
            wall = time.perf_counter()
            for _ in range(calls):
                next(operation)(envelope)
            cpu = process_cpu_seconds(os.getpid(), descendants=False) - cpu
            wall = time.perf_counter() - wall
            costs.append(CallCost(call, transport_name, calls, cpu, wall))
            operation.close()  # closes the client, and with it the transport's connections
    return StorageCallsResult(costs, _write_shapes(connection, table_name, calls))


def _write_shapes(connection: str, table_name: str, calls: int) -> list[CallCost]:
    """Each write shape `calls` times (inserts, or outcomes), after a warm-up."""
    now = datetime.now(timezone.utc)
    shapes = []
    with TableClient.from_connection_string(
        connection, table_name, transport=StorageTransport()
    ) as table:
        log = ActivityLog(table, flush_seconds=3600)  # written by flush() alone

        def insert(options: dict[str, Any]) -> Callable[[], int]:
            def write() -> int:
                # The fields of the `queued` record an accept writes (shared/status.py).
                record = {
                    "PartitionKey": str(uuid.uuid4()),
                    "RowKey": "status",
                    "state": "queued",
                    "accepted_at": now,
                    "updated_at": now,
                    "attempts": 0,
                    "ambiguous": False,
                    "client": "billing",
                }
                table.create_entity(record, **options)
                return 1

            return write

        def outcomes() -> list[ActivityEvent]:
            return [
                ActivityEvent(str(uuid.uuid4()), MessageState.SENT, 1, now)
                for _ in range(OUTCOMES_PER_WRITE)
            ]

        def in_transaction() -> int:
            rows = [_activity_row(event) for event in outcomes()]
            table.submit_transaction(
                [("upsert", row, {"mode": UpdateMode.REPLACE}) for row in rows]
            )
            return len(rows)

        def packed() -> int:
            for event in outcomes():
                log.record(event)
            log.flush()
            return OUTCOMES_PER_WRITE

        writes = {
            INSERT_ECHOED: insert({}),
            INSERT_NO_ECHO: insert(NO_ECHO),
            OUTCOMES_IN_TRANSACTION: in_transaction,
            OUTCOMES_PACKED: packed,
        }
        for name, write in writes.items():
            warmed = 0
            while warmed < WARMUP_CALLS:  # inserts, or outcomes
                warmed += write()
            done = 0
            cpu = process_cpu_seconds(os.getpid(), descendants=False)
            wall = time.perf_counter()
            while done < calls:
                done += write()
            cpu = process_cpu_seconds(os.getpid(), descendants=False) - cpu
            shapes.append(CallCost(name, GATEWAY, done, cpu, time.perf_counter() - wall))
        log.close()
    return shapes


def _activity_row(event: ActivityEvent) -> dict[str, Any]:
    # A row as the activity log wrote each outcome before rows were packed.
    return {
        "PartitionKey": partition_of(event.at),
        "RowKey": f"{event.message_id}-{event.attempt:04d}-{event.state.value}",
        "message_id": event.message_id,
        "state": event.state.value,
        "attempt": event.attempt,
        "at": event.at,
    }


def _record(
    connection: str,
    queue_name: str,
    table_name: str,
    call: str,
    recorder: RecordingTransport,
    envelope: str,
) -> tuple[int, dict[str, str], bytes]:
    operation = _operation(connection, queue_name, table_name, call, recorder)
    next(operation)(envelope)
    operation.close()
    assert recorder.last is not None
    return recorder.last


def _operation(
    connection: str,
    queue_name: str,
    table_name: str,
    call: str,
    transport: HttpTransport[Any, Any],
) -> Generator[Callable[[str], object], None, None]:
    """Endlessly, the next call of one kind, as the gateway makes it, on one client."""
    if call == CALLS[0]:
        encode = TextBase64EncodePolicy()
        with QueueClient.from_connection_string(
            connection, queue_name, transport=transport, message_encode_policy=encode
        ) as queue:
            if not isinstance(transport, ReplayTransport):
                with contextlib.suppress(ResourceExistsError):
                    queue.create_queue()
            while True:
                yield lambda text: queue.send_message(text, time_to_live=-1)
    with TableClient.from_connection_string(connection, table_name, transport=transport) as table:
        key = {"PartitionKey": "bench", "RowKey": "message"}
        if not isinstance(transport, ReplayTransport):
            table.upsert_entity({**key, "State": "queued"})
        if call == CALLS[1]:
            replayed = isinstance(transport, ReplayTransport)
            etag = 'W/"replayed"' if replayed else table.get_entity(**_keys(key)).metadata["etag"]

            def replace(_: str) -> object:
                nonlocal etag
                answer = table.update_entity(
                    {**key, "State": "sending", "Attempts": 1},
                    mode=UpdateMode.REPLACE,
                    etag=etag,
                    match_condition=MatchConditions.IfNotModified,
                )
                if not replayed:
                    etag = answer["etag"]
                return answer

            while True:
                yield replace
        while True:
            yield lambda _: table.get_entity(**_keys(key))


def _keys(key: dict[str, str]) -> dict[str, str]:
    return {"partition_key": key["PartitionKey"], "row_key": key["RowKey"]}
