"""The stand-in server: its state, the mail-send endpoint, the control API and ``serve``.

The mail-send endpoint is raw ASGI, and ``serve`` runs uvicorn with an h11 protocol that
records each connection's transport, so that a scripted response can drop or reset the very
connection it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import socket
import struct
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, MutableSequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http import HTTPStatus
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.utils import get_remote_addr

from devstack.sendgrid_standin.outbox import build_eml_or_stub, new_message_id, write_outbox
from shared.sendgrid_v3.error_format import (
    UNAUTHORIZED_BODY,
    UNVERIFIED_SENDER_BODY,
    UNVERIFIED_SENDER_STATUS,
    error_body,
    schema_path,
)
from shared.sendgrid_v3.schema import MailSend, validate_mail_send

logger = logging.getLogger(__name__)

DEFAULT_API_KEY = "SG.local-standin-key"
DEFAULT_OUTBOX = Path(".devstack") / "outbox"
DEFAULT_PORT = 7072

# SendGrid: "The total size of your email, including attachments, must be less than 30MB."
MAX_BODY_BYTES = 30 * 1024 * 1024

# A script entry: SendGrid's own answer to a sender that is not a verified Sender Identity.
UNVERIFIED_SENDER_REFUSAL: dict[str, Any] = {
    "status": UNVERIFIED_SENDER_STATUS,
    "body": UNVERIFIED_SENDER_BODY,
}


class ScriptedResponse(BaseModel):
    """One entry of the response script, consumed by one mail-send request."""

    model_config = ConfigDict(extra="forbid")

    status: int | None = Field(default=None, ge=100, le=599)
    body: Any = None
    headers: dict[str, str] = Field(default_factory=dict)
    # Overrides the default latency for this request when given.
    delay_ms: int | None = Field(default=None, ge=0)
    # Close the connection without an HTTP response (FIN): httpx sees RemoteProtocolError.
    drop_connection: bool = False
    # Close it with a TCP reset instead (RST): httpx sees ReadError.
    reset_connection: bool = False
    # With drop/reset: first handle the mail normally (store it if valid), then drop: the
    # "accepted, but the answer was lost" case behind SendGrid's ambiguous timeouts.
    accept: bool = False

    @model_validator(mode="after")
    def _status_or_drop(self) -> ScriptedResponse:
        """Require a status unless the entry drops the connection."""
        if self.status is None and not (self.drop_connection or self.reset_connection):
            raise ValueError("give a status, or drop_connection / reset_connection")
        return self


@dataclass
class StandInState:
    """Everything the stand-in remembers: received mails, the script, the request log."""

    api_key: str = DEFAULT_API_KEY
    outbox: Path = DEFAULT_OUTBOX
    latency_ms: int = 0
    # False: the outbox gets only each mail's .json record, not its readable .eml (the bench,
    # where building the .eml would cost the stand-in more CPU than the gateway spends).
    write_eml: bool = True
    max_body_bytes: int = MAX_BODY_BYTES
    mails: list[dict[str, Any]] = field(default_factory=list)
    script: deque[ScriptedResponse] = field(default_factory=deque)
    requests: list[dict[str, Any]] = field(default_factory=list)
    # Open connections by client address, filled by _TrackingH11Protocol so a scripted
    # drop can close the socket of the request it answers.
    transports: dict[tuple[str, int], asyncio.Transport] = field(default_factory=dict)

    def reset(self) -> None:
        """Forget mails, script, request log and latency."""
        self.mails.clear()
        self.script.clear()
        self.requests.clear()
        self.latency_ms = 0


def _utc_iso(moment: datetime) -> str:
    """Format a UTC datetime as ISO 8601 with milliseconds and a Z."""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _ClientGone(Exception):
    """The client went away before the request body was read."""


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """Read the request body; None if it exceeds the limit (the rest is drained, not kept)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        else:
            # Keep reading: answering 413 mid-upload would show the client a broken pipe, not a 413.
            chunks.clear()
        if not message.get("more_body", False):
            return b"".join(chunks) if size <= limit else None


