from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from shared.errors import DeliveryError, PermanentDeliveryError, RetryableDeliveryError
from shared.models import (
    MAX_PROVIDER_FIELD_CHARS,
    MAX_PROVIDER_MESSAGE_CHARS,
    MailRequest,
    ProviderError,
    QueueEnvelope,
)
from shared.sendgrid_client import (
    MAIL_SEND_PATH,
    SendGridClient,
    build_payload,
    provider_errors,
    retry_after_seconds,
)
from shared.sendgrid_v3.error_format import UNVERIFIED_SENDER_BODY, UNVERIFIED_SENDER_STATUS
from shared.settings import Settings
from tests.samples import (
    NOW,
    PNG_BASE64,
    SENDER,
    everything_message,
    message,
    sendgrid_envelope,
    sendgrid_mail,
    without,
)

API_KEY = "SG.unit-test-key"
BASE_URL = "https://api.sendgrid.test"


def payload_for(document: dict[str, Any], id: str = "msg-0001") -> dict[str, Any]:
    request = MailRequest.model_validate(document)
    return build_payload(QueueEnvelope(id=id, accepted_at=NOW, message=request))


# --- payload building ---------------------------------------------------------------------


def test_should_build_a_plain_payload() -> None:
    payload = payload_for(message(), id="msg-9")

    assert payload == {
        "from": {"email": SENDER},
        "subject": "Hello",
        "personalizations": [
            {"to": [{"email": "someone@example.net"}], "custom_args": {"mailgate_id": "msg-9"}}
        ],
        "content": [{"type": "text/plain", "value": "Hi there"}],
    }


def test_should_put_recipients_in_one_personalization() -> None:
    payload = payload_for(everything_message())

    [personalization] = payload["personalizations"]
    assert personalization["to"] == [
        {"email": "ann@example.net", "name": "Ann"},
        {"email": "bob@example.net", "name": "Bob"},
    ]
    assert personalization["cc"] == [{"email": "carol@example.net"}]
    assert personalization["bcc"] == [{"email": "dee@example.net", "name": "Dee, Auditor"}]


def test_should_carry_sender_reply_to_and_subject() -> None:
    payload = payload_for(everything_message())

    assert payload["from"] == {"email": SENDER, "name": "Mailgate Sender"}
    assert payload["reply_to"] == {"email": "support@example.com", "name": "Support"}
    assert payload["subject"] == "Your order"


def test_should_put_text_before_html() -> None:
    payload = payload_for(message(html="<p>H</p>", text="T"))

    assert payload["content"] == [
        {"type": "text/plain", "value": "T"},
        {"type": "text/html", "value": "<p>H</p>"},
    ]


def test_should_send_html_alone_when_there_is_no_text() -> None:
    payload = payload_for(without(message(html="<p>H</p>"), "text"))

    assert payload["content"] == [{"type": "text/html", "value": "<p>H</p>"}]


def test_should_send_a_template_with_its_dynamic_data() -> None:
    data = {"name": "Ann", "items": [{"sku": "A1", "qty": 2}], "coupon": None}
    payload = payload_for(
        without(message(template_id="d-0123456789abcdef", template_data=data), "subject", "text")
    )

    assert payload["template_id"] == "d-0123456789abcdef"
    assert payload["personalizations"][0]["dynamic_template_data"] == data
    assert "content" not in payload
    assert "subject" not in payload


def test_should_carry_headers_and_categories() -> None:
    payload = payload_for(everything_message())

    assert payload["headers"] == {
        "X-Campaign": "spring",
        "List-Unsubscribe": "<mailto:u@example.com>",
    }
    assert sorted(payload["categories"]) == ["orders", "receipts"]


def test_should_add_the_gateway_id_to_the_personalization_custom_args() -> None:
    # Not top-level: SendGrid's own schema types the top-level custom_args as a string.
    payload = payload_for(everything_message(), id="7f1d2c3b-aaaa-bbbb-cccc-000000000001")

    assert "custom_args" not in payload
    assert payload["personalizations"][0]["custom_args"] == {
        "order": "42",
        "tenant": "acme",
        "mailgate_id": "7f1d2c3b-aaaa-bbbb-cccc-000000000001",
    }


