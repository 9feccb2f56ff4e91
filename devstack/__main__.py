"""`make run`: Azurite, the SendGrid stand-in and the local host; Ctrl-C stops all three.
With `acs` in MAIL_PROVIDERS (`MAIL_PROVIDERS=sendgrid,acs make run`) the ACS Email stand-in
too, unless the environment names a real ACS resource.

`LOCAL_STORAGE_AUTH=identity make run` runs the production path instead: Azurite over HTTPS,
reached with managed-identity tokens from a local identity endpoint (devstack/identity_mode.py);
with acs listed, the ACS Email stand-in over HTTPS too, reached as ACS_EMAIL_ENDPOINT with the
same identity's tokens and no access key, as in Azure.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from devstack.acs_standin import DEFAULT_PORT as ACS_STANDIN_DEFAULT_PORT
from devstack.acs_standin import AcsEmailStandIn
from devstack.azurite import Azurite, AzuriteError
from devstack.host import DEFAULT_PORT, local_setting_values, merge_settings, read_local_settings
from devstack.identity_endpoint import IdentityEndpoint
from devstack.identity_mode import (
    IDENTITY_AUTH,
    app_settings,
    operator_environment,
    process_environment,
    storage_auth,
    without_storage_connections,
    write_environment_file,
)
from devstack.local_tls import LocalTls
from devstack.sendgrid_standin import DEFAULT_API_KEY, SendGridStandIn
from devstack.sendgrid_standin import DEFAULT_PORT as STANDIN_DEFAULT_PORT
from shared.clients import ClientStore
from shared.errors import MailgateError, Unauthorized
from shared.settings import (
    DATA_STORAGE_CONNECTION,
    DEFAULT_SENDGRID_API_BASE_URL,
    HOST_STORAGE_CONNECTION,
    Settings,
    connection_setting,
)

DATA_DIR = Path(".devstack")
DEV_CLIENT = "dev"
DEV_KEY_FILE = DATA_DIR / "dev-client-key"
# Identity mode: the local CA, the identity endpoint (next to the stand-in's 7072) and its
# header, kept so that a shell that sourced the operator environment file keeps working.
TLS_DIR = DATA_DIR / "tls"
IDENTITY_ENDPOINT_PORT = 7073
IDENTITY_HEADER_FILE = DATA_DIR / "identity-header"
OPERATOR_ENV_FILE = DATA_DIR / "identity.env"


def main() -> int:
    """Start the stack in the foreground and stop it on Ctrl-C; non-zero if it cannot start."""
    # A SIGTERM (from a supervisor or `timeout`) stops the stack as Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    app_dir = Path.cwd()
    local_values = local_setting_values(read_local_settings(app_dir))
    env = dict(os.environ)
    if missing := missing_local_settings(app_dir, local_values, env):
        print(
            f"mailgate: local.settings.json lacks {', '.join(missing)}, which "
            "local.settings.example.json has (the copy is older than they are): copy them "
            "over, or delete local.settings.json and `make run` copies the example again.",
            file=sys.stderr,
        )
    host_options: list[str] = []
    tls: LocalTls | None = None
    with contextlib.ExitStack() as stack:
        try:
            if storage_auth(env) == IDENTITY_AUTH:
                local_values, env = _identity_mode(stack, local_values, env)
                # The CA and certificate _identity_mode made (or kept), for the ACS stand-in.
                tls = LocalTls.in_directory(TLS_DIR)
                # Only the settings given: local.settings.json's connection string stays out.
                host_options.append("--environment-only")
            elif _uses_development_storage(merge_settings(local_values, env)):
                stack.enter_context(_azurite())
            _choose_sendgrid(stack, local_values, env)
            _choose_acs(stack, local_values, env, tls)
            settings = Settings.from_env(merge_settings(local_values, env))
            _announce_dev_client(settings)
        except (AzuriteError, MailgateError, OSError, ValueError) as error:
            print(f"mailgate: cannot start: {error}", file=sys.stderr)
            return 2
        return _run_host(env, host_options)


def missing_local_settings(
    app_dir: Path, local_values: Mapping[str, str], env: Mapping[str, str]
) -> list[str]:
    """The settings local.settings.example.json has that neither local.settings.json nor the
    environment gives: a local.settings.json copied before they existed (`make run` copies the
    example only when there is none), with which some functions fail to start, such as the
    retention timer without RETENTION_SCHEDULE."""
    if not (app_dir / "local.settings.json").is_file():
        return []
    example = local_setting_values(read_local_settings(app_dir, "local.settings.example.json"))
    return sorted(name for name in example if name not in local_values and name not in env)


def _identity_mode(
    stack: contextlib.ExitStack, local_values: dict[str, str], env: dict[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """Start Azurite over HTTPS with tokens and the identity endpoint; the settings without
    storage connections, and the host's environment with the identity-based ones."""
    tls = LocalTls.ensure(TLS_DIR)
    azurite = stack.enter_context(_azurite(tls))
    endpoint = IdentityEndpoint(header=_identity_header(), port=IDENTITY_ENDPOINT_PORT).start()
    stack.callback(endpoint.stop)
    process_env = process_environment(endpoint, tls)
    # This process makes the dev client as the app would reach storage: with the identity.
    os.environ.update(process_env)
    local_values = without_storage_connections(local_values)
    host_env = {
        **merge_settings(local_values, without_storage_connections(env)),
        **app_settings(azurite, endpoint.client_id),
        **process_env,
    }
    write_environment_file(OPERATOR_ENV_FILE, operator_environment(azurite, endpoint, tls))
    print(
        f"Identity mode: storage only with managed-identity tokens over HTTPS (Azurite with "
        f"--oauth basic; its CA in {tls.ca}); token endpoint {endpoint.url} for client id "
        f"{endpoint.client_id}.\nAdmin commands in another shell: . {OPERATOR_ENV_FILE} && "
        "make poison"
    )
    return local_values, host_env