def _gunzip(body: bytes, limit: int) -> bytes | None:
    """Inflate a gzip body; None if it inflates past the limit."""
    inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
    data = inflater.decompress(body, limit + 1)
    return None if len(data) > limit or inflater.unconsumed_tail else data


def _refuse_json_constant(name: str) -> float:
    """Refuse NaN and Infinity, which are not JSON."""
    raise ValueError(f"{name} is not valid JSON")


class MailSendEndpoint:
    """The ASGI app behind POST /v3/mail/send (raw ASGI, so it can drop a connection)."""

    def __init__(self, state: StandInState) -> None:
        """Keep the shared state."""
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one mail-send request: script, latency, auth, size, JSON, schema, store."""
        arrived = datetime.now(timezone.utc)
        entry: dict[str, Any] = {
            "at": arrived.timestamp(),
            "received_at": _utc_iso(arrived),
            "status": None,
            "outcome": None,
            "x_message_id": None,
            "scripted": False,
        }
        self.state.requests.append(entry)
        scripted = self.state.script.popleft() if self.state.script else None
        entry["scripted"] = scripted is not None
        try:
            # Read the whole body first in every case: closing or answering with unread data
            # would show the client a reset or a broken pipe instead of what was scripted.
            raw = await _read_body(receive, self.state.max_body_bytes)
        except _ClientGone:
            entry["outcome"] = "client_disconnected"
            return
        delay_ms = self.state.latency_ms
        if scripted is not None and scripted.delay_ms is not None:
            delay_ms = scripted.delay_ms
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000)

        drop = scripted is not None and (scripted.drop_connection or scripted.reset_connection)
        if scripted is not None and drop and not scripted.accept:
            await self._drop(scope, receive, reset=scripted.reset_connection, entry=entry)
            return
        if (
            scripted is not None
            and scripted.status is not None
            and not 200 <= scripted.status < 300
        ):
            entry.update(status=scripted.status, outcome="scripted")
            logger.info("mail send: status=%s (scripted)", scripted.status)
            await self._scripted_response(scripted)(scope, receive, send)
            return

        response = await self._handle(scope, raw, entry)
        if scripted is not None and drop:
            await self._drop(scope, receive, reset=scripted.reset_connection, entry=entry)
            return
        if scripted is not None:
            response.headers.update(scripted.headers)
        await response(scope, receive, send)

    @staticmethod
    def _scripted_response(scripted: ScriptedResponse) -> Response:
        """Build the response a script entry asks for."""
        status = scripted.status or 500
        body = scripted.body
        if body is None and status >= 400:
            try:
                phrase = HTTPStatus(status).phrase
            except ValueError:
                phrase = "Error"
            body = error_body(phrase)
        if body is None:
            return Response(status_code=status, headers=scripted.headers)
        if isinstance(body, str):
            return Response(
                body, status_code=status, headers=scripted.headers, media_type="text/plain"
            )
        return JSONResponse(body, status_code=status, headers=scripted.headers)

    async def _drop(
        self, scope: Scope, receive: Receive, *, reset: bool, entry: dict[str, Any]
    ) -> None:
        """Close the client's connection without an HTTP response."""
        entry["outcome"] = "reset" if reset else "dropped"
        client = scope.get("client")
        transport = self.state.transports.get((str(client[0]), int(client[1]))) if client else None
        if transport is None:
            # Only the stand-in's own server registers transports (see _TrackingH11Protocol).
            raise ConnectionAbortedError(
                "drop_connection works only under the stand-in's own server"
            )
        logger.info("mail send: connection %s (scripted)", entry["outcome"])
        if reset:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # Linger 0 turns close() into a TCP RST.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        # Wait until uvicorn has seen the loss, or it answers 500 for a response never started.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._until_disconnect(receive), timeout=5)

    @staticmethod
    async def _until_disconnect(receive: Receive) -> None:
        """Consume ASGI messages until the disconnect."""
        while (await receive())["type"] != "http.disconnect":
            pass

    async def _handle(self, scope: Scope, raw: bytes | None, entry: dict[str, Any]) -> Response:
        """Handle a request the normal way and say how SendGrid would answer."""
        request = Request(scope)
        state = self.state
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), state.api_key.encode()
        ):
            entry.update(status=401, outcome="unauthorized")
            logger.info("mail send: status=401 (bad or missing API key)")
            return JSONResponse(UNAUTHORIZED_BODY, status_code=401)

        if (
            raw is not None
            and request.headers.get("content-encoding", "").strip().lower() == "gzip"
        ):
            try:
                raw = _gunzip(raw, state.max_body_bytes)
            except zlib.error:
                return self._refuse(
                    entry, 400, error_body("The gzip body could not be decompressed.")
                )
        if raw is None:
            return self._refuse(
                entry,
                413,
                error_body("The JSON payload you have included in your request is too large."),
            )
        media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type != "application/json":
            # 415, as SendGrid's libraries' issue trackers show SendGrid answering.
            return self._refuse(entry, 415, error_body("Content-Type should be application/json."))
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return self._refuse(entry, 415, error_body("Invalid UTF8 in request"))
        try:
            payload = json.loads(text, parse_constant=_refuse_json_constant)
        except ValueError as exc:
            return self._refuse(
                entry, 400, error_body(f"Bad Request: the body is not valid JSON ({exc}).")
            )

        mail, errors = validate_mail_send(payload)
        if mail is None:
            fields = sorted({schema_path(str(e["field"]).split(".")) for e in errors if e["field"]})
            logger.info("mail send: status=400 errors=%d fields=%s", len(errors), ",".join(fields))
            entry.update(status=400, outcome="rejected")
            return JSONResponse({"errors": errors}, status_code=400)

        x_message_id = new_message_id()
        entry["x_message_id"] = x_message_id
        if mail.is_sandbox():
            entry.update(status=200, outcome="sandbox")
            _log_sent("200 (sandbox)", x_message_id, mail)
            return Response(status_code=200, headers={"X-Message-Id": x_message_id})

        received = datetime.now(timezone.utc)
        record = {
            "x_message_id": x_message_id,
            "received_at": _utc_iso(received),
            "payload": payload,
        }
        state.mails.append(record)
        try:
            eml = (
                await asyncio.to_thread(build_eml_or_stub, mail, x_message_id, received)
                if state.write_eml
                else None
            )
            await asyncio.to_thread(write_outbox, state.outbox, record, eml)
        except OSError:
            state.mails.remove(record)
            logger.exception("mail send: could not write %s to the outbox", x_message_id)
            entry.update(status=500, outcome="outbox_error")
            return JSONResponse(
                error_body("The stand-in could not write its outbox."), status_code=500
            )
        entry.update(status=202, outcome="accepted")
        _log_sent("202", x_message_id, mail)
        return Response(status_code=202, headers={"X-Message-Id": x_message_id})

    @staticmethod
    def _refuse(entry: dict[str, Any], status: int, body: dict[str, Any]) -> Response:
        """Answer an error and record it."""
        entry.update(status=status, outcome="rejected")
        logger.info("mail send: status=%s (%s)", status, body["errors"][0]["message"][:80])
        return JSONResponse(body, status_code=status)


