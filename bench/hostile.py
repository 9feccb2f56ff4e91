"""Hostile bodies: what the worst 30 MB requests cost the host before it refuses them.

Each body is as large as a request may be (MAX_REQUEST_BYTES, 30,000,000 bytes) and built to
cost the most: millions of list items (the issue's 18 s and 1.9 GB), millions of valid
addresses (50 s), millions of empty arrays in template data, an address of 30 MB of spaces
(what the old display-name regex backtracked on), and a body within every bound that makes as
many validation errors as the bounds allow, on both routes.

For each body a fresh host starts (its own process, the full app), answers one small refused
request on the same route (imports, gateway, the client's record: what any earlier request
would have paid), and then gets the body, once. Around that one request the bench reads the
host's CPU time (user + system) and its peak resident set above the resident set just before
(VmHWM, reset through /proc/<pid>/clear_refs; sampled RSS where that cannot be written). The
floor is the same 30 MB sent as text/plain, refused for its media type before it is read: what
receiving it costs any route.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.delivery import peak_rss, rss
from bench.load import process_cpu_seconds
from bench.stack import client_headers
from devstack.host_process import LocalHostProcess
from shared.json_limits import MAX_JSON_VALUES
from shared.models import MAX_ATTACHMENTS, MAX_HEADERS, MAX_RECIPIENTS, MAX_STRING_MAP_MEMBERS
from shared.settings import MAX_REQUEST_BYTES_LIMIT

BODY_BYTES = MAX_REQUEST_BYTES_LIMIT
V1 = "/api/v1/messages"
V3 = "/api/v3/mail/send"
SAMPLE_SECONDS = 0.005
REQUEST_TIMEOUT = 120.0
MIB = 2**20
SENDER = "noreply@example.com"


def _fill(prefix: bytes, item: bytes, suffix: bytes, size: int) -> bytes:
    """prefix + item, item, ... + suffix: as many items as fit in `size` bytes."""
    count = max(1, (size - len(prefix) - len(suffix) + 1) // (len(item) + 1))
    return prefix + b",".join([item] * count) + suffix


def _addresses(prefix: bytes, suffix: bytes, size: int, as_objects: bool) -> bytes:
    """A list of distinct valid addresses filling `size` bytes."""
    parts: list[bytes] = []
    used = len(prefix) + len(suffix)
    index = 0
    while True:
        address = b"%x@e.co" % index
        item = b'{"email": "' + address + b'"}' if as_objects else b'"' + address + b'"'
        if used + len(item) + 1 > size:
            break
        parts.append(item)
        used += len(item) + 1
        index += 1
    return prefix + b",".join(parts) + suffix


def _padding(size: int) -> bytes:
    return b"A" * max(0, size)


def v1_strings(size: int) -> bytes:
    """`to`: one-character strings, as many as fit (7.5 M in 30 MB)."""
    return _fill(b'{"from": "' + SENDER.encode() + b'", "to": [', b'"x"', b"]}", size)


def v1_addresses(size: int) -> bytes:
    """`to`: valid, distinct addresses, as many as fit (2.2 M in 30 MB)."""
    head = b'{"from": "' + SENDER.encode() + b'", "subject": "Hi", "text": "Hi", "to": ['
    return _addresses(head, b"]}", size, as_objects=False)


def v1_empty_arrays(size: int) -> bytes:
    """`template_data`: empty arrays, as many as fit (10 M in 30 MB)."""
    head = b'{"from": "' + SENDER.encode() + b'", "to": ["a@example.net"], "template_id": "d-1", '
    return _fill(head + b'"template_data": {"rows": [', b"[]", b"]}}", size)


def v1_spaces(size: int) -> bytes:
    """`to`: one "address" of spaces, what a backtracking display-name regex chokes on."""
    head = b'{"from": "' + SENDER.encode() + b'", "subject": "Hi", "text": "Hi", "to": ["'
    tail = b'x"]}'
    return head + b" " * (size - len(head) - len(tail)) + tail


def v1_every_bound(size: int) -> bytes:
    """Within every bound, every item wrong: the most validation errors, the most values, and
    the rest of the 30 MB one long text."""
    document: dict[str, object] = {
        "from": SENDER,
        "to": [{"email": "x", "name": 1}] * MAX_RECIPIENTS,
        "subject": 1,
        "headers": {f"X-{i}": i for i in range(MAX_HEADERS)},
        "custom_args": {f"k{i}": i for i in range(MAX_STRING_MAP_MEMBERS)},
        "attachments": [{"filename": 1, "content": "!", "content_type": 1, "disposition": "x"}]
        * MAX_ATTACHMENTS,
        "template_id": "d-1",
        "template_data": {"rows": []},
        "text": "",
    }
    return _within_values(document, ("template_data", "rows"), "text", size)


def v3_personalizations(size: int) -> bytes:
    """`personalizations`: empty objects, as many as fit (10 M in 30 MB)."""
    return _fill(b'{"personalizations": [', b"{}", b"]}", size)


def v3_addresses(size: int) -> bytes:
    """One personalization's `to`: valid, distinct addresses, as many as fit."""
    return _addresses(b'{"personalizations": [{"to": [', b"]}]}", size, as_objects=True)


def v3_empty_arrays(size: int) -> bytes:
    """`dynamic_template_data`: empty arrays, as many as fit."""
    head = b'{"personalizations": [{"to": [{"email": "a@example.net"}], '
    return _fill(head + b'"dynamic_template_data": {"rows": [', b"[]", b"]}}]}", size)


