"""Tests of the stand-in's request models: what SendGrid accepts, refuses, and how it says so."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from shared.sendgrid_v3.schema import RESERVED_HEADERS, validate_mail_send
from tests.sendgrid_samples import NOW, minimal_payload, valid_payload


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


def custom_args_of_size(size: int) -> dict[str, str]:
    """One custom arg whose object is `size` bytes as compact JSON."""
    return {"k": "x" * (size - len('{"k":""}'))}


def test_should_accept_custom_args_just_under_10000_bytes() -> None:
    payload = minimal_payload()
    payload["custom_args"] = custom_args_of_size(9_999)
    # The same key: the personalization's value replaces the global one, so the merge is 9,999.
    payload["personalizations"][0]["custom_args"] = custom_args_of_size(9_999)
    assert errors_of(payload) == []


def test_should_refuse_custom_args_of_exactly_10000_bytes() -> None:
    # SendGrid wants them under 10,000 bytes, not up to.
    payload = minimal_payload()
    payload["custom_args"] = custom_args_of_size(10_000)
    assert fields_of(payload) == ["custom_args"]


def test_should_refuse_personalization_custom_args_of_exactly_10000_bytes() -> None:
    payload = minimal_payload()
    payload["personalizations"][0]["custom_args"] = custom_args_of_size(10_000)
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
