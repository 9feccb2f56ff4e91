"""The relay's SMTP server (aiosmtpd with the relay's handler) spoken to by smtplib, with
mailgate played by httpx's MockTransport; its settings; and its AUTH failure throttle."""

from __future__ import annotations

import asyncio
import json
import logging
import smtplib
import ssl
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from functools import partial
from pathlib import Path

import httpx
import mailgate_relay.server
import pytest
import trustme
from mailgate_relay.__main__ import (
    RelaySettings,
    SettingsError,
    parse_settings,
    quiet_aiosmtpd,
    smtp_factory,
)
from mailgate_relay.gateway import GatewayClient
from mailgate_relay.server import MAX_DELAY_SECONDS, FailureThrottle, RelayHandler

from tests.relay.test_gateway import ID, KEY, FakeGateway


def settings(host: str = "127.0.0.1", **changes: object) -> RelaySettings:
    values: dict[str, object] = {
        "host": host,
        "port": 0,
        "mailgate_url": "http://gateway.test",
        "tls_cert": None,
        "tls_key": None,
        "max_message_bytes": None,
        "hostname": "relay.test",
        **changes,
    }
    return RelaySettings(**values)  # type: ignore[arg-type]


class RunningRelay:
    """The relay's SMTP server on a loopback port, in a thread with its own event loop."""

    def __init__(
        self, relay_settings: RelaySettings, fake: FakeGateway, context: ssl.SSLContext | None
    ) -> None:
        self.loop = asyncio.new_event_loop()
        gateway = GatewayClient("http://gateway.test", transport=httpx.MockTransport(fake))
        self.throttle = FailureThrottle(sleep=self._no_sleep)
        self.waits: list[float] = []
        self.handler = RelayHandler(gateway, self.throttle)
        factory = partial(smtp_factory, relay_settings, self.handler, context)
        self.server = self.loop.run_until_complete(self.loop.create_server(factory, "127.0.0.1", 0))
        self.port: int = self.server.sockets[0].getsockname()[1]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def _no_sleep(self, seconds: float) -> None:
        self.waits.append(seconds)

    def stop(self) -> None:
        async def close() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def fake() -> FakeGateway:
    return FakeGateway()


@pytest.fixture
def relay(fake: FakeGateway) -> Iterator[RunningRelay]:
    running = RunningRelay(settings(), fake, None)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_relay(fake: FakeGateway, authority: trustme.CA) -> Iterator[RunningRelay]:
    """A relay configured as if it listened off loopback: STARTTLS before anything else."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    running = RunningRelay(settings("10.0.0.4", tls_cert="c", tls_key="k"), fake, context)
    yield running
    running.stop()


def auth_plain(session: smtplib.SMTP, user: str, password: str) -> None:
    """AUTH PLAIN alone (smtplib's login() would try every mechanism in turn)."""
    session.ehlo_or_helo_if_needed()
    session.user, session.password = user, password
    session.auth("PLAIN", session.auth_plain)


def mail(**headers: str) -> bytes:
    message = EmailMessage()
    message["From"] = "app@example.com"
    message["To"] = "ann@example.org"
    message["Subject"] = "Hello"
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content("Body.")
    return message.as_bytes()


def test_should_submit_after_auth_and_answer_250_with_the_mailgate_id(
    relay: RunningRelay, fake: FakeGateway
) -> None:
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as session:
        session.login("app", KEY)
        session.mail("app@example.com")
        session.rcpt("ann@example.org")
        code, reply = session.data(mail(Message_ID="<1@example.com>"))

    assert (code, reply.decode()) == (250, f"2.0.0 Queued as {ID}")
    [post] = fake.posts
    assert json.loads(post.content)["to"] == [{"email": "ann@example.org"}]
    assert post.headers["Idempotency-Key"].startswith("smtp-relay-")


@pytest.fixture
def quiet_log() -> Iterator[logging.Logger]:
    """aiosmtpd's logger as the relay sets it up, put back afterwards."""
    aiosmtpd_log = logging.getLogger("mail.log")
    level, filters = aiosmtpd_log.level, list(aiosmtpd_log.filters)
    quiet_aiosmtpd(aiosmtpd_log)
    yield aiosmtpd_log
    aiosmtpd_log.setLevel(level)
    aiosmtpd_log.filters[:] = filters


def test_should_log_no_aiosmtpd_noise_and_no_address_for_a_session(
    relay: RunningRelay, quiet_log: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.DEBUG),
        smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as session,
    ):
        session.login("app", KEY)
        session.mail("app@example.com")
        session.rcpt("ann@example.org")
        code, _ = session.data(mail())

    assert code == 250
    # aiosmtpd 1.4 warns of Session.login_data on every AUTH, and of AUTH without TLS on every
    # connection; it logs each command, addresses included, at INFO.
    assert [r.getMessage() for r in caplog.records if r.name == quiet_log.name] == []
    assert "ann@example.org" not in caplog.text


