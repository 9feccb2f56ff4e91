"""End to end: the gateway's data lives where MAILGATE_STORAGE says, else in AzureWebJobsStorage.

The split host runs on two Azurites: one as the host's own storage (AzureWebJobsStorage), one
as the data's (MAILGATE_STORAGE). Mail accepted over HTTP must be queued, recorded and (when
large) claim-checked in the data account, and the local host's queue trigger must read it from
there, as the real host binds the trigger's `connection`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueServiceClient

from devstack.azurite import Azurite
from devstack.sendgrid_standin import SendGridStandIn
from tests.e2e.conftest import RunningHost, gateway_settings, wait_for
from tests.e2e.test_large_messages import attachment_of
from tests.e2e.test_mail_flow import accept, mails_for

SPLIT_QUEUE = "mail-split"
SPLIT_STATUS_TABLE = "mailstatussplit"
SPLIT_CLIENT_TABLE = "mailclientssplit"
SPLIT_CONTAINER = "mail-large-split"


def queue_names(connection_string: str) -> set[str]:
    with QueueServiceClient.from_connection_string(connection_string) as service:
        return {q.name for q in service.list_queues()}


def table_names(connection_string: str) -> set[str]:
    with TableServiceClient.from_connection_string(connection_string) as service:
        return {t.name for t in service.list_tables()}


def container_names(connection_string: str) -> set[str]:
    with BlobServiceClient.from_connection_string(connection_string) as service:
        return {c.name for c in service.list_containers()}


def status_ids(connection_string: str, table: str) -> set[str]:
    """The message ids with a status record in `table` (none while the table does not exist)."""
    with TableServiceClient.from_connection_string(connection_string) as service:
        client = service.get_table_client(table)
        try:
            return {e["PartitionKey"] for e in client.query_entities("RowKey eq 'status'")}
        except ResourceNotFoundError:
            return set()


@pytest.fixture(scope="module")
def data_azurite() -> Iterator[Azurite]:
    """A second Azurite, for the gateway's data alone."""
    with Azurite(in_memory=True) as running:
        yield running


@pytest.fixture(scope="module")
def split_host(
    azurite: Azurite,
    data_azurite: Azurite,
    standin: SendGridStandIn,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningHost]:
    """The gateway with AzureWebJobsStorage in one Azurite and MAILGATE_STORAGE in the other."""
    settings = {
        **gateway_settings(azurite.connection_string, standin),
        "MAILGATE_STORAGE": data_azurite.connection_string,
        "MAIL_QUEUE_NAME": SPLIT_QUEUE,
        "STATUS_TABLE_NAME": SPLIT_STATUS_TABLE,
        "CLIENT_TABLE_NAME": SPLIT_CLIENT_TABLE,
        "LARGE_MESSAGE_CONTAINER_NAME": SPLIT_CONTAINER,
    }
    running = RunningHost(settings, tmp_path_factory.mktemp("split-host"))
    yield running
    running.stop()


def test_should_keep_queue_tables_and_bodies_in_mailgate_storage_and_trigger_from_there(
    split_host: RunningHost, azurite: Azurite, data_azurite: Azurite, standin: SendGridStandIn
) -> None:
    standin.reset()
    small_id = accept(split_host)
    # Past one queue message: its body goes to the large-message container first.
    large_id = accept(split_host, attachments=[attachment_of(os.urandom(200_000))])

    # Delivered: the trigger read both from the data account, the only one with that queue.
    wait_for(lambda: mails_for(standin, small_id) and mails_for(standin, large_id), timeout=30)
    wait_for(lambda: split_host.status(large_id)["status"] == "sent")

    data, host = data_azurite.connection_string, azurite.connection_string
    assert {SPLIT_QUEUE, f"{SPLIT_QUEUE}-poison"} <= queue_names(data)
    assert SPLIT_QUEUE not in queue_names(host)
    assert {small_id, large_id} <= status_ids(data, SPLIT_STATUS_TABLE)
    assert {SPLIT_STATUS_TABLE, SPLIT_CLIENT_TABLE}.isdisjoint(table_names(host))
    assert f"its body in blob live/{large_id}.json" in split_host.log()
    assert SPLIT_CONTAINER in container_names(data)
    assert SPLIT_CONTAINER not in container_names(host)
    assert "deliver_message: queueTrigger mail-split" in split_host.log()


def test_should_keep_the_data_in_azurewebjobsstorage_while_mailgate_storage_is_unset(
    stack: RunningHost, azurite: Azurite, standin: SendGridStandIn
) -> None:
    assert "MAILGATE_STORAGE" not in stack.settings
    message_id = accept(stack)

    wait_for(lambda: mails_for(standin, message_id), timeout=30)

    assert message_id in status_ids(azurite.connection_string, "mailstatuse2e")
    assert "mail-e2e" in queue_names(azurite.connection_string)
