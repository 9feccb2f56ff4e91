"""The HTTP transport under every storage client: kept-alive connections shared by the process.

Why it exists: each message costs two to four storage calls, and azure-core's default
transport, `RequestsTransport`, was the largest part of a call's CPU (`requests` merges
settings and looks up proxies and netrc in the environment on every call, then wraps urllib3).
CPU per call of the SDK's clients against Azurite, one call at a time (`python -m bench
--scenarios storage`, docs/performance.md "Storage through the Azure SDKs"): the SDK's pipeline
alone, with no network, 0.25-0.38 ms; on this transport 0.50-0.70 ms; on `RequestsTransport`
1.05-1.23 ms. urllib3's pools driven directly measured 0.1-0.15 ms more per call than the small
pool below.

It is only the last step of the SDK's pipeline (`transport=`): authentication (Shared Key, SAS,
Entra tokens and their challenges), retries, error types, API versions, request ids, user agent
and tracing stay the SDK's policies. It sends each request over a kept-alive `http.client`
connection from a pool per origin and TLS setting, reads nothing from the environment per call,
and like azure-core's own transports follows no redirect and retries nothing but a request
that a reused connection never carried (the server had closed it while idle). It honours the
SDK's per-call `connection_timeout`, `read_timeout`, `connection_verify` (False, or a CA bundle
file or directory; True trusts the default store, which SSL_CERT_FILE changes) and
`connection_cert`. A call through a proxy given as the clients' `proxies=` option, a form or a
file upload goes to azure-core's `RequestsTransport`, on a session that does not read the
environment.

One instance serves every client of a process (`shared_transport()`): closing a client only
closes the idle connections, and the transport opens new ones on its next call.
"""

from __future__ import annotations

