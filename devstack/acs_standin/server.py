"""The ACS Email stand-in: the two REST calls `azure-communication-email` makes, checked as ACS
checks them, and the control API the SendGrid stand-in has.

    POST /emails:send?api-version=...      202, `Operation-Location` and `operation-id`; the
                                           body {"id", "status": "Running"}
    GET  /emails/operations/{id}?api-...   200 {"id", "status"}: Running for the first
                                           `running_polls` polls, then Succeeded (or Failed,
                                           with its error, as scripted)

Both from the REST spec (Azure/azure-rest-api-specs, specification/communication/data-plane/
Email/stable/2025-09-01/CommunicationServicesEmail.json and its examples). Every request must
carry the access-key signature the SDK's `HMACCredentialsPolicy` makes (azure-communication-
email, `_shared/policy.py`; Microsoft's "Sign an HTTP request with HMAC",
communication-services/tutorials/hmac-header-tutorial): `x-ms-date`, `x-ms-content-sha256`
(base64 SHA-256 of the body) and `Authorization: HMAC-SHA256 SignedHeaders=x-ms-date;host;
x-ms-content-sha256&Signature=<base64 HMAC-SHA256 with the decoded key>` over
`VERB\\npath?query\\n<the signed headers' values, ';'-joined>`. A missing or wrong signature,
a body that does not match its hash, or a date more than 15 minutes off is a 401.

In bearer mode (`make run`'s identity mode, served over HTTPS with the local CA's certificate)
it takes Microsoft Entra tokens instead, as ACS does from a managed identity, and refuses the
access-key signature, as ACS does with local auth disabled: `Authorization: Bearer <jwt>` from
the SDK's `BearerTokenCredentialPolicy`, checked in what the local identity endpoint
(devstack/identity_endpoint.py) can satisfy, like Azurite's `--oauth basic`: a well-formed,
signed JWT (whose signature is not verified), `aud` the ACS resource, `iss` under `https://sts.windows.net/`,
and now within `nbf`..`exp`. Anything else is a 401.

The body is checked against the spec's required fields (400 with the spec's error shape,
`{"error": {"code", "message", "target"}}`; the codes are the stand-in's own). A repeated
Operation-Id is answered with the operation it already names and nothing is sent again (what
the Azure REST API Guidelines ask of an Operation-Id; ACS's own docs do not say). Each mail
accepted is written to the outbox as `<operation id>.json` and a readable `.eml`, like the
SendGrid stand-in's (devstack/sendgrid_standin/outbox.py).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import Any, TypeGuard

import jwt
from pydantic import BaseModel, ConfigDict, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from devstack.sendgrid_standin.outbox import write_outbox
from devstack.sendgrid_standin.server import (
    _ClientGone,
    _is_loopback,
    _read_body,
    _refuse_json_constant,
    _utc_iso,
)

logger = logging.getLogger(__name__)

# The key's bytes are arbitrary; a connection string carries them base64-encoded.
DEFAULT_ACCESS_KEY = base64.b64encode(b"mailgate-local-acs-standin-key!!").decode()
DEFAULT_OUTBOX = Path(".devstack") / "acs-outbox"
DEFAULT_PORT = 7074
API_VERSION = "2025-09-01"
# The spec: "we limit the total size of an email request (which includes attachments) to
# 10MB"; the stand-in reads a little more before it refuses, as a body's JSON adds to it.
MAX_BODY_BYTES = 10 * 1024 * 1024 + 64 * 1024
# As Azure's other HMAC schemes (App Configuration's "HMAC authentication" reference) allow.
MAX_CLOCK_SKEW = timedelta(minutes=15)
REQUIRED_SIGNED_HEADERS = ("x-ms-date", "host", "x-ms-content-sha256")
MAX_RECIPIENTS = 50
MAX_OPERATIONS = 10_000

# How the stand-in authenticates requests: the access key's HMAC signature (plain `make run`)
# or Microsoft Entra bearer tokens (identity mode, over HTTPS only).
HMAC_AUTH = "hmac"
BEARER_AUTH = "bearer"
# The SDK asks its TokenCredential for "https://communication.azure.com//.default"
# (azure-communication-email 1.1.0, azure/communication/email/_shared/auth_policy_utils.py
# get_authentication_policy); azure-identity makes that scope the resource
# "https://communication.azure.com/" by cutting "/.default" (azure/identity/_internal/__init__.py
# _scopes_to_resource), and a v1 token's `aud` is the resource asked for. Taken with or without
# its trailing slash, nothing else (a storage token is refused).
ACS_AUDIENCE = "https://communication.azure.com"
# Microsoft Entra ID's v1 issuer, `https://sts.windows.net/<tenant>/`, what a managed identity's
# token carries (Microsoft's "Access tokens in the Microsoft identity platform", payload claims).
ENTRA_ISSUER_PREFIX = "https://sts.windows.net/"
# The clock skew Microsoft.IdentityModel allows a token's lifetime by default
# (AzureAD/azure-activedirectory-identitymodel-extensions-for-dotnet,
# TokenValidationParameters.DefaultClockSkew, 300 seconds).
TOKEN_CLOCK_SKEW_SECONDS = 300
# Entra tokens are a few kilobytes; a header past this is refused before it is decoded.
MAX_TOKEN_CHARS = 16 * 1024
# The claims a request log keeps of a token (never the token): whose it is and for what.
_LOGGED_CLAIMS = ("aud", "iss", "appid", "oid", "tid")


class ScriptedAnswer(BaseModel):
    """One entry of the script, consumed by one send: an error answer (`status`), a send that
    is accepted and then fails (`operation: "Failed"`), or a slow one (`delay_ms`)."""

    model_config = ConfigDict(extra="forbid")

    status: int | None = Field(default=None, ge=400, le=599)
    body: Any = None
    headers: dict[str, str] = Field(default_factory=dict)
    delay_ms: int | None = Field(default=None, ge=0, le=120_000)
    operation: str | None = Field(default=None, pattern="^(Failed|Canceled)$")
    error: dict[str, Any] | None = None


@dataclass
class Operation:
    """One send operation: its status once polled enough, its error if it failed."""

    id: str
    outcome: str
    error: dict[str, Any] | None = None
    polls: int = 0


@dataclass
class AcsState:
    """What the stand-in remembers: accepted mails, operations, the script, the request log."""

    access_key: str = DEFAULT_ACCESS_KEY
    auth: str = HMAC_AUTH
    outbox: Path = DEFAULT_OUTBOX
    write_eml: bool = True
    running_polls: int = 1
    max_body_bytes: int = MAX_BODY_BYTES
    mails: list[dict[str, Any]] = field(default_factory=list)
    operations: dict[str, Operation] = field(default_factory=dict)
    script: deque[ScriptedAnswer] = field(default_factory=deque)
    requests: list[dict[str, Any]] = field(default_factory=list)

    def reset(self) -> None:
        """Forget mails, operations, script and request log; one Running poll again."""
        self.running_polls = 1
        self.mails.clear()
        self.operations.clear()
        self.script.clear()
        self.requests.clear()


def acs_error(status: int, code: str, message: str, target: str | None = None) -> JSONResponse:
    """An error answer in the spec's shape (common-types ErrorResponse)."""
    error: dict[str, Any] = {"code": code, "message": message}
    if target is not None:
        error["target"] = target
    return JSONResponse({"error": error}, status_code=status, headers={"x-ms-error-code": code})