def test_should_send_no_idempotency_key_for_a_mail_without_message_id(
    relay: RunningRelay, fake: FakeGateway
) -> None:
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as session:
        session.login("app", KEY)
        session.sendmail("app@example.com", ["ann@example.org"], mail())
        session.sendmail("app@example.com", ["ann@example.org"], mail())

    assert [p.headers.get("Idempotency-Key") for p in fake.posts] == [None, None]


def test_should_give_the_same_mail_to_the_same_recipients_the_same_idempotency_key(
    relay: RunningRelay, fake: FakeGateway
) -> None:
    message = mail(Message_ID="<same@example.com>")
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as session:
        session.login("app", KEY)
        session.sendmail("app@example.com", ["ann@example.org"], message)
        session.sendmail("app@example.com", ["ann@example.org"], message)
        session.sendmail("app@example.com", ["ann@example.org", "bob@example.org"], message)

    keys = [p.headers["Idempotency-Key"] for p in fake.posts]
    assert keys[0] == keys[1] != keys[2]


def test_should_advertise_the_gateways_size_after_auth_and_refuse_more_with_552(
    relay: RunningRelay,
) -> None:
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as session:
        session.login("app", KEY)
        session.ehlo()
        advertised = int(session.esmtp_features["size"])
        # Without SIZE= (as a client that does not announce it): refused after the data.
        session.esmtp_features.pop("size")
        session.mail("app@example.com")
        session.rcpt("ann@example.org")
        code, _ = session.data(mail() + b"x" * 70 + b"\r\nx" * 1000)

    # FakeGateway's MAX_REQUEST_BYTES.
    assert advertised == 1234
    assert code == 552


