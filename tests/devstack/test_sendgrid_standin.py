"""Tests of the SendGrid stand-in: request models, HTTP behaviour and the process wrapper."""

from __future__ import annotations

import asyncio
import base64
import copy
import email
import email.policy
import gzip
import itertools
import json
import os
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.sendgrid_standin import (
    DEFAULT_API_KEY,
    MAX_BODY_BYTES,
    RESERVED_HEADERS,
    UNAUTHORIZED_BODY,
    SendGridStandIn,
    StandInState,
    create_app,
    validate_mail_send,
)

NOW = 1_790_000_000  # a fixed "now" so send_at checks do not depend on the clock
PDF_BYTES = b"%PDF-1.4\n% mailgate test attachment\n"
PNG_BYTES = b"\x89PNG\r\n\x1a\n fake image"


def valid_payload() -> dict[str, Any]:
    """A realistic mail as the gateway would send it, valid for SendGrid."""
    return {
        "personalizations": [
            {
                "to": [
                    {"email": "ann.lee@example.com", "name": "Ann Lee"},
                    {"email": "bob@example.org"},
                ],
                "cc": [{"email": "carol@example.net", "name": "Carol"}],
                "bcc": [{"email": "audit@example.com"}],
                "custom_args": {"mailgate_id": "mg_01HZX3Q9V7"},
                "send_at": NOW + 3600,
            }
        ],
        "from": {"email": "noreply@mail.example.com", "name": "Example Shop"},
        "reply_to": {"email": "support@example.com", "name": "Support"},
        "subject": "Your order 1042 has shipped",
        "content": [
            {"type": "text/plain", "value": "Hello Ann, your order has shipped."},
            {"type": "text/html", "value": "<p>Hello Ann, your order has <b>shipped</b>.</p>"},
        ],
        "attachments": [
            {
                "content": base64.b64encode(PDF_BYTES).decode(),
                "type": "application/pdf",
                "filename": "invoice-1042.pdf",
                "disposition": "attachment",
            },
            {
                "content": base64.b64encode(PNG_BYTES).decode(),
                "type": "image/png",
                "filename": "logo.png",
                "disposition": "inline",
                "content_id": "logo",
            },
        ],
        "headers": {"X-Mailgate-Tenant": "shop-eu"},
        "categories": ["transactional", "shipping"],
        "custom_args": {"tenant": "shop-eu"},
        "asm": {"group_id": 12345, "groups_to_display": [12345]},
        "ip_pool_name": "transactional",
        "mail_settings": {
            "sandbox_mode": {"enable": False},
            "bypass_list_management": {"enable": False},
            "footer": {"enable": False},
        },
        "tracking_settings": {
            "click_tracking": {"enable": True, "enable_text": False},
            "open_tracking": {"enable": True},
            "subscription_tracking": {"enable": False},
        },
    }


def minimal_payload() -> dict[str, Any]:
    """The smallest mail SendGrid accepts."""
    return {
        "personalizations": [{"to": [{"email": "ann@example.com"}]}],
        "from": {"email": "noreply@example.com"},
        "subject": "Hi",
        "content": [{"type": "text/plain", "value": "Hello"}],
    }


def errors_of(payload: object) -> list[dict[str, Any]]:
    """Validate and return the SendGrid error entries (empty when valid)."""
    _, errors = validate_mail_send(payload, now=NOW)
    return errors


def fields_of(payload: object) -> list[str | None]:
    """Validate and return the error fields."""
    return [error["field"] for error in errors_of(payload)]


def recipients(count: int, domain: str = "example.com") -> list[dict[str, str]]:
    """Make `count` distinct address objects."""
    return [{"email": f"user{i}@{domain}"} for i in range(count)]


# ---- the models: accepted ---------------------------------------------------------------------


def test_should_accept_realistic_gateway_payload() -> None:
    assert errors_of(valid_payload()) == []


def test_should_accept_minimal_payload() -> None:
    assert errors_of(minimal_payload()) == []


def test_should_accept_template_mail_without_subject_or_content() -> None:
    payload = minimal_payload()
    del payload["subject"], payload["content"]
    payload["template_id"] = "d-5f1c0e2b8a9d4c3e"
    payload["personalizations"][0]["dynamic_template_data"] = {"name": "Ann", "items": [1, 2]}
    assert errors_of(payload) == []