def _identity_header() -> str:
    """The identity endpoint's header: the saved one, else a new one, saved (owner only)."""
    if IDENTITY_HEADER_FILE.is_file():
        saved = IDENTITY_HEADER_FILE.read_text().strip()
        if saved:
            return saved
    header = secrets.token_urlsafe(32)
    IDENTITY_HEADER_FILE.parent.mkdir(parents=True, exist_ok=True)
    IDENTITY_HEADER_FILE.touch(mode=0o600)  # owner only before the secret is in it
    IDENTITY_HEADER_FILE.write_text(header + "\n")
    return header


def _announce_dev_client(settings: Settings) -> None:
    """Print the development client's key, creating the client on the first start."""
    key = dev_client_key(ClientStore.from_settings(settings), settings.allowed_senders)
    print(
        f"Client {DEV_CLIENT!r} may send as {','.join(settings.allowed_senders)}; its key "
        f"(also in {DEV_KEY_FILE}):\n  Authorization: Bearer {key}"
    )


def dev_client_key(
    store: ClientStore, senders: tuple[str, ...], key_file: Path = DEV_KEY_FILE
) -> str:
    """The development client's key: the saved one while it works, else a new one, saved."""
    store.ensure_exists()
    saved = key_file.read_text().strip() if key_file.exists() else ""
    if saved:
        try:
            store.authenticate(f"Bearer {saved}")
            return saved
        except Unauthorized:
            pass  # rotated or disabled by hand, or the local storage was wiped
    if store.get(DEV_CLIENT) is None:
        _, key = store.create(DEV_CLIENT, ",".join(senders))
    else:
        _, key = store.rotate(DEV_CLIENT)
        store.set_enabled(DEV_CLIENT, True)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    return key


def _uses_development_storage(settings: dict[str, str]) -> bool:
    # The host's storage, or the gateway's data when it has a connection of its own.
    data = connection_setting(settings, DATA_STORAGE_CONNECTION) or HOST_STORAGE_CONNECTION
    return any(
        "usedevelopmentstorage=true" in settings.get(name, "").lower()
        for name in (HOST_STORAGE_CONNECTION, data)
    )


@contextlib.contextmanager
def _azurite(tls: LocalTls | None = None) -> Iterator[Azurite]:
    # UseDevelopmentStorage=true means the default ports; data persists across runs, and is
    # the same in both modes.
    azurite = Azurite(
        in_memory=False,
        location=DATA_DIR / "azurite",
        blob_port=10000,
        queue_port=10001,
        table_port=10002,
        tls=tls,
        oauth=tls is not None,
    ).start()
    print(
        f"Azurite (local storage) on {azurite.scheme}://127.0.0.1:10000-10002, "
        f"data in {DATA_DIR / 'azurite'}"
    )
    try:
        yield azurite
    finally:
        azurite.stop()


