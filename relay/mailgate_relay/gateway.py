"""mailgate's HTTP API as the relay calls it: a key check and a submission, and the SMTP reply
each outcome earns.

The replies keep the sending MTA's own queue honest: 250 only after mailgate's 202, a 4xx
(the MTA keeps the mail and tries again) whenever mailgate could take it later, a 5xx (the MTA
bounces it to its sender) only when mailgate said it never will.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from mailgate_relay.convert import one_line

# A successful key check is reused this long for AUTH: a busy MTA authenticates on every
# connection, and each mail's submission checks the key again anyway, so a key rotated or
# disabled meanwhile never sends; it only still authenticates for at most this long.
KEY_CHECK_CACHE_SECONDS = 10.0
KEY_CHECK_CACHE_ENTRIES = 1000
MAX_REPLY_REASON_CHARS = 400
# Accepting a 30 MB message (validation, a blob) takes seconds on the gateway; the front end
# gives a request 230 s.
SUBMIT_TIMEOUT = httpx.Timeout(120.0, connect=5.0)
CHECK_TIMEOUT = httpx.Timeout(15.0, connect=5.0)


class GatewayUnavailable(Exception):
    """mailgate could not be asked (unreachable, timed out, or answered 5xx): try later."""


@dataclass(frozen=True)
class ClientInfo:
    """What mailgate said of a key: its client's name and the largest request it accepts."""

    name: str
    max_request_bytes: int


@dataclass(frozen=True)
class Submitted:
    """mailgate's answer to a submission, as an SMTP reply; `message_id` only when accepted."""

    reply: str
    message_id: str | None = None
    key_refused: bool = False


@dataclass
class _Cached:
    info: ClientInfo
    until: float


@dataclass
class GatewayClient:
    """One pooled HTTP client to mailgate for the whole relay."""

    base_url: str
    transport: httpx.AsyncBaseTransport | None = None
    clock: Callable[[], float] = time.monotonic
    _http: httpx.AsyncClient = field(init=False)
    _checked: OrderedDict[str, _Cached] = field(init=False, default_factory=OrderedDict)

    def __post_init__(self) -> None:
        self._http = httpx.AsyncClient(
            base_url=self.base_url.rstrip("/"),
            transport=self.transport,
            limits=httpx.Limits(max_connections=50, max_keepalive_connections=10),
            headers={"User-Agent": "mailgate-relay"},
        )

    async def close(self) -> None:
        """Close the pooled connections."""
        await self._http.aclose()

    async def check_key(self, key: str) -> ClientInfo | None:
        """The key's client, or None for a key mailgate refuses; GatewayUnavailable when it
        cannot be asked. A success is reused for KEY_CHECK_CACHE_SECONDS."""
        digest = _digest(key)
        cached = self._checked.get(digest)
        if cached is not None and cached.until > self.clock():
            return cached.info
        try:
            response = await self._http.get(
                "/api/v1/client", headers=_bearer(key), timeout=CHECK_TIMEOUT
            )
        except httpx.HTTPError as error:
            raise GatewayUnavailable(
                f"mailgate cannot be reached ({type(error).__name__})"
            ) from None
        if response.status_code == 401:
            self._checked.pop(digest, None)
            return None
        if response.status_code != 200:
            raise GatewayUnavailable(f"mailgate answered {response.status_code}")
        try:
            document = response.json()
            info = ClientInfo(str(document["name"]), int(document["max_request_bytes"]))
        except (ValueError, KeyError, TypeError):
            raise GatewayUnavailable("mailgate's answer could not be read") from None
        self._checked[digest] = _Cached(info, self.clock() + KEY_CHECK_CACHE_SECONDS)
        self._checked.move_to_end(digest)
        while len(self._checked) > KEY_CHECK_CACHE_ENTRIES:
            self._checked.popitem(last=False)
        return info

    async def submit(self, body: bytes, key: str, idempotency_key: str | None) -> Submitted:
        """POST the message to mailgate; the SMTP reply its answer earns."""
        headers = {**_bearer(key), "Content-Type": "application/json"}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        try:
            response = await self._http.post(
                "/api/v1/messages", content=body, headers=headers, timeout=SUBMIT_TIMEOUT
            )
        except httpx.HTTPError as error:
            # A timeout after the body went out is ambiguous: mailgate may have it. The MTA
            # sends again, with the same Idempotency-Key when the message has a Message-ID.
            return Submitted(
                f"451 4.4.1 mailgate cannot be reached ({type(error).__name__}); try again later"
            )
        submitted = reply_for(response.status_code, response.content)
        if submitted.key_refused:
            self._checked.pop(_digest(key), None)
        return submitted


def reply_for(status: int, content: bytes) -> Submitted:
    """The SMTP reply for mailgate's answer to `POST /api/v1/messages`."""
    document = _json(content)
    if status == 202:
        message_id = str(document.get("id", ""))
        return Submitted(f"250 2.0.0 Queued as {one_line(message_id, 64)}", message_id)
    reason = _reason(document) or f"mailgate answered {status}"
    if status == 401:
        # The key stopped working after AUTH (rotated, disabled): the MTA keeps the mail.
        return Submitted(f"451 4.7.0 the client key was refused: {reason}", key_refused=True)
    if status in (409, 429) or status >= 500:
        return Submitted(f"451 4.3.0 mailgate cannot take it now: {reason}; try again later")
    if status == 413:
        return Submitted(f"552 5.3.4 too large for mailgate: {reason}")
    if status == 403:
        if _points_at(document, "#/from"):
            return Submitted(f"553 5.7.1 sender not allowed: {reason}")
        return Submitted(f"550 5.7.1 not allowed: {reason}")
    return Submitted(f"554 5.6.0 refused by mailgate: {reason}")


def _json(content: bytes) -> dict[str, Any]:
    try:
        document = json.loads(content)
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}


def _points_at(document: dict[str, Any], prefix: str) -> bool:
    errors = document.get("errors")
    return isinstance(errors, list) and any(
        isinstance(e, dict) and str(e.get("pointer", "")).startswith(prefix) for e in errors
    )


def _reason(document: dict[str, Any]) -> str:
    """mailgate's problem+json on one line: its detail, then each field and what is wrong."""
    parts = [str(document.get("detail", ""))]
    errors = document.get("errors")
    if isinstance(errors, list):
        for error in errors[:5]:
            if isinstance(error, dict):
                parts.append(f"{error.get('pointer', '')} {error.get('detail', '')}")
    return one_line("; ".join(p for p in parts if p.strip()), MAX_REPLY_REASON_CHARS)


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()