def test_should_accept_subject_set_in_every_personalization_instead_of_globally() -> None:
    payload = minimal_payload()
    del payload["subject"]
    payload["personalizations"] = [
        {"to": [{"email": "ann@example.com"}], "subject": "For Ann"},
        {"to": [{"email": "bob@example.com"}], "subject": "For Bob"},
    ]
    assert errors_of(payload) == []


def test_should_accept_same_address_in_two_personalizations() -> None:
    payload = minimal_payload()
    payload["personalizations"] = [
        {"to": [{"email": "ann@example.com"}]},
        {"to": [{"email": "ANN@example.com"}]},
    ]
    assert errors_of(payload) == []


def test_should_accept_exactly_1000_recipients() -> None:
    payload = minimal_payload()
    payload["personalizations"] = [
        {"to": recipients(400, "a.example"), "cc": recipients(300, "b.example")},
        {"to": recipients(300, "c.example")},
    ]
    assert errors_of(payload) == []


def test_should_accept_plain_then_html_then_other_content() -> None:
    payload = minimal_payload()
    payload["content"] = [
        {"type": "text/plain", "value": "a"},
        {"type": "text/html", "value": "<p>a</p>"},
        {"type": "text/calendar", "value": "BEGIN:VCALENDAR"},
    ]
    assert errors_of(payload) == []


def test_should_accept_html_only_content() -> None:
    payload = minimal_payload()
    payload["content"] = [{"type": "text/html", "value": "<p>a</p>"}]
    assert errors_of(payload) == []


def test_should_accept_inline_attachment_without_content_id() -> None:
    # SendGrid's schema does not require content_id for inline attachments.
    payload = minimal_payload()
    payload["attachments"] = [{"content": "aGVsbG8=", "filename": "a.png", "disposition": "inline"}]
    assert errors_of(payload) == []


def test_should_accept_line_wrapped_base64_attachment() -> None:
    payload = minimal_payload()
    wrapped = base64.encodebytes(b"x" * 200).decode()  # MIME style, a newline every 76 chars
    payload["attachments"] = [{"content": wrapped, "filename": "a.bin"}]
    assert errors_of(payload) == []


def test_should_accept_ten_categories() -> None:
    payload = minimal_payload()
    payload["categories"] = [f"c{i}" for i in range(10)]
    assert errors_of(payload) == []


def test_should_accept_send_at_in_the_past_or_within_72_hours() -> None:
    for send_at in (NOW - 86_400, NOW + 72 * 3600):
        payload = minimal_payload()
        payload["send_at"] = send_at
        assert errors_of(payload) == [], send_at


def test_should_accept_reply_to_list_without_reply_to() -> None:
    payload = minimal_payload()
    payload["reply_to_list"] = [{"email": "a@example.com"}, {"email": "b@example.com", "name": "B"}]
    assert errors_of(payload) == []


def test_should_accept_reserved_test_domain_used_by_local_setups() -> None:
    payload = minimal_payload()
    payload["personalizations"][0]["to"] = [{"email": "dev@mailgate.test"}]
    assert errors_of(payload) == []


def test_should_accept_unknown_keys_inside_settings_objects() -> None:
    # Legacy settings (spam_check, bcc) still exist at SendGrid: settings stay open.
    payload = minimal_payload()
    payload["mail_settings"] = {"spam_check": {"enable": True, "threshold": 5}, "future": {}}
    assert errors_of(payload) == []


# ---- the models: refused ----------------------------------------------------------------------


def test_should_refuse_missing_personalizations() -> None:
    payload = minimal_payload()
    del payload["personalizations"]
    assert fields_of(payload) == ["personalizations"]


def test_should_refuse_empty_personalizations() -> None:
    payload = minimal_payload()
    payload["personalizations"] = []
    assert fields_of(payload) == ["personalizations"]


def test_should_refuse_more_than_1000_personalizations() -> None:
    payload = minimal_payload()
    payload["personalizations"] = [{"to": [r]} for r in recipients(1001)]
    errors = errors_of(payload)
    assert [e["field"] for e in errors] == ["personalizations"]
    assert "1001" in errors[0]["message"]