def test_should_send_send_at_as_an_integer_epoch() -> None:
    payload = payload_for(message(send_at="2026-03-02T12:00:00+02:00"))

    expected = int(datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc).timestamp())
    assert payload["send_at"] == expected
    assert type(payload["send_at"]) is int


def test_should_carry_attachments_with_type_disposition_and_content_id() -> None:
    payload = payload_for(everything_message())

    assert sorted(payload["attachments"], key=lambda a: str(a["filename"])) == [
        {
            "content": "JVBERi0xLjQK",
            "filename": "invoice.pdf",
            "type": "application/pdf",
            "disposition": "attachment",
        },
        {
            "content": PNG_BASE64,
            "filename": "logo.png",
            "type": "image/png",
            "disposition": "inline",
            "content_id": "logo",
        },
    ]


def test_should_leave_out_an_attachment_type_that_was_not_given() -> None:
    payload = payload_for(message(attachments=[{"filename": "a.txt", "content": "aGk="}]))

    assert payload["attachments"] == [
        {"content": "aGk=", "filename": "a.txt", "disposition": "attachment"}
    ]


def test_should_build_a_json_serialisable_payload() -> None:
    payload = payload_for(everything_message())

    assert json.loads(json.dumps(payload)) == payload


# --- payload of a SendGrid v3 body -------------------------------------------------------

PASSED_THROUGH = [
    "from",
    "reply_to",
    "subject",
    "content",
    "attachments",
    "template_id",
    "categories",
    "custom_args",
    "send_at",
    "batch_id",
    "asm",
    "ip_pool_name",
    "mail_settings",
    "tracking_settings",
]


def test_should_send_a_v3_body_unchanged_but_for_the_gateway_id() -> None:
    queued = sendgrid_envelope(id="msg-v3")
    sent = sendgrid_mail()

    payload = build_payload(queued)

    for personalization in sent["personalizations"]:
        personalization["custom_args"] = {
            **personalization.get("custom_args", {}),
            "mailgate_id": "msg-v3",
        }
    assert payload == sent


@pytest.mark.parametrize("field", PASSED_THROUGH)
def test_should_pass_each_top_level_field_of_a_v3_body_through(field: str) -> None:
    payload = build_payload(sendgrid_envelope())

    assert payload[field] == sendgrid_mail()[field]


def test_should_pass_personalizations_of_a_v3_body_through_with_their_template_data() -> None:
    payload = build_payload(sendgrid_envelope(id="msg-v3"))

    first, second = payload["personalizations"]
    original_first, original_second = sendgrid_mail()["personalizations"]
    assert {k: v for k, v in first.items() if k != "custom_args"} == {
        k: v for k, v in original_first.items() if k != "custom_args"
    }
    assert first["dynamic_template_data"] == {"name": "Ann", "items": [{"sku": "A-1", "qty": 2}]}
    assert first["send_at"] == original_first["send_at"]
    assert {k: v for k, v in second.items() if k != "custom_args"} == original_second
    assert payload["mail_settings"]["sandbox_mode"] == {"enable": True}


def test_should_add_the_gateway_id_to_every_personalization_keeping_the_callers_args() -> None:
    payload = build_payload(sendgrid_envelope(id="msg-v3"))

    assert [p["custom_args"] for p in payload["personalizations"]] == [
        {"order": "42", "mailgate_id": "msg-v3"},
        {"mailgate_id": "msg-v3"},
    ]
    # The caller's top-level custom_args are theirs: no id there, nothing dropped.
    assert payload["custom_args"] == {"tenant": "acme"}


def test_should_leave_the_queued_v3_body_untouched() -> None:
    queued = sendgrid_envelope(id="msg-v3")

    build_payload(queued)
    build_payload(queued)

    assert queued.sendgrid == sendgrid_mail()


def test_should_refuse_for_good_a_queued_v3_body_without_personalizations() -> None:
    queued = QueueEnvelope(id="m", accepted_at=NOW, sendgrid={"from": {"email": SENDER}})

    with pytest.raises(PermanentDeliveryError, match="personalizations"):
        build_payload(queued)


# --- sending and classifying outcomes -----------------------------------------------------


