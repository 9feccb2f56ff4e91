"""The acs provider's mapping of a mail to an ACS EmailMessage, what acs cannot carry, its
settings, and how ACS's answers are classified (the sender against the stand-in is in
tests/integration/test_acs_sender.py)."""

from __future__ import annotations

import base64
from types import SimpleNamespace
from typing import Any

import pytest

from shared.acs_client import _failed, _shown_error, build_message
from shared.errors import ConfigurationError, NotDeliverable, PermanentDeliveryError
from shared.models import MailRequest
from shared.providers import check_deliverable, eligible
from shared.replay_advice import ACS_FAILED, CAUSES
from shared.settings import acs_connection_parts
from tests.samples import envelope, message, settings_with

KEY = base64.b64encode(b"k" * 32).decode()
CONNECTION = f"endpoint=https://res.communication.azure.com/;accesskey={KEY}"
PDF = base64.b64encode(b"%PDF-1.4 report").decode()
PNG = base64.b64encode(b"\x89PNG logo").decode()


def full(**fields: Any) -> dict[str, Any]:
    return (
        message(
            to=["Ann <ann@example.net>", "bob@example.net"],
            cc=["Carol <carol@example.net>"],
            bcc=["dee@example.net"],
            reply_to="Support <support@example.com>",
            subject="Your order",
            text="Plain ✓",
            html='<p>HTML <img src="cid:logo"></p>',
            headers={"X-Campaign": "spring"},
            attachments=[
                {"filename": "report.pdf", "content": PDF, "content_type": "application/pdf"},
                {
                    "filename": "logo.png",
                    "content": PNG,
                    "disposition": "inline",
                    "content_id": "logo",
                },
                {"filename": "raw.bin", "content": PDF},
            ],
        )
        | fields
    )


def test_should_map_every_field_of_a_mail_to_acs() -> None:
    sent = build_message(envelope(**full()))

    assert sent == {
        "senderAddress": "noreply@example.com",
        "content": {
            "subject": "Your order",
            "plainText": "Plain ✓",
            "html": '<p>HTML <img src="cid:logo"></p>',
        },
        "recipients": {
            "to": [
                {"address": "ann@example.net", "displayName": "Ann"},
                {"address": "bob@example.net"},
            ],
            "cc": [{"address": "carol@example.net", "displayName": "Carol"}],
            "bcc": [{"address": "dee@example.net"}],
        },
        "replyTo": [{"address": "support@example.com", "displayName": "Support"}],
        "headers": {"X-Campaign": "spring"},
        "attachments": [
            {"name": "report.pdf", "contentType": "application/pdf", "contentInBase64": PDF},
            {
                "name": "logo.png",
                "contentType": "application/octet-stream",
                "contentInBase64": PNG,
                "contentId": "logo",
            },
            {"name": "raw.bin", "contentType": "application/octet-stream", "contentInBase64": PDF},
        ],
    }


def test_should_send_no_missing_parts_for_a_bare_mail() -> None:
    sent = build_message(envelope(text=None, html="<p>only html</p>"))

    assert sent["content"] == {"subject": "Hello", "html": "<p>only html</p>"}
    assert set(sent) == {"senderAddress", "content", "recipients"}
    assert sent["recipients"] == {"to": [{"address": "someone@example.net"}]}


def test_should_refuse_a_sendgrid_body_for_good() -> None:
    from tests.samples import sendgrid_envelope

    with pytest.raises(PermanentDeliveryError, match="v3 body"):
        build_message(sendgrid_envelope())


@pytest.mark.parametrize(
    ("fields", "pointer"),
    [
        ({"template_id": "d-0123456789abcdef0123456789abcdef", "text": None}, "#/template_id"),
        ({"categories": ["orders"]}, "#/categories"),
        ({"custom_args": {"order": "42"}}, "#/custom_args"),
        ({"from": "Sender Name <noreply@example.com>"}, "#/from/name"),
        ({"from": "someone@example.org"}, "#/from"),
        (
            {"attachments": [{"filename": "a.png", "content": PNG, "content_id": "a"}]},
            "#/attachments/0/content_id",
        ),
    ],
)
def test_should_keep_off_acs_what_it_cannot_carry_and_say_which_field(
    fields: dict[str, Any], pointer: str
) -> None:
    request = MailRequest.model_validate(message(**fields))

    with pytest.raises(NotDeliverable) as refused:
        check_deliverable(("acs",), request, acs_senders=("noreply@example.com",))

    assert pointer in [p.pointer for p in refused.value.problems]


def test_should_keep_a_mail_over_ten_megabytes_off_acs() -> None:
    big = base64.b64encode(bytes(8 * 1024 * 1024)).decode()
    request = MailRequest.model_validate(
        message(attachments=[{"filename": "big.bin", "content": big}])
    )

    with pytest.raises(NotDeliverable) as refused:
        check_deliverable(("acs",), request, acs_senders=("@example.com",))

    assert [p.pointer for p in refused.value.problems] == ["#/attachments"]


