"""End to end: envelopes written by a newer mailgate survive this one (a rolling deploy).

Flex Consumption has no deployment slots: during a deploy, old and new workers take messages
from the same queue. An old worker must send what it can read, ignoring (and keeping) fields
it does not know, and leave on the queue what only a newer worker can read.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import datetime, timezone

from azure.storage.queue import QueueClient

from devstack.sendgrid_standin import SendGridStandIn
from shared.models import MailRequest, QueueEnvelope
from tests.e2e.conftest import Queues, RunningHost, wait_for
from tests.e2e.test_mail_flow import full_message, mails_for


def put(queue: QueueClient, document: dict[str, object]) -> None:
    """Put a JSON envelope on the queue as a gateway writes it (base64)."""
    queue.send_message(base64.b64encode(json.dumps(document).encode()).decode())


def test_should_send_a_newer_envelope_it_can_read_and_leave_one_it_cannot(
    stack: RunningHost, standin: SendGridStandIn, queues: Queues
) -> None:
    readable_id, newer_id = str(uuid.uuid4()), str(uuid.uuid4())
    envelope = QueueEnvelope(
        id=readable_id,
        accepted_at=datetime.now(timezone.utc),
        client="e2e",
        message=MailRequest.model_validate(full_message()),
    )
    # Version 1 with a field this version does not know, and a version 3 envelope.
    put(queues.mail, {**json.loads(envelope.to_json()), "priority": "high"})
    put(queues.mail, {"version": 3, "id": newer_id, "parts": [{"kind": "future"}]})

    wait_for(lambda: mails_for(standin, readable_id))
    wait_for(lambda: "envelope version 3, newer than this worker reads" in stack.log())
    time.sleep(1)

    assert len(mails_for(standin, readable_id)) == 1
    assert len(standin.requests()) == 1
    assert queues.peek(queues.poison) == []
    # Put back unchanged, waiting for a newer worker: invisible now, but still on the queue.
    properties = queues.mail.get_queue_properties()
    assert properties.approximate_message_count == 1
    queues.clear()
