"""End to end: the host's log of a full run of sends holds no key, body, attachment or address.

One host of its own, on its own queue, table and container, so that its log holds this test's
traffic alone: messages through both APIs, a claim-checked one, a SendGrid failure that is
retried and one that is dead-lettered (both with error bodies that echo an address), and
requests refused with 400, 401, 403 and 422.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from python_http_client.exceptions import HTTPError
from sendgrid.helpers.mail import (
    Attachment,
    Cc,
    Content,
    CustomArg,
    Disposition,
    FileContent,
    FileName,
    FileType,
    From,
    Mail,
    Personalization,
    Subject,
    TemplateId,
    To,
)

from devstack.azurite import Azurite
from devstack.sendgrid_standin import SendGridStandIn
from shared.clients import KEY_PREFIX
from tests.e2e.conftest import Queues, RunningHost, gateway_settings, sendgrid_library, wait_for
from tests.e2e.test_mail_flow import dead_letter_for

# Every value below is distinctive, so finding it in the log can only mean it leaked.
SENDER = "payroll.hygiene@apps.example.com"
SENDER_NAME = "Payroll Hygiene"
TO = "ann.hygiene@customer.example.org"
TO_NAME = "Ann Hygienic"
TO_PLAIN = "bob.hygiene@customer.example.org"
CC = "carol.hygiene@partner.example.net"
BCC = "audit.hygiene@example.com"
BCC_NAME = "Audit Hygienic"
REPLY_TO = "replies.hygiene@apps.example.com"
V3_TO = "dora.hygiene@customer.example.org"
V3_TO_NAME = "Dora Hygienic"
V3_CC = "eve.hygiene@partner.example.net"
REFUSED_SENDER = "outsider.hygiene@elsewhere.example.net"
BROKEN_ADDRESS = "broken.hygiene@@customer.example.org"
SUBJECT = "Hygiene subject: salary slip for November"
TEXT = "Hygiene text body: your salary is 4242.17"
HTML = "<p>Hygiene html body: <b>4242.17</b></p>"
HEADER_VALUE = "hygiene-header-value-payslip"
CUSTOM_ARG = "hygiene-custom-arg-value-v1"
ATTACHMENT_NAME = "hygiene-payslip-ann.pdf"
V3_SUBJECT = "Hygiene v3 subject: your order"
V3_TEXT = "Hygiene v3 text body: order 9191"
TEMPLATE_VALUES = ("hygiene-template-value-Dora", "hygiene-template-amount-9191.50")
V3_CUSTOM_ARGS = ("hygiene-v3-personal-arg", "hygiene-v3-global-arg")
IDEMPOTENCY_KEYS = ("hygiene-idempotency-v1-7c1f", "hygiene-idempotency-v3-52aa")
# What a provider's error text may echo back of the mail it refuses: the gateway keeps it in
# the dead letter as it came, and logs it only with the address cut to its domain and the mail's
# own text left out.
PROVIDER_ERROR = f"Does not contain a valid address: {TO} ({SUBJECT})"
PROVIDER_ERROR_V3 = f"Does not contain a valid address: {V3_TO} ({V3_SUBJECT})"
PROVIDER_ERROR_LOGGED = "Does not contain a valid address: *@customer.example.org (…)"

# A large message's attachment is over one queue message (48 KB of JSON): claim-checked.
LARGE_ATTACHMENT_BYTES = 64 * 1024
# A leak of attachment content shows as any run of this many base64 characters.
SLICE = 40


def attachment_content(size: int) -> str:
    """Base64 of distinctive text followed by random bytes."""
    return base64.b64encode(b"HYGIENE ATTACHMENT PLAINTEXT " + os.urandom(size)).decode()


def v1_message(attachment: str, **overrides: Any) -> dict[str, Any]:
    """A /api/v1/messages body using every field that carries mail content or an address."""
    message: dict[str, Any] = {
        "from": f"{SENDER_NAME} <{SENDER}>",
        "to": [f"{TO_NAME} <{TO}>", {"email": TO_PLAIN}],
        "cc": [CC],
        "bcc": [{"email": BCC, "name": BCC_NAME}],
        "reply_to": REPLY_TO,
        "subject": SUBJECT,
        "text": TEXT,
        "html": HTML,
        "headers": {"X-Hygiene": HEADER_VALUE},
        "custom_args": {"payslip": CUSTOM_ARG},
        "attachments": [
            {"filename": ATTACHMENT_NAME, "content": attachment, "content_type": "application/pdf"}
        ],
    }
    message.update(overrides)
    return message


def v3_mail(attachment: str) -> dict[str, Any]:
    """A SendGrid v3 body as the official library builds it, with template data and args."""
    mail = Mail()
    mail.from_email = From(SENDER, SENDER_NAME)
    mail.subject = Subject(V3_SUBJECT)
    mail.add_content(Content("text/plain", V3_TEXT))
    mail.template_id = TemplateId("d-0123456789abcdef0123456789abcdef")
    personalization = Personalization()
    personalization.add_to(To(V3_TO, V3_TO_NAME))
    personalization.add_cc(Cc(V3_CC))
    personalization.dynamic_template_data = {
        "first_name": TEMPLATE_VALUES[0],
        "lines": [{"amount": TEMPLATE_VALUES[1]}],
    }
    personalization.add_custom_arg(CustomArg("order", V3_CUSTOM_ARGS[0]))
    mail.add_personalization(personalization)
    mail.custom_arg = CustomArg("tenant", V3_CUSTOM_ARGS[1])
    mail.add_attachment(
        Attachment(
            FileContent(attachment),
            FileName(ATTACHMENT_NAME),
            FileType("application/pdf"),
            Disposition("attachment"),
        )
    )
    body: dict[str, Any] = mail.get()
    return body


def wrong_key(name: str) -> str:
    """A key shaped like a real one (a client name and a 43-character secret) that is not."""
    return f"{KEY_PREFIX}{name}_{secrets.token_urlsafe(32)}"


def secret_of(key: str) -> str:
    """The secret part of `mg_<name>_<secret>` (names have no underscore; secrets may)."""
    return key[len(KEY_PREFIX) :].partition("_")[2]


def leaked_lines(log: str, values: Mapping[str, str]) -> dict[str, list[str]]:
    """For each value found in the log (addresses and all, case-insensitively), its lines."""
    lines = log.lower().splitlines()
    found = {
        label: [line for line in lines if value.lower() in line] for label, value in values.items()
    }
    return {label: hits for label, hits in found.items() if hits}


def shares_a_slice(log: str, content: str) -> bool:
    """Whether any SLICE characters in a row of `content` appear in the log."""
    windows = {log[i : i + SLICE] for i in range(len(log) - SLICE + 1)}
    return any(content[i : i + SLICE] in windows for i in range(len(content) - SLICE + 1))


def send_v3(host: RunningHost, body: dict[str, Any], idempotency_key: str) -> str:
    """POST /api/v3/mail/send through the official library; the gateway id it answers."""
    response = sendgrid_library(host).client.mail.send.post(
        request_body=body, request_headers={"Idempotency-Key": idempotency_key}
    )
    assert response.status_code == 202, response.body
    return str(response.headers["X-Message-Id"])


def refusal_status(call: Any) -> int:
    """The status of a request the official library raises for."""
    with pytest.raises(HTTPError) as caught:
        call()
    return int(caught.value.status_code)


@pytest.fixture
def hygiene_host(
    azurite: Azurite, standin: SendGridStandIn, tmp_path: Path
) -> Iterator[RunningHost]:
    """A host of its own, on its own queue, table and container: its log is this test's."""
    settings = {
        **gateway_settings(azurite.connection_string, standin),
        "MAIL_QUEUE_NAME": "mail-hygiene",
        "STATUS_TABLE_NAME": "statushygiene",
        "LARGE_MESSAGE_CONTAINER_NAME": "mail-large-hygiene",
    }
    standin.reset()
    # The Azure SDK's and httpx's request lines too (Azure turns them down): the most logged.
    host = RunningHost(settings, tmp_path, library_log_level="INFO")
    yield host
    host.stop()


