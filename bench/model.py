"""Execution model: `def` on a thread pool against `async def` on one event loop, on delivery's I/O.

Each message does what a first delivery attempt does with the network: (1) insert its status
record as `sending` (the claim: the accept writes no record, shared/delivery.py), (2) POST a
typical SendGrid payload to the stand-in, which answers 202 after L ms, (3) upsert the record
as `sent`. At most C messages are in flight, C as the host reads it from host.json, a new task
started for each message as a slot frees, as the host dispatches invocations. Three variants,
one after the other, each on an empty table of its own:

- `def`, thread pool (gateway): a 32-thread `ThreadPoolExecutor` (as infra/ deploys
  PYTHON_THREADPOOL_THREAD_COUNT), the SDK's `TableClient` on the gateway's storage transport
  (shared/storage_transport.py) and a pooled `httpx.Client`.
- `def`, thread pool, Azure SDK: the same with azure-core's default transport
  (`RequestsTransport`): what the gateway's transport buys.
- `async def`: C tasks on one `asyncio` loop, the SDK's `azure.data.tables.aio.TableClient` and
  an `httpx.AsyncClient`. The aio client's transport is aiohttp's when aiohttp is installed;
  otherwise azure-core's `AsyncioRequestsTransport`, which runs `requests` in the loop's
  executor (sized to C threads here), so its storage calls still go through threads.

Both httpx clients are configured as `SendGridClient`'s (pool of 64, no proxies from the
environment); the payloads are built beforehand, so the variants differ only in how they wait.
Measured per variant: messages per second, and the bench process's CPU (every thread) per message.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

import httpx
import requests
from azure.core.pipeline.transport import AsyncioRequestsTransport
from azure.data.tables import TableClient, TableServiceClient, UpdateMode
from azure.data.tables.aio import TableClient as AsyncTableClient

from bench.delivery import in_flight_ceiling
from bench.load import process_cpu_seconds
from bench.mail import typical_envelope
from bench.storage import fresh_storage
from devstack.azurite import Azurite
from devstack.sendgrid_standin import SendGridStandIn
from shared.queue import storage_transport
from shared.sendgrid_client import MAIL_SEND_PATH, build_payload
from shared.status import STATUS_ROW, MessageState
from shared.storage_transport import POOL_SIZE

GATEWAY = "def, thread pool (gateway)"
SDK = "def, thread pool, Azure SDK"
ASYNC = "async def, aio SDK + httpx.AsyncClient"
VARIANTS = (GATEWAY, SDK, ASYNC)
# What infra/ and local.settings.example.json set PYTHON_THREADPOOL_THREAD_COUNT to.
THREAD_POOL_SIZE = 32
CLIENT = "bench-model"

T = TypeVar("T")


@dataclass(frozen=True)
class Message:
    """One message to deliver: its id (the record's partition key) and its SendGrid payload."""

    id: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class ModelRun:
    """One variant's measured window."""

    variant: str
    table: str
    messages: int
    seconds: float
    cpu_seconds: float

    @property
    def per_second(self) -> float:
        """Messages delivered per second."""
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_per_message(self) -> float | None:
        """CPU seconds of the bench process (all its threads) per message."""
        return self.cpu_seconds / self.messages if self.messages else None


@dataclass(frozen=True)
class ModelComparison:
    """The variants, run against the same stand-in latency and in-flight cap."""

    latency_ms: int
    in_flight: int
    async_transport: str
    runs: tuple[ModelRun, ...]

    @property
    def ceiling(self) -> float:
        """C ÷ L in messages per second."""
        return self.in_flight / (self.latency_ms / 1000) if self.latency_ms > 0 else 0.0

    def run(self, variant: str) -> ModelRun | None:
        """The run of one variant, if it was measured."""
        return next((run for run in self.runs if run.variant == variant), None)


# ---- the in-flight cap -------------------------------------------------------------------------


def run_capped(pool: Executor, work: Callable[[T], object], items: Iterable[T], limit: int) -> int:
    """Run `work(item)` on the pool for each item, starting one as soon as fewer than `limit`
    are in flight; stop starting new ones after a failure and re-raise it. Returns how many ran."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    slots = threading.BoundedSemaphore(limit)
    failed = threading.Event()
    futures: list[Future[object]] = []

    def done(future: Future[object]) -> None:
        if future.exception() is not None:
            failed.set()
        slots.release()

    for item in items:
        slots.acquire()
        if failed.is_set():
            slots.release()
            break
        future = pool.submit(work, item)
        future.add_done_callback(done)
        futures.append(future)
    for future in futures:
        future.result()
    return len(futures)


async def gather_capped(
    work: Callable[[T], Awaitable[object]], items: Iterable[T], limit: int
) -> int:
    """The same on the running event loop: a task per item, at most `limit` unfinished at a time;
    re-raise the first failure. Returns how many ran."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    slots = asyncio.Semaphore(limit)
    tasks: list[asyncio.Task[object]] = []
    failed = False

    async def run(item: T) -> object:
        nonlocal failed
        try:
            return await work(item)
        except BaseException:
            failed = True
            raise
        finally:
            slots.release()

    for item in items:
        await slots.acquire()
        if failed:
            slots.release()
            break
        tasks.append(asyncio.create_task(run(item)))
    await asyncio.gather(*tasks)
    return len(tasks)


# ---- one message -------------------------------------------------------------------------------


def status_entity(message_id: str, state: MessageState, now: datetime) -> dict[str, Any]:
    """A status record as the gateway stores it (its usual fields; datetimes as Edm.DateTime)."""
    return {
        "PartitionKey": message_id,
        "RowKey": STATUS_ROW,
        "state": state.value,
        "accepted_at": now,
        "updated_at": now,
        "attempts": 0 if state is MessageState.QUEUED else 1,
        "client": CLIENT,
    }


def _sent(message_id: str, response: httpx.Response) -> dict[str, Any]:
    if response.status_code != 202:
        raise RuntimeError(f"the stand-in answered {response.status_code} for {message_id}")
    entity = status_entity(message_id, MessageState.SENT, datetime.now(timezone.utc))
    entity["provider_message_id"] = response.headers.get("X-Message-Id", "")
    return entity


def deliver(table: TableClient, http: httpx.Client, message: Message) -> None:
    """Claim, send, record `sent`: the delivery's three network calls, blocking."""
    table.create_entity(status_entity(message.id, MessageState.SENDING, datetime.now(timezone.utc)))
    response = http.post(MAIL_SEND_PATH, json=message.payload)
    table.upsert_entity(_sent(message.id, response), mode=UpdateMode.REPLACE)


async def deliver_async(table: AsyncTableClient, http: httpx.AsyncClient, message: Message) -> None:
    """The same three calls, awaited."""
    await table.create_entity(
        status_entity(message.id, MessageState.SENDING, datetime.now(timezone.utc))
    )
    response = await http.post(MAIL_SEND_PATH, json=message.payload)
    await table.upsert_entity(_sent(message.id, response), mode=UpdateMode.REPLACE)


# ---- the variants ------------------------------------------------------------------------------


def http_options(standin: SendGridStandIn) -> dict[str, Any]:
    """httpx options as `SendGridClient` sets them, for the sync and the async client alike."""
    return {
        "base_url": standin.base_url,
        "headers": {"Authorization": f"Bearer {standin.api_key}", "User-Agent": "mailgate"},
        "timeout": httpx.Timeout(30.0, connect=5.0),
        "limits": httpx.Limits(max_connections=64, max_keepalive_connections=64),
        "trust_env": False,
    }


def async_transport_name() -> str:
    """The transport the aio tables client gets: aiohttp's if installed, else requests'."""
    if importlib.util.find_spec("aiohttp") is not None:
        return "AioHttpTransport"
    return "AsyncioRequestsTransport"


def _async_table(connection_string: str, table: str) -> AsyncTableClient:
    """The aio tables client; on the requests transport, pooled as the gateway's storage is."""
    if async_transport_name() == "AioHttpTransport":
        return AsyncTableClient.from_connection_string(connection_string, table)
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=POOL_SIZE, pool_maxsize=POOL_SIZE)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    transport = AsyncioRequestsTransport(
        session=session,
        session_owner=True,
        use_env_settings=False,
        connection_timeout=5,
        read_timeout=20,
    )
    return AsyncTableClient.from_connection_string(connection_string, table, transport=transport)


