"""Threat: one client uses the SendGrid account's own controls, which every client shares.

Attacker: an app holding a valid client key (careless or compromised), sending SendGrid v3
bodies to `POST /api/v3/mail/send`. mailgate holds one SendGrid account for many apps, and some
fields of a v3 body act on that account rather than on the mail: the `bypass_*` mail settings
send to addresses the account holds as unsubscribed, bounced or spam-reported (the account's
reputation, and the law, suffer for every client); `bcc` adds a hidden recipient outside the
1,000 limit and the status record; `footer`, `sandbox_mode`, `spam_check` (and its
`post_to_url`, which ships every mail's spam report to a URL of the client's choosing) and
`tracking_settings` override what the operator set for the account; `asm` uses its unsubscribe
groups, `ip_pool_name` its IP pools and their reputation, and `batch_id` joins a batch that
anyone with its id can pause or cancel.

What the gateway does: each of these fields needs a feature in the client's row (shared/policy.py
FEATURES, granted with `make client ... FEATURES=` or `make client-features`); without it the
request is refused with 403 in SendGrid's error format, one entry per field, naming it, and
nothing is queued. A new client has no feature; a row from before features existed has none.
The value does not matter: `"enable": false` overrides the account's own setting as much as
`true`. A mail setting the gateway does not know is refused to every client.
"""

from __future__ import annotations

from typing import Any

import pytest

from shared.clients import CLIENT_CHECK_SECONDS, CLIENT_ROW
from shared.policy import FEATURES
from tests.samples import SENDER
from tests.security.client_stack import ClientStack, fields, install, refusal


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch) -> ClientStack:
    return install(monkeypatch)


def mail(**fields: Any) -> dict[str, Any]:
    """A small v3 Mail Send body; keyword arguments add top-level fields."""
    return {
        "personalizations": [{"to": [{"email": "ann@example.net"}]}],
        "from": {"email": SENDER},
        "subject": "Hello",
        "content": [{"type": "text/plain", "value": "Hi"}],
        **fields,
    }


# (the body's extra fields, the field SendGrid's error names, the feature that allows it)
CONTROLS: dict[str, tuple[dict[str, Any], str, str]] = {
    "bypass_list_management": (
        {"mail_settings": {"bypass_list_management": {"enable": True}}},
        "mail_settings.bypass_list_management",
        "mail_settings.bypass_list_management",
    ),
    "bypass_spam_management": (
        {"mail_settings": {"bypass_spam_management": {"enable": True}}},
        "mail_settings.bypass_spam_management",
        "mail_settings.bypass_spam_management",
    ),
    "bypass_bounce_management": (
        {"mail_settings": {"bypass_bounce_management": {"enable": True}}},
        "mail_settings.bypass_bounce_management",
        "mail_settings.bypass_bounce_management",
    ),
    "bypass_unsubscribe_management": (
        {"mail_settings": {"bypass_unsubscribe_management": {"enable": True}}},
        "mail_settings.bypass_unsubscribe_management",
        "mail_settings.bypass_unsubscribe_management",
    ),
    "hidden bcc": (
        {"mail_settings": {"bcc": {"enable": True, "email": "collector@elsewhere.example"}}},
        "mail_settings.bcc",
        "mail_settings.bcc",
    ),
    "footer": (
        {"mail_settings": {"footer": {"enable": True, "text": "Buy now"}}},
        "mail_settings.footer",
        "mail_settings.footer",
    ),
    "sandbox_mode": (
        {"mail_settings": {"sandbox_mode": {"enable": True}}},
        "mail_settings.sandbox_mode",
        "mail_settings.sandbox_mode",
    ),
    "spam_check posting reports elsewhere": (
        {
            "mail_settings": {
                "spam_check": {
                    "enable": True,
                    "threshold": 1,
                    "post_to_url": "https://collector.elsewhere.example/spam",
                }
            }
        },
        "mail_settings.spam_check",
        "mail_settings.spam_check",
    ),
    "click tracking": (
        {"tracking_settings": {"click_tracking": {"enable": True}}},
        "tracking_settings.click_tracking",
        "tracking_settings",
    ),
    "subscription tracking": (
        {"tracking_settings": {"subscription_tracking": {"enable": False}}},
        "tracking_settings.subscription_tracking",
        "tracking_settings",
    ),
    "unsubscribe group": ({"asm": {"group_id": 77}}, "asm", "asm"),
    "ip pool": ({"ip_pool_name": "other-apps-pool"}, "ip_pool_name", "ip_pool_name"),
    "batch": ({"batch_id": "ANOTHER_APPS_BATCH"}, "batch_id", "batch_id"),
}