def test_should_send_by_acs_a_mail_from_one_of_its_senders_and_fail_over_the_rest() -> None:
    ours = envelope(**full())
    foreign = envelope(**full(**{"from": "app@example.org"}))

    assert eligible(("sendgrid", "acs"), ours, acs_senders=("@example.com",)) == (
        "sendgrid",
        "acs",
    )
    assert eligible(("sendgrid", "acs"), foreign, acs_senders=("@example.com",)) == ("sendgrid",)


def test_should_take_acs_settings_with_a_connection_string() -> None:
    settings = settings_with(
        MAIL_PROVIDERS="sendgrid,acs",
        ACS_EMAIL_CONNECTION_STRING=CONNECTION,
        ACS_EMAIL_SENDERS="DoNotReply@Example.com,@mail.example.org",
    )

    assert settings.mail_providers == ("sendgrid", "acs")
    assert settings.acs_email_senders == ("donotreply@example.com", "@mail.example.org")
    assert acs_connection_parts(CONNECTION) == ("https://res.communication.azure.com", KEY)
    assert KEY not in repr(settings)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"ACS_EMAIL_SENDERS": "@example.com"}, "ACS_EMAIL_ENDPOINT"),
        ({"ACS_EMAIL_CONNECTION_STRING": CONNECTION}, "ACS_EMAIL_SENDERS"),
        (
            {
                "ACS_EMAIL_SENDERS": "@example.com",
                "ACS_EMAIL_CONNECTION_STRING": CONNECTION,
                "ACS_EMAIL_ENDPOINT": "https://res.communication.azure.com",
            },
            "not both",
        ),
        (
            {"ACS_EMAIL_SENDERS": "@example.com", "ACS_EMAIL_ENDPOINT": "http://res.example"},
            "ACS_EMAIL_ENDPOINT is not an https URL",
        ),
        (
            {
                "ACS_EMAIL_SENDERS": "@example.com",
                "ACS_EMAIL_CONNECTION_STRING": "endpoint=http://acs.example.net/;accesskey=" + KEY,
            },
            "ACS_EMAIL_CONNECTION_STRING must use an https endpoint",
        ),
        (
            {
                "ACS_EMAIL_SENDERS": "@example.com",
                "ACS_EMAIL_CONNECTION_STRING": "endpoint=https://res.example/;accesskey=not*b64",
            },
            "ACS_EMAIL_CONNECTION_STRING has an access key that is not base64",
        ),
        (
            {
                "ACS_EMAIL_SENDERS": "@example.com",
                "ACS_EMAIL_CONNECTION_STRING": "accesskey=" + KEY,
            },
            "ACS_EMAIL_CONNECTION_STRING needs endpoint",
        ),
    ],
)
def test_should_refuse_acs_without_usable_settings_naming_them(
    overrides: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigurationError, match=named) as refused:
        settings_with(MAIL_PROVIDERS="acs", **overrides)

    assert "not*b64" not in str(refused.value)


def test_should_allow_http_only_to_a_loopback_stand_in() -> None:
    local = f"endpoint=http://127.0.0.1:7074/;accesskey={KEY}"

    settings = settings_with(
        MAIL_PROVIDERS="acs", ACS_EMAIL_CONNECTION_STRING=local, ACS_EMAIL_SENDERS="@example.com"
    )

    assert acs_connection_parts(settings.acs_email_connection_string or "")[0] == (
        "http://127.0.0.1:7074"
    )


def test_should_show_a_failed_operation_masked_and_without_the_mail_text() -> None:
    sent = build_message(envelope(**full(subject="Quarterly numbers for Ann")))

    error = _failed(
        "Failed",
        {
            "code": "EmailDroppedAllRecipientsSuppressed",
            "message": "ann@example.net is suppressed for 'Quarterly numbers for Ann'",
        },
        sent,
    )

    assert error.cause == ACS_FAILED
    assert CAUSES[ACS_FAILED].replay.value == "no"
    assert "EmailDroppedAllRecipientsSuppressed" in error.reason
    assert "*@example.net" in error.reason
    assert "ann@" not in error.reason
    assert "Quarterly numbers" not in error.reason


def test_should_show_nothing_of_an_error_without_code_or_message() -> None:
    assert _shown_error({"target": "x"}, {}) == ()
    assert _shown_error(None, {}) == ()


class FakePoller:
    def __init__(self, result: Any) -> None:
        self._result = result

    def result(self) -> Any:
        return self._result


class FakeResponse:
    def __init__(self, body: dict[str, Any], headers: dict[str, str]) -> None:
        self._body = body
        self.headers = headers

    def raise_for_status(self) -> None:
        return None

    def json(self) -> dict[str, Any]:
        return self._body


