"""The HTTP transport under every storage client: kept-alive connections shared by the process.

Why it exists: each message costs about four storage calls (one to accept, three to deliver),
and azure-core's default transport, `RequestsTransport`, was the largest part of a call's CPU
(`requests` merges settings and looks up proxies and netrc in the environment on every call,
then wraps urllib3).
CPU per call of the SDK's clients against Azurite, one call at a time (docs/performance.md
"Storage through the Azure SDKs"): the SDK's pipeline alone, with no network, 0.25-0.37 ms; on
`RequestsTransport` 1.05-1.4 ms in all; on this transport 0.45-0.7 ms. The answer is parsed by
httptools (llhttp, Node.js's parser, in C): one exchange cost 25-28 us of CPU that way and 136 us
through `http.client`, which parses headers with the `email` package and checks each request
header through regular expressions (h11 cost 152 us; urllib3 runs on `http.client`). Run
alternately with the `http.client` version of this transport, the SDK's calls cost 75-140 us
less each.

It is only the last step of the SDK's pipeline (`transport=`): authentication (Shared Key, SAS,
Entra tokens and their challenges), retries, error types, API versions, request ids, user agent
and tracing stay the SDK's policies. It writes each request's head (request line, the SDK's
headers, Host, Content-Length and `Accept-Encoding: identity` as `http.client` adds them)
over a kept-alive socket from a pool per origin and TLS setting, reads nothing from the
environment per call, and like azure-core's own transports follows no redirect and retries
nothing but a request that a reused connection never carried (the server had closed it while
idle). It honours the SDK's per-call `connection_timeout`, `read_timeout`, `connection_verify`
(False, or a CA bundle file or directory; True trusts the default store, which SSL_CERT_FILE
changes), `connection_cert` and `stream`. A call through a proxy given as the clients'
`proxies=` option, a form, a file upload or a body that is a stream goes to azure-core's
`RequestsTransport`, on a session that does not read the environment.

One instance serves every client of a process (`shared_transport()`): closing a client only
closes the idle connections, and the transport opens new ones on its next call.
"""

from __future__ import annotations

import atexit
import collections
import functools
import re
import socket
import ssl
import threading
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httptools
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
# Bytes read at a time from the socket, and given at a time from a streamed answer.
BLOCK_SIZE = 65536
# An answer's status line and headers may take this much at most (http.client allows 100
# lines of 64 KiB; Azure Storage sends about 1 KiB).
MAX_HEAD_BYTES = 256 * 1024
# A body up to this size goes out in the same send as the head.
_JOIN_BODY_BYTES = 65536

Verify = bool | str
Cert = str | tuple[str, str] | None

