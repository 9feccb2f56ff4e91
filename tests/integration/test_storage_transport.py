"""The SDK clients on the gateway's storage transport, against Azurite: what they write the SDK
on its own transport reads, and back, with the SDK's types and errors."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from azure.core import MatchConditions
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import (
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.core.rest import HttpRequest, HttpResponse
from azure.data.tables import (
    EdmType,
    EntityProperty,
    TableClient,
    TableErrorCode,
    TableSasPermissions,
    TableTransactionError,
    UpdateMode,
    generate_table_sas,
)
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import (
    QueueClient,
    QueueSasPermissions,
    TextBase64EncodePolicy,
    generate_queue_sas,
)

from devstack.azurite import Azurite
from devstack.host_queue import receive_batch
from shared.queue import MailQueue, storage_transport
from shared.settings import Settings
from shared.status import table_client
from shared.storage_transport import StorageTransport

ACCOUNT = "devstoreaccount1"
AT = datetime(2026, 11, 27, 13, 40, 9, 871234, tzinfo=timezone.utc)


@pytest.fixture
def tables(storage_settings: Settings) -> Iterator[tuple[TableClient, TableClient]]:
    """A new table, through the gateway's client and through the SDK on its own transport."""
    name = f"transport{uuid.uuid4().hex[:12]}"
    gateway = table_client(storage_settings, name)
    gateway.create_table()
    plain = TableClient.from_connection_string(
        storage_settings.storage.connection_string or "", name
    )
    yield gateway, plain
    gateway.close()
    plain.close()


def entity(key: str, **fields: object) -> dict[str, object]:
    return {"PartitionKey": key, "RowKey": "status", **fields}


def test_should_write_what_the_sdk_reads_with_the_same_edm_types(
    tables: tuple[TableClient, TableClient],
) -> None:
    gateway, plain = tables
    guid = uuid.UUID("c9da6455-213d-42c9-9a79-3e9149a57833")
    written = entity(
        "m'1",
        state="queued",
        attempts=3,
        big=EntityProperty(2**40, EdmType.INT64),
        ambiguous=False,
        ratio=0.5,
        at=AT,
        note="it's <&> ünïcödé",
        guid=guid,
        blob=b"\x00\x01",
    )

    metadata = gateway.create_entity(written)
    read = plain.get_entity("m'1", "status")
    back = gateway.get_entity("m'1", "status")

    assert metadata["etag"] == read.metadata["etag"] == back.metadata["etag"]
    for copy in (read, back):
        assert copy["attempts"] == 3
        assert copy["big"] == EntityProperty(2**40, EdmType.INT64)
        assert copy["ambiguous"] is False
        assert copy["ratio"] == 0.5
        assert copy["at"] == AT
        assert copy["note"] == "it's <&> ünïcödé"
        assert copy["guid"] == guid
        assert copy["blob"] == b"\x00\x01"
    assert isinstance(back.metadata["timestamp"], datetime)


def test_should_refuse_a_second_insert_and_a_stale_replace_with_the_sdks_errors(
    tables: tuple[TableClient, TableClient],
) -> None:
    gateway, _ = tables
    first = gateway.create_entity(entity("m3", state="queued"))

    with pytest.raises(ResourceExistsError):
        gateway.create_entity(entity("m3", state="queued"))
    second = gateway.update_entity(
        entity("m3", state="sending"),
        mode=UpdateMode.REPLACE,
        etag=first["etag"],
        match_condition=MatchConditions.IfNotModified,
    )
    with pytest.raises(ResourceModifiedError) as stale:
        gateway.update_entity(
            entity("m3", state="sending"),
            mode=UpdateMode.REPLACE,
            etag=first["etag"],
            match_condition=MatchConditions.IfNotModified,
        )
    with pytest.raises(ResourceNotFoundError):
        gateway.get_entity("nobody", "status")

    assert second["etag"] != first["etag"]
    assert stale.value.response is not None
    assert stale.value.response.status_code == 412
    assert getattr(stale.value, "error_code", None) == TableErrorCode.UPDATE_CONDITION_NOT_SATISFIED


