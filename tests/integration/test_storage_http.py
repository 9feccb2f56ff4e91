"""The fast per-message storage calls against Azurite: what they write, the SDK reads, and back."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from azure.core import MatchConditions
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import (
    TableClient,
    TableSasPermissions,
    UpdateMode,
    generate_table_sas,
)
from azure.storage.queue import (
    QueueClient,
    QueueSasPermissions,
    TextBase64EncodePolicy,
    generate_queue_sas,
)

from devstack.azurite import Azurite
from shared.storage_http import FastQueueClient, FastTableClient

ACCOUNT = "devstoreaccount1"
AT = datetime(2026, 11, 27, 13, 40, 9, 871234, tzinfo=timezone.utc)


@pytest.fixture
def tables(azurite: Azurite) -> Iterator[tuple[FastTableClient, TableClient]]:
    """A new table, through the fast client and through the plain SDK client."""
    name = f"fast{uuid.uuid4().hex[:12]}"
    fast = FastTableClient.from_connection_string(azurite.connection_string, name)
    assert isinstance(fast, FastTableClient)
    fast.create_table()
    plain = TableClient.from_connection_string(azurite.connection_string, name)
    yield fast, plain
    fast.close()
    plain.close()


def entity(key: str, **fields: object) -> dict[str, object]:
    return {"PartitionKey": key, "RowKey": "status", **fields}


def test_should_write_what_the_sdk_reads_with_the_same_types(
    tables: tuple[FastTableClient, TableClient],
) -> None:
    fast, plain = tables

    metadata = fast.create_entity(
        entity("m1", state="queued", attempts=3, ambiguous=False, ratio=0.5, at=AT, note="it's")
    )
    read = plain.get_entity("m1", "status")

    assert metadata["etag"] == read.metadata["etag"]
    assert read["state"] == "queued"
    assert read["attempts"] == 3
    assert read["ambiguous"] is False
    assert read["ratio"] == 0.5
    assert read["at"] == AT
    assert read["note"] == "it's"


def test_should_read_what_the_sdk_writes_with_the_same_types(
    tables: tuple[FastTableClient, TableClient],
) -> None:
    fast, plain = tables
    written = plain.create_entity(entity("m'2", state="sent", attempts=1, at=AT, ok=True))

    read = fast.get_entity("m'2", "status")

    assert read == {
        "PartitionKey": "m'2",
        "RowKey": "status",
        "state": "sent",
        "attempts": 1,
        "at": AT,
        "ok": True,
    }
    assert read.metadata["etag"] == written["etag"]
    assert isinstance(read.metadata["timestamp"], datetime)


def test_should_refuse_a_second_insert_and_a_stale_replace_and_find_nothing_missing(
    tables: tuple[FastTableClient, TableClient],
) -> None:
    fast, _ = tables
    first = fast.create_entity(entity("m3", state="queued"))

    with pytest.raises(ResourceExistsError):
        fast.create_entity(entity("m3", state="queued"))
    second = fast.update_entity(
        entity("m3", state="sending"),
        mode=UpdateMode.REPLACE,
        etag=first["etag"],
        match_condition=MatchConditions.IfNotModified,
    )
    with pytest.raises(ResourceModifiedError):
        fast.update_entity(
            entity("m3", state="sending"),
            mode=UpdateMode.REPLACE,
            etag=first["etag"],
            match_condition=MatchConditions.IfNotModified,
        )
    with pytest.raises(ResourceNotFoundError):
        fast.get_entity("nobody", "status")
    with pytest.raises(ResourceNotFoundError):
        fast.update_entity(entity("nobody", state="x"), mode=UpdateMode.MERGE)

    assert second["etag"] != first["etag"]
    assert fast.get_entity("m3", "status")["state"] == "sending"


def test_should_merge_and_replace_as_asked(tables: tuple[FastTableClient, TableClient]) -> None:
    fast, plain = tables
    fast.upsert_entity(entity("m4", state="queued", client="app"), mode=UpdateMode.REPLACE)

    fast.upsert_entity(entity("m4", attempts=2), mode=UpdateMode.MERGE)
    merged = dict(plain.get_entity("m4", "status"))
    fast.upsert_entity(entity("m4", state="sent"), mode=UpdateMode.REPLACE)
    replaced = dict(plain.get_entity("m4", "status"))

    assert merged == entity("m4", state="queued", client="app", attempts=2)
    assert replaced == entity("m4", state="sent")


def test_should_leave_types_it_does_not_write_to_the_sdk(
    tables: tuple[FastTableClient, TableClient],
) -> None:
    fast, plain = tables

    guid = uuid.UUID("c9da6455-213d-42c9-9a79-3e9149a57833")
    fast.create_entity(entity("m5", guid=guid, blob=b"\x00\x01"))

    read = plain.get_entity("m5", "status")
    assert read["guid"] == guid
    assert read["blob"] == b"\x00\x01"


def test_should_work_with_a_sas_instead_of_the_key(azurite: Azurite) -> None:
    name = f"sas{uuid.uuid4().hex[:12]}"
    keyed = TableClient.from_connection_string(azurite.connection_string, name)
    keyed.create_table()
    signature = generate_table_sas(
        AzureNamedKeyCredential(ACCOUNT, azurite_key(azurite)),
        name,
        permission=TableSasPermissions(read=True, add=True, update=True),
        expiry=datetime.now(timezone.utc) + timedelta(hours=1),
    )
    sas_string = f"TableEndpoint={azurite.table_endpoint};SharedAccessSignature={signature}"
    with FastTableClient.from_connection_string(sas_string, name) as fast:
        fast.create_entity(entity("s1", state="queued"))
        assert fast.get_entity("s1", "status")["state"] == "queued"
    assert keyed.get_entity("s1", "status")["state"] == "queued"


def azurite_key(azurite: Azurite) -> str:
    parts = dict(p.split("=", 1) for p in azurite.connection_string.split(";") if "=" in p)
    return parts["AccountKey"]


def test_should_queue_base64_the_sdk_receives_never_expiring_and_delayed(
    azurite: Azurite,
) -> None:
    name = f"fast-{uuid.uuid4().hex[:12]}"
    fast = FastQueueClient.from_connection_string(
        azurite.connection_string, name, message_encode_policy=TextBase64EncodePolicy()
    )
    fast.create_queue()
    plain = QueueClient.from_connection_string(azurite.connection_string, name)

    sent = fast.send_message('{"id": "m1", "text": "<&>"}', time_to_live=-1)
    fast.send_message("later", visibility_timeout=30)
    received = list(plain.receive_messages(max_messages=32))

    assert len(received) == 1
    assert received[0].id == sent.id
    assert base64.b64decode(received[0].content).decode() == '{"id": "m1", "text": "<&>"}'
    assert received[0].expires_on is not None
    assert received[0].expires_on.year == 9999
    assert plain.get_queue_properties().approximate_message_count == 2
    fast.close()
    plain.close()


def test_should_queue_with_a_sas_in_the_url(azurite: Azurite) -> None:
    name = f"sas-{uuid.uuid4().hex[:12]}"
    plain = QueueClient.from_connection_string(azurite.connection_string, name)
    plain.create_queue()
    signature = generate_queue_sas(
        ACCOUNT,
        name,
        azurite_key(azurite),
        permission=QueueSasPermissions(add=True),
        expiry=datetime.now(timezone.utc) + timedelta(hours=1),
    )
    fast = FastQueueClient.from_connection_string(
        f"QueueEndpoint={azurite.queue_endpoint};SharedAccessSignature={signature}", name
    )

    fast.send_message("by sas")

    assert [m.content for m in plain.receive_messages()] == ["by sas"]
    fast.close()
    plain.close()


def test_should_upsert_one_partition_in_one_transaction_all_or_nothing(
    tables: tuple[FastTableClient, TableClient],
) -> None:
    fast, plain = tables
    rows = [
        {"PartitionKey": "minute-1", "RowKey": f"m{i}", "state": "sent", "at": AT}
        for i in range(40)
    ]

    written = fast.submit_transaction(
        [("upsert", row, {"mode": UpdateMode.REPLACE}) for row in rows]
    )
    read = sorted(
        plain.query_entities("PartitionKey eq 'minute-1'"), key=lambda e: int(e["RowKey"][1:])
    )

    assert len(written) == 40
    assert all(w["etag"] for w in written)
    assert [dict(e) for e in read] == rows
    # The same row twice is refused as a whole: nothing of it is written.
    twice = [{"PartitionKey": "minute-2", "RowKey": "same", "state": "x"}] * 2
    with pytest.raises(HttpResponseError):
        fast.submit_transaction([("upsert", row, {"mode": UpdateMode.REPLACE}) for row in twice])
    assert list(plain.query_entities("PartitionKey eq 'minute-2'")) == []


def test_should_leave_transactions_it_does_not_write_to_the_sdk(
    tables: tuple[FastTableClient, TableClient],
) -> None:
    fast, plain = tables
    fast.create_entity(entity("p3", state="old"))

    fast.submit_transaction(
        [
            ("update", entity("p3", state="new"), {"mode": UpdateMode.MERGE}),
            ("create", {"PartitionKey": "p3", "RowKey": "other"}),
        ]
    )

    assert plain.get_entity("p3", "status")["state"] == "new"
    assert plain.get_entity("p3", "other") == {"PartitionKey": "p3", "RowKey": "other"}


def test_should_receive_a_batch_as_the_sdk_would(azurite: Azurite) -> None:
    name = f"recv-{uuid.uuid4().hex[:12]}"
    fast = FastQueueClient.from_connection_string(azurite.connection_string, name)
    fast.create_queue()
    texts = ["<\"quoted\" & 'apostrophes'>", "plain", "ünïcödé"]
    for text in texts:
        fast.send_message(text)

    first = fast.receive_batch(2, 30)
    rest = fast.receive_batch(32, 30)
    again = fast.receive_batch(32, 30)  # all invisible now

    assert [m.content for m in first + rest] == texts
    assert again == []
    message = first[0]
    assert message.dequeue_count == 1
    assert message.inserted_on is not None
    assert message.next_visible_on is not None
    assert message.expires_on is not None
    assert message.inserted_on < message.next_visible_on
    assert message.pop_receipt
    fast.delete_message(message)
    assert fast.get_queue_properties().approximate_message_count == 2
    fast.close()