# A kept-alive connection the server closed while it was idle fails like this before any answer.
_STALE_CONNECTION = (
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
    ssl.SSLEOFError,
)
_DECODERS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
# A request head nothing can end a line of early, checked as http.client does (its
# _is_legal_header_name, _is_illegal_header_value and _contains_disallowed_url_pchar_re), but
# without the folded header lines HTTP/1.1 deprecates (RFC 9112, 5.2).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKENS = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+(?:,[!#$%&'*+\-.^_`|~0-9A-Za-z]+)*")
_ILLEGAL_VALUE = re.compile(r"[\r\n\x00]")
_ILLEGAL_TARGET = re.compile(r"[\x00-\x20\x7f]")
# http.client sends `Content-Length: 0` for these methods when there is no body.
_METHODS_EXPECTING_BODY = frozenset({"PATCH", "POST", "PUT"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


class StorageTransport(HttpTransport[HttpRequest, HttpResponse]):
    """An azure-core transport over pooled kept-alive sockets (see the module's docstring)."""

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
        body = getattr(request, "content", None)
        if isinstance(body, str):
            body = body.encode()
        elif isinstance(body, (bytearray, memoryview)):
            body = bytes(body)
        if (
            kwargs.get("proxies")
            or not hasattr(request, "content")  # azure-core's legacy HttpRequest
            or getattr(request, "files", None)
            or isinstance(getattr(request, "data", None), Mapping)  # a form
            or not (body is None or isinstance(body, bytes))  # a stream
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
        method = request.method.upper()
        target = (url.path or "/") + ("?" + url.query if url.query else "")
        head = _request_head(method, target, origin.host_header, request.headers, body)
        while True:
            connection, reused = origin.take()
            try:
                answer = connection.exchange(
                    head, body, connect_timeout, read_timeout, reused, method == "HEAD"
                )
            except _Stale:
                continue  # the server closed it while idle; the request never reached it
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
                    origin = _Origin(
                        host, port or _DEFAULT_PORTS.get(scheme, 80), tls, self._pool_size
                    )
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


def _request_head(
    method: str, target: str, host: str, headers: Mapping[str, str], body: bytes | None
) -> bytes:
    """The request line and headers; ValueError (as http.client raises) for a method, target,
    header name or value that could end a line early or smuggle another."""
    names, values = [], []
    for name, value in headers.items():
        names.append(name)
        values.append(str(value))
    if (
        not _TOKEN.fullmatch(method)
        or _ILLEGAL_TARGET.search(target)
        or (names and not _TOKENS.fullmatch(",".join(names)))
        or _ILLEGAL_VALUE.search("".join(values))
    ):
        raise ValueError(_unwritable(method, target, names, values))
    lines = [f"{method} {target} HTTP/1.1", *map("{}: {}".format, names, values)]
    present = {name.lower() for name in names}
    if "host" not in present:
        lines.append(f"Host: {host}")
    if "accept-encoding" not in present:
        lines.append("Accept-Encoding: identity")
    if "content-length" not in present and "transfer-encoding" not in present:
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        elif method in _METHODS_EXPECTING_BODY:
            lines.append("Content-Length: 0")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")


def _unwritable(method: str, target: str, names: list[str], values: list[str]) -> str:
    """What of a request could not be written: the method, the URL or a header, by name (a
    header's value is never repeated: it may be a credential)."""
    if not _TOKEN.fullmatch(method):
        what = f"the method {method!r}"
    elif _ILLEGAL_TARGET.search(target):
        what = "the URL"
    else:
        bad = next(
            name
            for name, value in zip(names, values, strict=True)
            if not _TOKEN.fullmatch(name) or _ILLEGAL_VALUE.search(value)
        )
        what = f"the header {bad!r}"
    path = target.partition("?")[0]
    return (
        f"{what} of a request to {path!r} cannot be written as HTTP/1.1: it holds a line break, "
        "a control character or, in a name, a separator"
    )


def _where(head: bytes) -> str:
    """A request's method and path for error messages, `PUT /account/mail/messages`: never its
    query, which may hold a SAS."""
    line = head[: head.find(b" HTTP/1.1")].decode("latin-1")
    return line.partition("?")[0]


class _Stale(ServiceResponseError):
    """A reused connection the server had closed: nothing of the request reached it."""


class _Origin:
    """Kept-alive connections to one host and port with one TLS setting."""

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None, size: int) -> None:
        self._host = host
        self._port = port
        self._tls = tls
        self._size = size
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        name = host if host.isascii() else host.encode("idna").decode("ascii")
        name = f"[{name}]" if ":" in name else name
        default = 443 if tls is not None else 80
        self.host_header = name if port == default else f"{name}:{port}"

    def take(self) -> tuple[_Connection, bool]:
        """An idle connection (True: reused) or a new, unconnected one (False)."""
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return _Connection(self._host, self._port, self._tls), False

    def give_back(self, connection: _Connection) -> None:
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


class _Connection:
    """One socket (TLS or not) that carries one exchange at a time."""

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None) -> None:
        self._host = host
        self._port = port
        self._tls = tls
        self._sock: socket.socket | None = None
        self._timeout: float | None = None

    def exchange(
        self,
        head: bytes,
        body: Any,
        connect_timeout: float,
        read_timeout: float,
        reused: bool,
        head_only: bool,
    ) -> _Answer:
        """Send one request and read the answer up to the end of its headers."""
        if self._sock is None:
            self._connect(connect_timeout, head)
        sock = self._sock
        assert sock is not None
        if self._timeout != read_timeout:
            sock.settimeout(read_timeout)
            self._timeout = read_timeout
        try:
            if body is not None and len(body) <= _JOIN_BODY_BYTES:
                sock.sendall(head + body)
            else:
                sock.sendall(head)
                if body is not None:
                    sock.sendall(body)
        except _STALE_CONNECTION as error:
            self.close()
            kind: type[ServiceRequestError | ServiceResponseError] = (
                _Stale if reused else ServiceRequestError
            )
            raise kind(f"{_where(head)}: {error!r}", error=error) from error
        except OSError as error:
            self.close()  # a body not sent in full: the service ignores the request
            raise ServiceRequestError(f"{_where(head)}: {error!r}", error=error) from error
        answer = _Answer(self, head, head_only)
        try:
            answer.read_head()
        except _Stale as stale:
            self.close()
            if reused:
                raise
            raise ServiceResponseError(stale.message, error=stale.inner_exception) from stale
        except BaseException:
            self.close()
            raise
        return answer

    def recv(self, size: int) -> bytes:
        """Up to `size` bytes; b"" once the server closed the connection."""
        assert self._sock is not None
        return self._sock.recv(size)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _connect(self, connect_timeout: float, head: bytes) -> None:
        try:
            sock = socket.create_connection((self._host, self._port), timeout=connect_timeout)
        except TimeoutError as error:
            raise ServiceRequestTimeoutError(f"{_where(head)}: {error!r}", error=error) from error
        except OSError as error:
            raise ServiceRequestError(f"{_where(head)}: {error!r}", error=error) from error
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls is not None:
            try:
                sock = self._tls.wrap_socket(sock, server_hostname=self._host)
            except TimeoutError as error:
                sock.close()
                raise ServiceRequestTimeoutError(
                    f"{_where(head)}: {error!r}", error=error
                ) from error
            except OSError as error:  # ssl.SSLError among them: a certificate not trusted
                sock.close()
                raise ServiceRequestError(f"{_where(head)}: {error!r}", error=error) from error
        self._sock = sock
        self._timeout = connect_timeout


class _Answer:
    """One answer as httptools parses it from the connection: the status and headers first,
    then the body in pieces as it is read."""

    def __init__(self, connection: _Connection, head: bytes, head_only: bool) -> None:
        self._connection = connection
        self._head = head
        self._head_only = head_only
        self._parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[str, str]] = []
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self.pieces: collections.deque[bytes] = collections.deque()
        self.head_done = False
        self.complete = False
        self.reusable = False
        self.repeated = False  # a header name that comes more than once
        self._received = 0
        self._head_bytes = 0  # of the headers parsed so far
        self._until_close = False

    # ---- httptools' callbacks ----

    def on_status(self, reason: bytes) -> None:
        self.reason = reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers.append((name, value))
        self._head_bytes += len(name) + len(value) + 4  # ": " and CRLF

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        raw, self._raw_headers = self._raw_headers, []
        if 100 <= status < 200:  # an interim answer: the final one follows
            return
        self.status = status
        self.head_done = True
        self.headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in raw]
        names = {name.lower() for name, _ in self.headers}
        self.repeated = len(names) < len(self.headers)
        self._until_close = "content-length" not in names and "transfer-encoding" not in names

    def on_body(self, piece: bytes) -> None:
        if not self._head_only:
            self.pieces.append(piece)

    def on_message_complete(self) -> None:
        if self.head_done:
            self.complete = True
            self.reusable = self._parser.should_keep_alive()

    # ---- reading ----

    def read_head(self) -> None:
        """Read until the final answer's headers are in; what follows them is kept."""
        while not self.head_done:
            if not self._feed(first=self._received == 0):
                raise ServiceResponseError(
                    f"{_where(self._head)}: the connection closed before the answer's headers"
                )
            # Unfinished past the bound, or finished in the last block but counted over it.
            if self._head_bytes > MAX_HEAD_BYTES or (
                not self.head_done and self._received > MAX_HEAD_BYTES
            ):
                raise ServiceResponseError(
                    f"{_where(self._head)}: an answer's head longer than {MAX_HEAD_BYTES} bytes"
                )
        if self._head_only and not self.complete:
            # No body follows an answer to HEAD, whatever its Content-Length says (on_body
            # keeps nothing for one), as http.client reads it.
            self.complete = True
            self.reusable = self._parser.should_keep_alive()

    def read_more(self) -> bool:
        """Read one more block of the body; False once the answer is complete."""
        if self.complete:
            return False
        if not self._feed(first=False):
            if not self._until_close:
                length = self.header("Content-Length")
                delimited = f"Content-Length {length}" if length else "chunked"
                raise IncompleteReadError(
                    f"{_where(self._head)}: the connection closed before the end of the body"
                    f" ({delimited})"
                )
            self.complete = True  # a body delimited by the connection's end
        return True

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((v for n, v in self.headers if n.lower() == lowered), None)

    def _feed(self, *, first: bool) -> bool:
        """One block from the socket into the parser; False if the server closed instead."""
        try:
            block = self._connection.recv(BLOCK_SIZE)
        except TimeoutError as error:
            message = f"{_where(self._head)}: {error!r}"
            raise ServiceResponseTimeoutError(message, error=error) from error
        except _STALE_CONNECTION as error:
            kind = _Stale if first else ServiceResponseError
            raise kind(f"{_where(self._head)}: {error!r}", error=error) from error
        except OSError as error:
            raise ServiceResponseError(f"{_where(self._head)}: {error!r}", error=error) from error
        if not block:
            if first:
                raise _Stale(f"{_where(self._head)}: the server closed the connection unanswered")
            return False
        self._received += len(block)
        try:
            self._parser.feed_data(block)
        except httptools.HttpParserError as error:
            message = f"{_where(self._head)}: an answer that is not HTTP: {error}"
            raise ServiceResponseError(message, error=error) from error
        return True


