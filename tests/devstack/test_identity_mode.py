"""The local stack's identity mode: the managed-identity endpoint that azure-identity's own
credentials use, Azurite over HTTPS taking its tokens, the local host's identity-based
connections, and the settings and files `LOCAL_STORAGE_AUTH=identity make run` writes."""

from __future__ import annotations

import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import certifi
import httpx
import jwt
import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.data.tables import TableClient
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient

from devstack.azurite import DEFAULT_EXECUTABLE, Azurite
from devstack.host_queue import create_clients, receive_batch, resolve_connection
from devstack.host_timer import ScheduleMonitor, ScheduleStatus
from devstack.identity_endpoint import (
    API_VERSION,
    DEFAULT_TOKEN_LIFETIME_SECONDS,
    LOCAL_IDENTITY_CLIENT_ID,
    IdentityEndpoint,
)
from devstack.identity_mode import (
    app_settings,
    operator_environment,
    process_environment,
    storage_auth,
    without_storage_connections,
    write_environment_file,
)
from devstack.local_tls import LocalTls
from shared.queue import storage_tls_verify
from shared.settings import Settings

pytestmark = pytest.mark.skipif(
    not DEFAULT_EXECUTABLE.exists(), reason="Azurite is not installed: run `npm ci`"
)

STORAGE_SCOPE = "https://storage.azure.com/.default"
OTHER_CLIENT_ID = "00000000-0000-4000-8000-00000000beef"
REQUIRED = {"ALLOWED_SENDERS": "@example.com", "SENDGRID_API_KEY": "SG.x"}


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> LocalTls:
    """The local CA and Azurite's certificate, for this module."""
    return LocalTls.ensure(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def endpoint() -> Iterator[IdentityEndpoint]:
    """The identity endpoint, handing out day-long tokens."""
    with IdentityEndpoint() as running:
        yield running


@pytest.fixture(scope="module")
def secure_azurite(tls: LocalTls) -> Iterator[Azurite]:
    """Azurite over HTTPS that takes bearer tokens (`--oauth basic`)."""
    with Azurite(tls=tls, oauth=True) as running:
        yield running


@pytest.fixture
def identity_env(
    endpoint: IdentityEndpoint, tls: LocalTls, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """This process's environment as the app's in identity mode: IDENTITY_*, SSL_CERT_FILE."""
    environment = process_environment(endpoint, tls)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    return environment


def claims_of(token: str) -> dict[str, Any]:
    """A JWT's claims, unverified, as Azurite reads them."""
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


class FixedToken:
    """A credential that hands out one given token, whatever its claims say."""

    def __init__(self, token: str) -> None:
        self._token = token

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self._token, int(time.time()) + 3600)


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


# ---- the endpoint --------------------------------------------------------------------------


@pytest.mark.usefixtures("identity_env")
def test_should_give_the_sdks_managed_identity_credential_a_token_with_the_claims_azurite_checks(
    endpoint: IdentityEndpoint,
) -> None:
    before = len(endpoint.issued)

    token = ManagedIdentityCredential(client_id=LOCAL_IDENTITY_CLIENT_ID).get_token(STORAGE_SCOPE)

    claims = claims_of(token.token)
    now = time.time()
    assert claims["aud"] == "https://storage.azure.com"
    assert claims["iss"].startswith("https://sts.windows.net/")
    assert claims["nbf"] <= now < claims["exp"]
    assert claims["exp"] - claims["iat"] == DEFAULT_TOKEN_LIFETIME_SECONDS
    assert claims["appid"] == LOCAL_IDENTITY_CLIENT_ID
    assert token.expires_on == claims["exp"]
    [issued] = endpoint.issued[before:]
    assert (issued.client_id, issued.resource) == (LOCAL_IDENTITY_CLIENT_ID, claims["aud"])


@pytest.mark.usefixtures("identity_env")
def test_should_answer_defaultazurecredential_through_the_same_endpoint(
    endpoint: IdentityEndpoint,
) -> None:
    before = len(endpoint.issued)

    token = DefaultAzureCredential(managed_identity_client_id=LOCAL_IDENTITY_CLIENT_ID).get_token(
        STORAGE_SCOPE
    )

    assert claims_of(token.token)["appid"] == LOCAL_IDENTITY_CLIENT_ID
    assert len(endpoint.issued) == before + 1


@pytest.mark.usefixtures("identity_env")
def test_should_refuse_an_identity_the_app_does_not_have(endpoint: IdentityEndpoint) -> None:
    before = len(endpoint.issued)

    with pytest.raises(ClientAuthenticationError, match="not an identity assigned to this app"):
        ManagedIdentityCredential(client_id=OTHER_CLIENT_ID).get_token(STORAGE_SCOPE)
    with pytest.raises(ClientAuthenticationError, match="no system-assigned identity"):
        ManagedIdentityCredential().get_token(STORAGE_SCOPE)
    assert len(endpoint.issued) == before


@pytest.mark.parametrize("header", [None, "not-the-header"], ids=["missing", "wrong"])
def test_should_refuse_a_request_without_the_identity_header(
    endpoint: IdentityEndpoint, header: str | None
) -> None:
    headers = {"X-IDENTITY-HEADER": header} if header else {}
    params = {
        "api-version": API_VERSION,
        "resource": "https://storage.azure.com",
        "client_id": LOCAL_IDENTITY_CLIENT_ID,
    }

    response = httpx.get(endpoint.url, params=params, headers=headers, timeout=5)

    assert response.status_code == 401
    assert "X-IDENTITY-HEADER" in response.json()["message"]
    assert "access_token" not in response.json()


@pytest.mark.parametrize(
    ("target", "status", "field"),
    [
        ("/msi/token?resource=r&client_id={id}", 400, "api-version"),
        ("/msi/token?api-version=2017-09-01&resource=r&client_id={id}", 400, "api-version"),
        ("/msi/token?api-version=2019-08-01&client_id={id}", 400, "resource"),
        (
            "/msi/token?api-version=2019-08-01&resource=" + "r" * 300 + "&client_id={id}",
            400,
            "resource",
        ),
        ("/msi/token?api-version=2019-08-01&resource=r&resource=s&client_id={id}", 400, "once"),
        ("/msi/token?api-version=2019-08-01&resource=r&principal_id=p", 400, "client_id"),
        (
            "/msi/token?api-version=2019-08-01&resource=r&client_id={id}&x=" + "x" * 2100,
            414,
            "2048",
        ),
        ("/other?api-version=2019-08-01&resource=r&client_id={id}", 404, "/msi/token"),
    ],
)
def test_should_answer_a_bad_request_briefly_naming_what_is_wrong(
    target: str, status: int, field: str
) -> None:
    endpoint = IdentityEndpoint(header="h")

    answered, body = endpoint.answer(target.format(id=LOCAL_IDENTITY_CLIENT_ID), "h")

    assert (answered, body["statusCode"]) == (status, status)
    assert field in body["message"]
    assert len(body["message"]) < 100
    assert endpoint.issued == []


def test_should_issue_tokens_for_the_configured_lifetime() -> None:
    endpoint = IdentityEndpoint(header="h", token_lifetime_seconds=90)
    target = (
        f"/msi/token?api-version={API_VERSION}&resource=https://storage.azure.com"
        f"&client_id={LOCAL_IDENTITY_CLIENT_ID.upper()}"
    )

    status, body = endpoint.answer(target, "h", now=1_000_000)

    assert status == 200
    assert (body["expires_on"], body["not_before"]) == ("1000090", "1000000")
    assert claims_of(body["access_token"])["exp"] == 1_000_090
    assert body["token_type"] == "Bearer"


# ---- Azurite over HTTPS with tokens --------------------------------------------------------


@pytest.mark.usefixtures("identity_env")
def test_should_reach_queues_tables_and_blobs_over_https_with_the_identity_alone(
    secure_azurite: Azurite,
) -> None:
    credential = ManagedIdentityCredential(client_id=LOCAL_IDENTITY_CLIENT_ID)
    verify = storage_tls_verify()
    queue = QueueClient(
        secure_azurite.queue_endpoint, unique("q"), credential=credential, connection_verify=verify
    )
    table = TableClient(
        secure_azurite.table_endpoint, unique("t"), credential=credential, connection_verify=verify
    )
    blobs = BlobServiceClient(
        secure_azurite.blob_endpoint, credential=credential, connection_verify=verify
    ).get_container_client(unique("c"))

    queue.create_queue()
    queue.send_message("hello")
    table.create_table()
    table.create_entity({"PartitionKey": "p", "RowKey": "r", "n": 1})
    blobs.create_container()
    blobs.upload_blob("b", b"body")

    assert [m.content for m in queue.peek_messages()] == ["hello"]
    assert table.get_entity("p", "r")["n"] == 1
    assert blobs.download_blob("b").readall() == b"body"
    assert secure_azurite.queue_endpoint.startswith("https://")


def test_should_be_refused_by_azurite_with_a_token_past_its_expiry(
    secure_azurite: Azurite, tls: LocalTls
) -> None:
    # What makes a token that is never refreshed fail: Azurite checks `exp` against its clock.
    endpoint = IdentityEndpoint(header="h", token_lifetime_seconds=60)
    target = (
        f"/msi/token?api-version={API_VERSION}&resource=https://storage.azure.com"
        f"&client_id={LOCAL_IDENTITY_CLIENT_ID}"
    )
    _, stale = endpoint.answer(target, "h", now=time.time() - 120)
    _, fresh = endpoint.answer(target, "h")
    name = unique("q")

    def queue(token: str) -> QueueClient:
        return QueueClient(
            secure_azurite.queue_endpoint,
            name,
            credential=FixedToken(token),
            connection_verify=str(tls.ca_bundle),
        )

    queue(fresh["access_token"]).create_queue()
    with pytest.raises(HttpResponseError) as refused:
        queue(stale["access_token"]).send_message("late")

    assert refused.value.status_code == 403
    assert "expired" in str(refused.value)


# ---- the local host's identity-based connections -------------------------------------------


@pytest.mark.usefixtures("identity_env")
def test_should_listen_on_an_identity_based_connection_over_https(
    secure_azurite: Azurite, endpoint: IdentityEndpoint
) -> None:
    settings = app_settings(secure_azurite, LOCAL_IDENTITY_CLIENT_ID)
    connection = resolve_connection("MAILGATE_STORAGE", settings)
    before = len(endpoint.issued)

    queue, poison = create_clients(connection, unique("items"))
    queue.create_queue()
    queue.send_message("aGVsbG8=")
    [received] = receive_batch(queue, 32, 30)
    queue.delete_message(received)

    assert received.content == "aGVsbG8="
    assert receive_batch(queue, 32, 30) == []
    assert poison is not None
    assert poison.url.startswith(secure_azurite.queue_endpoint)
    # One token for the connection's credential, shared by the queue and its poison queue.
    assert len(endpoint.issued) == before + 1


@pytest.mark.usefixtures("identity_env")
def test_should_keep_timer_schedule_status_in_identity_based_host_storage(
    secure_azurite: Azurite, tmp_path: Path
) -> None:
    settings = app_settings(secure_azurite, LOCAL_IDENTITY_CLIENT_ID)
    monitor = ScheduleMonitor.from_settings(settings, str(tmp_path))
    now = datetime.now(timezone.utc).replace(microsecond=0)
    status = ScheduleStatus(now, now, now)

    monitor.update("Host.Functions.identity", status)

    assert monitor.get("Host.Functions.identity") == status
    monitor.close()


# ---- what `make run` sets and writes -------------------------------------------------------


def test_should_choose_the_storage_auth_from_local_storage_auth_naming_it_when_wrong() -> None:
    assert storage_auth({}) == "key"
    assert storage_auth({"LOCAL_STORAGE_AUTH": " Identity "}) == "identity"
    with pytest.raises(ValueError, match="LOCAL_STORAGE_AUTH must be 'key' or 'identity'"):
        storage_auth({"LOCAL_STORAGE_AUTH": "sas"})


def test_should_give_the_app_the_settings_infra_deploys_with_no_connection_string_or_key(
    secure_azurite: Azurite,
) -> None:
    settings = app_settings(secure_azurite, LOCAL_IDENTITY_CLIENT_ID)

    shapes = {tuple(name.split("__")) for name in settings}
    assert shapes == {
        (connection, entry)
        for connection in ("AzureWebJobsStorage", "MAILGATE_STORAGE")
        for entry in (
            "queueServiceUri",
            "tableServiceUri",
            "blobServiceUri",
            "credential",
            "clientId",
        )
    }
    assert not any("accountkey" in value.lower() for value in settings.values())
    storage = Settings.from_env({**REQUIRED, **settings}).storage
    assert storage.connection_string is None
    assert (storage.credential, storage.client_id) == ("managedidentity", LOCAL_IDENTITY_CLIENT_ID)
    assert storage.queue_service_uri == secure_azurite.queue_endpoint


def test_should_let_operator_commands_sign_in_with_defaultazurecredential(
    secure_azurite: Azurite, endpoint: IdentityEndpoint, tls: LocalTls
) -> None:
    environment = operator_environment(secure_azurite, endpoint, tls)
    # A developer's local.settings.json still names Azurite by its key: the data connection wins.
    local = {"AzureWebJobsStorage": "UseDevelopmentStorage=true"}

    storage = Settings.from_env({**REQUIRED, **local, **environment}).storage

    assert storage.connection_string is None
    assert storage.credential is None  # so token_credential() is DefaultAzureCredential
    assert storage.client_id == LOCAL_IDENTITY_CLIENT_ID
    assert environment["IDENTITY_ENDPOINT"] == endpoint.url
    assert environment["SSL_CERT_FILE"] == str(tls.ca_bundle.resolve())


def test_should_drop_every_storage_connection_identity_mode_replaces() -> None:
    settings = {
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        "azurewebjobsstorage__accountName": "x",
        "MAILGATE_STORAGE": "UseDevelopmentStorage=true",
        "AzureWebJobsMAILGATE_STORAGE__queueServiceUri": "https://q",
        "MAILGATE_STORAGE_EXTRA": "kept",
        "MAIL_QUEUE_NAME": "mail-outbound",
    }

    assert without_storage_connections(settings) == {
        "MAILGATE_STORAGE_EXTRA": "kept",
        "MAIL_QUEUE_NAME": "mail-outbound",
    }


def test_should_write_an_environment_file_a_shell_sources_readable_by_its_owner_only(
    tmp_path: Path,
) -> None:
    path = tmp_path / "identity.env"
    values = {"IDENTITY_HEADER": "a b'c\"$d", "IDENTITY_ENDPOINT": "http://127.0.0.1:1/msi/token"}

    write_environment_file(path, values)
    printed = subprocess.run(
        ["sh", "-c", f'. "{path}" && printf "%s\\n%s" "$IDENTITY_HEADER" "$IDENTITY_ENDPOINT"'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    assert printed.split("\n") == [values["IDENTITY_HEADER"], values["IDENTITY_ENDPOINT"]]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_should_make_the_local_ca_once_and_bundle_it_with_certifis(tmp_path: Path) -> None:
    first = LocalTls.ensure(tmp_path)
    ca = first.ca.read_bytes()

    again = LocalTls.ensure(tmp_path)

    assert again.ca.read_bytes() == ca
    assert again.ca_bundle.read_bytes() == Path(certifi.where()).read_bytes() + ca
    assert stat.S_IMODE(again.key.stat().st_mode) == 0o600
