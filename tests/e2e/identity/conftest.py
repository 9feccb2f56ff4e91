"""The local stack in identity mode, as `LOCAL_STORAGE_AUTH=identity make run` starts it:
Azurite over HTTPS taking only what its `--oauth basic` checks, the local identity endpoint, and
the local host with the settings infra/ deploys (service URIs, `__credential=managedidentity`,
`__clientId`; no connection string, no key).

With acs among the providers, the ACS Email stand-in as identity mode runs it too (HTTPS with the
local CA's certificate, taking only managed-identity tokens; `identity_acs`), started only for
the tests that ask for it.

Started once for this package. While it runs, this test process has the app's environment too
(IDENTITY_ENDPOINT, IDENTITY_HEADER, SSL_CERT_FILE): the tests' own storage calls, like an
operator's, go through the identity, so that Azurite's debug log, which records every request's
headers, can show that no request carried a shared key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from azure.identity import ManagedIdentityCredential
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueServiceClient

from devstack.acs_standin import AcsEmailStandIn
from devstack.azurite import Azurite
from devstack.identity_endpoint import LOCAL_IDENTITY_CLIENT_ID, IdentityEndpoint
from devstack.identity_mode import (
    app_settings,
    operator_environment,
    process_environment,
    write_environment_file,
)
from devstack.local_tls import LocalTls
from devstack.sendgrid_standin import SendGridStandIn
from tests.e2e.conftest import (
    LARGE_MESSAGE_CONTAINER,
    MAIL_QUEUE,
    LargeMessageBodies,
    Queues,
    RunningHost,
    gateway_settings,
)

# One line of Azurite's debug log per request, with its headers as JSON (Azurite's
# {Blob,Queue,Table}StorageContextMiddleware log "RequestHeaders:" at info level).
_REQUEST_LINE = re.compile(
    r"^(?P<at>\S+) \S+ \w+: (?P<service>Blob|Queue|Table)StorageContextMiddleware: "
    r"RequestMethod=(?P<method>\S+) RequestURL=(?P<url>\S+) "
    r"RequestHeaders:(?P<headers>\{.*\}) ClientIP=",
    re.MULTILINE,
)


@dataclass(frozen=True)
class StorageRequest:
    """One request Azurite received, as its debug log records it."""

    at: datetime
    service: str
    method: str
    url: str
    authorization: str
    client_request_id: str


def storage_requests(debug_log: Path) -> list[StorageRequest]:
    """Every request in Azurite's debug log so far, oldest first."""
    text = debug_log.read_text(encoding="utf-8", errors="replace")
    requests = []
    for found in _REQUEST_LINE.finditer(text):
        headers = json.loads(found["headers"])
        requests.append(
            StorageRequest(
                datetime.fromisoformat(found["at"].replace("Z", "+00:00")),
                found["service"],
                found["method"],
                found["url"],
                str(headers.get("authorization", "")),
                str(headers.get("x-ms-client-request-id", "")),
            )
        )
    return requests


@dataclass(frozen=True)
class IdentityStack:
    """What the identity-mode stack is made of, for the tests to reach and inspect."""

    azurite: Azurite
    endpoint: IdentityEndpoint
    tls: LocalTls
    debug_log: Path
    operator_env_file: Path


class IdentityQueues(Queues):
    """The gateway's queues, reached as an operator would in Azure: with the identity."""

    def __init__(self, stack: IdentityStack, name: str) -> None:
        service = QueueServiceClient(
            stack.azurite.queue_endpoint,
            credential=ManagedIdentityCredential(client_id=LOCAL_IDENTITY_CLIENT_ID),
            connection_verify=str(stack.tls.ca_bundle),
        )
        self.mail = service.get_queue_client(name)
        self.poison = service.get_queue_client(f"{name}-poison")


class IdentityLargeMessageBodies(LargeMessageBodies):
    """The container of large message bodies, reached with the identity."""

    def __init__(self, stack: IdentityStack, name: str = LARGE_MESSAGE_CONTAINER) -> None:
        service = BlobServiceClient(
            stack.azurite.blob_endpoint,
            credential=ManagedIdentityCredential(client_id=LOCAL_IDENTITY_CLIENT_ID),
            connection_verify=str(stack.tls.ca_bundle),
        )
        self.container = service.get_container_client(name)


def identity_host_settings(
    stack: IdentityStack, standin: SendGridStandIn, endpoint: IdentityEndpoint | None = None
) -> dict[str, str]:
    """The gateway's e2e settings with identity-based storage in place of the connection
    string, and the process environment of an app instance whose identity endpoint is
    `endpoint` (by default the stack's)."""
    settings = gateway_settings("", standin)
    del settings["AzureWebJobsStorage"]
    settings.update(app_settings(stack.azurite, LOCAL_IDENTITY_CLIENT_ID))
    settings.update(process_environment(endpoint or stack.endpoint, stack.tls))
    return settings


@pytest.fixture(scope="package")
def identity_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IdentityStack]:
    """Azurite over HTTPS with `--oauth basic` and its debug log, the identity endpoint, and
    this process's environment as the app's."""
    folder = tmp_path_factory.mktemp("identity")
    tls = LocalTls.ensure(folder / "tls")
    debug_log = folder / "azurite-debug.log"
    with (
        IdentityEndpoint() as endpoint,
        Azurite(tls=tls, oauth=True, debug_log=debug_log) as azurite,
        pytest.MonkeyPatch.context() as environment,
    ):
        for name, value in process_environment(endpoint, tls).items():
            environment.setenv(name, value)
        operator_env_file = folder / "identity.env"
        write_environment_file(operator_env_file, operator_environment(azurite, endpoint, tls))
        yield IdentityStack(azurite, endpoint, tls, debug_log, operator_env_file)


def acs_identity_settings(acs: AcsEmailStandIn) -> dict[str, str]:
    """The acs provider's settings as identity mode gives them (devstack/__main__.py
    _choose_acs): the endpoint alone, so the app signs in with its managed identity."""
    return {
        "ACS_EMAIL_ENDPOINT": acs.base_url,
        "ACS_EMAIL_SENDERS": "@example.com",
    }


@pytest.fixture(scope="package")
def identity_acs(
    identity_stack: IdentityStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AcsEmailStandIn]:
    """The ACS Email stand-in over HTTPS with the stack's certificate, taking bearer tokens."""
    with AcsEmailStandIn(
        outbox=tmp_path_factory.mktemp("identity-acs-outbox"), tls=identity_stack.tls
    ) as running:
        yield running


@pytest.fixture(scope="package")
def identity_host(
    identity_stack: IdentityStack,
    standin: SendGridStandIn,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningHost]:
    """The local host running the gateway in identity mode."""
    running = RunningHost(
        identity_host_settings(identity_stack, standin), tmp_path_factory.mktemp("identity-host")
    )
    yield running
    running.stop()


@pytest.fixture
def identity_queues(identity_stack: IdentityStack) -> IdentityQueues:
    """The gateway's queues in the identity-mode Azurite."""
    return IdentityQueues(identity_stack, MAIL_QUEUE)


@pytest.fixture
def identity_large_bodies(identity_stack: IdentityStack) -> IdentityLargeMessageBodies:
    """The large-body container in the identity-mode Azurite."""
    return IdentityLargeMessageBodies(identity_stack)


@pytest.fixture
def gateway(
    identity_host: RunningHost, standin: SendGridStandIn, identity_queues: IdentityQueues
) -> RunningHost:
    """The running gateway in identity mode, with the stand-in and the queues clean."""
    standin.reset()
    identity_queues.clear()
    return identity_host