def test_should_keep_keys_bodies_attachments_and_addresses_out_of_the_logs_of_a_full_run(
    hygiene_host: RunningHost, standin: SendGridStandIn, azurite: Azurite
) -> None:
    host = hygiene_host
    small = attachment_content(300)
    large = attachment_content(LARGE_ATTACHMENT_BYTES)
    v3_attachment = attachment_content(200)
    client_name = host.client_key[len(KEY_PREFIX) :].partition("_")[0]
    field = "personalizations.0.to.0.email"
    refusal = {"errors": [{"message": PROVIDER_ERROR, "field": field}]}
    unavailable = {"errors": [{"message": PROVIDER_ERROR_V3, "field": field}]}
    standin.script([{"status": 400, "body": refusal}, {"status": 503, "body": unavailable}])

    # SendGrid refuses the first mail for good and fails the second once; nothing else is
    # scripted, so the rest is accepted whatever the order it arrives in.
    dead = host.post_message(v1_message(small, subject=f"{SUBJECT} (refused)"))
    assert dead.status_code == 202, dead.text
    wait_for(lambda: len(standin.requests()) >= 1)
    retried = send_v3(host, v3_mail(v3_attachment), IDEMPOTENCY_KEYS[1])
    wait_for(lambda: len(standin.requests()) >= 2)
    first = host.post_message(v1_message(small), headers={"Idempotency-Key": IDEMPOTENCY_KEYS[0]})
    replayed = host.post_message(
        v1_message(small), headers={"Idempotency-Key": IDEMPOTENCY_KEYS[0]}
    )
    reused = host.post_message(
        v1_message(small, text=f"{TEXT} (another body)"),
        headers={"Idempotency-Key": IDEMPOTENCY_KEYS[0]},
    )
    claim_checked = host.post_message(v1_message(large))
    v3_sent = send_v3(host, v3_mail(v3_attachment), f"{IDEMPOTENCY_KEYS[1]}-2")

    wrong_own_key, wrong_other_key = wrong_key(client_name), wrong_key("payroll")
    refused = {
        "v1 wrong key": host.post_message(v1_message(small), key=wrong_own_key).status_code,
        "v1 unknown client": host.post_message(v1_message(small), key=wrong_other_key).status_code,
        "v1 invalid": host.post_message(
            v1_message(small, cc=[CC, BROKEN_ADDRESS], unknown_field=TEXT)
        ).status_code,
        "v1 sender": host.post_message(v1_message(small, **{"from": REFUSED_SENDER})).status_code,
        "v3 wrong key": refusal_status(
            lambda: sendgrid_library(host, wrong_own_key).send(v3_mail(v3_attachment))
        ),
        "v3 invalid": refusal_status(
            lambda: sendgrid_library(host).send(
                {**v3_mail(v3_attachment), "from": {"email": BROKEN_ADDRESS}}
            )
        ),
        "v3 sender": refusal_status(
            lambda: sendgrid_library(host).send(
                {**v3_mail(v3_attachment), "from": {"email": REFUSED_SENDER}}
            )
        ),
    }
    assert refused == {
        "v1 wrong key": 401,
        "v1 unknown client": 401,
        "v1 invalid": 400,
        "v1 sender": 403,
        "v3 wrong key": 401,
        "v3 invalid": 400,
        "v3 sender": 403,
    }
    assert [r.status_code for r in (first, replayed, reused, claim_checked)] == [202, 202, 422, 202]
    assert replayed.json()["id"] == first.json()["id"]

    dead_id = dead.json()["id"]
    sent_ids = [first.json()["id"], claim_checked.json()["id"], retried, v3_sent]
    # Each message's last line is written right after its status: wait for the lines.
    final_lines = [f"Message {dead_id} dead-lettered"] + [f"Message {i} sent" for i in sent_ids]
    wait_for(lambda: all(line in host.log() for line in final_lines), timeout=20)
    log = host.log()

    assert (
        f"Message {retried} attempt 1 failed (SendGrid answered 503: {PROVIDER_ERROR_LOGGED} "
        f"(field {field}))"
    ) in log
    assert (
        f"Message {dead_id} dead-lettered to mail-hygiene-poison: SendGrid refused the message "
        f"with 400: {PROVIDER_ERROR_LOGGED} (field {field}) (cause invalid_request, replay no)"
    ) in log
    assert f"its body in blob live/{claim_checked.json()['id']}.json" in log
    # SendGrid's error text is kept for the operator, in the dead letter, not in the log.
    dead_letter = dead_letter_for(Queues(azurite.connection_string, "mail-hygiene"), dead_id)
    assert dead_letter is not None
    assert PROVIDER_ERROR in dead_letter["dead_letter"]["provider_error"]
    account_key = re.search(r"AccountKey=([^;]+)", azurite.connection_string)
    never_logged = {
        "client key": host.client_key,
        "client key secret": secret_of(host.client_key),
        "wrong key": wrong_own_key,
        "wrong key secret": secret_of(wrong_own_key),
        "unknown client's key": wrong_other_key,
        "unknown client's key secret": secret_of(wrong_other_key),
        "SendGrid API key": standin.api_key,
        "storage account key": account_key[1] if account_key else "AccountKey=",
        "idempotency key v1": IDEMPOTENCY_KEYS[0],
        "idempotency key v3": IDEMPOTENCY_KEYS[1],
        "subject": SUBJECT,
        "text": TEXT,
        "html": HTML,
        "header value": HEADER_VALUE,
        "custom arg": CUSTOM_ARG,
        "attachment name": ATTACHMENT_NAME,
        "attachment plaintext": "HYGIENE ATTACHMENT PLAINTEXT",
        "v3 subject": V3_SUBJECT,
        "v3 text": V3_TEXT,
        "provider error": PROVIDER_ERROR,
        "v3 provider error": PROVIDER_ERROR_V3,
        **{f"template value {n}": v for n, v in enumerate(TEMPLATE_VALUES)},
        **{f"v3 custom arg {n}": v for n, v in enumerate(V3_CUSTOM_ARGS)},
    }
    addresses = (SENDER, TO, TO_PLAIN, CC, BCC, REPLY_TO, V3_TO, V3_CC, REFUSED_SENDER)
    for address in (*addresses, BROKEN_ADDRESS):
        # The local part alone names the person as well as the whole address does.
        never_logged[address] = address.partition("@")[0] + "@"
    for name in (SENDER_NAME, TO_NAME, BCC_NAME, V3_TO_NAME):
        never_logged[name] = name

    assert all(message_id in log for message_id in (dead_id, *sent_ids))
    assert "azure.core.pipeline.policies.http_logging_policy" in log
    assert leaked_lines(log, never_logged) == {}
    for label, content in (("small", small), ("large", large), ("v3", v3_attachment)):
        assert not shares_a_slice(log, content), f"the {label} attachment's content is logged"
    # Recipient domains are logged on purpose.
    assert "customer.example.org" in log