class ScriptedEmailClient:
    """The SDK client's two calls the sender makes, answered from a script (no network)."""

    def __init__(
        self,
        accepted: dict[str, Any],
        polls: list[tuple[dict[str, Any], dict[str, str]]],
        location: str = "https://res/emails/operations/x?api-version=v",
    ) -> None:
        self._location = location
        self._accepted = accepted
        self._polls = polls
        self.polled = 0

    def begin_send(self, message: Any, **options: Any) -> FakePoller:
        # As the SDK does with polling=False: the `cls` callback makes the result.
        headers = {"Operation-Location": self._location}
        request = SimpleNamespace(url="https://res/emails:send?api-version=v")
        response = SimpleNamespace(http_response=SimpleNamespace(headers=headers, request=request))
        return FakePoller(options["cls"](response, self._accepted, headers))

    def send_request(self, request: Any, **options: Any) -> FakeResponse:
        body, headers = self._polls[self.polled]
        self.polled += 1
        return FakeResponse(body, headers)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def sender_with(client: ScriptedEmailClient, clock: Clock, max_polls: int = 5) -> Any:
    from shared.acs_client import AcsSender

    return AcsSender(
        client,  # type: ignore[arg-type]
        wait_seconds=10,
        poll_seconds=0.25,
        max_polls=max_polls,
        clock=clock,
        sleep=clock.sleep,
    )


def test_should_fail_for_good_when_acs_answers_the_send_already_failed() -> None:
    client = ScriptedEmailClient({"id": "x", "status": "Failed", "error": {"code": "Bad"}}, [])

    with pytest.raises(PermanentDeliveryError) as refused:
        sender_with(client, Clock()).send(envelope(id="m"))

    assert refused.value.cause == ACS_FAILED
    assert client.polled == 0


def test_should_poll_at_the_pace_acs_asks_until_it_succeeds() -> None:
    clock = Clock()
    running = {"id": "x", "status": "Running"}
    client = ScriptedEmailClient(
        running,
        [(running, {"retry-after": "2"}), (running, {}), ({"id": "x", "status": "Succeeded"}, {})],
    )

    assert sender_with(client, clock).send(envelope(id="m")) == "m"

    assert clock.slept == [0.25, 2.0, 0.25]
    assert client.polled == 3


def test_should_record_sent_rather_than_wait_past_the_bound_acs_asks_for() -> None:
    clock = Clock()
    running = {"id": "x", "status": "Running"}
    client = ScriptedEmailClient(running, [(running, {"retry-after": "20"})])

    assert sender_with(client, clock).send(envelope(id="m")) == "m"

    assert clock.slept == [0.25]
    assert client.polled == 1


def test_should_sign_in_to_acs_with_the_identity_storage_uses() -> None:
    from azure.core.pipeline.policies import BearerTokenCredentialPolicy
    from azure.identity import ManagedIdentityCredential

    from shared.acs_client import email_client_from_settings

    client_id = "11111111-2222-3333-4444-555555555555"
    settings = settings_with(
        AzureWebJobsStorage="",
        AzureWebJobsStorage__accountName="stexample",
        AzureWebJobsStorage__credential="managedidentity",
        AzureWebJobsStorage__clientId=client_id,
        MAIL_PROVIDERS="acs",
        ACS_EMAIL_ENDPOINT="https://res.communication.azure.com/",
        ACS_EMAIL_SENDERS="@example.com",
    )

    client = email_client_from_settings(settings)

    # The SDK's own policy for a token credential (its scope communication.azure.com), fed by
    # the user-assigned identity the host uses for storage.
    policy = client._config.authentication_policy
    assert isinstance(policy, BearerTokenCredentialPolicy)
    assert isinstance(policy._credential, ManagedIdentityCredential)
    assert settings.acs_email_endpoint == "https://res.communication.azure.com"


def test_should_not_take_the_credentials_to_an_operation_location_elsewhere() -> None:
    running = {"id": "x", "status": "Running"}
    client = ScriptedEmailClient(
        running, [], location="https://elsewhere.example/emails/operations/x?api-version=v"
    )

    assert sender_with(client, Clock()).send(envelope(id="m")) == "m"

    assert client.polled == 0


def test_should_read_the_status_at_most_as_often_as_allowed() -> None:
    clock = Clock()
    running = {"id": "x", "status": "Running"}
    client = ScriptedEmailClient(running, [(running, {})] * 5)

    assert sender_with(client, clock, max_polls=2).send(envelope(id="m")) == "m"

    assert client.polled == 2


def test_should_keep_a_mail_to_more_than_fifty_recipients_off_acs() -> None:
    request = MailRequest.model_validate(
        message(
            to=[f"r{i}@example.net" for i in range(30)],
            bcc=[f"b{i}@example.net" for i in range(21)],
        )
    )

    with pytest.raises(NotDeliverable) as refused:
        check_deliverable(("acs",), request, acs_senders=("@example.com",))

    assert [p.pointer for p in refused.value.problems] == ["#/to"]