def test_should_refuse_personalization_without_to() -> None:
    payload = minimal_payload()
    payload["personalizations"] = [{"cc": [{"email": "ann@example.com"}]}]
    assert fields_of(payload) == ["personalizations.0.to"]


def test_should_refuse_personalization_with_empty_to() -> None:
    payload = minimal_payload()
    payload["personalizations"][0]["to"] = []
    assert fields_of(payload) == ["personalizations.0.to"]


def test_should_refuse_invalid_recipient_address_with_its_exact_path() -> None:
    payload = valid_payload()
    payload["personalizations"][0]["to"][1]["email"] = "bob(at)example.org"
    errors = errors_of(payload)
    assert errors == [
        {
            "message": "Does not contain a valid address.",
            "field": "personalizations.0.to.1.email",
            "help": None,
        }
    ]


@pytest.mark.parametrize(
    "address",
    [
        "plainaddress",
        "a@b",
        "Ann <ann@example.com>",
        "ann@localhost",
        "ann..lee@example.com",
        "ü@example.com",
    ],
)
def test_should_refuse_malformed_addresses(address: str) -> None:
    payload = minimal_payload()
    payload["personalizations"][0]["to"] = [{"email": address}]
    assert fields_of(payload) == ["personalizations.0.to.0.email"]


def test_should_refuse_recipient_without_email() -> None:
    payload = minimal_payload()
    payload["personalizations"][0]["cc"] = [{"name": "No Address"}]
    assert fields_of(payload) == ["personalizations.0.cc.0.email"]


def test_should_refuse_non_string_recipient_name() -> None:
    payload = minimal_payload()
    payload["personalizations"][0]["to"] = [{"email": "ann@example.com", "name": 42}]
    errors = errors_of(payload)
    assert [e["field"] for e in errors] == ["personalizations.0.to.0.name"]
    assert errors[0]["message"] == "Invalid type. Expected: string, given: integer."


def test_should_refuse_missing_from() -> None:
    payload = minimal_payload()
    del payload["from"]
    assert fields_of(payload) == ["from"]


def test_should_refuse_invalid_from_address() -> None:
    payload = minimal_payload()
    payload["from"] = {"email": "noreply@", "name": "Shop"}
    assert fields_of(payload) == ["from.email"]


def test_should_refuse_more_than_1000_recipients_in_total() -> None:
    payload = minimal_payload()
    payload["personalizations"] = [
        {"to": recipients(500, "a.example"), "bcc": recipients(300, "b.example")},
        {"to": recipients(201, "c.example")},
    ]
    assert fields_of(payload) == ["personalizations"]


def test_should_refuse_duplicate_recipient_in_one_personalization() -> None:
    payload = minimal_payload()
    payload["personalizations"][0]["to"] = [
        {"email": "ann@example.com"},
        {"email": "bob@example.com"},
    ]
    payload["personalizations"][0]["cc"] = [{"email": "Ann@Example.com"}]
    errors = errors_of(payload)
    assert [e["field"] for e in errors] == ["personalizations.0.cc.0.email"]
    assert "more than once" in errors[0]["message"]


def test_should_refuse_empty_global_subject() -> None:
    payload = minimal_payload()
    payload["subject"] = ""
    assert fields_of(payload) == ["subject"]


def test_should_refuse_empty_personalization_subject() -> None:
    payload = minimal_payload()
    payload["personalizations"][0]["subject"] = ""
    assert fields_of(payload) == ["personalizations.0.subject"]


def test_should_refuse_missing_subject_when_a_personalization_has_none() -> None:
    payload = minimal_payload()
    del payload["subject"]
    payload["personalizations"] = [
        {"to": [{"email": "ann@example.com"}], "subject": "For Ann"},
        {"to": [{"email": "bob@example.com"}]},
    ]
    assert fields_of(payload) == ["subject"]


def test_should_refuse_missing_content_without_template() -> None:
    payload = minimal_payload()
    del payload["content"]
    assert fields_of(payload) == ["content"]


def test_should_refuse_empty_content_list_without_template() -> None:
    payload = minimal_payload()
    payload["content"] = []
    assert fields_of(payload) == ["content"]