def _log_sent(status: str, x_message_id: str, mail: MailSend) -> None:
    """Log a mail taken for sending: counts and domains only, never addresses or content."""
    logger.info(
        "mail send: status=%s x_message_id=%s recipients=%d domains=%s",
        status,
        x_message_id,
        mail.recipient_count(),
        ",".join(mail.recipient_domains()[:10]),
    )


def _is_loopback(scope: Scope) -> bool:
    """Tell whether the request comes from a loopback address."""
    client = scope.get("client")
    if not client:
        return False
    try:
        return ipaddress.ip_address(str(client[0])).is_loopback
    except ValueError:
        return False


def create_app(state: StandInState | None = None) -> Starlette:
    """Build the stand-in's ASGI app around a state (a fresh default one if none)."""
    state = state or StandInState()

    def control(
        handler: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        """Restrict a control endpoint to loopback clients."""

        async def endpoint(request: Request) -> Response:
            if not _is_loopback(request.scope):
                return JSONResponse(
                    error_body("The control API answers loopback clients only."), status_code=403
                )
            return await handler(request)

        return endpoint

    def clear(items: MutableSequence[Any]) -> Callable[[Request], Awaitable[Response]]:
        """Make a handler that empties one of the state's lists."""

        async def endpoint(request: Request) -> Response:
            items.clear()
            return Response(status_code=204)

        return endpoint

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def list_mails(request: Request) -> Response:
        return JSONResponse(state.mails)

    async def set_script(request: Request) -> Response:
        try:
            body = await request.json()
            entries = [ScriptedResponse.model_validate(item) for item in body["responses"]]
        except (ValueError, KeyError, TypeError) as exc:
            message = " ".join(f'Expected {{"responses": [...]}}: {exc}'.split())
            return JSONResponse(error_body(message), status_code=400)
        state.script.extend(entries)
        return JSONResponse({"queued": len(state.script)})

    async def list_requests(request: Request) -> Response:
        return JSONResponse({"count": len(state.requests), "requests": state.requests})

    async def set_config(request: Request) -> Response:
        try:
            body = await request.json()
            latency = body["latency_ms"]
            if not isinstance(latency, int) or isinstance(latency, bool) or latency < 0:
                raise TypeError("latency_ms must be a non-negative integer")
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse(error_body(f'Expected {{"latency_ms": N}}: {exc}'), status_code=400)
        state.latency_ms = latency
        return JSONResponse({"latency_ms": state.latency_ms})

    async def reset(request: Request) -> Response:
        state.reset()
        return Response(status_code=204)

    routes = [
        Route("/v3/mail/send", MailSendEndpoint(state), methods=["POST"]),
        Route("/_standin/health", control(health), methods=["GET"]),
        Route("/_standin/mails", control(list_mails), methods=["GET"]),
        Route("/_standin/mails", control(clear(state.mails)), methods=["DELETE"]),
        Route("/_standin/responses", control(set_script), methods=["POST"]),
        Route("/_standin/responses", control(clear(state.script)), methods=["DELETE"]),
        Route("/_standin/requests", control(list_requests), methods=["GET"]),
        Route("/_standin/requests", control(clear(state.requests)), methods=["DELETE"]),
        Route("/_standin/config", control(set_config), methods=["POST"]),
        Route("/_standin/reset", control(reset), methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.standin = state
    return app


def _tracking_protocol(transports: dict[tuple[str, int], asyncio.Transport]) -> type[H11Protocol]:
    """Make an h11 protocol class that records each connection's transport by client address."""

    class _TrackingH11Protocol(H11Protocol):
        """uvicorn's h11 protocol, plus a registry entry while the connection is open."""

        _standin_key: tuple[str, int] | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            # The same address uvicorn puts in scope["client"] (proxy headers are off).
            self._standin_key = get_remote_addr(transport)
            if self._standin_key is not None:
                transports[self._standin_key] = transport

        def connection_lost(self, exc: Exception | None) -> None:
            if self._standin_key is not None:
                transports.pop(self._standin_key, None)
            super().connection_lost(exc)

    return _TrackingH11Protocol


def _format_url(host: str, port: int, scheme: str = "http") -> str:
    """Build the base URL, bracketing IPv6 hosts."""
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


async def serve(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    state: StandInState | None = None,
    on_ready: Callable[[str], None] | None = None,
    app: ASGIApp | None = None,
    tls: tuple[str, str] | None = None,
) -> None:
    """Run the stand-in (or another loopback `app`, devstack/acs_standin's) until
    SIGINT/SIGTERM; call on_ready with the base URL once listening. With `tls` (a certificate
    chain file and its key file), over HTTPS."""
    state = state or StandInState()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    actual_port = int(sock.getsockname()[1])
    config = uvicorn.Config(
        app or create_app(state),
        log_config=None,
        access_log=False,
        proxy_headers=False,
        http=_tracking_protocol(state.transports),
        lifespan="off",
        backlog=2048,
        timeout_graceful_shutdown=2,
        ssl_certfile=tls[0] if tls else None,
        ssl_keyfile=tls[1] if tls else None,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            await task
            return
        await asyncio.sleep(0.01)
    url = _format_url(host, actual_port, "https" if tls else "http")
    if on_ready is not None:
        on_ready(url)
    await task
