"""The relay's calls to mailgate (through httpx's MockTransport, no network) and the SMTP reply
each of mailgate's answers earns."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import httpx
import pytest
from mailgate_relay.gateway import (
    KEY_CHECK_CACHE_SECONDS,
    ClientInfo,
    GatewayClient,
    GatewayUnavailable,
    reply_for,
)

KEY = "mg_app_" + "k" * 43
ID = "6f1c0e0e-1d2c-4b5a-8e9f-0a1b2c3d4e5f"


def problem(status: int, detail: str, *errors: tuple[str, str]) -> bytes:
    return json.dumps(
        {
            "type": "about:blank",
            "status": status,
            "detail": detail,
            "errors": [{"pointer": p, "detail": d} for p, d in errors],
        }
    ).encode()


@pytest.mark.parametrize(
    ("status", "content", "reply"),
    [
        (202, json.dumps({"id": ID, "status": "queued"}).encode(), f"250 2.0.0 Queued as {ID}"),
        (401, problem(401, "the key is unknown"), "451 4.7.0 the client key was refused"),
        (409, problem(409, "still being accepted"), "451 4.3.0"),
        (429, problem(429, "over the rate"), "451 4.3.0 mailgate cannot take it now: over"),
        (503, problem(503, "storage is unavailable"), "451 4.3.0"),
        (500, b"<html>oops</html>", "451 4.3.0 mailgate cannot take it now: mailgate answered 500"),
        (413, problem(413, "over MAX_REQUEST_BYTES"), "552 5.3.4 too large for mailgate"),
        (
            403,
            problem(403, "may not send as that", ("#/from", "is not one of the client's senders")),
            "553 5.7.1 sender not allowed: may not send as that; #/from is not one",
        ),
        (
            403,
            problem(403, "needs a feature", ("#/headers/Sender", "needs headers.sender")),
            "550 5.7.1 not allowed: needs a feature; #/headers/Sender needs",
        ),
        (
            400,
            problem(400, "1 invalid field(s)", ("#/to/0/email", "not a valid email address")),
            "554 5.6.0 refused by mailgate: 1 invalid field(s); #/to/0/email not a valid",
        ),
        (415, problem(415, "not JSON"), "554 5.6.0 refused by mailgate: not JSON"),
    ],
    ids=lambda v: str(v)[:20] if not isinstance(v, bytes) else "",
)
def test_should_answer_each_gateway_status_with_its_smtp_reply(
    status: int, content: bytes, reply: str
) -> None:
    submitted = reply_for(status, content)

    assert submitted.reply.startswith(reply), submitted.reply
    assert (submitted.message_id == ID) is (status == 202)


def test_should_keep_a_reply_on_one_short_ascii_line() -> None:
    detail = "é\r\nline two " + "x" * 2000

    reply = reply_for(400, problem(400, detail)).reply

    assert reply.isascii()
    assert "\n" not in reply
    assert len(reply) < 500


class FakeGateway:
    """mailgate's two routes the relay calls, counting the calls."""

    def __init__(self) -> None:
        self.checks = 0
        self.posts: list[httpx.Request] = []
        self.key_valid = True
        self.fail: Callable[[], httpx.Response] | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.fail is not None:
            return self.fail()
        valid = self.key_valid and request.headers.get("Authorization") == f"Bearer {KEY}"
        if request.url.path == "/api/v1/client":
            self.checks += 1
            if not valid:
                return httpx.Response(401, content=problem(401, "unknown key"))
            return httpx.Response(200, json={"name": "app", "max_request_bytes": 1234})
        self.posts.append(request)
        if not valid:
            return httpx.Response(401, content=problem(401, "unknown key"))
        return httpx.Response(202, json={"id": ID, "status": "queued"})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def client(fake: FakeGateway, clock: Clock) -> GatewayClient:
    return GatewayClient("http://gateway.test", transport=httpx.MockTransport(fake), clock=clock)


def test_should_check_a_key_and_learn_the_client_and_size_limit() -> None:
    fake, clock = FakeGateway(), Clock()

    info = asyncio.run(client(fake, clock).check_key(KEY))

    assert info == ClientInfo("app", 1234)


def test_should_reuse_a_successful_check_briefly_then_ask_again() -> None:
    fake, clock = FakeGateway(), Clock()
    gateway = client(fake, clock)

    async def run() -> list[ClientInfo | None]:
        first = await gateway.check_key(KEY)
        clock.now += KEY_CHECK_CACHE_SECONDS - 1
        second = await gateway.check_key(KEY)
        calls_within = fake.checks
        # Rotated meanwhile: once the cached check is older than the cache time, refused.
        fake.key_valid = False
        clock.now += 2
        third = await gateway.check_key(KEY)
        assert calls_within == 1
        return [first, second, third]

    assert asyncio.run(run()) == [ClientInfo("app", 1234), ClientInfo("app", 1234), None]
    assert fake.checks == 2


def test_should_forget_a_cached_check_when_a_submission_finds_the_key_refused() -> None:
    fake, clock = FakeGateway(), Clock()
    gateway = client(fake, clock)

    async def run() -> ClientInfo | None:
        await gateway.check_key(KEY)
        fake.key_valid = False
        submitted = await gateway.submit(b"{}", KEY, None)
        assert submitted.reply.startswith("451 4.7.0")
        return await gateway.check_key(KEY)

    assert asyncio.run(run()) is None
    assert fake.checks == 2


def test_should_refuse_an_unknown_key_without_caching_it() -> None:
    fake, clock = FakeGateway(), Clock()
    gateway = client(fake, clock)

    async def run() -> list[ClientInfo | None]:
        return [await gateway.check_key("mg_app_wrong"), await gateway.check_key("mg_app_wrong")]

    assert asyncio.run(run()) == [None, None]
    assert fake.checks == 2


@pytest.mark.parametrize(
    "failure",
    [
        lambda: httpx.Response(503, content=problem(503, "storage")),
        lambda: httpx.Response(200, content=b"not json"),
    ],
    ids=["503", "unreadable"],
)
def test_should_call_a_key_check_unavailable_when_mailgate_cannot_answer(
    failure: Callable[[], httpx.Response],
) -> None:
    fake, clock = FakeGateway(), Clock()
    fake.fail = failure

    with pytest.raises(GatewayUnavailable):
        asyncio.run(client(fake, clock).check_key(KEY))


def unreachable(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def test_should_call_an_unreachable_gateway_unavailable_at_auth_and_451_at_data() -> None:
    gateway = GatewayClient("http://gateway.test", transport=httpx.MockTransport(unreachable))

    with pytest.raises(GatewayUnavailable, match="ConnectError"):
        asyncio.run(gateway.check_key(KEY))
    submitted = asyncio.run(gateway.submit(b"{}", KEY, "smtp-relay-abc"))
    assert submitted.reply.startswith("451 4.4.1 mailgate cannot be reached")
    assert submitted.message_id is None


def test_should_submit_with_the_key_and_idempotency_key() -> None:
    fake, clock = FakeGateway(), Clock()

    submitted = asyncio.run(client(fake, clock).submit(b'{"a": 1}', KEY, "smtp-relay-abc"))

    assert submitted.message_id == ID
    [request] = fake.posts
    assert request.url.path == "/api/v1/messages"
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["Idempotency-Key"] == "smtp-relay-abc"
    assert request.headers["Content-Type"] == "application/json"
    assert request.content == b'{"a": 1}'