def test_should_refuse_empty_content_type_and_value() -> None:
    payload = minimal_payload()
    payload["content"] = [{"type": "", "value": ""}]
    assert fields_of(payload) == ["content.0.type", "content.0.value"]


def test_should_refuse_html_before_plain_text() -> None:
    payload = minimal_payload()
    payload["content"] = [
        {"type": "text/html", "value": "<p>a</p>"},
        {"type": "text/plain", "value": "a"},
    ]
    assert fields_of(payload) == ["content"]


def test_should_refuse_content_type_with_parameters() -> None:
    payload = minimal_payload()
    payload["content"] = [{"type": "text/plain; charset=utf-8", "value": "a"}]
    assert fields_of(payload) == ["content.0.type"]


def test_should_refuse_attachment_without_filename() -> None:
    payload = minimal_payload()
    payload["attachments"] = [{"content": "aGVsbG8=", "type": "text/plain"}]
    assert fields_of(payload) == ["attachments.0.filename"]


def test_should_refuse_attachment_without_content() -> None:
    payload = minimal_payload()
    payload["attachments"] = [{"filename": "a.txt"}]
    assert fields_of(payload) == ["attachments.0.content"]


@pytest.mark.parametrize("content", ["not base64!", "aGVsbG8", "aGVs-G8=", ""])
def test_should_refuse_attachment_content_that_is_not_base64(content: str) -> None:
    payload = minimal_payload()
    payload["attachments"] = [{"content": content, "filename": "a.txt"}]
    assert fields_of(payload) == ["attachments.0.content"]


def test_should_refuse_unknown_attachment_disposition() -> None:
    payload = minimal_payload()
    payload["attachments"] = [
        {"content": "aGVsbG8=", "filename": "a.txt", "disposition": "embedded"}
    ]
    assert fields_of(payload) == ["attachments.0.disposition"]


def test_should_refuse_crlf_in_attachment_filename() -> None:
    payload = minimal_payload()
    payload["attachments"] = [{"content": "aGVsbG8=", "filename": "a.txt\r\nX-Evil: 1"}]
    assert fields_of(payload) == ["attachments.0.filename"]


def test_should_refuse_more_than_ten_categories() -> None:
    payload = minimal_payload()
    payload["categories"] = [f"c{i}" for i in range(11)]
    assert fields_of(payload) == ["categories"]


def test_should_refuse_duplicate_categories() -> None:
    payload = minimal_payload()
    payload["categories"] = ["orders", "orders"]
    assert fields_of(payload) == ["categories"]


def test_should_refuse_category_longer_than_255_characters() -> None:
    payload = minimal_payload()
    payload["categories"] = ["ok", "x" * 256]
    assert fields_of(payload) == ["categories.1"]


def test_should_refuse_non_string_custom_arg_value() -> None:
    payload = minimal_payload()
    payload["personalizations"][0]["custom_args"] = {"mailgate_id": "m1", "attempt": 2}
    assert fields_of(payload) == ["personalizations.0.custom_args.attempt"]


def test_should_refuse_custom_args_over_10000_bytes_after_merging() -> None:
    payload = minimal_payload()
    payload["custom_args"] = {"global": "g" * 6000}
    payload["personalizations"][0]["custom_args"] = {"local": "l" * 4000}
    assert fields_of(payload) == ["personalizations.0.custom_args"]


def test_should_refuse_empty_custom_args() -> None:
    payload = minimal_payload()
    payload["custom_args"] = {}
    assert fields_of(payload) == ["custom_args"]


@pytest.mark.parametrize("name", sorted(RESERVED_HEADERS))
def test_should_refuse_reserved_header_whatever_its_case(name: str) -> None:
    payload = minimal_payload()
    payload["headers"] = {name.upper(): "x"}
    assert fields_of(payload) == [f"headers.{name.upper()}"]


def test_should_refuse_reserved_header_in_a_personalization() -> None:
    payload = minimal_payload()
    payload["personalizations"][0]["headers"] = {"Reply-To": "x@example.com"}
    assert fields_of(payload) == ["personalizations.0.headers.Reply-To"]


def test_should_refuse_non_string_header_value() -> None:
    payload = minimal_payload()
    payload["headers"] = {"X-Priority": 1}
    assert fields_of(payload) == ["headers.X-Priority"]


