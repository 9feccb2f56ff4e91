"""Delivery path: drain queued messages through the real app, against the ceiling C ÷ L.

The messages are put on the queue before the host starts, as submission queues them (with no
status record: each first attempt inserts one), through the gateway's own `MailQueue`, and the
status table is made ready through its `StatusStore`. The stand-in answers
every send after L ms; C, the invocations in flight that host.json permits (batchSize +
newBatchThreshold), is read with the local host's own parser. Progress is the stand-in's outbox
(one `.json` per accepted mail), read every 100 ms together with the host's RSS.

The baseline for CPU per message is a minimal consumer in the bench process: receive (32 per
call), `json.loads` the body, one pooled httpx POST of a prebuilt payload, delete.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

from bench.load import CpuMeter, process_cpu_seconds
from bench.mail import typical_envelope
from bench.profiling import Profiler
from bench.stack import REPO
from bench.storage import StallWatch, fresh_storage
from devstack.azurite import Azurite
from devstack.host import read_host_json
from devstack.host_process import LocalHostProcess
from devstack.host_queue import QueueOptions
from devstack.sendgrid_standin import SendGridStandIn
from shared.queue import MailQueue
from shared.sendgrid_client import MAIL_SEND_PATH, build_payload
from shared.settings import Settings
from shared.status import StatusStore

FILL_THREADS = 16
SAMPLE_SECONDS = 0.1
RSS_CHECKPOINT_EVERY = 500
BASELINE_QUEUE = "drain-baseline"


def in_flight_ceiling(app_dir: Path = REPO) -> int:
    """C: batchSize + newBatchThreshold, as the local host reads them from host.json."""
    options = QueueOptions.from_host_json(read_host_json(app_dir), os.cpu_count() or 1)
    return options.batch_size + options.new_batch_threshold


def peak_rss(pid: int) -> int | None:
    """The process's peak resident set (VmHWM) in bytes, or None where /proc lacks it."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def rss(pid: int) -> int:
    """The process's resident set now, in bytes."""
    return int(psutil.Process(pid).memory_info().rss)


def count_outbox(outbox: Path) -> int:
    """Accepted mails in the stand-in's outbox (its `.json` is written last)."""
    try:
        return sum(1 for entry in os.scandir(outbox) if entry.name.endswith(".json"))
    except FileNotFoundError:
        return 0


@dataclass
class DrainResult:
    """What one drain measured."""

    messages: int
    latency_ms: int
    in_flight: int
    sent: int = 0
    first_to_last_seconds: float = 0.0
    ready_to_done_seconds: float = 0.0
    timed_out: bool = False
    cpu: dict[str, float] = field(default_factory=dict)
    rss_at: dict[int, int] = field(default_factory=dict)
    peak_rss: int = 0
    storage_stall: float = 0.0

    @property
    def ceiling(self) -> float:
        """C ÷ L in messages per second."""
        return self.in_flight / (self.latency_ms / 1000)

    @property
    def rate(self) -> float:
        """Steady drain rate: sends between the first and the last accepted one, per second."""
        if self.sent < 2 or self.first_to_last_seconds <= 0:
            return 0.0
        return (self.sent - 1) / self.first_to_last_seconds

    def cpu_per_message(self, name: str) -> float | None:
        """CPU seconds of one process per sent message."""
        return self.cpu[name] / self.sent if self.sent and name in self.cpu else None


def fill_gateway_queue(settings: dict[str, str], count: int) -> None:
    """Queue `count` typical envelopes, as submission does (no status record: delivery's first
    attempt inserts it)."""
    gateway_settings = Settings.from_env(settings)
    queue = MailQueue.from_settings(gateway_settings)
    statuses = StatusStore.from_settings(gateway_settings)
    queue.ensure_exists()
    statuses.ensure_exists()

    def put(number: int) -> None:
        queue.enqueue(typical_envelope(number))

    with ThreadPoolExecutor(FILL_THREADS) as pool:
        list(pool.map(put, range(count)))


