"""End to end: the retention timer on the local host deletes old activity rows, keeps new ones."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from azure.data.tables import TableClient

from devstack.azurite import Azurite
from devstack.sendgrid_standin import SendGridStandIn
from shared.activity import partition_of
from tests.e2e.conftest import Queues, RunningHost, gateway_settings, wait_for

# A queue and a table of their own: the session's host must not take this mail, and no other
# test's activity rows are in this table to be deleted.
RETENTION_QUEUE = "mail-retention-e2e"
RETENTION_TABLE = "mailstatusretentione2e"
# Two minutes, in days: the mail's own row stays for the test's length, a row 10 minutes old goes.
RETENTION_DAYS = 2 / 1440
LOG_LINE = re.compile(
    r"\[functions\.retention\] Retention: deleted (\d+) activity row\(s\) older than "
    r"0\.00138889 day\(s\) in (\d+) call\(s\)$"
)


@pytest.fixture
def retaining(azurite: Azurite, standin: SendGridStandIn, tmp_path: Path) -> Iterator[RunningHost]:
    """The gateway keeping activity rows two minutes, its retention timer every 2 seconds."""
    settings = {
        **gateway_settings(azurite.connection_string, standin),
        "MAIL_QUEUE_NAME": RETENTION_QUEUE,
        "STATUS_TABLE_NAME": RETENTION_TABLE,
        "ACTIVITY_RETENTION_DAYS": str(RETENTION_DAYS),
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
    """(rows deleted, calls) of each retention run the host logged."""
    return [
        (int(m[1]), int(m[2])) for line in host.log().splitlines() if (m := LOG_LINE.search(line))
    ]


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