def test_should_refuse_header_name_with_spaces() -> None:
    payload = minimal_payload()
    payload["headers"] = {"X Priority": "1"}
    assert fields_of(payload) == ["headers.X Priority"]


def test_should_refuse_send_at_more_than_72_hours_ahead() -> None:
    payload = minimal_payload()
    payload["personalizations"][0]["send_at"] = NOW + 72 * 3600 + 1
    assert fields_of(payload) == ["personalizations.0.send_at"]


@pytest.mark.parametrize("send_at", [float(NOW), str(NOW), True])
def test_should_refuse_send_at_that_is_not_an_integer(send_at: object) -> None:
    payload = minimal_payload()
    payload["send_at"] = send_at
    assert fields_of(payload) == ["send_at"]


def test_should_refuse_reply_to_together_with_reply_to_list() -> None:
    payload = minimal_payload()
    payload["reply_to"] = {"email": "a@example.com"}
    payload["reply_to_list"] = [{"email": "b@example.com"}]
    assert fields_of(payload) == ["reply_to_list"]


def test_should_refuse_duplicate_address_in_reply_to_list() -> None:
    payload = minimal_payload()
    payload["reply_to_list"] = [{"email": "a@example.com"}, {"email": "A@example.com"}]
    assert fields_of(payload) == ["reply_to_list.1.email"]


def test_should_refuse_non_string_template_id() -> None:
    payload = minimal_payload()
    payload["template_id"] = 42
    assert fields_of(payload) == ["template_id"]


def test_should_refuse_unknown_top_level_field() -> None:
    payload = minimal_payload()
    payload["sendAt"] = NOW
    errors = errors_of(payload)
    assert [e["field"] for e in errors] == ["sendAt"]
    assert "sendAt" in errors[0]["message"]


def test_should_refuse_unknown_field_in_a_personalization() -> None:
    payload = minimal_payload()
    payload["personalizations"][0]["Cc"] = [{"email": "x@example.com"}]
    assert fields_of(payload) == ["personalizations.0.Cc"]


def test_should_refuse_null_where_the_schema_wants_a_value() -> None:
    payload = minimal_payload()
    payload["reply_to"] = None
    errors = errors_of(payload)
    assert errors == [
        {
            "message": "Invalid type. Expected: object, given: null.",
            "field": "reply_to",
            "help": None,
        }
    ]


def test_should_refuse_non_boolean_sandbox_flag() -> None:
    payload = minimal_payload()
    payload["mail_settings"] = {"sandbox_mode": {"enable": "true"}}
    assert fields_of(payload) == ["mail_settings.sandbox_mode.enable"]


def test_should_refuse_bypass_list_management_combined_with_another_bypass() -> None:
    payload = minimal_payload()
    payload["mail_settings"] = {
        "bypass_list_management": {"enable": True},
        "bypass_spam_management": {"enable": True},
    }
    assert fields_of(payload) == ["mail_settings.bypass_spam_management"]


def test_should_refuse_asm_without_group_id() -> None:
    payload = minimal_payload()
    payload["asm"] = {"groups_to_display": [1]}
    assert fields_of(payload) == ["asm.group_id"]


def test_should_refuse_more_than_25_asm_groups_to_display() -> None:
    payload = minimal_payload()
    payload["asm"] = {"group_id": 1, "groups_to_display": list(range(26))}
    assert fields_of(payload) == ["asm.groups_to_display"]


@pytest.mark.parametrize("name", ["a", "p" * 65])
def test_should_refuse_ip_pool_name_outside_2_to_64_characters(name: str) -> None:
    payload = minimal_payload()
    payload["ip_pool_name"] = name
    assert fields_of(payload) == ["ip_pool_name"]


def test_should_refuse_a_body_that_is_not_an_object() -> None:
    assert errors_of([minimal_payload()]) == [
        {"message": "Invalid type. Expected: object, given: array.", "field": None, "help": None}
    ]


def test_should_report_one_error_entry_per_problem() -> None:
    payload = valid_payload()
    payload["personalizations"][0]["to"][0]["email"] = "nope"
    payload["from"]["name"] = 1
    payload["categories"] = ["a", "b", "a"]
    payload["attachments"][0]["filename"] = ""
    errors = errors_of(payload)
    assert sorted(e["field"] for e in errors) == [
        "attachments.0.filename",
        "categories",
        "from.name",
        "personalizations.0.to.0.email",
    ]
    assert all(set(e) == {"message", "field", "help"} and e["help"] is None for e in errors)


