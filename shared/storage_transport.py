"""The HTTP transport under every storage client: urllib3's pooled connections, shared by the
process.

Why it exists: each message costs two to four storage calls, and under the Azure SDK's pipeline
azure-core's default transport, `RequestsTransport`, was the largest part of a call's CPU:
`requests` merges settings, reads the environment for proxies and netrc on every call (even on
a session handed to it with `use_env_settings=False`) and wraps urllib3 in its own objects.
This transport hands each request straight to a urllib3 connection pool. Measured per call
against Azurite (`python -m bench.transport`, docs/performance.md "Storage calls"): the SDK's
pipeline on `RequestsTransport` about 1.0-1.2 ms of CPU, on this transport about 0.6-0.7 ms.

It is only the last step of the SDK's pipeline (`transport=`): authentication (Shared Key,
SAS, Entra tokens and their challenges), retries, error types, API versions, request ids,
user agent and tracing stay the SDK's policies; urllib3 keeps connections alive, verifies TLS
and decodes bodies. Like azure-core's own transports it retries nothing itself (urllib3's
retries are off) and follows no redirects. It honours the SDK's per-call `connection_timeout`,
`read_timeout`, `connection_verify` (False, or a CA bundle file or directory; True trusts the
default store, which SSL_CERT_FILE changes) and `connection_cert`. A call through a proxy given
as the clients' `proxies=` option, a form or a file upload goes to azure-core's
`RequestsTransport` on a session that does not read the environment.

One instance serves every client of a process (`shared_transport()`): closing a client closes
only the idle connections, and the transport opens new ones on its next call.
"""

from __future__ import annotations

import atexit
import functools
import http.client
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import requests
import urllib3
from azure.core.exceptions import (
    DecodeError,
    IncompleteReadError,
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.core.pipeline.transport import HttpTransport, RequestsTransport
from azure.core.rest import HttpRequest, HttpResponse
from azure.core.rest._http_response_impl import HttpResponseImpl
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ProxyError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.exceptions import (
    DecodeError as Urllib3DecodeError,
)

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


class StorageTransport(HttpTransport[HttpRequest, HttpResponse]):
    """An azure-core transport over a urllib3 pool manager (see the module's docstring)."""

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
        # A pool per origin and TLS setting; a thread finding every connection busy opens one
        # more and closes it afterwards (block=False), as requests' pools do.
        self._pools = urllib3.PoolManager(maxsize=pool_size, retries=False)
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
        self._pools.clear()
        with self._lock:
            fallback, self._fallback = self._fallback, None
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
        stream = bool(kwargs.get("stream", False))
        timeout = urllib3.Timeout(
            connect=kwargs.get("connection_timeout", self._connect_timeout),
            read=kwargs.get("read_timeout", self._read_timeout),
        )
        tls = _tls_options(
            kwargs.get("connection_verify", self._verify), kwargs.get("connection_cert", self._cert)
        )
        url = urllib3.util.parse_url(request.url)
        try:
            pool = self._pools.connection_from_url(request.url, pool_kwargs=tls)
            answer = pool.urlopen(
                request.method,
                url.request_uri,
                body=data,
                headers=dict(request.headers),
                retries=False,
                redirect=False,
                timeout=timeout,
                preload_content=not stream,
                assert_same_host=False,
            )
        except Exception as error:
            raise _azure_error(error) from error
        return _Response(request, answer, stream=stream)

    def _requests_transport(self) -> RequestsTransport:
        with self._lock:
            if self._fallback is None:
                session = requests.Session()
                session.trust_env = False  # proxies only as the clients' `proxies=` option gives
                self._fallback = RequestsTransport(
                    session=session,
                    session_owner=True,
                    use_env_settings=False,
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


def _tls_options(verify: Verify, cert: Cert) -> dict[str, Any]:
    """urllib3's pool options for `connection_verify` and `connection_cert`, as `requests`
    reads them: a path is a CA bundle file or directory, False verifies nothing."""
    options: dict[str, Any] = {"cert_reqs": "CERT_REQUIRED" if verify else "CERT_NONE"}
    if isinstance(verify, str):
        options["ca_cert_dir" if Path(verify).is_dir() else "ca_certs"] = verify
    if isinstance(cert, tuple):
        options["cert_file"], options["key_file"] = cert
    elif cert:
        options["cert_file"] = cert
    return options


def _azure_error(error: Exception) -> Exception:
    """urllib3's error as the azure-core error the SDK's retry policy knows, as
    `RequestsTransport` maps them; anything else unchanged."""
    if isinstance(error, ConnectTimeoutError):
        return ServiceRequestTimeoutError(error, error=error)
    if isinstance(error, ReadTimeoutError):
        return ServiceResponseTimeoutError(error, error=error)
    if isinstance(error, (NewConnectionError, SSLError, ProxyError)):
        return ServiceRequestError(error, error=error)
    if any(isinstance(part, http.client.IncompleteRead) for part in (error, *error.args)):
        # A body shorter than its Content-Length (urllib3 wraps it in a ProtocolError).
        return IncompleteReadError(error, error=error)
    if isinstance(error, Urllib3DecodeError):
        return DecodeError(error, error=error)
    if isinstance(error, (ProtocolError, HTTPError, OSError)):
        # The connection dropped or reset after the request began: the SDK's read retry.
        return ServiceResponseError(error, error=error)
    return error


class _Response(HttpResponseImpl):
    """An answer from urllib3: read in full at once unless streamed, and its connection back
    in the pool once its body has been read."""

    def __init__(
        self, request: HttpRequest, answer: urllib3.BaseHTTPResponse, *, stream: bool
    ) -> None:
        super().__init__(
            request=request,
            internal_response=answer,
            status_code=answer.status,
            reason=answer.reason or "",
            headers=answer.headers,  # case-insensitive; repeated fields joined, as requests'
            content_type=answer.headers.get("Content-Type"),
            block_size=BLOCK_SIZE,
            stream_download_generator=_Download,
        )
        if not stream:
            self._content = answer.data  # preloaded, decoded; the connection is back already
            self._is_stream_consumed = True
            self._is_closed = True

    def close(self) -> None:
        """Release the connection: back to the pool once its body was read in full (urllib3
        has then put it back already), closed if not, as `requests` does."""
        if not self._is_closed:
            self._is_closed = True
            self._internal_response.close()
            self._internal_response.release_conn()


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
        answer = response._internal_response
        self._blocks: Iterator[bytes] = answer.stream(BLOCK_SIZE, decode_content=decompress)

    def __len__(self) -> int:
        return self.content_length

    def __next__(self) -> bytes:
        try:
            return next(self._blocks)
        except StopIteration:
            self.response.close()
            raise
        except Exception as error:
            self.response.close()  # a half-read body: the connection is closed, not reused
            raise _azure_error(error) from error
