"""The fast storage path's own HTTP behaviour, against a scripted loopback server."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import (
    HttpResponseError,
    ResourceModifiedError,
    ServiceRequestError,
)

from shared.storage_http import STORAGE_SCOPE, StorageHttp, decode_entity, parse_datetime


class Script:
    """What the server answers, in order, and what it was asked."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, dict[str, str], bytes]] = []
        self.requests: list[dict[str, Any]] = []
        self.close_after_answer = False


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
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
                }
            )
            status, headers, body = script.answers.pop(0) if script.answers else (204, {}, b"")
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            if script.close_after_answer:
                self.close_connection = True

        do_GET = do_POST = do_PUT = do_MERGE = _answer

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/account1", script
    httpd.shutdown()
    httpd.server_close()


class CountingCredential:
    def __init__(self, expires_in: float) -> None:
        self.calls: list[tuple[str, ...]] = []
        self._expires_in = expires_in

    def get_token(self, *scopes: str, **_: object) -> AccessToken:
        self.calls.append(scopes)
        now = datetime.now(timezone.utc).timestamp()
        return AccessToken(f"token-{len(self.calls)}", int(now + self._expires_in))


def storage(url: str, credential: object = None, *, table: bool = True) -> StorageHttp:
    return StorageHttp(url, credential, "account1", "2019-02-02", table=table, sleep=lambda _: None)


def test_should_send_a_bearer_token_and_reuse_it_until_near_expiry(
    server: tuple[str, Script],
) -> None:
    url, script = server
    lasting = CountingCredential(expires_in=3600)
    expiring = CountingCredential(expires_in=60)

    for _ in range(3):
        storage(url, lasting).request("GET", "/t")  # a new client each time: one token each
    client = storage(url, lasting)
    client.request("GET", "/t")
    client.request("GET", "/t")
    short = storage(url, expiring)
    short.request("GET", "/t")
    short.request("GET", "/t")

    assert [r["headers"]["Authorization"] for r in script.requests[:3]] == [
        "Bearer token-1",
        "Bearer token-2",
        "Bearer token-3",
    ]
    assert script.requests[4]["headers"]["Authorization"] == "Bearer token-4"
    assert lasting.calls == [(STORAGE_SCOPE,)] * 4
    assert len(expiring.calls) == 2  # within five minutes of expiry: a new token every call


def test_should_sign_with_the_account_key_and_version(server: tuple[str, Script]) -> None:
    url, script = server
    client = StorageHttp(
        url, _Key("c2VjcmV0"), "account1", "2019-02-02", table=True, sleep=lambda _: None
    )

    client.request("GET", "/t(PartitionKey='a',RowKey='b')")

    headers = script.requests[0]["headers"]
    assert headers["Authorization"].startswith("SharedKeyLite account1:")
    assert headers["x-ms-version"] == "2019-02-02"
    assert script.requests[0]["path"] == "/account1/t(PartitionKey='a',RowKey='b')"


class _Key:
    def __init__(self, key: str) -> None:
        self.account_key = key


def test_should_retry_a_busy_server_twice_then_give_up_with_its_status(
    server: tuple[str, Script],
) -> None:
    url, script = server
    client = storage(url)
    script.answers = [(503, {"x-ms-error-code": "ServerBusy"}, b"")] * 2 + [(201, {}, b"ok")]

    assert client.request("POST", "/t", body=b"{}").status == 201
    script.answers = [(503, {"x-ms-error-code": "ServerBusy"}, b"")] * 3
    with pytest.raises(HttpResponseError) as raised:
        client.request("POST", "/t", body=b"{}")

    assert len(script.requests) == 6
    assert raised.value.status_code == 503
    assert "ServerBusy" in str(raised.value)


def test_should_not_retry_a_refusal_and_raise_its_sdk_type(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [(412, {"x-ms-error-code": "UpdateConditionNotSatisfied"}, b"")]

    with pytest.raises(ResourceModifiedError):
        storage(url).request("PUT", "/t", headers={"If-Match": "x"}, body=b"{}")

    assert len(script.requests) == 1


def test_should_reconnect_when_the_server_closed_an_idle_connection(
    server: tuple[str, Script],
) -> None:
    url, script = server
    client = storage(url)
    script.close_after_answer = True  # the server closes after answering: the pooled one is stale

    statuses = [client.request("GET", "/t").status for _ in range(3)]

    assert statuses == [204, 204, 204]
    assert len(script.requests) == 3


def test_should_raise_a_request_error_when_nothing_listens() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ServiceRequestError):
        storage(f"http://127.0.0.1:{port}/account1").request("GET", "/t")


def test_should_read_entities_and_dates_as_the_service_writes_them() -> None:
    entity = decode_entity(
        {
            "odata.etag": 'W/"1"',
            "PartitionKey": "p",
            "RowKey": "r",
            "Timestamp": "2026-11-27T13:40:09.8712345Z",
            "at@odata.type": "Edm.DateTime",
            "at": "2026-11-27T13:40:09Z",
            "big@odata.type": "Edm.Int64",
            "big": "1099511627776",
            "n": 3,
        },
        None,
    )

    assert entity == {
        "PartitionKey": "p",
        "RowKey": "r",
        "at": datetime(2026, 11, 27, 13, 40, 9, tzinfo=timezone.utc),
        "big": 2**40,
        "n": 3,
    }
    assert entity.metadata == {
        "etag": 'W/"1"',
        "timestamp": datetime(2026, 11, 27, 13, 40, 9, 871234, tzinfo=timezone.utc),
    }
    with pytest.raises(ValueError, match="not a Table service date-time"):
        parse_datetime("yesterday")
