from __future__ import annotations

from typing import Any, cast

import pytest
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
)
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential
from azure.storage.blob import ContainerClient

from shared.blobs import (
    MessageBodyStore,
    body_blob_name,
    kept_body_blob_name,
    own_body_blob_names,
)
from shared.errors import StorageUnavailable
from shared.settings import Settings
from tests.samples import BASE_ENV

IDENTITY_ENV = {k: v for k, v in BASE_ENV.items() if k != "AzureWebJobsStorage"}
CLIENT_ID = "00000000-0000-0000-0000-0000000000c2"


class _Download:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def readall(self) -> bytes:
        return self._data


class RecordingContainerClient:
    """The ContainerClient calls MessageBodyStore makes, on a dict; `error` makes each raise it."""

    def __init__(self, error: Exception | None = None) -> None:
        self.container_name = "mail-large"
        self.error = error
        self.blobs: dict[str, bytes] = {}
        self.uploads: list[dict[str, Any]] = []
        self.created = 0

    def create_container(self) -> None:
        self._maybe_fail()
        if self.created:
            raise ResourceExistsError("The specified container already exists.")
        self.created += 1

    def get_container_properties(self) -> None:
        self._maybe_fail()
        if not self.created:
            raise ResourceNotFoundError("The specified container does not exist.")

    def upload_blob(self, name: str, data: bytes, **options: Any) -> None:
        self._maybe_fail()
        self.uploads.append({"name": name, **options})
        self.blobs[name] = data

    def download_blob(self, name: str) -> _Download:
        self._maybe_fail()
        if name not in self.blobs:
            raise ResourceNotFoundError("The specified blob does not exist.")
        return _Download(self.blobs[name])

    def delete_blob(self, name: str) -> None:
        self._maybe_fail()
        if self.blobs.pop(name, None) is None:
            raise ResourceNotFoundError("The specified blob does not exist.")

    def _maybe_fail(self) -> None:
        if self.error is not None:
            raise self.error


def store_on(client: RecordingContainerClient) -> MessageBodyStore:
    return MessageBodyStore(cast(ContainerClient, client))


def test_should_name_a_new_body_blob_after_its_message_under_the_live_prefix() -> None:
    assert body_blob_name("5d0c6a52-7c9e-4a57-9a4e-1f1f6d3b2c10") == (
        "live/5d0c6a52-7c9e-4a57-9a4e-1f1f6d3b2c10.json"
    )


def test_should_know_a_body_by_its_live_kept_and_older_root_names_only() -> None:
    names = own_body_blob_names("msg-1")

    assert names == ("live/msg-1.json", "dead-letters/msg-1.json", "msg-1.json")
    assert kept_body_blob_name("msg-1") == "dead-letters/msg-1.json"
    assert "live/msg-2.json" not in names


def test_should_write_json_replacing_a_blob_of_the_same_name() -> None:
    client = RecordingContainerClient()

    store_on(client).put("msg-1.json", b"{}")

    [upload] = client.uploads
    assert upload["overwrite"] is True
    assert upload["content_settings"].content_type == "application/json"
    assert client.blobs == {"msg-1.json": b"{}"}


def test_should_read_a_blob_back_and_a_missing_one_as_none() -> None:
    store = store_on(RecordingContainerClient())
    store.put("msg-2.json", b'{"a": 1}')

    assert store.get("msg-2.json") == b'{"a": 1}'
    assert store.get("msg-missing.json") is None


def test_should_take_deleting_a_missing_blob_as_done() -> None:
    client = RecordingContainerClient()
    store = store_on(client)
    store.put("msg-3.json", b"{}")

    store.delete("msg-3.json")
    store.delete("msg-3.json")

    assert client.blobs == {}


def test_should_create_the_container_and_accept_one_that_exists() -> None:
    client = RecordingContainerClient()
    store = store_on(client)

    store.check()  # not created yet: not a failure
    store.ensure_exists()
    store.ensure_exists()
    store.check()

    assert client.created == 1


@pytest.mark.parametrize(
    "error",
    [
        ServiceRequestError("connection refused"),
        HttpResponseError("This request is not authorized to perform this operation."),
    ],
    ids=["unreachable", "refused"],
)
@pytest.mark.parametrize("operation", ["put", "get", "delete", "check", "ensure_exists"])
def test_should_report_storage_unavailable_naming_the_container(
    operation: str, error: Exception
) -> None:
    store = store_on(RecordingContainerClient(error))
    calls = {
        "put": lambda: store.put("msg-4.json", b"{}"),
        "get": lambda: store.get("msg-4.json"),
        "delete": lambda: store.delete("msg-4.json"),
        "check": store.check,
        "ensure_exists": store.ensure_exists,
    }

    with pytest.raises(StorageUnavailable) as caught:
        calls[operation]()

    assert "mail-large" in str(caught.value)
    assert type(error).__name__ in str(caught.value)