# ---- HTTP behaviour, in process ---------------------------------------------------------------


def call(
    state: StandInState,
    method: str,
    url: str,
    *,
    client_host: str = "127.0.0.1",
    **kwargs: Any,
) -> httpx.Response:
    """Send one request to the stand-in's ASGI app without a server."""

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(state), client=(client_host, 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://standin") as client:
            return await client.request(method, url, **kwargs)

    return asyncio.run(go())


AUTH = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}


@pytest.fixture
def state(tmp_path: Path) -> StandInState:
    """A fresh stand-in state writing to a temp outbox."""
    return StandInState(outbox=tmp_path / "outbox")


def test_should_answer_400_with_errors_for_an_invalid_payload(state: StandInState) -> None:
    payload = minimal_payload()
    payload["personalizations"][0]["to"] = [{"email": "bad"}]
    response = call(state, "POST", "/v3/mail/send", json=payload, headers=AUTH)
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "personalizations.0.to.0.email"
    assert state.mails == []


def test_should_answer_400_to_a_body_that_is_not_json(state: StandInState) -> None:
    headers = {**AUTH, "Content-Type": "application/json"}
    response = call(state, "POST", "/v3/mail/send", content=b"{not json", headers=headers)
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] is None


def test_should_answer_400_unless_the_body_is_declared_json(state: StandInState) -> None:
    body = json.dumps(minimal_payload()).encode()
    headers = {**AUTH, "Content-Type": "text/plain"}
    response = call(state, "POST", "/v3/mail/send", content=body, headers=headers)
    assert response.status_code == 400
    assert response.json()["errors"][0]["message"] == "Content-Type should be application/json."


def test_should_answer_413_to_a_body_over_the_limit(state: StandInState) -> None:
    assert MAX_BODY_BYTES == 30 * 1024 * 1024
    state.max_body_bytes = 2_000  # the same code path as 30 MiB, without moving 30 MiB around
    payload = minimal_payload()
    payload["attachments"] = [{"content": base64.b64encode(b"x" * 3_000).decode(), "filename": "a"}]
    response = call(state, "POST", "/v3/mail/send", json=payload, headers=AUTH)
    assert response.status_code == 413
    assert state.mails == []


def test_should_accept_a_gzip_compressed_body(state: StandInState) -> None:
    body = gzip.compress(json.dumps(minimal_payload()).encode())
    headers = {**AUTH, "Content-Type": "application/json", "Content-Encoding": "gzip"}
    response = call(state, "POST", "/v3/mail/send", content=body, headers=headers)
    assert response.status_code == 202


def test_should_refuse_control_api_calls_from_other_hosts(state: StandInState) -> None:
    response = call(state, "GET", "/_standin/mails", client_host="192.0.2.10")
    assert response.status_code == 403


def test_should_write_outbox_files_that_parse_back(state: StandInState) -> None:
    payload = valid_payload()
    payload["personalizations"][0]["send_at"] = int(time.time()) + 60
    response = call(state, "POST", "/v3/mail/send", json=payload, headers=AUTH)
    assert response.status_code == 202
    message_id = response.headers["X-Message-Id"]
    outbox = state.outbox
    assert sorted(p.name for p in outbox.iterdir()) == [f"{message_id}.eml", f"{message_id}.json"]

    record = json.loads((outbox / f"{message_id}.json").read_text())
    assert record["x_message_id"] == message_id
    assert record["payload"] == payload
    assert record["received_at"].endswith("Z")

    eml = email.message_from_bytes(
        (outbox / f"{message_id}.eml").read_bytes(), policy=email.policy.default
    )
    assert isinstance(eml, EmailMessage)
    assert eml["From"] == "Example Shop <noreply@mail.example.com>"
    assert eml["To"] == "Ann Lee <ann.lee@example.com>, bob@example.org"
    assert eml["Cc"] == "Carol <carol@example.net>"
    assert eml["Subject"] == "Your order 1042 has shipped"
    assert eml["Reply-To"] == "Support <support@example.com>"
    assert eml["X-Mailgate-Id"] == "mg_01HZX3Q9V7"
    assert eml["X-Mailgate-Tenant"] == "shop-eu"
    assert eml["X-Message-Id"] == message_id
    plain = eml.get_body(preferencelist=("plain",))
    html = eml.get_body(preferencelist=("html",))
    assert plain is not None
    assert "has shipped" in plain.get_content()
    assert html is not None
    assert "<b>shipped</b>" in html.get_content()
    attachments = {part.get_filename(): part for part in eml.iter_attachments()}
    assert attachments["invoice-1042.pdf"].get_content() == PDF_BYTES
    assert attachments["logo.png"].get_content() == PNG_BYTES
    assert attachments["logo.png"]["Content-ID"] == "<logo>"
    assert state.mails == [record]