import atexit
import functools
import http.client
import ssl
import threading
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from azure.core.exceptions import (
    IncompleteReadError,
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.core.pipeline.transport import HttpTransport, RequestsTransport
from azure.core.rest import HttpRequest, HttpResponse
from azure.core.rest._http_response_impl import HttpResponseImpl
from azure.core.utils import case_insensitive_dict

# Prompt by design: callers answer 503 within seconds when storage is down (shared/queue.py).
CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 20.0
# Idle connections kept per origin: enough for every function thread
# (PYTHON_THREADPOOL_THREAD_COUNT) and the local host's I/O threads.
POOL_SIZE = 64
# Bytes read at a time from a streamed answer (a blob download).
BLOCK_SIZE = 65536

Verify = bool | str
Cert = str | tuple[str, str] | None

# A kept-alive connection the server closed while it was idle fails like this before any answer.
_STALE_CONNECTION = (
    ConnectionResetError,  # http.client.RemoteDisconnected among them
    ConnectionAbortedError,
    BrokenPipeError,
    ssl.SSLEOFError,
)
_DECODERS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class StorageTransport(HttpTransport[HttpRequest, HttpResponse]):
    """An azure-core transport over pooled kept-alive `http.client` connections (see the
    module's docstring)."""

    def __init__(
        self,
        *,
        connection_timeout: float = CONNECT_TIMEOUT_SECONDS,
        read_timeout: float = READ_TIMEOUT_SECONDS,
        connection_verify: Verify = True,
        connection_cert: Cert = None,
        pool_size: int = POOL_SIZE,
    ) -> None:
        self._connect_timeout = connection_timeout
        self._read_timeout = read_timeout
        self._verify = connection_verify
        self._cert = connection_cert
        self._pool_size = pool_size
        self._origins: dict[tuple[Any, ...], _Origin] = {}
        self._lock = threading.Lock()
        self._fallback: RequestsTransport | None = None

    def __enter__(self) -> StorageTransport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def open(self) -> None:
        """Nothing to open: connections open on demand."""

    def close(self) -> None:
        """Close the idle connections; the transport stays usable and opens new ones."""
        with self._lock:
            origins = list(self._origins.values())
            fallback, self._fallback = self._fallback, None
        for origin in origins:
            origin.close()
        if fallback is not None:
            fallback.close()

    def send(self, request: HttpRequest, **kwargs: Any) -> HttpResponse:
        """Send the request; raise azure-core's connection errors, as its transports do."""
        data = getattr(request, "data", None)
        if (
            kwargs.get("proxies")
            or not hasattr(request, "content")  # azure-core's legacy HttpRequest
            or getattr(request, "files", None)
            or isinstance(data, Mapping)  # a form
        ):
            return self._requests_transport().send(request, **kwargs)  # type: ignore[no-any-return]
        kwargs.pop("proxies", None)
        stream = bool(kwargs.pop("stream", False))
        connect_timeout = kwargs.pop("connection_timeout", self._connect_timeout)
        read_timeout = kwargs.pop("read_timeout", self._read_timeout)
        verify: Verify = kwargs.pop("connection_verify", self._verify)
        cert: Cert = kwargs.pop("connection_cert", self._cert)
        url = urlsplit(request.url)
        origin = self._origin(url.scheme, url.hostname or "", url.port, verify, cert)
        target = (url.path or "/") + ("?" + url.query if url.query else "")
        body = data.encode() if isinstance(data, str) else data
        # A body sent once cannot go again: only bytes are resent on a fresh connection.
        replayable = body is None or isinstance(body, (bytes, bytearray, memoryview))
        while True:
            connection, reused = origin.take(connect_timeout)
            try:
                answer = _exchange(
                    connection, reused, request.method, target, request.headers, body,
                    read_timeout,
                )  # fmt: skip
            except _Stale as stale:
                if replayable:
                    continue  # the server closed it while idle; the request never reached it
                raise ServiceResponseError(stale.message, error=stale.inner_exception) from stale
            response = _Response(request, answer, connection, origin)
            if not stream:
                response.read_body()
            return response

    def _origin(
        self, scheme: str, host: str, port: int | None, verify: Verify, cert: Cert
    ) -> _Origin:
        key = (scheme, host, port, verify, cert)
        origin = self._origins.get(key)
        if origin is None:
            with self._lock:
                origin = self._origins.get(key)
                if origin is None:
                    tls = tls_context(verify, cert) if scheme == "https" else None
                    origin = _Origin(host, port, tls, self._pool_size)
                    self._origins[key] = origin
        return origin

    def _requests_transport(self) -> RequestsTransport:
        with self._lock:
            if self._fallback is None:
                # azure-core applies use_env_settings only to a session it makes itself
                # (RequestsTransport._init_session in azure/core/pipeline/transport/
                # _requests_basic.py): a session handed to it must say so on its own.
                session = requests.Session()
                session.trust_env = False  # proxies only as the clients' `proxies=` option gives
                self._fallback = RequestsTransport(
                    session=session,
                    session_owner=True,
                    connection_timeout=self._connect_timeout,
                    read_timeout=self._read_timeout,
                    connection_verify=self._verify,
                    connection_cert=self._cert,
                )
            return self._fallback


@functools.cache
def shared_transport(connection_verify: Verify = True) -> StorageTransport:
    """The process's storage transport (one per CA setting), shared by every storage client."""
    transport = StorageTransport(connection_verify=connection_verify)
    atexit.register(transport.close)  # its idle sockets, closed before the interpreter goes
    return transport


def tls_context(verify: Verify, cert: Cert) -> ssl.SSLContext:
    """A client TLS context as `connection_verify` and `connection_cert` describe it.

    True trusts Python's default store (the system's, or SSL_CERT_FILE / SSL_CERT_DIR); a path
    trusts only the CA bundle file or directory there, as `requests` does with it.
    """
    if isinstance(verify, str):
        if Path(verify).is_dir():
            context = ssl.create_default_context(capath=verify)
        else:
            context = ssl.create_default_context(cafile=verify)
    else:
        context = ssl.create_default_context()
        if verify is False:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    if isinstance(cert, tuple):
        context.load_cert_chain(cert[0], cert[1])
    elif cert:
        context.load_cert_chain(cert)
    return context


class _Stale(ServiceResponseError):
    """A reused connection the server had closed: nothing of the request reached it."""


class _Origin:
    """Kept-alive connections to one host and port with one TLS setting."""

    def __init__(self, host: str, port: int | None, tls: ssl.SSLContext | None, size: int) -> None:
        self._host = host
        self._port = port
        self._tls = tls
        self._size = size
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def take(self, connect_timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        """An idle connection (True: reused) or a new, unconnected one (False)."""
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        if self._tls is not None:
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=connect_timeout, context=self._tls
            ), False
        return http.client.HTTPConnection(self._host, self._port, timeout=connect_timeout), False

    def give_back(self, connection: http.client.HTTPConnection) -> None:
        """Keep a connection whose answer was read in full for the next request."""
        with self._lock:
            if len(self._idle) < self._size:
                self._idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        """Close the idle connections."""
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


def _exchange(
    connection: http.client.HTTPConnection,
    reused: bool,
    method: str,
    target: str,
    headers: Mapping[str, str],
    body: Any,
    read_timeout: float,
) -> http.client.HTTPResponse:
    """Send one request and read the answer's status and headers; azure-core's errors."""
    if not reused:
        try:
            connection.connect()
        except TimeoutError as error:
            connection.close()
            raise ServiceRequestTimeoutError(
                f"{method} {target}: {error!r}", error=error
            ) from error
        except OSError as error:
            connection.close()
            raise ServiceRequestError(f"{method} {target}: {error!r}", error=error) from error
    assert connection.sock is not None
    connection.sock.settimeout(read_timeout)
    try:
        connection.request(method, target, body=body, headers=headers)
    except _STALE_CONNECTION as error:
        connection.close()
        kind: type[ServiceRequestError | ServiceResponseError] = (
            _Stale if reused else ServiceRequestError
        )
        raise kind(f"{method} {target}: {error!r}", error=error) from error
    except (OSError, http.client.HTTPException) as error:
        connection.close()  # a body not sent in full: the service ignores the request
        raise ServiceRequestError(f"{method} {target}: {error!r}", error=error) from error
    try:
        return connection.getresponse()
    except TimeoutError as error:
        connection.close()
        raise ServiceResponseTimeoutError(f"{method} {target}: {error!r}", error=error) from error
    except _STALE_CONNECTION as error:
        connection.close()
        kind = _Stale if reused else ServiceResponseError
        raise kind(f"{method} {target}: {error!r}", error=error) from error
    except (OSError, http.client.HTTPException) as error:
        connection.close()
        raise ServiceResponseError(f"{method} {target}: {error!r}", error=error) from error


class _Response(HttpResponseImpl):
    """An answer read from one pooled connection, which goes back to the pool once the body is
    read in full (or is closed, if not)."""

    def __init__(
        self,
        request: HttpRequest,
        answer: http.client.HTTPResponse,
        connection: http.client.HTTPConnection,
        origin: _Origin,
    ) -> None:
        headers = case_insensitive_dict()
        for name, value in answer.getheaders():
            # Repeated fields joined as one, as requests and urllib3 do.
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        super().__init__(
            request=request,
            internal_response=answer,
            status_code=answer.status,
            reason=answer.reason,
            headers=headers,
            content_type=headers.get("Content-Type"),
            block_size=BLOCK_SIZE,
            stream_download_generator=_Download,
        )
        self._answer = answer
        self._connection: http.client.HTTPConnection | None = connection
        self._origin = origin

    def read_body(self) -> None:
        """Read the whole body now (decoded, as azure-core's transports give it) and release
        the connection."""
        try:
            content = _read(self._answer, None)
            decoding = _DECODERS.get(self._content_encoding())
            self._content = zlib.decompress(content, decoding) if decoding and content else content
            self._is_stream_consumed = True
        finally:
            self.close()

    def _content_encoding(self) -> str:
        return (self._headers.get("Content-Encoding") or "").strip().lower()

    def close(self) -> None:
        """Release the connection: back to the pool if the body was read in full."""
        if self._is_closed:
            return
        self._is_closed = True
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if self._answer.isclosed() and not self._answer.will_close:
            self._origin.give_back(connection)
        else:
            self._answer.close()
            connection.close()


class _Download(Iterator[bytes]):
    """The body in blocks, decoded (gzip, deflate) unless `decompress` is False; the SDKs read
    it as azure-core's own download generators (`.response`, and attributes set on it)."""

    def __init__(
        self, pipeline: object, response: _Response, *, decompress: bool = True, **_: Any
    ) -> None:
        self.pipeline = pipeline
        self.response = response
        self.request = response.request
        self.block_size = BLOCK_SIZE
        self.content_length = int(response.headers.get("Content-Length") or 0)
        decoding = _DECODERS.get(response._content_encoding()) if decompress else None
        self._decoder = zlib.decompressobj(decoding) if decoding else None

    def __len__(self) -> int:
        return self.content_length

    def __next__(self) -> bytes:
        try:
            while block := _read(self.response._answer, BLOCK_SIZE):
                if self._decoder is None:
                    return block
                if decoded := self._decoder.decompress(block):
                    return decoded
            rest = self._decoder.flush() if self._decoder is not None else b""
            self._decoder = None
        except BaseException:
            self.response.close()
            raise
        self.response.close()
        if rest:
            return rest
        raise StopIteration


def _read(answer: http.client.HTTPResponse, size: int | None) -> bytes:
    try:
        block = answer.read(size)
        if size and not block and answer.length:
            # http.client ends a block-wise read early without a word when the connection
            # closes before Content-Length bytes (its readinto says so); a whole read raises.
            raise http.client.IncompleteRead(b"", answer.length)
        return block
    except http.client.IncompleteRead as error:
        raise IncompleteReadError(error, error=error) from error
    except TimeoutError as error:
        raise ServiceResponseTimeoutError(error, error=error) from error
    except (OSError, http.client.HTTPException) as error:
        raise ServiceResponseError(error, error=error) from error