def signature_problem(
    key: str,
    method: str,
    path_and_query: str,
    headers: dict[str, str],
    body: bytes,
    now: datetime,
) -> str | None:
    """Why a request's access-key signature does not hold; None when it does. `headers` by
    lower-case name."""
    scheme, _, parameters = headers.get("authorization", "").partition(" ")
    if scheme != "HMAC-SHA256":
        return "no HMAC-SHA256 Authorization"
    fields = dict(part.partition("=")[::2] for part in parameters.split("&"))
    signed = [name.strip().lower() for name in fields.get("SignedHeaders", "").split(";")]
    if any(name not in signed for name in REQUIRED_SIGNED_HEADERS):
        return "SignedHeaders must name x-ms-date, host and x-ms-content-sha256"
    if any(name not in headers for name in signed):
        return "a signed header is missing"
    try:
        sent_at = parsedate_to_datetime(headers["x-ms-date"])
    except (TypeError, ValueError):
        return "x-ms-date is not an HTTP date"
    if sent_at.tzinfo is None or abs(now - sent_at) > MAX_CLOCK_SKEW:
        return "x-ms-date is more than 15 minutes off"
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    if not hmac.compare_digest(headers["x-ms-content-sha256"], digest):
        return "x-ms-content-sha256 is not the body's hash"
    to_sign = f"{method}\n{path_and_query}\n" + ";".join(headers[name] for name in signed)
    expected = hmac.new(base64.b64decode(key), to_sign.encode(), hashlib.sha256).digest()
    try:
        given = base64.b64decode(fields.get("Signature", ""), validate=True)
    except (binascii.Error, ValueError):
        return "the signature is not base64"
    if not hmac.compare_digest(given, expected):
        return "the signature does not match"
    return None


