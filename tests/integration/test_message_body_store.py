from __future__ import annotations

import os
import socket
import time
from datetime import datetime, timedelta, timezone

import pytest
from azure.storage.blob import BlobServiceClient

from devstack.azurite import Azurite
from shared.blobs import MessageBodyStore, body_blob_name
from shared.errors import StorageUnavailable
from shared.retention import expire_bodies
from shared.settings import Settings
from tests.samples import BASE_ENV, envelope

FIVE_MB = 5 * 1024 * 1024


def test_should_read_back_what_it_wrote_byte_for_byte(message_bodies: MessageBodyStore) -> None:
    data = os.urandom(FIVE_MB)

    message_bodies.put("msg-s1.json", data)

    assert message_bodies.get("msg-s1.json") == data


def test_should_replace_a_blob_of_the_same_name(message_bodies: MessageBodyStore) -> None:
    message_bodies.put("msg-s2.json", b'{"first": true}')
    message_bodies.put("msg-s2.json", b'{"second": true}')

    assert message_bodies.get("msg-s2.json") == b'{"second": true}'


def test_should_read_a_missing_blob_as_none(message_bodies: MessageBodyStore) -> None:
    assert message_bodies.get("msg-never.json") is None


def test_should_delete_a_blob_and_take_a_missing_one_as_deleted(
    message_bodies: MessageBodyStore,
) -> None:
    message_bodies.put("msg-s3.json", b"{}")

    message_bodies.delete("msg-s3.json")
    message_bodies.delete("msg-s3.json")
    message_bodies.delete("msg-never.json")

    assert message_bodies.get("msg-s3.json") is None


def test_should_store_a_claim_checked_body_as_readable_json(
    azurite: Azurite, message_bodies: MessageBodyStore
) -> None:
    _, body = envelope(id="msg-s4").claim_checked(body_blob_name("msg-s4"))

    message_bodies.put(body_blob_name("msg-s4"), body.to_json())

    # As an operator sees it in Storage Explorer or the portal.
    blob = (
        BlobServiceClient.from_connection_string(azurite.connection_string)
        .get_container_client(message_bodies.container_name)
        .get_blob_client("live/msg-s4.json")
    )
    assert blob.get_blob_properties().content_settings.content_type == "application/json"
    assert blob.download_blob().readall() == body.to_json()


def test_should_create_its_container_once_and_answer_checks_before_and_after(
    storage_settings: Settings,
) -> None:
    store = MessageBodyStore.from_settings(storage_settings)
    store.check()  # not created yet: the first message creates it

    store.ensure_exists()
    store.ensure_exists()
    store.check()

    assert store.container_name == storage_settings.large_message_container_name


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.parametrize("operation", ["put", "get", "delete", "check", "ensure_exists"])
def test_should_fail_promptly_with_storage_unavailable_when_blob_storage_is_down(
    azurite: Azurite, operation: str
) -> None:
    port = closed_port()
    connection_string = azurite.connection_string.replace(
        azurite.blob_endpoint, f"http://127.0.0.1:{port}/devstoreaccount1"
    )
    assert f"127.0.0.1:{port}" in connection_string
    store = MessageBodyStore.from_settings(
        Settings.from_env({**BASE_ENV, "AzureWebJobsStorage": connection_string})
    )
    calls = {
        "put": lambda: store.put("msg-s5.json", b"{}"),
        "get": lambda: store.get("msg-s5.json"),
        "delete": lambda: store.delete("msg-s5.json"),
        "check": store.check,
        "ensure_exists": store.ensure_exists,
    }

    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match="mail-large"):
        calls[operation]()

    assert time.monotonic() - started < 10


def test_should_copy_a_body_server_side_and_answer_false_for_a_missing_one(
    message_bodies: MessageBodyStore,
) -> None:
    data = os.urandom(FIVE_MB)
    message_bodies.put("live/msg-s5.json", data)

    assert message_bodies.copy("live/msg-s5.json", "dead-letters/msg-s5.json") is True
    assert message_bodies.copy("live/msg-never.json", "dead-letters/msg-never.json") is False

    assert message_bodies.get("dead-letters/msg-s5.json") == data
    assert message_bodies.get("live/msg-s5.json") == data
    assert message_bodies.get("dead-letters/msg-never.json") is None


def test_should_list_only_blobs_under_the_prefix_written_before_the_cutoff(
    message_bodies: MessageBodyStore,
) -> None:
    for name in ("live/msg-a.json", "live/msg-b.json", "dead-letters/msg-c.json", "msg-d.json"):
        message_bodies.put(name, b"{}")
    after_all = datetime.now(timezone.utc) + timedelta(minutes=1)
    before_all = datetime.now(timezone.utc) - timedelta(minutes=1)

    older, more = message_bodies.list_older("live/", after_all, max_listed=10)
    none, _ = message_bodies.list_older("live/", before_all, max_listed=10)
    bounded, more_bounded = message_bodies.list_older("live/", after_all, max_listed=1)

    assert ([b.name for b in older], more) == (["live/msg-a.json", "live/msg-b.json"], False)
    assert none == []
    assert ([b.name for b in bounded], more_bounded) == (["live/msg-a.json"], True)


def test_should_expire_old_live_bodies_only(message_bodies: MessageBodyStore) -> None:
    for name in ("live/msg-old.json", "dead-letters/msg-kept.json", "msg-root.json"):
        message_bodies.put(name, b"{}")
    # Last-Modified has whole seconds: the cutoff falls clearly between the two writes.
    time.sleep(1.5)
    between = datetime.now(timezone.utc)
    time.sleep(1.5)
    message_bodies.put("live/msg-fresh.json", b"{}")
    retention = timedelta(hours=200)

    # As a run `retention` after `between` sees them.
    result = expire_bodies(message_bodies, between + retention, retention, max_blobs=10)

    assert (result.deleted, result.more_left) == (1, False)
    assert message_bodies.get("live/msg-old.json") is None
    assert message_bodies.get("live/msg-fresh.json") is not None
    assert message_bodies.get("dead-letters/msg-kept.json") is not None
    assert message_bodies.get("msg-root.json") is not None