# ---- against a running stand-in process -------------------------------------------------------


@pytest.fixture(scope="module")
def standin() -> Iterator[SendGridStandIn]:
    """One stand-in process on a free port for this module's process tests."""
    with SendGridStandIn(port=0) as running:
        yield running


@pytest.fixture
def sg(standin: SendGridStandIn) -> SendGridStandIn:
    """The running stand-in, reset before each test."""
    standin.reset()
    return standin


def send(sg: SendGridStandIn, payload: object, *, api_key: str | None = None) -> httpx.Response:
    """POST a mail send the way the gateway does."""
    headers = {} if api_key == "" else {"Authorization": f"Bearer {api_key or sg.api_key}"}
    return httpx.post(sg.mail_send_url, json=payload, headers=headers, timeout=10)


def test_should_listen_on_the_free_port_it_printed(sg: SendGridStandIn) -> None:
    assert sg.base_url.startswith("http://127.0.0.1:")
    assert int(sg.base_url.rsplit(":", 1)[1]) > 0
    assert httpx.get(f"{sg.base_url}/_standin/health").status_code == 200


def test_should_answer_401_without_api_key(sg: SendGridStandIn) -> None:
    response = send(sg, minimal_payload(), api_key="")
    assert response.status_code == 401
    assert response.json() == UNAUTHORIZED_BODY


def test_should_answer_401_with_wrong_api_key(sg: SendGridStandIn) -> None:
    response = send(sg, minimal_payload(), api_key="SG.revoked")
    assert response.status_code == 401
    assert response.json() == UNAUTHORIZED_BODY
    assert sg.mails() == []


def test_should_accept_with_202_and_message_id_and_write_both_files(sg: SendGridStandIn) -> None:
    response = send(sg, minimal_payload())
    assert response.status_code == 202
    assert response.content == b""
    message_id = response.headers["X-Message-Id"]
    assert len(message_id) == 22
    record = json.loads((sg.outbox / f"{message_id}.json").read_text())
    assert record["payload"] == minimal_payload()
    eml = email.message_from_bytes(
        (sg.outbox / f"{message_id}.eml").read_bytes(), policy=email.policy.default
    )
    assert eml["To"] == "ann@example.com"
    assert [m["x_message_id"] for m in sg.mails()] == [message_id]
    assert not [p for p in sg.outbox.iterdir() if p.name.startswith(".")]  # no temp files left


def test_should_answer_200_and_store_nothing_in_sandbox_mode(sg: SendGridStandIn) -> None:
    payload = minimal_payload()
    payload["mail_settings"] = {"sandbox_mode": {"enable": True}}
    response = send(sg, payload)
    assert response.status_code == 200
    assert sg.mails() == []
    assert not (sg.outbox / f"{response.headers['X-Message-Id']}.json").exists()


def test_should_play_scripted_503s_then_accept(sg: SendGridStandIn) -> None:
    sg.script(
        [
            {"status": 503},
            {"status": 503, "body": {"errors": [{"message": "busy"}]}},
            {"status": 202},
        ]
    )
    statuses = [send(sg, minimal_payload()).status_code for _ in range(4)]
    assert statuses == [503, 503, 202, 202]
    assert len(sg.mails()) == 2
    log = sg.requests()
    assert [entry["status"] for entry in log] == [503, 503, 202, 202]
    assert [entry["scripted"] for entry in log] == [True, True, True, False]
    assert all(later["at"] >= earlier["at"] for earlier, later in itertools.pairwise(log))