def client_answering(
    handler: Callable[[httpx.Request], httpx.Response],
) -> tuple[SendGridClient, list[httpx.Request]]:
    requests: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return handler(request)

    return SendGridClient(BASE_URL, API_KEY, transport=httpx.MockTransport(record)), requests


def failure_of(response: httpx.Response) -> DeliveryError:
    client, _ = client_answering(lambda request: response)
    with pytest.raises(DeliveryError) as caught:
        client.send(payload_for(message()))
    return caught.value


def test_should_post_the_payload_to_mail_send_with_the_bearer_key() -> None:
    client, requests = client_answering(
        lambda request: httpx.Response(202, headers={"X-Message-Id": "sg-1"})
    )
    payload = payload_for(everything_message())

    client.send(payload)

    [request] = requests
    assert request.method == "POST"
    assert request.url == httpx.URL(BASE_URL + "/v3/mail/send")
    assert MAIL_SEND_PATH == "/v3/mail/send"
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == payload


@pytest.mark.parametrize("status", [200, 202])
def test_should_return_sendgrid_message_id_on_success(status: int) -> None:
    client, _ = client_answering(
        lambda request: httpx.Response(status, headers={"X-Message-Id": "sg-abc"})
    )

    assert client.send(payload_for(message())) == "sg-abc"


def test_should_return_no_id_when_sendgrid_gives_none() -> None:
    client, _ = client_answering(lambda request: httpx.Response(202))

    assert client.send(payload_for(message())) is None


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413])
def test_should_treat_a_refusal_as_permanent(status: int) -> None:
    error_body = {"errors": [{"field": "from", "message": "not verified"}]}

    failure = failure_of(httpx.Response(status, json=error_body))

    assert type(failure) is PermanentDeliveryError
    assert failure.status_code == status
    assert failure.provider_error is not None
    assert json.loads(failure.provider_error) == error_body
    assert failure.reason == (
        f"SendGrid refused the message with {status}: not verified (field from)"
    )
    assert failure.provider_errors == (ProviderError(message="not verified", field="from"),)


def test_should_carry_sendgrids_message_and_field_for_an_unverified_sender() -> None:
    failure = failure_of(httpx.Response(UNVERIFIED_SENDER_STATUS, json=UNVERIFIED_SENDER_BODY))

    [error] = failure.provider_errors
    assert error.field == "from"
    assert error.message.startswith("The from address does not match a verified Sender Identity.")
    # SendGrid's message is 240 characters: cut, with an ellipsis, to what a reason keeps.
    assert len(error.message) == MAX_PROVIDER_MESSAGE_CHARS
    assert error.message.endswith("…")
    assert failure.reason == f"SendGrid refused the message with 403: {error}"
    assert failure.reason.endswith("(field from)")


def test_should_carry_sendgrids_message_in_a_retryable_failure_too() -> None:
    body = {"errors": [{"message": "Too many requests", "field": None, "help": None}]}

    failure = failure_of(httpx.Response(429, json=body))

    assert type(failure) is RetryableDeliveryError
    assert failure.reason == "SendGrid answered 429: Too many requests"


def test_should_cut_every_address_in_sendgrids_message_to_its_domain() -> None:
    body = {
        "errors": [
            {
                "message": "Each email address in the personalization block should be unique "
                "between to, cc, and bcc. We found the first duplicate instance of "
                "[Ann.Smith+tag@Customer.example.net] in the personalizations.0.to field.",
                "field": "personalizations.0",
            }
        ]
    }

    failure = failure_of(httpx.Response(400, json=body))

    [error] = failure.provider_errors
    assert "[*@Customer.example.net]" in error.message
    assert "Ann.Smith" not in failure.reason
    assert "@" not in failure.reason.replace("*@", "")