def run_drain(
    *,
    settings: dict[str, str],
    standin: SendGridStandIn,
    azurite: Azurite,
    messages: int,
    latency_ms: int,
    timeout: float,
    log_dir: Path,
    profiler: Profiler | None = None,
) -> DrainResult:
    """On a fresh Azurite, fill the queue, start the full app and time the drain."""
    result = DrainResult(messages, latency_ms, in_flight_ceiling())
    fresh_storage(azurite)
    fill_gateway_queue(settings, messages)
    standin.reset()
    standin.set_latency(latency_ms)
    already = count_outbox(standin.outbox)
    host = LocalHostProcess(settings, log_dir)
    try:
        pid = host.pid
        meter = CpuMeter({"host": pid, "azurite": azurite.pid or 0, "standin": standin.pid or 0})
        meter.start()
        watch = StallWatch(azurite.connection_string)
        watch.start()
        profile = profiler.session("delivery-drain", pid) if profiler else None
        if profile is not None:
            profile.start()
        started = time.monotonic()
        next_checkpoint = RSS_CHECKPOINT_EVERY
        peak_seen = 0
        while True:
            sent = count_outbox(standin.outbox) - already
            current = rss(pid)
            peak_seen = max(peak_seen, current)
            while sent >= next_checkpoint and next_checkpoint <= messages:
                result.rss_at[next_checkpoint] = current
                next_checkpoint += RSS_CHECKPOINT_EVERY
            if sent >= messages:
                break
            if time.monotonic() - started > timeout:
                result.timed_out = True
                break
            time.sleep(SAMPLE_SECONDS)
        result.ready_to_done_seconds = time.monotonic() - started
        result.cpu = meter.stop()
        watch.stop()
        result.storage_stall = watch.worst
        if profile is not None:
            profile.stop()
        result.peak_rss = peak_rss(pid) or peak_seen
    finally:
        host.stop()
    accepted = [r["at"] for r in standin.requests() if r.get("status") == 202]
    result.sent = len(accepted)
    if len(accepted) >= 2:
        result.first_to_last_seconds = max(accepted) - min(accepted)
    standin.set_latency(0)
    return result


@dataclass(frozen=True)
class ConsumerBaseline:
    """The minimal consumer's work: messages handled and the bench process's CPU for them."""

    messages: int
    seconds: float
    cpu_seconds: float

    @property
    def cpu_per_message(self) -> float:
        """CPU seconds per message."""
        return self.cpu_seconds / self.messages if self.messages else 0.0


def run_minimal_consumer(
    *, azurite: Azurite, standin: SendGridStandIn, messages: int
) -> ConsumerBaseline:
    """Receive, decode, POST and delete `messages` envelopes with the raw SDKs, one at a time."""
    fresh_storage(azurite)
    connection_string = azurite.connection_string
    text = typical_envelope().to_json()
    payload = build_payload(typical_envelope())
    producer = QueueClient.from_connection_string(
        connection_string, BASELINE_QUEUE, message_encode_policy=TextBase64EncodePolicy()
    )
    consumer = QueueClient.from_connection_string(
        connection_string, BASELINE_QUEUE, message_decode_policy=TextBase64DecodePolicy()
    )
    http = httpx.Client(
        base_url=standin.base_url, headers=standin.auth_headers(), timeout=30, trust_env=False
    )
    with producer, consumer, http:
        producer.create_queue()
        with ThreadPoolExecutor(FILL_THREADS) as pool:
            list(pool.map(lambda _: producer.send_message(text), range(messages)))
        standin.set_latency(0)
        done = 0
        empty_polls = 0
        pid = os.getpid()
        cpu_before = process_cpu_seconds(pid, descendants=False)
        started = time.perf_counter()
        while done < messages and empty_polls < 3:
            page = list(
                next(
                    consumer.receive_messages(
                        messages_per_page=32, visibility_timeout=600
                    ).by_page(),
                    [],
                )
            )
            empty_polls = 0 if page else empty_polls + 1
            for message in page:
                json.loads(message.content)
                response = http.post(MAIL_SEND_PATH, json=payload)
                if response.status_code != 202:
                    raise RuntimeError(f"the stand-in answered {response.status_code}")
                consumer.delete_message(message)
                done += 1
        seconds = time.perf_counter() - started
        cpu = process_cpu_seconds(pid, descendants=False) - cpu_before
        producer.delete_queue()
    return ConsumerBaseline(done, seconds, cpu)