def token_problem(authorization: str, now: datetime) -> tuple[str | None, dict[str, Any]]:
    """Why a request's `Authorization: Bearer <jwt>` would not get into ACS (None when it
    would), and the token's claims the request log keeps."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return "no Bearer token (this resource takes Microsoft Entra tokens only)", {}
    if len(token) > MAX_TOKEN_CHARS:
        return f"the token is longer than {MAX_TOKEN_CHARS} characters", {}
    try:
        # The signature is Entra ID's to check; the local identity endpoint's key is its own.
        claims = jwt.decode(token.strip(), options={"verify_signature": False})
        algorithm = jwt.get_unverified_header(token.strip()).get("alg")
    except jwt.InvalidTokenError:
        return "the token is not a well-formed JWT", {}
    if not isinstance(algorithm, str) or algorithm.lower() in ("", "none"):
        # Unsigned: Entra ID signs every token it issues, and no Azure service takes one without.
        return "the token is not signed", {}
    kept = {name: claims[name] for name in _LOGGED_CLAIMS if isinstance(claims.get(name), str)}
    audiences = claims.get("aud")
    listed = audiences if isinstance(audiences, list) else [audiences]
    if not any(isinstance(a, str) and a.rstrip("/") == ACS_AUDIENCE for a in listed):
        return f"the token's audience is not {ACS_AUDIENCE}", kept
    issuer = claims.get("iss")
    if not isinstance(issuer, str) or not issuer.startswith(ENTRA_ISSUER_PREFIX):
        return f"the token's issuer is not under {ENTRA_ISSUER_PREFIX}", kept
    moment = now.timestamp()
    not_before, expires = claims.get("nbf"), claims.get("exp")
    if not _is_time(not_before) or not _is_time(expires):
        return "the token has no nbf or exp", kept
    if moment + TOKEN_CLOCK_SKEW_SECONDS < not_before:
        return "the token is not valid yet", kept
    if moment - TOKEN_CLOCK_SKEW_SECONDS >= expires:
        return "the token has expired", kept
    return None, kept


def _is_time(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def authorization_scheme(headers: Mapping[str, str]) -> str:
    """The scheme word of a request's Authorization header (never its credentials), bounded."""
    return headers.get("authorization", "").partition(" ")[0][:40]


