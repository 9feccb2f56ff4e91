"""The local stack's identity mode: storage over HTTPS, reached with managed-identity tokens only.

In Azure the app reaches storage with its user-assigned identity's Microsoft Entra tokens over
HTTPS, shared keys being off (infra/). Here Azurite serves HTTPS with a local CA
(devstack/local_tls.py) and accepts bearer tokens (`--oauth basic`), the identity endpoint
(devstack/identity_endpoint.py) hands them out as App Service's does, and the app's settings
take the shape infra/ deploys: per connection, `__credential=managedidentity` and `__clientId`,
with the service URIs in place of `__accountName` (the account is 127.0.0.1 here, not
`<name>.queue.core.windows.net`). No connection string, no account key.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path

from devstack.azurite import Azurite
from devstack.identity_endpoint import IdentityEndpoint
from devstack.local_tls import LocalTls
from shared.queue import CA_FILE_VARIABLE
from shared.settings import DATA_STORAGE_CONNECTION, HOST_STORAGE_CONNECTION

# `make run`'s choice between the two ways to reach Azurite.
STORAGE_AUTH_SETTING = "LOCAL_STORAGE_AUTH"
KEY_AUTH = "key"
IDENTITY_AUTH = "identity"
# Both connections, as infra/ sets both (the data today in the host's own account).
CONNECTIONS = (HOST_STORAGE_CONNECTION, DATA_STORAGE_CONNECTION)
_CONNECTION_SETTINGS = (*CONNECTIONS, f"AzureWebJobs{DATA_STORAGE_CONNECTION}")


def storage_auth(environ: Mapping[str, str]) -> str:
    """LOCAL_STORAGE_AUTH: `key` (the default: the account key over http) or `identity`."""
    value = (environ.get(STORAGE_AUTH_SETTING) or KEY_AUTH).strip().lower()
    if value not in (KEY_AUTH, IDENTITY_AUTH):
        raise ValueError(
            f"{STORAGE_AUTH_SETTING} must be '{KEY_AUTH}' or '{IDENTITY_AUTH}', not {value[:40]!r}"
        )
    return value


def app_settings(azurite: Azurite, client_id: str) -> dict[str, str]:
    """The storage settings of the app: identity-based, for both connections."""
    settings = {}
    for connection in CONNECTIONS:
        settings.update(
            {
                f"{connection}__queueServiceUri": azurite.queue_endpoint,
                f"{connection}__tableServiceUri": azurite.table_endpoint,
                f"{connection}__blobServiceUri": azurite.blob_endpoint,
                f"{connection}__credential": "managedidentity",
                f"{connection}__clientId": client_id,
            }
        )
    return settings


def process_environment(endpoint: IdentityEndpoint, tls: LocalTls) -> dict[str, str]:
    """What every process of the app needs besides its settings: the identity endpoint's
    variables (the platform's, in Azure) and the CA bundle that trusts Azurite's certificate."""
    return {**endpoint.environment(), CA_FILE_VARIABLE: str(tls.ca_bundle.resolve())}


def operator_environment(
    azurite: Azurite, endpoint: IdentityEndpoint, tls: LocalTls
) -> dict[str, str]:
    """What an operator's shell needs for `make poison` and the other admin commands.

    The data connection's service URIs and the identity's client id, but no `__credential`:
    so the commands sign in with DefaultAzureCredential, as an operator's do against Azure,
    and it reaches the same endpoint through its ManagedIdentityCredential (IDENTITY_ENDPOINT
    and IDENTITY_HEADER set). MAILGATE_STORAGE wins over a local.settings.json's
    AzureWebJobsStorage (shared/settings.py data_connection).
    """
    connection = DATA_STORAGE_CONNECTION
    return {
        f"{connection}__queueServiceUri": azurite.queue_endpoint,
        f"{connection}__tableServiceUri": azurite.table_endpoint,
        f"{connection}__blobServiceUri": azurite.blob_endpoint,
        f"{connection}__clientId": endpoint.client_id,
        **process_environment(endpoint, tls),
    }


def without_storage_connections(settings: Mapping[str, str]) -> dict[str, str]:
    """`settings` without the storage connections (strings or entries) identity mode replaces."""
    names = tuple(name.lower() for name in _CONNECTION_SETTINGS)
    return {
        name: value
        for name, value in settings.items()
        if name.lower() not in names and not name.lower().startswith(tuple(n + "__" for n in names))
    }


def write_environment_file(path: Path, environment: Mapping[str, str]) -> None:
    """Write `export NAME=value` lines a POSIX shell sources, readable by the owner only (the
    identity header is a secret of the instance)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"export {name}={shlex.quote(value)}\n" for name, value in environment.items()]
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write("# The local stack's identity mode (make run); source it: . " + path.name + "\n")
        file.writelines(lines)
    path.chmod(0o600)  # O_CREAT's mode applies to a new file only
