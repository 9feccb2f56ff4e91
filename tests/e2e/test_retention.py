"""End to end: the retention timer on the local host deletes old activity rows, status records
with their delivery events, and idempotency keys, and keeps new ones; it deletes claim-check
bodies left under live/, never a dead letter's body."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from azure.core.exceptions import ResourceExistsError
from azure.data.tables import TableClient

from devstack.azurite import Azurite
from devstack.sendgrid_standin import SendGridStandIn
from shared.activity import partition_of
from shared.idempotency import period_partition
from shared.message_ids import new_message_id
from shared.status_retention import id_prefix
from tests.e2e.conftest import (
    MAX_DELIVERY_ATTEMPTS,
    LargeMessageBodies,
    Queues,
    RunningHost,
    gateway_settings,
    wait_for,
)
from tests.e2e.test_large_messages import attachment_of
from tests.e2e.test_mail_flow import accept, dead_letter_for, mails_for

# A queue and a table of their own: the session's host must not take this mail, and no other
# test's activity rows are in this table to be deleted.
RETENTION_QUEUE = "mail-retention-e2e"
RETENTION_TABLE = "mailstatusretentione2e"
# Two minutes, in days: the mail's own rows stay for the test's length, rows 10 minutes old go.
RETENTION_DAYS = 2 / 1440
# A minute, in hours: idempotency keys are kept in periods of a minute.
KEY_RETENTION_HOURS = 1 / 60
LOG_LINE = re.compile(
    r"\[functions\.retention\] Retention: deleted (\d+) activity row\(s\) older than "
    r"0\.00138889 day\(s\) in (\d+) call\(s\); (\d+) message\(s\) older than "
    r"0\.00138889 day\(s\) \((\d+) row\(s\)\) in \d+ call\(s\)(?:, (\d+) row\(s\) of older ids "
    r"skipped)?; (\d+) idempotency key\(s\) in \d+ call\(s\)$"
)


@pytest.fixture
def retaining(azurite: Azurite, standin: SendGridStandIn, tmp_path: Path) -> Iterator[RunningHost]:
    """The gateway keeping activity rows two minutes, its retention timer every 2 seconds."""
    settings = {
        **gateway_settings(azurite.connection_string, standin),
        "MAIL_QUEUE_NAME": RETENTION_QUEUE,
        "STATUS_TABLE_NAME": RETENTION_TABLE,
        "ACTIVITY_RETENTION_DAYS": str(RETENTION_DAYS),
        "STATUS_RETENTION_DAYS": str(RETENTION_DAYS),
        "IDEMPOTENCY_RETENTION_HOURS": str(KEY_RETENTION_HOURS),
        # Through the app setting the trigger binds (%RETENTION_SCHEDULE%), not a local override.
        "RETENTION_SCHEDULE": "*/2 * * * * *",
    }
    standin.reset()
    Queues(azurite.connection_string, RETENTION_QUEUE).clear()
    host = RunningHost(settings, tmp_path)
    yield host
    host.stop()


def activity_rows(table: TableClient) -> list[tuple[str, str]]:
    """(partition, row) of every activity row in the table."""
    return sorted(
        (e["PartitionKey"], e["RowKey"])
        for e in table.query_entities(
            "PartitionKey ge 'activity-' and PartitionKey lt 'activity.'",
            select=["PartitionKey", "RowKey"],
        )
    )


def runs(host: RunningHost) -> list[tuple[int, int]]:
    """(activity rows deleted, calls) of each retention run the host logged."""
    return [(int(m[1]), int(m[2])) for m in run_lines(host)]


def run_lines(host: RunningHost) -> list[re.Match[str]]:
    """The retention line of each run the host logged."""
    return [m for line in host.log().splitlines() if (m := LOG_LINE.search(line))]


def message_runs(host: RunningHost) -> list[tuple[int, int, int, int]]:
    """(messages deleted, their rows, rows skipped, keys deleted) of each run the host logged."""
    return [(int(m[3]), int(m[4]), int(m[5] or 0), int(m[6])) for m in run_lines(host)]


def v7_id(at: datetime) -> str:
    """A UUIDv7 message id of the time `at`, as the gateway makes them."""
    return new_message_id(at, "app")


def test_should_delete_activity_rows_past_retention_and_keep_newer_ones(
    retaining: RunningHost, azurite: Azurite
) -> None:
    host = retaining
    table = TableClient.from_connection_string(azurite.connection_string, RETENTION_TABLE)
    response = host.post_message(
        {
            "from": "app@example.com",
            "to": ["erin@customer.example.org"],
            "subject": "Kept",
            "text": "Body.",
        }
    )
    assert response.status_code == 202, response.text
    message_id = response.json()["id"]
    wait_for(lambda: host.status(message_id)["status"] == "sent" or None)
    # The delivery's own row, written by the activity log's background flush.
    [new_row] = wait_for(lambda: activity_rows(table) or None)
    [[packed_id, state, attempt, _]] = json.loads(table.get_entity(*new_row)["events"])
    assert (packed_id, state, attempt) == (message_id, "sent", 1)
    old_at = datetime.now(timezone.utc) - timedelta(minutes=10)
    old_row = (partition_of(old_at), f"{message_id}-0000-sent")
    table.upsert_entity(
        {
            "PartitionKey": old_row[0],
            "RowKey": old_row[1],
            "state": "sent",
            "attempt": 0,
            "at": old_at,
        }
    )
    assert activity_rows(table) == sorted([new_row, old_row])

    wait_for(lambda: any(deleted == 1 for deleted, _ in runs(host)), timeout=20)

    assert activity_rows(table) == [new_row]
    # The message's status record is in the same table, untouched.
    assert host.status(message_id)["status"] == "sent"
    # One page read and one transaction for the one old row; the other runs read one page.
    assert (1, 2) in runs(host)
    assert all(calls == 1 for deleted, calls in runs(host) if deleted == 0)


# --- leftover claim-check bodies -------------------------------------------------------------

BODIES_QUEUE = "mail-bodies-e2e"
BODIES_CONTAINER = "mail-large-retention-e2e"
BODIES_TABLE = "mailstatusbodiese2e"
# MAX_DELIVERY_ATTEMPTS (3) x RETRY_MAX_DELAY_SECONDS (2) + a 4 s margin: 10 s.
BODY_RETENTION = timedelta(seconds=10)
BODY_LOG_LINE = re.compile(
    r"\[functions\.retention\] Retention: deleted (\d+) leftover message body blob\(s\) older "
    r"than 0\.00277778 hour\(s\)$"
)
# Names as an accept before this change, and one that would have lost its message, left them.
LEFTOVER = "live/00000000-0000-4000-8000-00000000dead.json"
OLDER_ROOT = "00000000-0000-4000-8000-0000000001d0.json"


@pytest.fixture
def expiring_bodies(
    azurite: Azurite, standin: SendGridStandIn, tmp_path: Path
) -> Iterator[RunningHost]:
    """The gateway keeping live bodies 10 s past their last write, its timer every 2 seconds."""
    settings = {
        **gateway_settings(azurite.connection_string, standin),
        "MAIL_QUEUE_NAME": BODIES_QUEUE,
        "STATUS_TABLE_NAME": BODIES_TABLE,
        "LARGE_MESSAGE_CONTAINER_NAME": BODIES_CONTAINER,
        "RETRY_MAX_DELAY_SECONDS": "2",
        "LARGE_MESSAGE_RETENTION_MARGIN_DAYS": str(4 / 86400),
        "RETENTION_SCHEDULE": "*/2 * * * * *",
    }
    assert MAX_DELIVERY_ATTEMPTS == 3
    standin.reset()
    Queues(azurite.connection_string, BODIES_QUEUE).clear()
    LargeMessageBodies(azurite.connection_string, BODIES_CONTAINER).clear()
    host = RunningHost(settings, tmp_path)
    yield host
    host.stop()


def body_runs(host: RunningHost) -> list[int]:
    """Leftover bodies deleted by each retention run the host logged."""
    return [int(m[1]) for line in host.log().splitlines() if (m := BODY_LOG_LINE.search(line))]


def test_should_delete_a_leftover_live_body_and_keep_a_dead_letters_body_to_replay(
    expiring_bodies: RunningHost, azurite: Azurite, standin: SendGridStandIn
) -> None:
    host = expiring_bodies
    bodies = LargeMessageBodies(azurite.connection_string, BODIES_CONTAINER)
    queues = Queues(azurite.connection_string, BODIES_QUEUE)
    with contextlib.suppress(ResourceExistsError):
        bodies.container.create_container()
    bodies.container.upload_blob(LEFTOVER, b"{}")
    bodies.container.upload_blob(OLDER_ROOT, b"{}")
    standin.script([{"status": 400, "body": {"errors": [{"message": "bad", "field": None}]}}])
    content = os.urandom(256 * 1024)

    message_id = accept(host, attachments=[attachment_of(content)])
    record = wait_for(lambda: dead_letter_for(queues, message_id), timeout=30)
    kept = f"dead-letters/{message_id}.json"
    assert record["blob"] == kept

    # Gone once past retention; the timer's run says so.
    wait_for(lambda: LEFTOVER not in bodies.names() or None, timeout=40)
    assert any(deleted >= 1 for deleted in body_runs(host))
    # The dead letter's body outlives the live retention by far, as does the older root one.
    written = bodies.container.get_blob_client(kept).get_blob_properties().last_modified
    while datetime.now(timezone.utc) - written < BODY_RETENTION * 2:
        time.sleep(0.5)
    runs_before = len(body_runs(host))
    wait_for(lambda: len(body_runs(host)) >= runs_before + 2 or None, timeout=20)
    assert {kept, OLDER_ROOT} <= set(bodies.names())

    replayed = host.admin("POST", "/api/v1/dead-letters/replay", json={"ids": [message_id]})
    assert replayed.json()["done"] == [message_id]
    [mail] = wait_for(lambda: mails_for(standin, message_id) or None, timeout=30)

    assert base64.b64decode(mail["payload"]["attachments"][0]["content"]) == content
    wait_for(lambda: host.status(message_id)["status"] == "sent" or None)
    wait_for(lambda: kept not in bodies.names() or None)
    assert bodies.names() == [OLDER_ROOT]


def partitions(table: TableClient, start: str, end: str) -> set[str]:
    """The partitions of the table from `start` (inclusive) to `end` (exclusive)."""
    return {
        e["PartitionKey"]
        for e in table.query_entities(
            "PartitionKey ge @start and PartitionKey lt @end",
            parameters={"start": start, "end": end},
            select=["PartitionKey"],
        )
    }


def test_should_expire_old_messages_with_their_events_and_old_keys_and_keep_the_rest(
    retaining: RunningHost, azurite: Azurite
) -> None:
    host = retaining
    table = TableClient.from_connection_string(azurite.connection_string, RETENTION_TABLE)
    mail = {
        "from": "app@example.com",
        "to": ["erin@customer.example.org"],
        "subject": "Kept",
        "text": "Body.",
    }
    response = host.post_message(mail)
    assert response.status_code == 202, response.text
    kept = response.json()["id"]
    assert uuid.UUID(kept).version == 7
    wait_for(lambda: host.status(kept)["status"] == "sent" or None)
    # A message accepted 100 s ago, as delivery and SendGrid's events left it, and one of the
    # layout before (a uuid4 id whose first digits fall in the range): both pass the 2-minute
    # cutoff in 20 s. (Older ones would sort before where the runs since the host started got
    # to, and stay.) Keys of both layouts, the new one of a period long gone.
    old_at = datetime.now(timezone.utc) - timedelta(seconds=100)
    old = v7_id(old_at)
    legacy = f"{id_prefix(old_at)}-4abc-8def-{uuid.uuid4().hex[:12]}"
    status = {"state": "sent", "accepted_at": old_at, "updated_at": old_at, "attempts": 1}
    delivery = {"state": "delivered", "updated_at": old_at, "timeline": "[]"}
    event = {"event": "delivered", "at": old_at, "sg_event_id": "sg-1", "received_at": old_at}
    table.submit_transaction(
        [
            (
                "upsert",
                {"PartitionKey": old, "RowKey": "status", **status, "client": host.client_name},
            ),
            ("upsert", {"PartitionKey": old, "RowKey": "delivery", **delivery}),
            ("upsert", {"PartitionKey": old, "RowKey": "event-1", **event}),
        ]
    )
    table.upsert_entity({"PartitionKey": legacy, "RowKey": "status", **status})
    key_at = datetime.now(timezone.utc) - timedelta(minutes=10)
    old_key = period_partition("0" * 64, key_at, timedelta(hours=KEY_RETENTION_HOURS))
    legacy_key = "idempotency-" + "0" * 64
    for partition in (old_key, legacy_key):
        table.upsert_entity({"PartitionKey": partition, "RowKey": "key", "message_id": old})
    found = host.http.get(f"/api/v1/messages/{old}", headers=host.client_headers())
    assert found.status_code == 200, found.text

    wait_for(lambda: any(m[0] == 1 for m in message_runs(host)), timeout=40)

    assert [m[:2] for m in message_runs(host) if m[0]] == [(1, 3)]
    assert old not in partitions(table, "0", "g")
    assert {kept, legacy} <= partitions(table, "0", "g")
    assert host.status(kept)["status"] == "sent"
    # The expired message reads as no message at all, as an unknown id does.
    gone = host.http.get(f"/api/v1/messages/{old}", headers=host.client_headers())
    assert gone.status_code == 404, gone.text
    wait_for(lambda: sum(m[3] for m in message_runs(host)) >= 1 or None, timeout=20)
    keys = partitions(table, "idem-", "idempotency.")
    assert old_key not in keys
    assert legacy_key in keys
    # The legacy row was read once: the runs after start past it.
    wait_for(lambda: sum(m[2] for m in message_runs(host)) >= 1 or None, timeout=20)
    runs_before = len(run_lines(host))
    wait_for(lambda: len(run_lines(host)) >= runs_before + 2 or None, timeout=20)
    assert sum(m[2] for m in message_runs(host)) == 1


def test_should_replay_an_idempotent_request_across_the_end_of_a_key_period(
    retaining: RunningHost,
) -> None:
    host = retaining
    mail = {
        "from": "app@example.com",
        "to": ["erin@customer.example.org"],
        "subject": "Once",
        "text": "Body.",
    }
    headers = {"Idempotency-Key": f"order-{uuid.uuid4().hex}"}
    # Periods are a minute long: make the first request late in one, the second in the next.
    while time.time() % 60 < 50:
        time.sleep(0.5)
    period = int(time.time() // 60)
    first = host.post_message(mail, headers=headers)
    assert first.status_code == 202, first.text
    assert int(time.time() // 60) == period, "the first request took more than 10 s"
    while int(time.time() // 60) == period:
        time.sleep(0.2)
    # The timer runs every 2 seconds meanwhile: the key's period is one it keeps.
    runs_before = len(run_lines(host))
    wait_for(lambda: len(run_lines(host)) > runs_before or None, timeout=20)

    again = host.post_message(mail, headers=headers)

    assert again.status_code == 202, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.headers.get("Idempotent-Replayed") == "true"