def test_should_leave_out_of_sendgrids_message_what_the_mail_itself_says() -> None:
    payload = payload_for(
        message(
            subject="Salary slip for November, strictly private",
            to=[{"email": "ann@example.net", "name": "Annabelle Whitfield-Jones"}],
        )
    )
    body = {
        "errors": [
            {
                # SendGrid quoting part of the subject, in another case, and the name.
                "message": "Invalid value 'SALARY SLIP FOR NOVEMBER' for Annabelle Whitfield",
                "field": "subject",
            }
        ]
    }
    client, _ = client_answering(lambda request: httpx.Response(400, json=body))

    with pytest.raises(PermanentDeliveryError) as caught:
        client.send(payload)

    assert caught.value.provider_errors == (
        ProviderError(message="Invalid value '…' for …", field="subject"),
    )


def test_should_compare_names_and_subject_before_a_body_too_long_to_compare_whole() -> None:
    payload = payload_for(
        message(
            text="lorem ipsum dolor sit amet " * 5000,
            to=[{"email": "ann@example.net", "name": "Annabelle Whitfield-Jones"}],
        )
    )
    body = {"errors": [{"message": "Unknown recipient Annabelle Whitfield-Jones", "field": None}]}

    [error], _ = provider_errors(json.dumps(body), payload)

    assert error.message == "Unknown recipient …"


def test_should_keep_sendgrids_own_words_that_the_mail_does_not_contain() -> None:
    payload = payload_for(message(subject="Your order has shipped"))

    [error], _ = provider_errors(json.dumps(UNVERIFIED_SENDER_BODY), payload)

    assert "does not match a verified Sender Identity" in error.message


def test_should_keep_the_first_errors_and_count_the_others() -> None:
    body = {"errors": [{"message": f"problem {n}", "field": f"f{n}"} for n in range(7)]}

    failure = failure_of(httpx.Response(400, json=body))

    assert [e.message for e in failure.provider_errors] == ["problem 0", "problem 1", "problem 2"]
    assert failure.reason == (
        "SendGrid refused the message with 400: problem 0 (field f0); problem 1 (field f1); "
        "problem 2 (field f2); and 4 more"
    )


def test_should_put_each_message_on_one_line_and_bound_message_and_field() -> None:
    body = {"errors": [{"message": "first line\nsecond\tline " + "x" * 5000, "field": "y" * 500}]}

    [error], total = provider_errors(json.dumps(body))

    assert total == 1
    assert error.message.startswith("first line second line x")
    assert len(error.message) == MAX_PROVIDER_MESSAGE_CHARS
    assert error.field is not None
    assert len(error.field) == MAX_PROVIDER_FIELD_CHARS


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"try later",
        b"<html>502 Bad Gateway</html>",
        b"[]",
        b'{"errors": "none"}',
        b'{"errors": [{"field": "from"}, "text", {"message": 5}]}',
        b'{"error": {"message": "not the shape"}}',
    ],
)
def test_should_find_no_provider_errors_in_a_body_not_shaped_as_sendgrids(body: bytes) -> None:
    assert provider_errors(body) == ((), 0)


def test_should_read_a_field_that_is_not_a_string_as_none() -> None:
    body = {"errors": [{"message": "bad", "field": 7}, {"message": "worse", "field": None}]}

    assert provider_errors(json.dumps(body)) == (
        (ProviderError(message="bad"), ProviderError(message="worse")),
        2,
    )


def test_should_give_the_reason_without_errors_for_a_body_that_has_none() -> None:
    failure = failure_of(httpx.Response(400, text="Bad Request"))

    assert failure.reason == "SendGrid refused the message with 400"
    assert failure.provider_errors == ()


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_should_treat_throttling_and_server_errors_as_retryable(status: int) -> None:
    failure = failure_of(httpx.Response(status, text="try later"))

    assert type(failure) is RetryableDeliveryError
    assert failure.status_code == status
    assert failure.provider_error == "try later"
    assert failure.retry_after_seconds is None
    assert failure.ambiguous is False


def test_should_cut_a_long_provider_error() -> None:
    failure = failure_of(httpx.Response(400, text="e" * 5000))

    assert failure.provider_error == "e" * 1000


def test_should_record_no_provider_error_for_an_empty_body() -> None:
    assert failure_of(httpx.Response(500)).provider_error is None


def retryable_failure(response: httpx.Response) -> RetryableDeliveryError:
    failure = failure_of(response)
    assert isinstance(failure, RetryableDeliveryError)
    return failure