@pytest.mark.parametrize(
    ("identity_env", "container_url"),
    [
        (
            {
                "AzureWebJobsStorage__accountName": "mailgateprod",
                "AzureWebJobsStorage__credential": "managedidentity",
                "AzureWebJobsStorage__clientId": CLIENT_ID,
            },
            "https://mailgateprod.blob.core.windows.net/mail-large",
        ),
        (
            {
                "AzureWebJobsStorage__queueServiceUri": "https://mailgatedev.queue.core.windows.net",
                "AzureWebJobsStorage__tableServiceUri": "https://mailgatedev.table.core.windows.net",
                "AzureWebJobsStorage__blobServiceUri": "https://mailgatedev.blob.core.windows.net",
                "LARGE_MESSAGE_CONTAINER_NAME": "bodies",
            },
            "https://mailgatedev.blob.core.windows.net/bodies",
        ),
    ],
)
def test_should_aim_identity_based_clients_at_the_configured_account(
    identity_env: dict[str, str], container_url: str
) -> None:
    store = MessageBodyStore.from_settings(Settings.from_env({**IDENTITY_ENV, **identity_env}))

    assert store._container.url == container_url
    assert isinstance(
        store._container.credential, (ManagedIdentityCredential, DefaultAzureCredential)
    )


def test_should_aim_connection_string_clients_at_azurite() -> None:
    settings = Settings.from_env({**BASE_ENV, "AzureWebJobsStorage": "UseDevelopmentStorage=true"})

    store = MessageBodyStore.from_settings(settings)

    assert store._container.url == "http://127.0.0.1:10000/devstoreaccount1/mail-large"
    assert store.container_name == "mail-large"


class _CopyingBlob:
    """The BlobClient calls a copy makes: its answers scripted, its aborts recorded."""

    def __init__(self, name: str, statuses: list[str], error: Exception | None = None) -> None:
        self.url = f"http://127.0.0.1:10000/devstoreaccount1/mail-large/{name}"
        self.statuses = statuses
        self.error = error
        self.copied_from: list[str] = []
        self.aborted: list[str] = []

    def start_copy_from_url(self, url: str) -> dict[str, str]:
        if self.error is not None:
            raise self.error
        self.copied_from.append(url)
        return {"copy_status": self._next(), "copy_id": "copy-1"}

    def _next(self) -> str:
        # The last answer repeats: a copy that stays pending.
        return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]

    def get_blob_properties(self) -> Any:
        status = self._next()
        return type("Properties", (), {"copy": type("Copy", (), {"status": status})})()

    def abort_copy(self, copy_id: str) -> None:
        self.aborted.append(copy_id)


class CopyingContainerClient(RecordingContainerClient):
    def __init__(self, statuses: list[str], error: Exception | None = None) -> None:
        super().__init__()
        self.copy_error = error
        self.statuses = statuses
        self.targets: dict[str, _CopyingBlob] = {}

    def get_blob_client(self, name: str) -> _CopyingBlob:
        return self.targets.setdefault(name, _CopyingBlob(name, self.statuses, self.copy_error))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.mark.parametrize("statuses", [["success"], ["pending", "pending", "success"]])
def test_should_copy_a_blob_server_side_within_the_container(statuses: list[str]) -> None:
    client = CopyingContainerClient(statuses)

    copied = store_on(client).copy("live/m.json", "dead-letters/m.json", monotonic=Clock())

    assert copied is True
    target = client.targets["dead-letters/m.json"]
    assert target.copied_from == [client.targets["live/m.json"].url]
    assert target.aborted == []


def test_should_abort_a_copy_still_pending_after_its_wait_and_report_storage_unavailable() -> None:
    client = CopyingContainerClient(["pending"])

    with pytest.raises(StorageUnavailable, match="copy pending"):
        store_on(client).copy(
            "live/m.json", "dead-letters/m.json", wait_seconds=3, monotonic=Clock()
        )

    assert client.targets["dead-letters/m.json"].aborted == ["copy-1"]


def test_should_answer_false_for_a_missing_source_and_raise_for_a_failing_service() -> None:
    missing = CopyingContainerClient(
        [], ResourceNotFoundError("The specified blob does not exist.")
    )
    failing = CopyingContainerClient([], ServiceRequestError("connection refused"))

    assert store_on(missing).copy("live/m.json", "dead-letters/m.json") is False
    with pytest.raises(StorageUnavailable, match=r"mail-large/dead-letters/m\.json"):
        store_on(failing).copy("live/m.json", "dead-letters/m.json")