def _choose_sendgrid(
    stack: contextlib.ExitStack, local_values: dict[str, str], env: dict[str, str]
) -> None:
    """Start the stand-in unless SENDGRID_API_KEY is in the environment (then: real SendGrid)."""
    if "SENDGRID_API_KEY" in os.environ:
        # The local settings aim at the stand-in; the environment's key means a real endpoint.
        env.setdefault("SENDGRID_API_BASE_URL", DEFAULT_SENDGRID_API_BASE_URL)
        print(f"SendGrid: {env['SENDGRID_API_BASE_URL']} (SENDGRID_API_KEY from the environment)")
        return
    settings = merge_settings(local_values, env)
    port = urlsplit(settings.get("SENDGRID_API_BASE_URL", "")).port or STANDIN_DEFAULT_PORT
    standin = SendGridStandIn(
        api_key=settings.get("SENDGRID_API_KEY") or DEFAULT_API_KEY,
        outbox=DATA_DIR / "outbox",
        port=port,
    ).start()
    stack.callback(standin.stop)
    env["SENDGRID_API_BASE_URL"] = standin.base_url
    env["SENDGRID_API_KEY"] = standin.api_key
    print(f"SendGrid stand-in on {standin.base_url}, mails written to {DATA_DIR / 'outbox'}/")


def _choose_acs(
    stack: contextlib.ExitStack,
    local_values: dict[str, str],
    env: dict[str, str],
    tls: LocalTls | None = None,
) -> None:
    """Start the ACS Email stand-in while MAIL_PROVIDERS lists acs, unless the environment
    gives ACS_EMAIL_ENDPOINT or ACS_EMAIL_CONNECTION_STRING (then: that resource). With `tls`
    (identity mode), over HTTPS with bearer tokens, reached as ACS_EMAIL_ENDPOINT."""
    settings = merge_settings(local_values, env)
    providers = {p.strip().lower() for p in settings.get("MAIL_PROVIDERS", "").split(",")}
    if "acs" not in providers:
        return
    if os.environ.get("ACS_EMAIL_ENDPOINT") or os.environ.get("ACS_EMAIL_CONNECTION_STRING"):
        print("ACS: the resource of ACS_EMAIL_ENDPOINT or ACS_EMAIL_CONNECTION_STRING")
        return
    standin = AcsEmailStandIn(
        outbox=DATA_DIR / "acs-outbox", port=ACS_STANDIN_DEFAULT_PORT, tls=tls
    )
    standin.start()
    stack.callback(standin.stop)
    if tls is not None:
        # As infra/ deploys it: the endpoint and the app's managed identity (the storage one,
        # its tokens from the identity endpoint; SSL_CERT_FILE trusts the local CA), no key.
        env["ACS_EMAIL_ENDPOINT"] = standin.base_url
        env["ACS_EMAIL_CONNECTION_STRING"] = ""
    else:
        env["ACS_EMAIL_CONNECTION_STRING"] = standin.connection_string
        env["ACS_EMAIL_ENDPOINT"] = ""
    # The stand-in sends from any domain; by default from those the gateway allows.
    if not settings.get("ACS_EMAIL_SENDERS"):
        env["ACS_EMAIL_SENDERS"] = settings.get("ALLOWED_SENDERS", "")
    signed_in = " (managed-identity tokens only)" if tls is not None else ""
    print(
        f"ACS Email stand-in on {standin.base_url}{signed_in}, mails written to "
        f"{DATA_DIR / 'acs-outbox'}/"
    )


def _run_host(env: dict[str, str], options: list[str]) -> int:
    host = subprocess.Popen(
        [sys.executable, "-m", "devstack.host", "--port", str(DEFAULT_PORT), *options], env=env
    )
    try:
        return host.wait()
    except KeyboardInterrupt:
        # The terminal sent SIGINT to the host as well; give it time to finish its invocations.
        host.send_signal(signal.SIGINT)
        try:
            host.wait(timeout=15)
        except subprocess.TimeoutExpired:
            host.kill()
        return 0


if __name__ == "__main__":
    sys.exit(main())
