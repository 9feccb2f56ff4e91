"""End to end: when storage is unreachable the gateway answers 503 and accepts nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.data.tables import TableClient

from devstack.azurite import Azurite
from devstack.sendgrid_standin import SendGridStandIn
from shared.gateway import Gateway
from shared.settings import Settings
from tests.e2e.conftest import Queues, RunningHost, gateway_settings, wait_for
from tests.e2e.tcp_proxy import TcpProxy
from tests.e2e.test_mail_flow import full_message, mails_for


@pytest.fixture
def storage_proxy(azurite: Azurite) -> Iterator[TcpProxy]:
    """A cuttable path from the gateway to Azurite's queue service."""
    proxy = TcpProxy(azurite.queue_port)
    yield proxy
    proxy.close()


@pytest.fixture
def host_behind_proxy(
    azurite: Azurite, standin: SendGridStandIn, storage_proxy: TcpProxy, tmp_path: Path
) -> Iterator[RunningHost]:
    """A second gateway whose storage traffic goes through the proxy."""
    connection_string = azurite.connection_string.replace(
        f"127.0.0.1:{azurite.queue_port}/", f"127.0.0.1:{storage_proxy.port}/"
    )
    assert connection_string != azurite.connection_string
    running = RunningHost(gateway_settings(connection_string, standin), tmp_path)
    yield running
    running.stop()


def status_records(azurite: Azurite) -> list[str]:
    """The ids of every status record in the test table (not the other rows it holds: the
    activity log's, which delivery writes just after the send, and idempotency keys)."""
    table = TableClient.from_connection_string(azurite.connection_string, "mailstatuse2e")
    return sorted(e["PartitionKey"] for e in table.query_entities("RowKey eq 'status'"))


def test_should_answer_503_and_queue_nothing_while_storage_is_down(
    azurite: Azurite,
    host_behind_proxy: RunningHost,
    storage_proxy: TcpProxy,
    standin: SendGridStandIn,
    queues: Queues,
) -> None:
    standin.reset()
    queues.clear()
    assert host_behind_proxy.post_message(full_message()).status_code == 202
    wait_for(lambda: len(standin.mails()) == 1)

    records_before = status_records(azurite)
    storage_proxy.cut()
    response = host_behind_proxy.post_message(full_message(subject="Sent while storage is down"))
    health = host_behind_proxy.admin("GET", "/api/health/details")

    assert response.status_code == 503
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert int(response.headers["Retry-After"]) > 0
    assert "id" not in response.json()
    assert health.status_code == 503
    assert health.json()["checks"]["storage"].startswith("error:")

    storage_proxy.restore()
    # The anonymous probe's answer may be a few seconds old (HEALTH_CACHE_SECONDS).
    wait_for(lambda: host_behind_proxy.http.get("/api/health").status_code == 200)
    time.sleep(2)  # had anything been queued, the restored trigger would deliver it by now
    assert queues.peek(queues.mail) == []
    assert [m["payload"]["subject"] for m in standin.mails()] == ["Your invoice 42"]
    # No status record claims the refused message was queued.
    assert status_records(azurite) == records_before


# A queue of its own, and a host budget of 2 s: the host moves a message that failed twice,
# one second apart, to the poison queue (app settings override host.json as in Azure).
OUTAGE_QUEUE = "mail-outage-e2e"
HOST_BUDGET = {
    "AzureFunctionsJobHost__extensions__queues__visibilityTimeout": "00:00:01",
    "AzureFunctionsJobHost__extensions__queues__maxDequeueCount": "2",
}


@pytest.fixture
def table_proxy(azurite: Azurite) -> Iterator[TcpProxy]:
    """A cuttable path from the gateway to Azurite's table service (status records)."""
    proxy = TcpProxy(azurite.table_port)
    yield proxy
    proxy.close()


def test_should_lose_and_duplicate_nothing_through_an_outage_longer_than_the_hosts_budget(
    azurite: Azurite, standin: SendGridStandIn, table_proxy: TcpProxy, tmp_path: Path
) -> None:
    direct = {
        **gateway_settings(azurite.connection_string, standin),
        "MAIL_QUEUE_NAME": OUTAGE_QUEUE,
    }
    behind_proxy = {
        **direct,
        **HOST_BUDGET,
        "AzureWebJobsStorage": azurite.connection_string.replace(
            f"127.0.0.1:{azurite.table_port}/", f"127.0.0.1:{table_proxy.port}/"
        ),
    }
    assert behind_proxy["AzureWebJobsStorage"] != azurite.connection_string
    queues = Queues(azurite.connection_string, OUTAGE_QUEUE)
    queues.clear()
    standin.reset()
    host = RunningHost(behind_proxy, tmp_path)
    try:
        # Accepted as the gateway accepts (status record, then the queue), before the outage
        # reaches the delivering host.
        # A first mail, so that the host has its queues and tables made before the outage.
        warm_up = host.post_message(full_message(subject="Before the outage")).json()["id"]
        wait_for(lambda: mails_for(standin, warm_up))
        accepting = Gateway.from_settings(Settings.from_env(direct))
        client = accepting.authenticate(f"Bearer {host.client_key}", counted=True)
        table_proxy.cut()
        ids = [
            accepting.accept(
                json.dumps(full_message(subject=f"Through the outage {n}")).encode(),
                "application/json",
                client,
            ).id
            for n in range(3)
        ]

        # Every message has been tried and put back at least once; the outage then outlasts
        # the host's budget (2 failures, 1 s apart) several times over.
        wait_for(lambda: all(f"Message {i} put back for" in host.log() for i in ids))
        time.sleep(6)
        assert len(standin.requests()) == 1
        assert queues.peek(queues.poison) == []

        table_proxy.restore()
        wait_for(lambda: all(mails_for(standin, i) for i in ids), timeout=60)
        time.sleep(1)
    finally:
        host.stop()

    assert [len(mails_for(standin, i)) for i in ids] == [1, 1, 1]
    assert len(standin.requests()) == 4
    assert queues.peek(queues.poison) == []
    statuses = TableClient.from_connection_string(azurite.connection_string, "mailstatuse2e")
    assert [statuses.get_entity(i, "status")["state"] for i in ids] == ["sent"] * 3
