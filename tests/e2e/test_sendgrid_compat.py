"""End to end: an app's official SendGrid library, aimed at the gateway, to the stand-in."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from python_http_client.exceptions import BadRequestsError
from sendgrid.helpers.mail import (
    Asm,
    BatchId,
    BypassListManagement,
    Cc,
    ClickTracking,
    Content,
    CustomArg,
    From,
    GroupId,
    GroupsToDisplay,
    IpPoolName,
    Mail,
    MailSettings,
    OpenTracking,
    Personalization,
    SandBoxMode,
    SendAt,
    Subject,
    TemplateId,
    To,
    TrackingSettings,
)

from devstack.sendgrid_standin import SendGridStandIn
from tests.e2e.conftest import RunningHost, sendgrid_library, wait_for
from tests.e2e.test_mail_flow import mails_for


def migrating_app_mail(sandbox: bool = False) -> Mail:
    """A mail built with the library's helpers, using every field that must pass through."""
    send_at = int(time.time()) + 3600
    mail = Mail()
    mail.from_email = From("app@example.com", "Billing App")
    mail.subject = Subject("Your invoice 42")
    mail.add_content(Content("text/plain", "Invoice 42 is ready."))
    mail.template_id = TemplateId("d-0123456789abcdef0123456789abcdef")
    ann = Personalization()
    ann.add_to(To("ann@customer.example.org", "Ann Example"))
    ann.add_cc(Cc("carol@partner.example.net"))
    ann.dynamic_template_data = {"name": "Ann", "lines": [{"sku": "A-1", "qty": 2}]}
    ann.add_custom_arg(CustomArg("order", "42"))
    ann.send_at = send_at
    mail.add_personalization(ann)
    bob = Personalization()
    bob.add_to(To("bob@customer.example.org"))
    bob.dynamic_template_data = {"name": "Bob", "vip": True}
    mail.add_personalization(bob)
    mail.custom_arg = CustomArg("tenant", "acme")
    mail.send_at = SendAt(send_at)
    mail.batch_id = BatchId("MWQ4NjBlNzctZGNhZi0xMWU5LTgzMzQtZjJmYTk0MDkyZTQ3LWE5NzQ2ZjZmMw")
    mail.asm = Asm(GroupId(123), GroupsToDisplay([123, 456]))
    mail.ip_pool_name = IpPoolName("transactional")
    settings = MailSettings()
    settings.sandbox_mode = SandBoxMode(sandbox)
    settings.bypass_list_management = BypassListManagement(False)
    mail.mail_settings = settings
    tracking = TrackingSettings()
    tracking.click_tracking = ClickTracking(True, False)
    tracking.open_tracking = OpenTracking(True)
    mail.tracking_settings = tracking
    return mail


def with_gateway_id(sent: dict[str, Any], message_id: str) -> dict[str, Any]:
    """What SendGrid must get: the body as the app sent it, plus mailgate_id per personalization."""
    expected: dict[str, Any] = json.loads(json.dumps(sent))
    for personalization in expected["personalizations"]:
        personalization["custom_args"] = {
            **personalization.get("custom_args", {}),
            "mailgate_id": message_id,
        }
    return expected


def test_should_send_through_the_official_library_and_deliver_every_field_unchanged(
    stack: RunningHost, standin: SendGridStandIn
) -> None:
    mail = migrating_app_mail()

    response = sendgrid_library(stack).send(mail)

    assert response.status_code == 202
    assert response.body == b""
    message_id = response.headers["X-Message-Id"]
    [delivered] = wait_for(lambda: mails_for(standin, message_id))
    assert delivered["payload"] == with_gateway_id(mail.get(), message_id)
    assert [p["custom_args"] for p in delivered["payload"]["personalizations"]] == [
        {"mailgate_id": message_id},
        {"order": "42", "mailgate_id": message_id},
    ]
    assert delivered["payload"]["custom_args"] == {"tenant": "acme"}
    status = wait_for(lambda: (s := stack.status(message_id))["status"] == "sent" and s)
    assert status["sendgrid_message_id"] == delivered["x_message_id"]
    log = stack.log()
    for secret in ("ann@customer.example.org", "carol@partner.example.net", "Your invoice 42"):
        assert secret not in log


def test_should_pass_sandbox_mode_through_to_sendgrid(
    stack: RunningHost, standin: SendGridStandIn
) -> None:
    response = sendgrid_library(stack).send(migrating_app_mail(sandbox=True))

    assert response.status_code == 202
    message_id = response.headers["X-Message-Id"]
    # SendGrid validates a sandboxed mail and answers 200 without sending it.
    wait_for(lambda: stack.status(message_id)["status"] == "sent")
    [request] = standin.requests()
    assert (request["status"], request["outcome"]) == (200, "sandbox")
    assert mails_for(standin, message_id) == []


def test_should_refuse_an_invalid_body_in_sendgrids_error_format(
    stack: RunningHost, standin: SendGridStandIn
) -> None:
    body = migrating_app_mail().get()
    body["personalizations"][1]["to"][0]["email"] = "ann(at)customer.example.org"

    with pytest.raises(BadRequestsError) as caught:
        sendgrid_library(stack).send(body)

    assert caught.value.status_code == 400
    assert json.loads(caught.value.body) == {
        "errors": [
            {
                "message": "Does not contain a valid address.",
                "field": "personalizations.1.to.0.email",
                "help": None,
            }
        ]
    }
    time.sleep(0.5)
    assert standin.requests() == []