def _measure(run: Callable[[], int]) -> tuple[int, float, float]:
    """Messages run, wall seconds and the bench process's CPU seconds of `run()`."""
    pid = os.getpid()
    cpu_before = process_cpu_seconds(pid, descendants=False)
    started = time.perf_counter()
    done = run()
    seconds = time.perf_counter() - started
    return done, seconds, process_cpu_seconds(pid, descendants=False) - cpu_before


def run_threaded(
    table: TableClient,
    standin: SendGridStandIn,
    warmup: Sequence[Message],
    measured: Sequence[Message],
    in_flight: int,
) -> tuple[int, float, float]:
    """The `def` model: each message a task on the 32-thread pool, C in flight."""
    with (
        httpx.Client(**http_options(standin)) as http,
        ThreadPoolExecutor(THREAD_POOL_SIZE, thread_name_prefix="model") as pool,
    ):

        def work(message: Message) -> None:
            deliver(table, http, message)

        run_capped(pool, work, warmup, in_flight)
        return _measure(lambda: run_capped(pool, work, measured, in_flight))


def run_async(
    connection_string: str,
    table: str,
    standin: SendGridStandIn,
    warmup: Sequence[Message],
    measured: Sequence[Message],
    in_flight: int,
) -> tuple[int, float, float]:
    """The `async def` model: each message a task on one event loop, C in flight."""

    async def main() -> tuple[int, float, float]:
        # The requests transport runs each call in the loop's default executor.
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(in_flight, thread_name_prefix="model-aio")
        )
        async with (
            _async_table(connection_string, table) as client,
            httpx.AsyncClient(**http_options(standin)) as http,
        ):

            async def work(message: Message) -> None:
                await deliver_async(client, http, message)

            await gather_capped(work, warmup, in_flight)
            pid = os.getpid()
            cpu_before = process_cpu_seconds(pid, descendants=False)
            started = time.perf_counter()
            done = await gather_capped(work, measured, in_flight)
            seconds = time.perf_counter() - started
            return done, seconds, process_cpu_seconds(pid, descendants=False) - cpu_before

    return asyncio.run(main())


