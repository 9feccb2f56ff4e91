"""End to end: when storage is unreachable the gateway answers 503 and accepts nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.data.tables import TableClient

from devstack.azurite import Azurite
from devstack.sendgrid_standin import SendGridStandIn
from tests.e2e.conftest import Queues, RunningHost, gateway_settings, wait_for
from tests.e2e.tcp_proxy import TcpProxy
from tests.e2e.test_mail_flow import full_message


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
    health = host_behind_proxy.http.get("/api/health")

    assert response.status_code == 503
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert int(response.headers["Retry-After"]) > 0
    assert "id" not in response.json()
    assert health.status_code == 503
    assert health.json()["checks"]["storage"].startswith("error:")

    storage_proxy.restore()
    wait_for(lambda: host_behind_proxy.http.get("/api/health").status_code == 200)
    time.sleep(2)  # had anything been queued, the restored trigger would deliver it by now
    assert queues.peek(queues.mail) == []
    assert [m["payload"]["subject"] for m in standin.mails()] == ["Your invoice 42"]
    # No status record claims the refused message was queued.
    assert status_records(azurite) == records_before
