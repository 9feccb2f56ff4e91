"""The refusal log: each kind of refusal logged at once, then at most once per interval with a
count, every refusal counted in exactly one line; the caller's address from `client-ip`."""

from __future__ import annotations

import logging
import re
import time

import pytest

from shared.refusals import (
    OTHER_ADDRESSES,
    REFUSED,
    UNKNOWN_ADDRESS,
    RefusalKind,
    RefusalLog,
    caller_address,
)

KIND = RefusalKind("submit_message", 401, "unknown key", "203.0.113.7")
OTHER_KIND = RefusalKind("submit_message", 429, "billing", "203.0.113.7")
_LINE = re.compile(
    rf"^{REFUSED}: route=(?P<route>\S+) status=(?P<status>\d+) client=(?P<client>.+) "
    r"address=(?P<address>\S+) count=(?P<count>\d+)$"
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def log(clock: Clock) -> RefusalLog:
    return RefusalLog(60.0, clock=clock, background=False)


def lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, str]]:
    """The refusal lines logged so far, parsed."""
    found = []
    for record in caplog.records:
        match = _LINE.match(record.getMessage())
        if match:
            assert record.levelno == logging.WARNING
            found.append(match.groupdict())
    return found


def counts(caplog: pytest.LogCaptureFixture) -> list[tuple[str, int]]:
    return [(line["status"], int(line["count"])) for line in lines(caplog)]


def test_should_log_the_first_refusal_of_a_kind_at_once(
    log: RefusalLog, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        log.record(KIND)

    assert lines(caplog) == [
        {
            "route": "submit_message",
            "status": "401",
            "client": "unknown key",
            "address": "203.0.113.7",
            "count": "1",
        }
    ]


def test_should_count_a_flood_and_log_it_once_per_interval(
    log: RefusalLog, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        for _ in range(1000):
            log.record(KIND)
            clock.now += 0.1  # 1000 refusals over 100 s
        clock.now += 60
        log.write_due()

    # One line at once, one when its minute had passed, one for the rest.
    assert counts(caplog) == [("401", 1), ("401", 600), ("401", 399)]


def test_should_not_log_a_count_before_its_interval_has_passed(
    log: RefusalLog, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        log.record(KIND)
        log.record(KIND)
        clock.now += 59.9
        log.write_due()

    assert counts(caplog) == [("401", 1)]


def test_should_keep_kinds_apart(
    log: RefusalLog, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            log.record(KIND)
            log.record(OTHER_KIND)
        clock.now += 60
        log.write_due()

    assert sorted(counts(caplog)) == [("401", 1), ("401", 2), ("429", 1), ("429", 2)]


def test_should_write_due_counts_on_the_next_refusal_of_any_kind(
    log: RefusalLog, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        log.record(KIND)
        log.record(KIND)
        clock.now += 61
        log.record(OTHER_KIND)

    assert sorted(counts(caplog)) == [("401", 1), ("401", 1), ("429", 1)]


def test_should_forget_a_kind_idle_for_an_interval_and_log_it_at_once_again(
    log: RefusalLog, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        log.record(KIND)
        clock.now += 61
        log.write_due()  # nothing to log: the kind is forgotten
        clock.now += 1
        log.record(KIND)

    assert counts(caplog) == [("401", 1), ("401", 1)]


def test_should_flush_every_count_not_logged_yet(
    log: RefusalLog, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            log.record(KIND)
        log.flush()

    assert counts(caplog) == [("401", 1), ("401", 4)]


def test_should_count_new_addresses_together_once_it_holds_its_most_kinds(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    log = RefusalLog(60.0, clock=clock, max_kinds=3, background=False)

    with caplog.at_level(logging.WARNING):
        for n in range(10):
            log.record(RefusalKind("submit_message", 401, "unknown key", f"198.51.100.{n}"))
        clock.now += 60
        log.write_due()

    addresses = [(line["address"], line["count"]) for line in lines(caplog)]
    assert addresses[:4] == [
        ("198.51.100.0", "1"),
        ("198.51.100.1", "1"),
        ("198.51.100.2", "1"),
        (OTHER_ADDRESSES, "1"),
    ]
    assert addresses[4:] == [(OTHER_ADDRESSES, "6")]


def test_should_write_a_due_count_from_its_own_thread_when_no_refusal_follows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = RefusalLog(0.2)

    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            log.record(KIND)
        deadline = time.monotonic() + 10
        while len(counts(caplog)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)

    assert counts(caplog)[:2] == [("401", 1), ("401", 2)]


def test_should_put_the_numbers_in_extra_as_well(
    log: RefusalLog, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        log.record(KIND)

    [record] = caplog.records
    assert (record.refused_route, record.refused_status, record.refused_count) == (  # type: ignore[attr-defined]
        "submit_message",
        401,
        1,
    )


@pytest.mark.parametrize(
    ("header", "address"),
    [
        ("203.0.113.7:51234", "203.0.113.7"),
        ("203.0.113.7", "203.0.113.7"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1"),
        (None, UNKNOWN_ADDRESS),
        ("", UNKNOWN_ADDRESS),
        ("203.0.113.7:1, 198.51.100.1", UNKNOWN_ADDRESS),
        ("evil\nRequests refused: count=999999", UNKNOWN_ADDRESS),
        ("1" * 200, UNKNOWN_ADDRESS),
        ("localhost:80", UNKNOWN_ADDRESS),
        ("fe80::1%eth0 count=9", UNKNOWN_ADDRESS),
        ("[fe80::1%eth0]:80", UNKNOWN_ADDRESS),
    ],
)
def test_should_take_the_address_from_client_ip_or_say_unknown(
    header: str | None, address: str
) -> None:
    headers = {} if header is None else {"client-ip": header}

    assert caller_address(headers) == address