def message_problem(document: Any) -> tuple[str, str] | None:
    """The first field of an EmailMessage that the spec's required fields refuse, and why."""
    if not isinstance(document, dict):
        return "", "the body is not a JSON object"
    if not _text(document.get("senderAddress")):
        return "senderAddress", "is required"
    content = document.get("content")
    if not isinstance(content, dict) or not isinstance(content.get("subject"), str):
        return "content.subject", "is required"
    for name in ("plainText", "html"):
        if name in content and not isinstance(content[name], str):
            return f"content.{name}", "must be a string"
    recipients = document.get("recipients")
    if not isinstance(recipients, dict) or not recipients.get("to"):
        return "recipients.to", "needs at least one address"
    count = 0
    for kind in ("to", "cc", "bcc"):
        listed = recipients.get(kind, [])
        if not isinstance(listed, list):
            return f"recipients.{kind}", "must be a list"
        for index, entry in enumerate(listed):
            if not isinstance(entry, dict) or not _text(entry.get("address")):
                return f"recipients.{kind}[{index}].address", "is required"
        count += len(listed)
    if count > MAX_RECIPIENTS:
        return "recipients", f"at most {MAX_RECIPIENTS} recipients"
    for index, entry in enumerate(document.get("replyTo", [])):
        if not isinstance(entry, dict) or not _text(entry.get("address")):
            return f"replyTo[{index}].address", "is required"
    for index, attachment in enumerate(document.get("attachments", [])):
        if not isinstance(attachment, dict):
            return f"attachments[{index}]", "must be an object"
        for name in ("name", "contentType", "contentInBase64"):
            if not _text(attachment.get(name)):
                return f"attachments[{index}].{name}", "is required"
        try:
            base64.b64decode(attachment["contentInBase64"], validate=True)
        except (binascii.Error, ValueError):
            return f"attachments[{index}].contentInBase64", "is not base64"
    headers = document.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        return "headers", "must map names to strings"
    return None


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def build_eml(document: dict[str, Any], operation_id: str, received: datetime) -> bytes:
    """A readable RFC 5322 copy of an accepted mail; Bcc shown, as the SendGrid stand-in does."""
    message = EmailMessage()
    message["From"] = document["senderAddress"]
    recipients = document["recipients"]
    for kind in ("to", "cc", "bcc"):
        if recipients.get(kind):
            message[kind.capitalize()] = [_header_address(a) for a in recipients[kind]]
    if document.get("replyTo"):
        message["Reply-To"] = [_header_address(a) for a in document["replyTo"]]
    message["Subject"] = document["content"]["subject"]
    message["Date"] = format_datetime(received)
    message["X-Acs-Operation-Id"] = operation_id
    for name, value in document.get("headers", {}).items():
        message[name] = value
    content = document["content"]
    if "plainText" in content:
        message.set_content(content["plainText"])
    if "html" in content:
        if "plainText" in content:
            message.add_alternative(content["html"], subtype="html")
        else:
            message.set_content(content["html"], subtype="html")
    for attachment in document.get("attachments", []):
        maintype, _, subtype = attachment["contentType"].partition("/")
        cid = attachment.get("contentId")
        message.add_attachment(
            base64.b64decode(attachment["contentInBase64"]),
            maintype=maintype or "application",
            subtype=subtype or "octet-stream",
            filename=attachment["name"],
            disposition="inline" if cid else "attachment",
            cid=f"<{cid}>" if cid else None,
        )
    return message.as_bytes()


def _header_address(entry: dict[str, Any]) -> Address:
    return Address(display_name=entry.get("displayName") or "", addr_spec=entry["address"])


def _build_eml_or_stub(document: dict[str, Any], operation_id: str, received: datetime) -> bytes:
    try:
        return build_eml(document, operation_id, received)
    except Exception as exc:
        # The exception text may quote mail content, which must stay out of the logs.
        logger.error("outbox: no .eml for %s (%s)", operation_id, type(exc).__name__)
        return b"X-Acs-Operation-Id: " + operation_id.encode() + b"\r\n\r\nSee the .json.\r\n"