@pytest.mark.parametrize(("extra", "field", "feature"), CONTROLS.values(), ids=CONTROLS.keys())
def test_should_refuse_an_account_control_with_403_naming_the_field(
    stack: ClientStack, extra: dict[str, Any], field: str, feature: str
) -> None:
    key = stack.client("plain")

    response = stack.post("v3", mail(**extra), key)

    assert response.status_code == 403
    [entry] = refusal(response)["errors"]
    assert entry["field"] == field
    assert repr(feature) in entry["message"]
    assert stack.queue.messages == []


@pytest.mark.parametrize(("extra", "field", "feature"), CONTROLS.values(), ids=CONTROLS.keys())
def test_should_pass_an_account_control_on_for_a_client_allowed_its_feature(
    stack: ClientStack, extra: dict[str, Any], field: str, feature: str
) -> None:
    key = stack.client("trusted", features=feature)

    response = stack.post("v3", mail(**extra), key)

    assert response.status_code == 202, response.get_body()
    [queued] = stack.queue.envelopes
    assert queued.sendgrid == mail(**extra)


def test_should_refuse_a_setting_switched_off_too_since_that_overrides_the_account(
    stack: ClientStack,
) -> None:
    key = stack.client("plain")
    settings = {"footer": {"enable": False}, "bypass_list_management": {"enable": False}}

    response = stack.post("v3", mail(mail_settings=settings), key)

    assert response.status_code == 403
    assert fields(response) == [
        "mail_settings.bypass_list_management",
        "mail_settings.footer",
    ]


def test_should_name_every_field_not_allowed_at_once(stack: ClientStack) -> None:
    key = stack.client("partly", features="mail_settings.sandbox_mode")
    document = mail(
        mail_settings={
            "sandbox_mode": {"enable": True},
            "bcc": {"enable": True, "email": "collector@elsewhere.example"},
        },
        ip_pool_name="other-apps-pool",
        asm={"group_id": 77},
    )

    response = stack.post("v3", document, key)

    assert response.status_code == 403
    assert fields(response) == ["mail_settings.bcc", "asm", "ip_pool_name"]


def test_should_refuse_a_mail_setting_it_does_not_know_to_every_client(
    stack: ClientStack,
) -> None:
    key = stack.client("trusted", features=",".join(FEATURES))
    document = mail(mail_settings={"address_whitelist": {"enable": True}})

    response = stack.post("v3", document, key)

    assert response.status_code == 403
    [entry] = refusal(response)["errors"]
    assert entry["field"] == "mail_settings.address_whitelist"
    assert "No client may use" in entry["message"]


def test_should_still_accept_an_ordinary_mail_from_a_client_without_features(
    stack: ClientStack,
) -> None:
    key = stack.client("plain")

    assert stack.post("v3", mail(), key).status_code == 202
    assert stack.post("v3", mail(mail_settings={}, tracking_settings={}), key).status_code == 202


def test_should_read_a_client_row_from_before_features_as_allowed_none(
    stack: ClientStack,
) -> None:
    key = stack.client("old", features="mail_settings.sandbox_mode")
    del stack.table.rows[("old", CLIENT_ROW)]["features"]

    response = stack.post("v3", mail(mail_settings={"sandbox_mode": {"enable": True}}), key)

    assert response.status_code == 403


def test_should_stop_allowing_a_feature_within_the_check_interval_once_taken_away(
    stack: ClientStack,
) -> None:
    key = stack.client("trusted", features="ip_pool_name")
    assert stack.post("v3", mail(ip_pool_name="pool-a"), key).status_code == 202

    stack.clients.set_features("trusted", "none")
    stack.clock.now += CLIENT_CHECK_SECONDS

    response = stack.post("v3", mail(ip_pool_name="pool-a"), key)
    assert response.status_code == 403
    assert fields(response) == ["ip_pool_name"]
    assert len(stack.queue.envelopes) == 1
