"""A local managed-identity endpoint, as App Service and Flex Consumption give a function app.

There the platform sets `IDENTITY_ENDPOINT` (a plain-http URL on the instance) and
`IDENTITY_HEADER` (a secret), and code asks for a token with

    GET $IDENTITY_ENDPOINT?resource=<resource>&api-version=2019-08-01&client_id=<id>
    X-IDENTITY-HEADER: $IDENTITY_HEADER

answered by `{"access_token", "expires_on" (epoch seconds, a string), "not_before", "resource",
"token_type", "client_id"}` (Microsoft's "Managed identities for App Service and Azure
Functions", REST endpoint reference; MicrosoftDocs/azure-docs
articles/app-service/overview-managed-identity.md). azure-identity's ManagedIdentityCredential
takes that path whenever both variables are set (azure/identity/_credentials/app_service.py),
through MSAL's `_obtain_token_on_app_service` (msal/managed_identity.py), which reads only
`access_token` and `expires_on`; DefaultAzureCredential reaches it through the same credential.
So serving this endpoint lets the SDK's own credential code run locally, unchanged.

Its tokens (the `aud` is the resource asked for, whatever it is) are JWTs that Azurite's
`--oauth basic` accepts: Azurite decodes them without checking the signature and requires `iat`,
`nbf` and `exp` with now inside, an issuer starting with `https://sts.windows.net/` and an
audience such as `https://storage.azure.com` (Azurite
src/queue/authentication/QueueTokenAuthenticator.ts and its Blob and Table twins;
VALID_ISSUE_PREFIXES in src/common/utils/constants.ts). The ACS Email stand-in in bearer mode
(devstack/acs_standin/server.py `token_problem`) takes those asked for
`https://communication.azure.com/`, the resource azure-communication-email's scope names, on the
same checks. They are signed (HS256, a key that lives only in this process) only so that they
are well-formed; nothing checks the signature.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt

logger = logging.getLogger(__name__)

API_VERSION = "2019-08-01"
ENDPOINT_PATH = "/msi/token"
# The local stack's one user-assigned identity and its tenant: fixed, so that settings written
# once (local.settings.json, a sourced environment file) keep naming it.
LOCAL_TENANT_ID = "00000000-0000-4000-8000-00000000a2e1"
LOCAL_IDENTITY_CLIENT_ID = "00000000-0000-4000-8000-0000000c11e7"
LOCAL_IDENTITY_PRINCIPAL_ID = "00000000-0000-4000-8000-00000000b1d0"
# About what Microsoft Entra ID gives a managed identity; short lives are for tests.
DEFAULT_TOKEN_LIFETIME_SECONDS = 24 * 3600
ISSUER = f"https://sts.windows.net/{LOCAL_TENANT_ID}/"
# Bounds on what a request may carry before it is looked at.
MAX_TARGET_CHARS = 2048
MAX_RESOURCE_CHARS = 256
_IDENTITY_SELECTORS = ("principal_id", "object_id", "mi_res_id")


@dataclass(frozen=True)
class IssuedToken:
    """What the endpoint handed out (never the token itself): for tests and the log."""

    client_id: str
    resource: str
    issued_at: int
    expires_on: int


class IdentityEndpoint:
    """The token service of one app instance with one user-assigned identity, on loopback."""

    def __init__(
        self,
        *,
        client_id: str = LOCAL_IDENTITY_CLIENT_ID,
        header: str | None = None,
        token_lifetime_seconds: int = DEFAULT_TOKEN_LIFETIME_SECONDS,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        """Configure; nothing listens until start(). Port 0 means a free port."""
        if token_lifetime_seconds < 1:
            raise ValueError("token_lifetime_seconds must be at least 1")
        self.client_id = client_id
        # App Service rotates its header; a stable one lets a shell that sourced it keep working.
        self.header = header or secrets.token_urlsafe(32)
        self.token_lifetime_seconds = token_lifetime_seconds
        self._address = (host, port)
        # HS256 wants a key at least as long as its hash: 32 bytes.
        self._signing_key = secrets.token_bytes(32)
        self._issued: list[IssuedToken] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ----

    def start(self) -> IdentityEndpoint:
        """Listen and serve on a daemon thread."""
        if self._server is not None:
            return self
        server = ThreadingHTTPServer(self._address, _handler_for(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="identity-endpoint", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> IdentityEndpoint:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """IDENTITY_ENDPOINT: plain http on loopback, as on App Service."""
        if self._server is None:
            raise RuntimeError("the identity endpoint is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{ENDPOINT_PATH}"

    def environment(self) -> dict[str, str]:
        """The variables the platform sets for the app: IDENTITY_ENDPOINT and IDENTITY_HEADER."""
        return {"IDENTITY_ENDPOINT": self.url, "IDENTITY_HEADER": self.header}

    @property
    def issued(self) -> list[IssuedToken]:
        """Every token handed out so far, oldest first."""
        with self._lock:
            return list(self._issued)

    # ---- tokens ----

    def answer(
        self, target: str, identity_header: str, now: float | None = None
    ) -> tuple[int, dict[str, Any]]:
        """The status and JSON body for a GET of `target` (path and query) that carried
        `identity_header` in X-IDENTITY-HEADER."""
        if len(target) > MAX_TARGET_CHARS:
            return _problem(414, f"the request target is longer than {MAX_TARGET_CHARS} characters")
        parts = urlsplit(target)
        if parts.path.rstrip("/") != ENDPOINT_PATH:
            return _problem(404, f"no such path: tokens are at {ENDPOINT_PATH}")
        if not hmac.compare_digest(identity_header.encode(), self.header.encode()):
            return _problem(401, "X-IDENTITY-HEADER is missing or wrong: send IDENTITY_HEADER")
        query = parse_qs(parts.query, keep_blank_values=True)
        if any(len(values) > 1 for values in query.values()):
            return _problem(400, "each query parameter may be given once")
        params = {name: values[0] for name, values in query.items()}
        version = params.get("api-version", "")
        if version != API_VERSION:
            return _problem(400, f"api-version must be {API_VERSION}, not {version[:20]!r}")
        resource = params.get("resource", "")
        if not resource or len(resource) > MAX_RESOURCE_CHARS:
            return _problem(400, f"resource is required, at most {MAX_RESOURCE_CHARS} characters")
        if any(params.get(name) for name in _IDENTITY_SELECTORS):
            return _problem(400, "the local identity is chosen by client_id only")
        client_id = params.get("client_id", "")
        if not client_id:
            # The app has a user-assigned identity only, as infra/ deploys it.
            return _problem(400, "no system-assigned identity: give client_id")
        if client_id.lower() != self.client_id.lower():
            return _problem(400, "client_id is not an identity assigned to this app")
        return 200, self._token(resource, int(now if now is not None else time.time()))

    def _token(self, resource: str, now: int) -> dict[str, Any]:
        expires_on = now + self.token_lifetime_seconds
        claims = {
            "aud": resource,
            "iss": ISSUER,
            "iat": now,
            "nbf": now,
            "exp": expires_on,
            "appid": self.client_id,
            "oid": LOCAL_IDENTITY_PRINCIPAL_ID,
            "sub": LOCAL_IDENTITY_PRINCIPAL_ID,
            "tid": LOCAL_TENANT_ID,
            "idtyp": "app",
            "ver": "1.0",
        }
        token = jwt.encode(claims, self._signing_key, algorithm="HS256")
        with self._lock:
            self._issued.append(IssuedToken(self.client_id, resource, now, expires_on))
        logger.debug("Issued a token for %s, expiring at %d", resource, expires_on)
        return {
            "access_token": token,
            "expires_on": str(expires_on),
            "not_before": str(now),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": self.client_id,
        }


def _problem(status: int, message: str) -> tuple[int, dict[str, Any]]:
    # The shape of App Service's own error answers; MSAL quotes statusCode and message.
    return status, {"statusCode": status, "message": message}


def _handler_for(endpoint: IdentityEndpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "mailgate-identity"
        sys_version = ""

        def do_GET(self) -> None:
            # Other methods get http.server's own 501.
            status, body = endpoint.answer(self.path, self.headers.get("X-IDENTITY-HEADER", ""))
            self._send(status, body)

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            # http.server would print each request (its query names the identity) to stderr.
            pass

    return Handler