def create_app(state: AcsState | None = None) -> Starlette:
    """The stand-in's ASGI app around a state (a fresh default one if none)."""
    state = state or AcsState()

    async def signed_body(request: Request, entry: dict[str, Any]) -> bytes | Response:
        try:
            raw = await _read_body(request.receive, state.max_body_bytes)
        except _ClientGone:
            entry["outcome"] = "client_disconnected"
            return Response(status_code=499)
        if raw is None:
            entry.update(status=413, outcome="too_large")
            return acs_error(413, "RequestTooLarge", "The request is larger than 10 MB.")
        path = request.scope.get("raw_path") or request.url.path.encode()
        query = request.scope.get("query_string", b"")
        path_and_query = path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
        headers = {name.lower(): value for name, value in request.headers.items()}
        # What came in, for tests to see which credential the SDK used (never the credential).
        entry["auth"] = authorization_scheme(headers)
        if state.auth == BEARER_AUTH:
            problem, claims = token_problem(
                headers.get("authorization", ""), datetime.now(timezone.utc)
            )
            entry["token"] = claims
        else:
            problem = signature_problem(
                state.access_key,
                request.method,
                path_and_query,
                headers,
                raw,
                datetime.now(timezone.utc),
            )
        if problem is not None:
            entry.update(status=401, outcome="unauthorized")
            logger.info("%s %s: 401 (%s)", request.method, request.url.path, problem)
            return acs_error(401, "Denied", f"Denied by the resource provider: {problem}.")
        return raw

    async def send(request: Request) -> Response:
        arrived = datetime.now(timezone.utc)
        entry: dict[str, Any] = {
            "at": arrived.timestamp(),
            "received_at": _utc_iso(arrived),
            "method": "POST",
            "status": None,
            "outcome": None,
            "operation_id": None,
            "scripted": False,
        }
        state.requests.append(entry)
        raw = await signed_body(request, entry)
        if isinstance(raw, Response):
            return raw
        scripted = state.script.popleft() if state.script else None
        entry["scripted"] = scripted is not None
        if scripted is not None and scripted.delay_ms:
            await asyncio.sleep(scripted.delay_ms / 1000)
        if scripted is not None and scripted.status is not None:
            entry.update(status=scripted.status, outcome="scripted")
            logger.info("send: %s (scripted)", scripted.status)
            if scripted.body is not None:
                return JSONResponse(
                    scripted.body, status_code=scripted.status, headers=scripted.headers
                )
            response = acs_error(scripted.status, "Scripted", "A scripted answer.")
            response.headers.update(scripted.headers)
            return response
        if request.query_params.get("api-version") is None:
            entry.update(status=400, outcome="rejected")
            return acs_error(400, "MissingApiVersionParameter", "api-version is required.")
        try:
            document = json.loads(raw.decode("utf-8"), parse_constant=_refuse_json_constant)
        except ValueError:
            entry.update(status=400, outcome="rejected")
            return acs_error(400, "InvalidRequestBody", "The body is not JSON.")
        problem = message_problem(document)
        if problem is not None:
            target, why = problem
            entry.update(status=400, outcome="rejected")
            logger.info("send: 400 (%s %s)", target, why)
            return acs_error(400, "InvalidRequestBody", f"{target} {why}".strip(), target)
        operation_id = request.headers.get("operation-id") or str(uuid.uuid4())
        try:
            operation_id = str(uuid.UUID(operation_id))
        except ValueError:
            entry.update(status=400, outcome="rejected")
            return acs_error(400, "InvalidOperationId", "Operation-Id must be a UUID.")
        entry["operation_id"] = operation_id
        location = f"{request.base_url}emails/operations/{operation_id}?api-version=" + (
            request.query_params.get("api-version") or API_VERSION
        )
        accepted = JSONResponse(
            {"id": operation_id, "status": "Running"},
            status_code=202,
            headers={"Operation-Location": location, "operation-id": operation_id},
        )
        if operation_id in state.operations:
            entry.update(status=202, outcome="repeated")
            logger.info("send: 202 operation %s again (not sent again)", operation_id)
            return accepted
        if len(state.operations) >= MAX_OPERATIONS:
            entry.update(status=429, outcome="full")
            return acs_error(429, "TooManyRequests", "The stand-in holds too many operations.")
        failed = scripted is not None and scripted.operation is not None
        operation = Operation(
            operation_id,
            scripted.operation if scripted is not None and scripted.operation else "Succeeded",
            (scripted.error if scripted is not None else None)
            or ({"code": "EmailDropped", "message": "Scripted failure."} if failed else None),
        )
        state.operations[operation_id] = operation
        if failed:
            entry.update(status=202, outcome="will_fail")
            return accepted
        record = {
            "operation_id": operation_id,
            "received_at": _utc_iso(arrived),
            "payload": document,
        }
        state.mails.append(record)
        try:
            eml = (
                await asyncio.to_thread(_build_eml_or_stub, document, operation_id, arrived)
                if state.write_eml
                else None
            )
            await asyncio.to_thread(write_outbox, state.outbox, record, eml, operation_id)
        except OSError:
            state.mails.remove(record)
            del state.operations[operation_id]
            logger.exception("send: could not write %s to the outbox", operation_id)
            entry.update(status=500, outcome="outbox_error")
            return acs_error(500, "InternalError", "The stand-in could not write its outbox.")
        entry.update(status=202, outcome="accepted")
        recipients = document["recipients"]
        listed = [a for k in ("to", "cc", "bcc") for a in recipients.get(k, [])]
        domains = sorted({a["address"].rpartition("@")[2].lower() for a in listed})
        logger.info(
            "send: 202 operation %s recipients=%d domains=%s",
            operation_id,
            len(listed),
            ",".join(domains[:10]),
        )
        return accepted

    async def status(request: Request) -> Response:
        entry: dict[str, Any] = {"method": "GET", "status": None, "outcome": None}
        raw = await signed_body(request, entry)
        if isinstance(raw, Response):
            return raw
        operation = state.operations.get(request.path_params["operation_id"].lower())
        if operation is None:
            return acs_error(404, "NotFound", "No operation has that id.")
        operation.polls += 1
        if operation.polls <= state.running_polls:
            return JSONResponse({"id": operation.id, "status": "Running"})
        document: dict[str, Any] = {"id": operation.id, "status": operation.outcome}
        if operation.error is not None:
            document["error"] = operation.error
        return JSONResponse(document)

    def control(handler: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            if not _is_loopback(request.scope):
                return acs_error(403, "Forbidden", "The control API answers loopback only.")
            response: Response = await handler(request)
            return response

        return endpoint

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def list_mails(request: Request) -> Response:
        return JSONResponse(state.mails)

    async def clear_mails(request: Request) -> Response:
        state.mails.clear()
        return Response(status_code=204)

    async def set_script(request: Request) -> Response:
        try:
            body = await request.json()
            entries = [ScriptedAnswer.model_validate(item) for item in body["responses"]]
        except (ValueError, KeyError, TypeError) as exc:
            return acs_error(400, "BadScript", " ".join(f"Expected responses: {exc}".split()))
        state.script.extend(entries)
        return JSONResponse({"queued": len(state.script)})

    async def clear_script(request: Request) -> Response:
        state.script.clear()
        return Response(status_code=204)

    async def list_requests(request: Request) -> Response:
        return JSONResponse({"count": len(state.requests), "requests": state.requests})

    async def reset(request: Request) -> Response:
        state.reset()
        return Response(status_code=204)

    async def set_config(request: Request) -> Response:
        try:
            polls = (await request.json())["running_polls"]
            if not isinstance(polls, int) or isinstance(polls, bool) or not 0 <= polls <= 1000:
                raise TypeError("running_polls must be a whole number from 0 to 1000")
        except (ValueError, KeyError, TypeError) as exc:
            return acs_error(400, "BadConfig", f'Expected {{"running_polls": N}}: {exc}')
        state.running_polls = polls
        return JSONResponse({"running_polls": polls})

    routes = [
        Route("/emails:send", send, methods=["POST"]),
        Route("/emails/operations/{operation_id}", status, methods=["GET"]),
        Route("/_standin/health", control(health), methods=["GET"]),
        Route("/_standin/mails", control(list_mails), methods=["GET"]),
        Route("/_standin/mails", control(clear_mails), methods=["DELETE"]),
        Route("/_standin/responses", control(set_script), methods=["POST"]),
        Route("/_standin/responses", control(clear_script), methods=["DELETE"]),
        Route("/_standin/requests", control(list_requests), methods=["GET"]),
        Route("/_standin/reset", control(reset), methods=["POST"]),
        Route("/_standin/config", control(set_config), methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.standin = state
    return app