def v3_every_bound(size: int) -> bytes:
    """Within every bound, every item wrong, on the v3 route (see v1_every_bound)."""
    personalization = {
        "to": [{"email": "x", "name": 1}],
        "from": {"email": "x"},
        "subject": 1,
        "headers": {"X": 1},
        "substitutions": {"k": 1},
        "custom_args": {"k": 1},
        "send_at": "x",
        "dynamic_template_data": {"k": 1},
    }
    document: dict[str, object] = {
        "personalizations": [personalization] * MAX_RECIPIENTS,
        "from": {"email": "x"},
        "attachments": [{"content": "!", "filename": 1, "type": 1, "disposition": "x"}]
        * MAX_ATTACHMENTS,
        "custom_args": {f"k{i}": i for i in range(MAX_STRING_MAP_MEMBERS)},
        "sections": {"rows": []},
        "content": [{"type": "text/plain", "value": ""}],
    }
    body = _within_values(document, ("sections", "rows"), None, size)
    # The long text, in the content block's value.
    text = b'"value": ""'
    return body.replace(text, b'"value": "' + _padding(size - len(body)) + b'"', 1)


def _within_values(
    document: dict[str, object], rows: tuple[str, str], text: str | None, size: int
) -> bytes:
    """The document with zeros added at `rows` up to MAX_JSON_VALUES values in all, and the
    field `text` (if any) padded to make `size` bytes."""
    values = _count_values(document)
    holder = document[rows[0]]
    assert isinstance(holder, dict)
    holder[rows[1]] = [0] * (MAX_JSON_VALUES - values - 1)
    if text is not None:
        document[text] = ""
        body = json.dumps(document).encode()
        document[text] = _padding(size - len(body)).decode()
    return json.dumps(document).encode()


def _count_values(value: object) -> int:
    if isinstance(value, list):
        return 1 + sum(_count_values(v) for v in value)
    if isinstance(value, dict):
        return 1 + sum(_count_values(v) for v in value.values())
    return 1


@dataclass(frozen=True)
class HostileBody:
    """A worst-case body, the route it goes to, and what it is."""

    route: str
    name: str
    build: Callable[[int], bytes]


BODIES = (
    HostileBody(V1, "to: 7.5 M one-character strings", v1_strings),
    HostileBody(V1, "to: 2.2 M valid addresses", v1_addresses),
    HostileBody(V1, "template_data: 10 M empty arrays", v1_empty_arrays),
    HostileBody(V1, "to: one address of 30 MB of spaces", v1_spaces),
    HostileBody(V1, "every bound at its limit, every item wrong", v1_every_bound),
    HostileBody(V3, "personalizations: 10 M empty objects", v3_personalizations),
    HostileBody(V3, "one personalization's to: 1.2 M valid addresses", v3_addresses),
    HostileBody(V3, "dynamic_template_data: 10 M empty arrays", v3_empty_arrays),
    HostileBody(V3, "every bound at its limit, every item wrong", v3_every_bound),
)


@dataclass(frozen=True)
class HostileRun:
    """One body sent once to a fresh host: its answer, and what it cost the host."""

    route: str
    name: str
    size: int
    status: int | None
    answer_bytes: int
    cpu_seconds: float
    added_rss: int
    seconds: float

    @property
    def refused(self) -> bool:
        """Whether the host answered with a refusal of the body (4xx)."""
        return self.status is not None and 400 <= self.status < 500


@dataclass(frozen=True)
class HostileResult:
    """Every body's run, and the floor: the same size refused unread (415)."""

    floor: HostileRun
    runs: tuple[HostileRun, ...]


class _PeakSampler:
    """The highest RSS seen every SAMPLE_SECONDS, where VmHWM cannot be reset."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self.peak = rss(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self.peak = max(self.peak, rss(self._pid))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def _reset_peak(pid: int) -> bool:
    """Reset the process's VmHWM to its RSS now (Linux: 5 > clear_refs); False if not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def send_once(
    settings: dict[str, str],
    log_dir: Path,
    route: str,
    name: str,
    content: bytes,
    content_type: str = "application/json",
) -> HostileRun:
    """Start a host, warm it up on the route, send `content` once and measure that request."""
    headers = client_headers(settings)
    host = LocalHostProcess(settings, log_dir, log_name="hostile")
    try:
        warm = host.http.post(route, content=b"{}", headers=headers)
        if warm.status_code >= 500:
            raise RuntimeError(f"the host answered the warm-up with {warm.status_code}")
        time.sleep(0.5)
        before = rss(host.pid)
        exact = _reset_peak(host.pid)
        sampler = None if exact else _PeakSampler(host.pid)
        cpu_before = process_cpu_seconds(host.pid)
        started = time.monotonic()
        status: int | None = None
        answer = b""
        try:
            response = host.http.post(
                route,
                content=content,
                headers={**headers, "Content-Type": content_type},
                timeout=REQUEST_TIMEOUT,
            )
            status, answer = response.status_code, response.content
        except httpx.TimeoutException:
            pass
        seconds = time.monotonic() - started
        cpu = process_cpu_seconds(host.pid) - cpu_before
        peak = (peak_rss(host.pid) or before) if sampler is None else sampler.stop()
    finally:
        host.stop()
    return HostileRun(
        route, name, len(content), status, len(answer), cpu, max(0, peak - before), seconds
    )


def run_hostile(
    *,
    settings: dict[str, str],
    log_dir: Path,
    bodies: tuple[HostileBody, ...] = BODIES,
    size: int = BODY_BYTES,
) -> HostileResult:
    """The floor, then every body, each on a fresh host."""
    floor_content = v1_strings(size)
    floor = send_once(
        settings, log_dir, V1, "refused unread (text/plain)", floor_content, "text/plain"
    )
    del floor_content
    runs = []
    for body in bodies:
        content = body.build(size)
        runs.append(send_once(settings, log_dir, body.route, body.name, content))
        del content
    return HostileResult(floor, tuple(runs))