def test_should_pass_scripted_headers_such_as_rate_limits(sg: SendGridStandIn) -> None:
    sg.script([{"status": 429, "headers": {"X-RateLimit-Reset": "1790000000"}}])
    response = send(sg, minimal_payload())
    assert response.status_code == 429
    assert response.headers["X-RateLimit-Reset"] == "1790000000"


def test_should_drop_connection_so_httpx_sees_remote_protocol_error(sg: SendGridStandIn) -> None:
    sg.script([{"drop_connection": True}])
    with pytest.raises(httpx.RemoteProtocolError):
        send(sg, minimal_payload())
    assert sg.mails() == []
    assert [entry["outcome"] for entry in sg.requests()] == ["dropped"]
    assert send(sg, minimal_payload()).status_code == 202  # the next request is served normally


def test_should_reset_connection_so_httpx_sees_read_error(sg: SendGridStandIn) -> None:
    sg.script([{"reset_connection": True}])
    with pytest.raises(httpx.ReadError):
        send(sg, minimal_payload())


def test_should_store_the_mail_then_drop_when_scripted_to_accept(sg: SendGridStandIn) -> None:
    # The ambiguous case: SendGrid took the mail but the answer never arrived.
    sg.script([{"drop_connection": True, "accept": True}])
    with pytest.raises(httpx.RemoteProtocolError):
        send(sg, minimal_payload())
    assert len(sg.mails()) == 1


def test_should_honour_latency_without_blocking_concurrent_requests(sg: SendGridStandIn) -> None:
    sg.set_latency(400)

    async def burst() -> tuple[float, list[int]]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(
            limits=limits, timeout=10, headers=sg.auth_headers()
        ) as client:
            started = time.monotonic()
            responses = await asyncio.gather(
                *(client.post(sg.mail_send_url, json=minimal_payload()) for _ in range(50))
            )
            return time.monotonic() - started, [r.status_code for r in responses]

    elapsed, statuses = asyncio.run(burst())
    assert statuses == [202] * 50
    assert 0.4 <= elapsed < 2.0  # 50 x 400 ms one after the other would take 20 s


def test_should_apply_scripted_delay_to_one_request(sg: SendGridStandIn) -> None:
    sg.script([{"status": 202, "delay_ms": 300}])
    started = time.monotonic()
    assert send(sg, minimal_payload()).status_code == 202
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    assert send(sg, minimal_payload()).status_code == 202
    assert time.monotonic() - started < 0.3


def test_should_forget_everything_on_reset(sg: SendGridStandIn) -> None:
    sg.set_latency(50)
    sg.script([{"status": 500}, {"status": 500}])
    assert send(sg, minimal_payload()).status_code == 500
    sg.reset()
    assert sg.requests() == []
    assert send(sg, minimal_payload()).status_code == 202


def test_should_leave_no_process_after_stop(tmp_path: Path) -> None:
    standin = SendGridStandIn(outbox=tmp_path / "outbox").start()
    pid = standin.pid
    assert pid is not None
    standin.stop()
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    assert (tmp_path / "outbox").is_dir()  # a caller-given outbox is kept


def test_should_keep_mail_content_out_of_the_logs(sg: SendGridStandIn) -> None:
    payload = copy.deepcopy(valid_payload())
    payload["personalizations"][0]["send_at"] = int(time.time())
    assert send(sg, payload).status_code == 202
    bad = minimal_payload()
    bad["personalizations"][0]["to"] = [{"email": "secret.person@example.com"}, {"email": "x"}]
    assert send(sg, bad).status_code == 400
    output = sg.output()
    assert "status=202" in output
    for secret in (
        "ann.lee@example.com",
        "Your order 1042",
        "has shipped",
        "secret.person",
        "mg_01HZX3Q9V7",
    ):
        assert secret not in output


def test_should_answer_413_to_a_body_over_30_mib(sg: SendGridStandIn) -> None:
    body = b'{"pad": "' + b"x" * MAX_BODY_BYTES + b'"}'
    headers = {**sg.auth_headers(), "Content-Type": "application/json"}
    response = httpx.post(sg.mail_send_url, content=body, headers=headers, timeout=30)
    assert response.status_code == 413
    assert sg.mails() == []
