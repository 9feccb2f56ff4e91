"""End to end in identity mode: the core flows of the gateway with storage reached only with
managed-identity tokens over HTTPS, as in Azure, and the proof that no request used a key."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from devstack.host_process import REPO
from devstack.identity_mode import without_storage_connections
from devstack.sendgrid_standin import SendGridStandIn
from tests.e2e.conftest import WEBHOOK_SIGNER, RunningHost, wait_for
from tests.e2e.identity.conftest import (
    IdentityLargeMessageBodies,
    IdentityQueues,
    IdentityStack,
    storage_requests,
)
from tests.e2e.test_event_webhook import batch
from tests.e2e.test_mail_flow import accept, dead_letter_for, mails_for

# Above the 48 KiB of JSON a queue message holds: the body goes to a blob (claim-check).
LARGE_ATTACHMENT_BYTES = 300 * 1024


def operator_command(
    stack: IdentityStack, gateway: RunningHost, folder: Path, *arguments: str
) -> dict[str, Any]:
    """`make poison` and friends as docs/development.md says in identity mode: the environment file
    sourced, then `python -m admin ...` in a folder whose local.settings.json is the example's
    shape (the gateway's settings, storage by the development key); its JSON output
    (--json)."""
    values = without_storage_connections(gateway.settings)
    values = {k: v for k, v in values.items() if not k.startswith(("IDENTITY_", "SSL_CERT"))}
    values["AzureWebJobsStorage"] = "UseDevelopmentStorage=true"
    (folder / "local.settings.json").write_text(json.dumps({"Values": values}))
    command = f'. "{stack.operator_env_file}" && exec "{sys.executable}" -m admin ' + " ".join(
        [*arguments, "--json"]
    )
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("IDENTITY_", "SSL_CERT_FILE", "Azure", "MAILGATE_STORAGE"))
    }
    environment["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        ["sh", "-c", command],
        cwd=folder,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def test_should_accept_deliver_and_report_a_message_sent(
    gateway: RunningHost, standin: SendGridStandIn, identity_queues: IdentityQueues
) -> None:
    message_id = accept(gateway)

    [mail] = wait_for(lambda: mails_for(standin, message_id))
    wait_for(lambda: gateway.status(message_id)["status"] == "sent")

    assert mail["payload"]["subject"] == "Your invoice 42"
    assert gateway.status(message_id)["id"] == message_id
    assert identity_queues.peek(identity_queues.mail) == []
    assert len(mails_for(standin, message_id)) == 1


def test_should_retry_a_transient_failure_and_deliver_once(
    gateway: RunningHost, standin: SendGridStandIn, identity_queues: IdentityQueues
) -> None:
    standin.script([{"status": 503}])

    message_id = accept(gateway)

    wait_for(lambda: gateway.status(message_id)["status"] == "sent", timeout=20)
    assert len(standin.requests()) == 2
    assert len(mails_for(standin, message_id)) == 1
    assert f"Message {message_id} attempt 1 failed" in gateway.log()
    assert dead_letter_for(identity_queues, message_id) is None


def test_should_dead_letter_a_refused_message_and_replay_it_with_the_operator_command(
    gateway: RunningHost,
    standin: SendGridStandIn,
    identity_queues: IdentityQueues,
    identity_stack: IdentityStack,
    tmp_path: Path,
) -> None:
    refusal = {"errors": [{"message": "Invalid from address.", "field": "from", "help": None}]}
    standin.script([{"status": 400, "body": refusal}])
    message_id = accept(gateway)
    record = wait_for(lambda: dead_letter_for(identity_queues, message_id))
    assert record["dead_letter"]["status_code"] == 400

    listed = operator_command(identity_stack, gateway, tmp_path, "list")
    replayed = operator_command(identity_stack, gateway, tmp_path, "replay", message_id)

    assert [d["id"] for d in listed["dead_letters"]] == [message_id]
    assert replayed["done"] == [message_id]
    wait_for(lambda: gateway.status(message_id)["status"] == "sent", timeout=20)
    assert len(mails_for(standin, message_id)) == 1
    assert identity_queues.peek(identity_queues.poison) == []


def test_should_record_a_signed_webhook_batch_on_the_status(gateway: RunningHost) -> None:
    message_id = accept(gateway)
    wait_for(lambda: gateway.status(message_id)["status"] == "sent")
    now = datetime.now(timezone.utc)

    response = gateway.post_events(WEBHOOK_SIGNER.sign(batch(message_id, now), now))

    assert response.status_code == 200, response.text
    assert response.json()["recorded"] == 3
    document = gateway.status(message_id)
    assert document["delivery"] == "delivered"
    assert [e["event"] for e in document["timeline"]] == ["processed", "delivered", "open"]


def test_should_show_a_sent_message_in_the_console_summary(gateway: RunningHost) -> None:
    message_id = accept(gateway, subject="Shown on the console")
    wait_for(lambda: gateway.status(message_id)["status"] == "sent")

    def summary_showing_it() -> dict[str, Any] | None:
        response = gateway.admin("GET", "/api/v1/console/summary")
        assert response.status_code == 200, response.text
        document: dict[str, Any] = response.json()
        shown = [m["status"] for m in document["latest"] if m["id"] == message_id]
        return document if shown == ["sent"] else None

    # The activity row follows the status record by up to half a second.
    summary = wait_for(summary_showing_it)

    assert summary["queues"]["mail"]["name"] == "mail-e2e"
    assert summary["queues"]["poison"]["depth"] == 0
    assert sum(minute["sent"] for minute in summary["minutes"]) >= 1


def test_should_deliver_a_claim_checked_message_and_then_delete_its_blob(
    gateway: RunningHost,
    standin: SendGridStandIn,
    identity_large_bodies: IdentityLargeMessageBodies,
) -> None:
    content = os.urandom(LARGE_ATTACHMENT_BYTES)
    attachment = {
        "filename": "report.bin",
        "content": base64.b64encode(content).decode(),
        "content_type": "application/octet-stream",
    }

    message_id = accept(gateway, attachments=[attachment])

    [mail] = wait_for(lambda: mails_for(standin, message_id), timeout=30)
    [received] = mail["payload"]["attachments"]
    assert hashlib.sha256(base64.b64decode(received["content"])).digest() == (
        hashlib.sha256(content).digest()
    )
    assert f"its body in blob live/{message_id}.json" in gateway.log()
    wait_for(lambda: f"live/{message_id}.json" not in identity_large_bodies.names())


def test_should_keep_a_refused_large_messages_body_by_a_copy_signed_with_the_identity(
    gateway: RunningHost,
    standin: SendGridStandIn,
    identity_queues: IdentityQueues,
    identity_large_bodies: IdentityLargeMessageBodies,
) -> None:
    # Copy Blob within the account, its source authorized by the same bearer token (in Azure
    # too: MicrosoftDocs/azure-docs, storage-blob-copy-async-python.md).
    standin.script([{"status": 400, "body": {"errors": [{"message": "bad", "field": None}]}}])
    large = base64.b64encode(os.urandom(LARGE_ATTACHMENT_BYTES)).decode()
    message_id = accept(
        gateway, attachments=[{"filename": "a.bin", "content": large, "content_type": "a/b"}]
    )

    record = wait_for(lambda: dead_letter_for(identity_queues, message_id), timeout=30)

    kept = f"dead-letters/{message_id}.json"
    assert record["blob"] == kept
    wait_for(lambda: f"live/{message_id}.json" not in identity_large_bodies.names() or None)
    assert kept in identity_large_bodies.names()


def test_should_reach_storage_with_bearer_tokens_only_and_never_a_shared_key(
    gateway: RunningHost,
    standin: SendGridStandIn,
    identity_stack: IdentityStack,
    identity_large_bodies: IdentityLargeMessageBodies,
) -> None:
    # Its own traffic on all three services (queue, status table, body blob), whatever ran
    # before; the debug log holds every request since Azurite started.
    large = base64.b64encode(os.urandom(LARGE_ATTACHMENT_BYTES)).decode()
    message_id = accept(
        gateway, attachments=[{"filename": "a.bin", "content": large, "content_type": "a/b"}]
    )
    wait_for(lambda: gateway.status(message_id)["status"] == "sent", timeout=30)
    wait_for(lambda: f"live/{message_id}.json" not in identity_large_bodies.names())
    time.sleep(1.5)  # the host's polls in the meantime, on the log too

    requests = storage_requests(identity_stack.debug_log)

    schemes = Counter(r.authorization.split(" ")[0] or "(none)" for r in requests)
    assert set(schemes) == {"Bearer"}, schemes
    assert {r.service for r in requests} == {"Blob", "Queue", "Table"}
    # This test's own traffic alone is about 40 requests (39-42 measured when run by itself).
    assert schemes["Bearer"] > 30
    assert all(r.url.startswith("https://") for r in requests)
    # The message's own requests carry its id for Storage's logs (shared/message_ids.py): the
    # enqueue and the claim's insert, whose URLs do not name it, and the `sent` write.
    named = {(r.service, r.method) for r in requests if r.client_request_id == message_id}
    assert {("Queue", "POST"), ("Table", "POST"), ("Table", "PUT")} <= named
    assert not any("accountkey" in value.lower() for value in gateway.settings.values())
    assert "AzureWebJobsStorage" not in gateway.settings
    assert "MAILGATE_STORAGE" not in gateway.settings
