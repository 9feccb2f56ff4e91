"""The transport scenario's HTTPS server: request heads and its 202 answer."""

from __future__ import annotations

import pytest

from bench.tls_server import BadRequest, accepted_response, parse_head


def test_should_read_the_request_line_and_lower_cased_headers() -> None:
    line, headers = parse_head(
        b"POST /v3/mail/send HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\nConnection: close\r\n\r\n"
    )
    assert line == "POST /v3/mail/send HTTP/1.1"
    assert headers == {"host": "x", "content-length": "12", "connection": "close"}


@pytest.mark.parametrize("head", [b"garbage\r\n\r\n", b"POST / HTTP/1.1\r\nno colon\r\n\r\n"])
def test_should_refuse_a_malformed_head(head: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_head(head)


def test_should_answer_202_with_a_message_id_and_the_connection_choice() -> None:
    keep = accepted_response("abc", close=False)
    assert keep.startswith(b"HTTP/1.1 202 Accepted\r\n")
    assert b"X-Message-Id: abc\r\n" in keep
    assert b"Content-Length: 0\r\n" in keep
    assert keep.endswith(b"Connection: keep-alive\r\n\r\n")
    assert accepted_response("abc", close=True).endswith(b"Connection: close\r\n\r\n")
