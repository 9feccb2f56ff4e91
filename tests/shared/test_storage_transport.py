"""The storage transport's own HTTP behaviour, against a scripted loopback server."""

from __future__ import annotations

import gzip
import io
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme
from azure.core.credentials import AccessToken
from azure.core.exceptions import (
    IncompleteReadError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.core.rest import HttpRequest
from azure.storage.queue import LinearRetry, QueueClient

from shared.storage_transport import BLOCK_SIZE, StorageTransport

ACCOUNT_KEY = "c2VjcmV0LWtleS1mb3ItdGVzdHM="
# The Queue service's answer to Put Message.
SENT = (
    b'<?xml version="1.0" encoding="utf-8"?><QueueMessagesList><QueueMessage>'
    b"<MessageId>m-1</MessageId><InsertionTime>Fri, 04 Dec 2026 21:00:00 GMT</InsertionTime>"
    b"<ExpirationTime>Fri, 11 Dec 2026 21:00:00 GMT</ExpirationTime><PopReceipt>p</PopReceipt>"
    b"<TimeNextVisible>Fri, 04 Dec 2026 21:00:00 GMT</TimeNextVisible>"
    b"</QueueMessage></QueueMessagesList>"
)


def no_retry() -> LinearRetry:
    # One per client: a pipeline links its policies to its own transport.
    return LinearRetry(retry_total=0)


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    close_silently: bool = False  # drop the connection after answering, without saying so
    delay: float = 0.0
    declared_length: int | None = None  # a Content-Length other than the body's
    raw: bytes | None = None  # written as it is instead of an answer


@dataclass
class Script:
    """What the server answers, in order (then 200), and what it was asked, from which port."""

    answers: list[Answer] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)

    @property
    def connections(self) -> int:
        return len({r["client_port"] for r in self.requests})


class Server:
    def __init__(self, url: str, script: Script) -> None:
        self.url = url
        self.script = script


def serve(tls: ssl.SSLContext | None = None) -> Iterator[Server]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            script.requests.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": dict(self.headers),
                    "body": self.rfile.read(length),
                    "client_port": self.client_address[1],
                }
            )
            answer = script.answers.pop(0) if script.answers else Answer()
            time.sleep(answer.delay)
            if answer.raw is not None:
                self.wfile.write(answer.raw)
                self.close_connection = answer.close_silently
                return
            self.send_response(answer.status)
            for name, value in answer.headers.items():
                self.send_header(name, value)
            length = len(answer.body) if answer.declared_length is None else answer.declared_length
            self.send_header("Content-Length", str(length))
            self.end_headers()
            self.wfile.write(answer.body)
            if answer.close_silently or answer.declared_length is not None:
                self.close_connection = True

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    scheme = "https" if tls else "http"
    yield Server(f"{scheme}://127.0.0.1:{httpd.server_address[1]}", script)
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    yield from serve()


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_server(ca: trustme.CA) -> Iterator[Server]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    yield from serve(context)


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def transport() -> Iterator[StorageTransport]:
    with StorageTransport() as opened:
        yield opened


def get(url: str) -> HttpRequest:
    return HttpRequest("GET", url)