def test_should_honour_retry_after_in_seconds() -> None:
    failure = retryable_failure(httpx.Response(429, headers={"Retry-After": "120"}))

    assert failure.retry_after_seconds == 120.0


def test_should_honour_retry_after_as_an_http_date() -> None:
    when = datetime.now(timezone.utc) + timedelta(seconds=300)

    failure = retryable_failure(
        httpx.Response(503, headers={"Retry-After": format_datetime(when, usegmt=True)})
    )

    assert failure.retry_after_seconds is not None
    assert 290 <= failure.retry_after_seconds <= 300


def test_should_honour_the_rate_limit_reset_epoch() -> None:
    reset = int(time.time()) + 60

    failure = retryable_failure(
        httpx.Response(
            429,
            headers={
                "X-RateLimit-Limit": "600",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": str(reset),
            },
        )
    )

    assert failure.retry_after_seconds is not None
    assert 55 <= failure.retry_after_seconds <= 60


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"Retry-After": "0"}, 0.0),
        ({"Retry-After": " 30 "}, 30.0),
        ({"Retry-After": "Mon, 02 Mar 2026 09:32:00 GMT"}, 120.0),
        ({"Retry-After": "Mon, 02 Mar 2026 09:29:00 GMT"}, 0.0),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "-5"}, None),
        ({"X-RateLimit-Reset": str(int(NOW.timestamp()) + 45)}, 45.0),
        ({"X-RateLimit-Reset": str(int(NOW.timestamp()) - 45)}, 0.0),
        ({"X-RateLimit-Reset": "later"}, None),
        ({"Retry-After": "10", "X-RateLimit-Reset": str(int(NOW.timestamp()) + 45)}, 10.0),
        ({"Retry-After": "soon", "X-RateLimit-Reset": str(int(NOW.timestamp()) + 45)}, 45.0),
    ],
)
def test_should_read_how_long_sendgrid_asks_to_wait(
    headers: dict[str, str], expected: float | None
) -> None:
    assert retry_after_seconds(httpx.Headers(headers), now=NOW.timestamp()) == expected


def transport_failure(error_type: type[httpx.TransportError]) -> RetryableDeliveryError:
    def fail(request: httpx.Request) -> httpx.Response:
        raise error_type("simulated", request=request)

    client, _ = client_answering(fail)
    with pytest.raises(RetryableDeliveryError) as caught:
        client.send(payload_for(message()))
    return caught.value


@pytest.mark.parametrize(
    "error_type", [httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout]
)
def test_should_retry_a_connection_failure_as_not_ambiguous(
    error_type: type[httpx.TransportError],
) -> None:
    failure = transport_failure(error_type)

    assert failure.ambiguous is False
    assert failure.status_code is None
    assert error_type.__name__ in failure.reason


@pytest.mark.parametrize(
    "error_type",
    [httpx.ReadTimeout, httpx.WriteTimeout, httpx.RemoteProtocolError, httpx.ReadError],
)
def test_should_retry_a_lost_answer_as_ambiguous(error_type: type[httpx.TransportError]) -> None:
    # The request may have reached SendGrid: the mail may already be accepted.
    failure = transport_failure(error_type)

    assert failure.ambiguous is True
    assert failure.status_code is None
    assert error_type.__name__ in failure.reason


def test_should_never_put_the_api_key_in_an_error() -> None:
    failure = failure_of(httpx.Response(401, json={"errors": [{"message": "bad key"}]}))

    assert API_KEY not in str(failure)
    assert API_KEY not in (failure.provider_error or "")


def test_should_configure_timeouts_and_endpoint_from_settings(settings: Settings) -> None:
    configured = Settings(
        storage=settings.storage,
        allowed_senders=settings.allowed_senders,
        sendgrid_api_key=API_KEY,
        sendgrid_api_base_url=BASE_URL,
        sendgrid_connect_timeout_seconds=2.0,
        sendgrid_timeout_seconds=12.0,
    )

    client = SendGridClient.from_settings(configured)

    # The official client has no default timeout; this one must always have one.
    assert client._http.timeout == httpx.Timeout(12.0, connect=2.0)
    assert str(client._http.base_url).rstrip("/") == BASE_URL
    client.close()