class _Response(HttpResponseImpl):
    """An answer read from one pooled connection, which goes back to the pool once the body is
    read in full (or is closed, if not)."""

    def __init__(
        self, request: HttpRequest, answer: _Answer, connection: _Connection, origin: _Origin
    ) -> None:
        headers = case_insensitive_dict(answer.headers)
        if answer.repeated:  # joined as one field, as requests and urllib3 do
            headers = case_insensitive_dict()
            for name, value in answer.headers:
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
        self._connection: _Connection | None = connection
        self._origin = origin

    def read_body(self) -> None:
        """Read the whole body now (decoded, as azure-core's transports give it) and release
        the connection."""
        try:
            while self._answer.read_more():
                pass
            content = b"".join(self._answer.pieces)
            self._answer.pieces.clear()
            decoding = _DECODERS.get(self._content_encoding())
            self._content = zlib.decompress(content, decoding) if decoding and content else content
            self._is_stream_consumed = True
        finally:
            self.close()

    def next_piece(self) -> bytes:
        """The next piece of the body as it arrives; b"" at its end."""
        answer = self._answer
        while not answer.pieces:
            if not answer.read_more():
                return b""
        return answer.pieces.popleft()

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
        if self._answer.complete and self._answer.reusable:
            self._origin.give_back(connection)
        else:
            connection.close()


class _Download(Iterator[bytes]):
    """The body in pieces, decoded (gzip, deflate) unless `decompress` is False; the SDKs read
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
            while piece := self.response.next_piece():
                if self._decoder is None:
                    return piece
                if decoded := self._decoder.decompress(piece):
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