def test_should_write_a_transaction_all_or_nothing_and_name_the_failed_operation(
    tables: tuple[TableClient, TableClient],
) -> None:
    gateway, plain = tables
    rows = [
        {"PartitionKey": "minute-1", "RowKey": f"m{i}", "state": "sent", "at": AT}
        for i in range(40)
    ]
    gateway.create_entity({"PartitionKey": "minute-2", "RowKey": "taken"})

    written = gateway.submit_transaction(
        [("upsert", row, {"mode": UpdateMode.REPLACE}) for row in rows]
    )
    with pytest.raises(TableTransactionError) as failed:
        gateway.submit_transaction(
            [
                ("create", {"PartitionKey": "minute-2", "RowKey": "new"}),
                ("create", {"PartitionKey": "minute-2", "RowKey": "taken"}),
            ]
        )

    assert len(written) == 40
    assert all(w["etag"] for w in written)
    read = plain.query_entities("PartitionKey eq 'minute-1'")
    assert sorted((dict(e) for e in read), key=lambda e: int(str(e["RowKey"])[1:])) == rows
    assert getattr(failed.value, "error_code", None) == TableErrorCode.ENTITY_ALREADY_EXISTS
    assert failed.value.index == 1
    with pytest.raises(ResourceNotFoundError):
        plain.get_entity("minute-2", "new")


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
    with TableClient.from_connection_string(sas_string, name, transport=storage_transport()) as t:
        t.create_entity(entity("s1", state="queued"))
        assert t.get_entity("s1", "status")["state"] == "queued"
    assert keyed.get_entity("s1", "status")["state"] == "queued"
    keyed.close()


def azurite_key(azurite: Azurite) -> str:
    parts = dict(p.split("=", 1) for p in azurite.connection_string.split(";") if "=" in p)
    return parts["AccountKey"]


def test_should_queue_base64_the_sdk_receives_never_expiring_and_delayed(
    azurite: Azurite,
) -> None:
    name = f"transport-{uuid.uuid4().hex[:12]}"
    gateway = QueueClient.from_connection_string(
        azurite.connection_string,
        name,
        message_encode_policy=TextBase64EncodePolicy(),
        transport=storage_transport(),
    )
    gateway.create_queue()
    plain = QueueClient.from_connection_string(azurite.connection_string, name)

    sent = gateway.send_message('{"id": "m1", "text": "<&>"}', time_to_live=-1)
    gateway.send_message("later", visibility_timeout=30)
    received = list(plain.receive_messages(max_messages=32))

    assert len(received) == 1
    assert received[0].id == sent.id
    assert base64.b64decode(received[0].content).decode() == '{"id": "m1", "text": "<&>"}'
    assert received[0].expires_on is not None
    assert received[0].expires_on.year == 9999
    assert plain.get_queue_properties().approximate_message_count == 2
    gateway.close()
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
    gateway = QueueClient.from_connection_string(
        f"QueueEndpoint={azurite.queue_endpoint};SharedAccessSignature={signature}",
        name,
        transport=storage_transport(),
    )

    gateway.send_message("by sas")

    assert [m.content for m in plain.receive_messages()] == ["by sas"]
    gateway.close()
    plain.close()


class CountingTransport(StorageTransport):
    """The storage transport, counting the requests it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    def send(self, request: HttpRequest, **kwargs: Any) -> HttpResponse:
        self.sent += 1
        return super().send(request, **kwargs)


def test_should_receive_one_batch_in_one_call_as_the_host_does(azurite: Azurite) -> None:
    name = f"recv-{uuid.uuid4().hex[:12]}"
    transport = CountingTransport()
    client = QueueClient.from_connection_string(
        azurite.connection_string, name, transport=transport
    )
    client.create_queue()
    texts = ["<\"quoted\" & 'apostrophes'>", "plain", "ünïcödé"]
    for text in texts:
        client.send_message(text)

    def batch(size: int) -> list[str]:
        before = transport.sent
        received = [str(m.content) for m in receive_batch(client, size, 30)]
        assert transport.sent == before + 1
        return received

    assert batch(2) + batch(32) == texts
    assert batch(32) == []  # all invisible now
    client.close()


def test_should_download_a_blob_larger_than_one_read(storage_settings: Settings) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB: many of the transport's reads
    service = BlobServiceClient.from_connection_string(
        storage_settings.storage.connection_string or "", transport=storage_transport()
    )
    container = service.get_container_client(f"transport{uuid.uuid4().hex[:12]}")
    container.create_container()

    container.upload_blob("large", data)

    assert container.download_blob("large").readall() == data
    service.close()


def test_should_not_send_storage_calls_to_a_proxy_named_in_the_environment(
    storage_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing listens there: a call routed through it would fail.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    queue = MailQueue.from_settings(storage_settings)

    queue.ensure_exists()
    queue.check()

    assert queue.depths() == {queue.name: 0, queue.poison_name: 0}
