"""Large messages: the worker's peak memory while it delivers many 30 MB messages at once.

24 claim-checked messages of about 29 MB (a 22 MB attachment, base64) are queued, as the
accept leaves them (body in a blob, `queued` status record, envelope naming the blob), before
the host starts; the host then drains them to the stand-in, up to 24 at once (host.json's
batchSize + newBatchThreshold). The host's RSS is sampled every 20 ms, and its peak (VmHWM)
read at the end, once with LARGE_MESSAGES_AT_ONCE at its default and once with it above 24,
which is how every delivery ran before the bound. The idle RSS of the same host on an empty
queue is the floor both are measured from.

In Azure the Functions host is a separate process on the same instance; the worker's share of
a 2,048 MB instance is taken as 1,536 MB (INSTANCE_WORKER_MIB).
"""

from __future__ import annotations

import base64
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from bench.delivery import count_outbox, peak_rss, rss
from bench.storage import fresh_storage
from devstack.azurite import Azurite
from devstack.host_process import LocalHostProcess
from devstack.sendgrid_standin import SendGridStandIn
from shared.blobs import MessageBodyStore, body_blob_name
from shared.models import MailRequest, QueueEnvelope
from shared.queue import MailQueue
from shared.settings import Settings
from shared.status import StatusStore

ATTACHMENT_BYTES = 22_000_000  # 29.3 MB once base64: just under SendGrid's 30 MB
SAMPLE_SECONDS = 0.02
MIB = 2**20
# What a 2,048 MB Flex instance leaves the Python worker beside the Functions host.
INSTANCE_WORKER_MIB = 1536
UNBOUNDED = 100


@dataclass(frozen=True)
class LargeRun:
    """One drain of large messages: how long it took and the worker's peak RSS."""

    at_once: int
    messages: int
    sent: int
    seconds: float
    peak_rss: int
    timed_out: bool


@dataclass(frozen=True)
class LargeResult:
    """The bounded and the unbounded drain, and the idle floor."""

    idle_rss: int
    bounded: LargeRun
    unbounded: LargeRun

    def per_message_mib(self) -> float:
        """Memory one large delivery took, from the unbounded run: peak over idle ÷ in flight."""
        in_flight = min(self.unbounded.messages, 24)
        return (self.unbounded.peak_rss - self.idle_rss) / in_flight / MIB


def fill_large(
    settings: dict[str, str], count: int, attachment_bytes: int = ATTACHMENT_BYTES
) -> None:
    """Queue `count` claim-checked messages of ~29 MB, as the accept leaves them."""
    parsed = Settings.from_env(settings)
    queue = MailQueue.from_settings(parsed)
    statuses = StatusStore.from_settings(parsed)
    bodies = MessageBodyStore.from_settings(parsed)
    queue.ensure_exists()
    statuses.ensure_exists()
    bodies.ensure_exists()
    content = base64.b64encode(os.urandom(attachment_bytes)).decode()
    request = MailRequest.model_validate(
        {
            "from": "Reports <reports@example.com>",
            "to": ["someone@example.org"],
            "subject": "The large report",
            "text": "Attached.",
            "attachments": [
                {
                    "filename": "report.bin",
                    "content": content,
                    "content_type": "application/octet-stream",
                }
            ],
        }
    )
    for _ in range(count):
        message_id = str(uuid.uuid4())
        full = QueueEnvelope(
            id=message_id, accepted_at=datetime.now(timezone.utc), client="bench", message=request
        )
        envelope, body = full.claim_checked(body_blob_name(message_id))
        bodies.put(body_blob_name(message_id), body.to_json())
        queue.enqueue(envelope)


def idle_rss(settings: dict[str, str], log_dir: Path) -> int:
    """The host's RSS on an empty queue, a second after it is ready."""
    host = LocalHostProcess(settings, log_dir, log_name="large-idle")
    try:
        time.sleep(1.0)
        return rss(host.pid)
    finally:
        host.stop()


def drain_large(
    *,
    settings: dict[str, str],
    azurite: Azurite,
    standin: SendGridStandIn,
    messages: int,
    at_once: int,
    timeout: float,
    log_dir: Path,
    attachment_bytes: int = ATTACHMENT_BYTES,
) -> LargeRun:
    """Fill the queue with large messages, start the host and wait until all are sent."""
    fresh_storage(azurite)
    fill_large(settings, messages, attachment_bytes)
    standin.reset()
    already = count_outbox(standin.outbox)
    host = LocalHostProcess(
        {**settings, "LARGE_MESSAGES_AT_ONCE": str(at_once)},
        log_dir,
        log_name=f"large-{at_once}",
    )
    timed_out = False
    try:
        started = time.monotonic()
        peak_seen = 0
        while count_outbox(standin.outbox) - already < messages:
            peak_seen = max(peak_seen, rss(host.pid))
            if time.monotonic() - started > timeout:
                timed_out = True
                break
            time.sleep(SAMPLE_SECONDS)
        seconds = time.monotonic() - started
        peak = peak_rss(host.pid) or peak_seen
    finally:
        host.stop()
    sent = count_outbox(standin.outbox) - already
    # 30 MB per mail in the outbox: free the disk before the next run.
    shutil.rmtree(standin.outbox, ignore_errors=True)
    standin.outbox.mkdir(parents=True, exist_ok=True)
    return LargeRun(at_once, messages, sent, seconds, peak, timed_out)


def run_large(
    *,
    settings: dict[str, str],
    azurite: Azurite,
    standin: SendGridStandIn,
    messages: int,
    timeout: float,
    log_dir: Path,
) -> LargeResult:
    """The idle floor, then the drain with the default bound and without one."""
    fresh_storage(azurite)
    floor = idle_rss(settings, log_dir)
    default = Settings.from_env(settings).large_messages_at_once
    bounded, unbounded = (
        drain_large(
            settings=settings,
            azurite=azurite,
            standin=standin,
            messages=messages,
            at_once=at_once,
            timeout=timeout,
            log_dir=log_dir,
        )
        for at_once in (default, UNBOUNDED)
    )
    return LargeResult(floor, bounded, unbounded)