# ---- the scenario ------------------------------------------------------------------------------


def table_name(variant: str) -> str:
    """A fresh table name for a variant: letters and digits, starting with a letter."""
    key = {GATEWAY: "gateway", SDK: "sdk", ASYNC: "async"}[variant]
    return f"model{key}{uuid.uuid4().hex[:8]}"


def make_messages(count: int) -> list[Message]:
    """`count` typical mails with their ids and payloads, built once for every variant."""
    messages = []
    for number in range(count):
        envelope = typical_envelope(number)
        messages.append(Message(envelope.id, build_payload(envelope)))
    return messages


def create_table(connection_string: str, table: str) -> None:
    """Create `table`, empty: the claims insert the records."""
    with TableServiceClient.from_connection_string(connection_string) as service:
        service.create_table(table)


def run_variant(
    variant: str,
    *,
    azurite: Azurite,
    standin: SendGridStandIn,
    messages: Sequence[Message],
    warmup: int,
    in_flight: int,
) -> ModelRun:
    """On a fresh table, deliver `warmup` messages unmeasured, then the rest."""
    connection_string = azurite.connection_string
    table = table_name(variant)
    create_table(connection_string, table)
    first, rest = messages[:warmup], messages[warmup:]
    if variant == ASYNC:
        done, seconds, cpu = run_async(connection_string, table, standin, first, rest, in_flight)
    else:
        client = (
            TableClient.from_connection_string(
                connection_string, table, transport=storage_transport()
            )
            if variant == GATEWAY
            else TableClient.from_connection_string(connection_string, table)
        )
        with client:
            done, seconds, cpu = run_threaded(client, standin, first, rest, in_flight)
    return ModelRun(variant, table, done, seconds, cpu)


def run_model(
    *,
    azurite: Azurite,
    standin: SendGridStandIn,
    messages: int,
    latency_ms: int,
    warmup: int | None = None,
    in_flight: int | None = None,
    variants: Sequence[str] = VARIANTS,
) -> ModelComparison:
    """On a freshly restarted Azurite, run each variant over `messages` measured messages
    (plus `warmup`, C by default, before the window) against the stand-in answering after L."""
    cap = in_flight or in_flight_ceiling()
    extra = cap if warmup is None else warmup
    fresh_storage(azurite)
    standin.reset()
    standin.set_latency(latency_ms)
    mails = make_messages(messages + extra)
    try:
        runs = tuple(
            run_variant(
                variant,
                azurite=azurite,
                standin=standin,
                messages=mails,
                warmup=extra,
                in_flight=cap,
            )
            for variant in variants
        )
    finally:
        standin.set_latency(0)
    return ModelComparison(latency_ms, cap, async_transport_name(), runs)
