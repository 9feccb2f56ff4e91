"""The relay is a package of its own and cannot import the gateway's limits: it copies them,
and these checks keep the copies equal to the gateway's."""

from __future__ import annotations

from mailgate_relay import convert, server

from shared import models, settings


def test_should_advertise_the_gateways_default_request_limit_until_it_learns_one() -> None:
    assert server.DEFAULT_MAX_MESSAGE_BYTES == settings.DEFAULT_MAX_REQUEST_BYTES


def test_should_bound_messages_as_the_gateway_does() -> None:
    assert convert.MAX_RECIPIENTS == models.MAX_RECIPIENTS
    assert convert.MAX_ATTACHMENTS == models.MAX_ATTACHMENTS
    assert convert.MAX_HEADERS == models.MAX_HEADERS


def test_should_pass_on_no_header_the_gateway_reserves() -> None:
    assert not convert.HEADERS_PASSED & models.RESERVED_HEADERS
    # Dropped, never passed on: the gateway would refuse the mail for them.
    assert models.RESERVED_HEADERS <= convert.HEADERS_FROM_FIELDS