def test_should_refuse_a_message_the_parser_fails_on_with_554_and_log_no_content(
    relay: RunningRelay,
    fake: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(raw: bytes, mail_from: str, recipients: list[str]) -> dict[str, object]:
        raise IndexError(f"cannot parse {raw[:40]!r}")

    monkeypatch.setattr(mailgate_relay.server, "mail_request", broken)
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as session:
        session.login("app", KEY)
        session.mail("app@example.com")
        session.rcpt("ann@example.org")
        code, reply = session.data(mail())

    assert (code, reply) == (554, b"5.6.0 the message could not be read (IndexError)")
    assert fake.posts == []
    assert "IndexError" in caplog.text
    assert "ann@example.org" not in caplog.text


def test_should_answer_454_when_the_key_cannot_be_checked(
    relay: RunningRelay, fake: FakeGateway
) -> None:
    fake.fail = lambda: httpx.Response(503)

    with (
        smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as session,
        pytest.raises(smtplib.SMTPAuthenticationError) as refused,
    ):
        session.login("app", KEY)

    assert refused.value.smtp_code == 454


def test_should_wait_longer_after_each_failed_auth_from_one_address(relay: RunningRelay) -> None:
    for _ in range(4):
        with (
            smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as session,
            pytest.raises(smtplib.SMTPAuthenticationError),
        ):
            auth_plain(session, "app", "mg_app_wrong")
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as session:
        session.login("app", KEY)

    assert relay.waits == [1.0, 2.0, 4.0]
    assert relay.throttle.delay("127.0.0.1") == 0.0


def test_should_take_at_most_1000_recipients_with_452_for_the_rest(relay: RunningRelay) -> None:
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as session:
        session.login("app", KEY)
        session.mail("app@example.com")
        codes = [session.rcpt(f"r{n}@example.org")[0] for n in range(1001)]

    assert codes[:1000] == [250] * 1000
    assert codes[1000] == 452


def test_should_require_starttls_before_auth_off_loopback(
    tls_relay: RunningRelay, authority: trustme.CA
) -> None:
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    with smtplib.SMTP("127.0.0.1", tls_relay.port, timeout=10) as session:
        session.ehlo()
        assert "auth" not in session.esmtp_features
        code, reply = session.docmd("AUTH", "PLAIN")
        assert code == 530, reply
        session.starttls(context=client_context)
        session.ehlo()
        assert "PLAIN" in session.esmtp_features["auth"]
        session.login("app", KEY)


def test_should_refuse_to_listen_off_loopback_without_a_certificate() -> None:
    with pytest.raises(SettingsError, match="MAILGATE_RELAY_TLS_CERT"):
        parse_settings(["--host", "0.0.0.0"], {})  # noqa: S104 (the refused case)


def test_should_listen_off_loopback_with_a_certificate_and_key(tmp_path: Path) -> None:
    relay_settings = parse_settings(
        [],
        {
            "MAILGATE_RELAY_HOST": "10.0.0.4",
            "MAILGATE_RELAY_TLS_CERT": str(tmp_path / "cert.pem"),
            "MAILGATE_RELAY_TLS_KEY": str(tmp_path / "key.pem"),
        },
    )

    assert (relay_settings.host, relay_settings.loopback) == ("10.0.0.4", False)


def test_should_default_to_make_runs_gateway_on_loopback_port_2525() -> None:
    relay_settings = parse_settings([], {})

    assert (relay_settings.host, relay_settings.port) == ("127.0.0.1", 2525)
    assert relay_settings.mailgate_url == "http://127.0.0.1:7071"
    assert relay_settings.loopback
    assert relay_settings.max_message_bytes is None


def test_should_take_flags_over_the_environment() -> None:
    relay_settings = parse_settings(
        ["--port", "2626", "--mailgate-url", "https://mailgate.example"],
        {"MAILGATE_RELAY_PORT": "2727", "MAILGATE_URL": "http://elsewhere"},
    )

    assert (relay_settings.port, relay_settings.mailgate_url) == (2626, "https://mailgate.example")


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"MAILGATE_RELAY_PORT": "smtp"}, "MAILGATE_RELAY_PORT"),
        ({"MAILGATE_RELAY_PORT": "70000"}, "MAILGATE_RELAY_PORT"),
        ({"MAILGATE_RELAY_MAX_MESSAGE_BYTES": "0"}, "MAILGATE_RELAY_MAX_MESSAGE_BYTES"),
        ({"MAILGATE_URL": "mailgate.example"}, "MAILGATE_URL"),
        ({"MAILGATE_RELAY_TLS_CERT": "cert.pem"}, "MAILGATE_RELAY_TLS_KEY"),
    ],
)
def test_should_name_the_setting_that_is_wrong(environ: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        parse_settings([], environ)


def test_should_cap_the_wait_and_forget_failures_after_a_while() -> None:
    now = [0.0]
    throttle = FailureThrottle(clock=lambda: now[0])
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    throttle.sleep = record

    async def fail(times: int) -> None:
        for _ in range(times):
            await throttle.failed("203.0.113.7")

    asyncio.run(fail(10))
    assert waits[0] == 1.0
    assert max(waits) == MAX_DELAY_SECONDS
    assert throttle.delay("198.51.100.1") == 0.0
    now[0] += 601
    assert throttle.delay("203.0.113.7") == 0.0