class Credential:
    """A token credential counting its calls, as managed identity's would answer."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[str, ...], dict[str, Any]]] = []

    def get_token(self, *scopes: str, **options: Any) -> AccessToken:
        self.calls.append((scopes, options))
        expires = int(datetime.now(timezone.utc).timestamp()) + 3600
        return AccessToken(f"token-{len(self.calls)}", expires)


def test_should_send_every_call_over_one_kept_alive_connection(
    server: Server, transport: StorageTransport
) -> None:
    answers = [transport.send(get(f"{server.url}/account/t{n}")) for n in range(5)]

    assert [a.status_code for a in answers] == [200] * 5
    assert [r["path"] for r in server.script.requests] == [f"/account/t{n}" for n in range(5)]
    assert server.script.connections == 1


def test_should_resend_on_a_new_connection_when_the_server_closed_the_idle_one(
    server: Server, transport: StorageTransport
) -> None:
    server.script.answers = [Answer(body=b"first", close_silently=True)]
    assert transport.send(get(server.url + "/a")).content == b"first"

    again = transport.send(HttpRequest("PUT", server.url + "/b", content=b"{}"))

    assert again.status_code == 200
    # Once each: the closed connection carried nothing of the second request.
    assert [r["path"] for r in server.script.requests] == ["/a", "/b"]
    assert server.script.requests[1]["body"] == b"{}"
    assert server.script.connections == 2


def test_should_give_up_on_a_server_that_does_not_answer_within_the_read_timeout(
    server: Server, transport: StorageTransport
) -> None:
    server.script.answers = [Answer(delay=1.0)]

    started = time.monotonic()
    with pytest.raises(ServiceResponseTimeoutError):
        transport.send(get(server.url + "/slow"), read_timeout=0.2)

    assert time.monotonic() - started < 0.9
    assert transport.send(get(server.url + "/next")).status_code == 200
    assert server.script.connections == 2  # the timed-out connection was not pooled


def test_should_raise_a_request_error_when_nothing_listens(transport: StorageTransport) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free, and nothing listens on it once closed

    with pytest.raises(ServiceRequestError):
        transport.send(get(f"http://127.0.0.1:{port}/account"))


def test_should_stream_a_body_and_reuse_the_connection_once_it_is_read(
    server: Server, transport: StorageTransport
) -> None:
    body = bytes(range(256)) * 1024  # several blocks
    server.script.answers = [Answer(body=body)]

    response = transport.send(get(server.url + "/blob"), stream=True)
    read = b"".join(response.iter_bytes())
    transport.send(get(server.url + "/next"))

    assert read == body
    assert server.script.connections == 1


def test_should_close_a_connection_whose_streamed_body_was_left_unread(
    server: Server, transport: StorageTransport
) -> None:
    server.script.answers = [Answer(body=bytes(4 * BLOCK_SIZE))]

    response = transport.send(get(server.url + "/blob"), stream=True)
    first = next(response.iter_bytes())
    response.close()  # the rest of the body is still on the wire
    after = transport.send(get(server.url + "/next"))

    assert 0 < len(first) < 4 * BLOCK_SIZE
    assert after.status_code == 200
    assert after.content == b""  # not the rest of the blob, read as the next answer
    assert server.script.connections == 2


def test_should_raise_an_incomplete_read_for_a_body_shorter_than_announced(
    server: Server, transport: StorageTransport
) -> None:
    server.script.answers = [Answer(body=b"partial", declared_length=100)] * 2

    with pytest.raises(IncompleteReadError):
        transport.send(get(server.url + "/whole"))
    streamed = transport.send(get(server.url + "/streamed"), stream=True)
    with pytest.raises(IncompleteReadError):
        b"".join(streamed.iter_bytes())


def test_should_decode_gzip_unless_told_not_to(server: Server, transport: StorageTransport) -> None:
    text = b'{"state": "sent"}' * 100
    packed = gzip.compress(text)
    encoded = Answer(headers={"Content-Encoding": "gzip"}, body=packed)
    server.script.answers = [encoded, encoded]

    whole = transport.send(get(server.url + "/a"))
    raw = transport.send(get(server.url + "/b"), stream=True)

    assert whole.content == text
    assert b"".join(raw.iter_raw()) == packed


def test_should_stay_usable_after_close(server: Server) -> None:
    transport = StorageTransport()
    transport.send(get(server.url + "/a"))

    transport.close()  # as each storage client sharing it does when it closes
    after = transport.send(get(server.url + "/b"))
    transport.close()

    assert after.status_code == 200
    assert server.script.connections == 2


def test_should_not_read_proxies_from_the_environment(
    server: Server, transport: StorageTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing there
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)

    assert transport.send(get(server.url + "/direct")).status_code == 200


def test_should_send_through_a_proxy_given_as_the_clients_option(
    server: Server, transport: StorageTransport
) -> None:
    # The scripted server plays the proxy: a proxied plain-HTTP request names the whole URL.
    target = "http://storage.invalid/account/t1"

    response = transport.send(get(target), proxies={"http": server.url})

    assert response.status_code == 200
    assert server.script.requests[0]["path"] == target


def test_should_send_the_sdks_headers_and_give_errors_their_response(server: Server) -> None:
    server.script.answers = [
        Answer(201, {"Content-Type": "application/xml"}, b""),
        Answer(404, {"x-ms-error-code": "QueueNotFound"}, b""),
    ]
    client = QueueClient(
        f"{server.url}/account",
        "mail",
        credential={"account_name": "account", "account_key": ACCOUNT_KEY},
        transport=StorageTransport(),
        retry_policy=no_retry(),
    )

    client.create_queue()
    with pytest.raises(ResourceNotFoundError) as raised:
        client.get_queue_properties()
    client.close()

    headers = server.script.requests[0]["headers"]
    assert headers["Authorization"].startswith("SharedKey account:")
    assert headers["User-Agent"].startswith("azsdk-python-storage-queue/")
    assert headers["x-ms-client-request-id"]
    assert headers["x-ms-version"] == client.api_version
    assert raised.value.response is not None
    assert raised.value.response.status_code == 404
    # Set by the SDK from the answer, as shared/delivery_events.py reads it.
    assert getattr(raised.value, "error_code", None) == "QueueNotFound"


def test_should_send_an_entra_token_over_https_trusting_only_the_given_ca(
    tls_server: Server, ca_file: str
) -> None:
    tls_server.script.answers = [Answer(201), Answer(201)]
    credential = Credential()
    client = QueueClient(
        f"{tls_server.url}/account",
        "mail",
        credential=credential,
        transport=StorageTransport(connection_verify=ca_file),
        retry_policy=no_retry(),
    )
    untrusting = QueueClient(
        f"{tls_server.url}/account",
        "mail",
        credential=credential,
        transport=StorageTransport(),
        retry_policy=no_retry(),
    )

    client.create_queue()
    with pytest.raises(ServiceRequestError, match="CERTIFICATE_VERIFY_FAILED"):
        untrusting.create_queue()
    # The SDK's per-call option reaches the transport too.
    untrusting.create_queue(connection_verify=ca_file)
    client.close()
    untrusting.close()

    # One token per client (each client's policy keeps its own); the refused handshake sent
    # nothing.
    assert [r["headers"]["Authorization"] for r in tls_server.script.requests] == [
        "Bearer token-1",
        "Bearer token-2",
    ]
    assert {scopes for scopes, _ in credential.calls} == {("https://storage.azure.com/.default",)}


def test_should_answer_a_storage_bearer_challenge_with_a_token_for_its_tenant(
    tls_server: Server, ca_file: str
) -> None:
    challenge = (
        "Bearer authorization_uri=https://login.microsoftonline.com/tenant-2/oauth2/authorize "
        "resource_id=https://storage.azure.com"
    )
    tls_server.script.answers = [
        Answer(401, {"WWW-Authenticate": challenge}),
        Answer(201, {"Content-Type": "application/xml"}, SENT),
    ]
    credential = Credential()
    client = QueueClient(
        f"{tls_server.url}/account",
        "mail",
        credential=credential,
        transport=StorageTransport(connection_verify=ca_file),
        retry_policy=no_retry(),
    )

    client.send_message("hello")
    client.close()

    first, second = tls_server.script.requests
    assert second["body"] == first["body"]  # the same request, sent again with the new token
    assert second["headers"]["Authorization"] == "Bearer token-2"
    assert credential.calls[1][1].get("tenant_id") == "tenant-2"


# The answers the service may give that the tests above do not: the transport parses them with
# httptools, not http.client, so each shape of HTTP/1.1 it must read is here.


def test_should_read_a_chunked_answer_and_keep_the_connection(
    server: Server, transport: StorageTransport
) -> None:
    server.script.answers = [
        Answer(
            raw=b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nx-ms-version: 1\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
    ]

    response = transport.send(get(server.url + "/chunked"))
    after = transport.send(get(server.url + "/next"))

    assert response.content == b"hello world"
    assert response.headers["X-MS-VERSION"] == "1"
    assert after.status_code == 200
    assert server.script.connections == 1


def test_should_read_a_body_that_ends_with_the_connection(
    server: Server, transport: StorageTransport
) -> None:
    server.script.answers = [
        Answer(raw=b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nto the end", close_silently=True)
    ]

    response = transport.send(get(server.url + "/until-close"))
    after = transport.send(get(server.url + "/next"))

    assert response.content == b"to the end"
    assert after.status_code == 200
    assert server.script.connections == 2  # the closed one was not pooled


def test_should_read_no_body_after_an_answer_to_head_and_reuse_the_connection(
    server: Server, transport: StorageTransport
) -> None:
    server.script.answers = [Answer(raw=b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")]

    # The length is the resource's; no body follows an answer to HEAD.
    response = transport.send(HttpRequest("HEAD", server.url + "/blob"))
    after = transport.send(get(server.url + "/next"))

    assert response.status_code == 200
    assert response.headers["Content-Length"] == "5"
    assert response.content == b""
    assert after.status_code == 200
    assert server.script.connections == 1


def test_should_skip_an_interim_answer_and_give_the_final_one(
    server: Server, transport: StorageTransport
) -> None:
    server.script.answers = [
        Answer(
            raw=b"HTTP/1.1 100 Continue\r\n\r\n"
            b'HTTP/1.1 201 Created\r\nETag: "e1"\r\nContent-Length: 2\r\n\r\nok'
        )
    ]

    response = transport.send(HttpRequest("PUT", server.url + "/entity", content=b"{}"))

    assert (response.status_code, response.reason) == (201, "Created")
    assert response.headers["etag"] == '"e1"'
    assert response.content == b"ok"


def test_should_join_a_repeated_header_as_one_field(
    server: Server, transport: StorageTransport
) -> None:
    server.script.answers = [
        Answer(raw=b"HTTP/1.1 200 OK\r\nVary: a\r\nvary: b\r\nContent-Length: 0\r\n\r\n")
    ]

    assert transport.send(get(server.url + "/vary")).headers["Vary"] == "a, b"


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"SMTP ready\r\n\r\n", "not HTTP"),
        (b"HTTP/1.1 200 OK\r\n" + b"x-filler: " + b"a" * 300_000 + b"\r\n\r\n", "longer than"),
        (b"HTTP/1.1 200 OK\r\nx-filler: " + b"a" * 300_000, "longer than"),
        (b"HTTP/1.1 200 OK\r\nContent-Le", "before the answer's headers"),
    ],
    ids=["not-http", "head-too-long", "head-without-end", "cut-in-the-head"],
)
def test_should_refuse_an_answer_it_cannot_read_and_drop_the_connection(
    server: Server, transport: StorageTransport, raw: bytes, error: str
) -> None:
    server.script.answers = [Answer(raw=raw, close_silently=True)]

    with pytest.raises(ServiceResponseError, match=error) as raised:
        transport.send(get(server.url + "/odd"))

    assert "GET /odd" in str(raised.value)  # names the request
    assert transport.send(get(server.url + "/next")).status_code == 200
    assert server.script.connections == 2


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("x-ms-meta-a", "1\r\nAuthorization: forged"),
        ("x-ms-meta-a", "1\nb"),
        ("bad name", "secret-value"),
    ],
)
def test_should_refuse_a_header_that_would_end_its_line_early_and_send_nothing(
    server: Server, transport: StorageTransport, name: str, value: str
) -> None:
    request = get(server.url + "/blob")
    request.headers[name] = value

    with pytest.raises(ValueError, match=r"cannot be written as HTTP/1\.1") as raised:
        transport.send(request)

    assert f"the header {name!r}" in str(raised.value)
    assert value not in str(raised.value)  # a value may be a credential
    assert server.script.requests == []


def test_should_leave_the_query_out_of_its_errors(transport: StorageTransport) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free, and nothing listens on it once closed

    with pytest.raises(ServiceRequestError) as raised:
        transport.send(get(f"http://127.0.0.1:{port}/account/mail/messages?sig=secret&sv=1"))

    assert "GET /account/mail/messages" in str(raised.value)
    assert "secret" not in str(raised.value)  # a SAS's signature


def test_should_send_the_host_length_and_identity_encoding_as_http_client_does(
    server: Server, transport: StorageTransport
) -> None:
    transport.send(HttpRequest("PUT", server.url + "/a", content=b"12345"))
    transport.send(HttpRequest("POST", server.url + "/b"))
    transport.send(HttpRequest("DELETE", server.url + "/c"))

    put, post, delete = (r["headers"] for r in server.script.requests)
    assert put["Host"] == server.url.removeprefix("http://")
    assert (put["Content-Length"], put["Accept-Encoding"]) == ("5", "identity")
    assert post["Content-Length"] == "0"  # a method that expects a body says it has none
    assert "Content-Length" not in delete
    assert server.script.requests[0]["body"] == b"12345"


def test_should_send_a_stream_through_the_fallback_whole(
    server: Server, transport: StorageTransport
) -> None:
    body = bytes(range(256)) * 512

    response = transport.send(HttpRequest("PUT", server.url + "/blob", content=io.BytesIO(body)))

    assert response.status_code == 200
    assert server.script.requests[0]["body"] == body
