"""`make run`: Azurite, the SendGrid stand-in and the local host; Ctrl-C stops all three."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from devstack.azurite import Azurite, AzuriteError
from devstack.host import DEFAULT_PORT, local_setting_values, merge_settings, read_local_settings
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


def main() -> int:
    """Start the stack in the foreground and stop it on Ctrl-C; non-zero if it cannot start."""
    # A SIGTERM (from a supervisor or `timeout`) stops the stack as Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    app_dir = Path.cwd()
    local_values = local_setting_values(read_local_settings(app_dir))
    env = dict(os.environ)
    with contextlib.ExitStack() as stack:
        try:
            if _uses_development_storage(merge_settings(local_values, env)):
                stack.enter_context(_azurite())
            _choose_sendgrid(stack, local_values, env)
            settings = Settings.from_env(merge_settings(local_values, env))
            _announce_dev_client(settings)
        except (AzuriteError, MailgateError, OSError) as error:
            print(f"mailgate: cannot start: {error}", file=sys.stderr)
            return 2
        return _run_host(env)


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
def _azurite() -> Iterator[Azurite]:
    # UseDevelopmentStorage=true means the default ports; data persists across runs.
    azurite = Azurite(
        in_memory=False,
        location=DATA_DIR / "azurite",
        blob_port=10000,
        queue_port=10001,
        table_port=10002,
    ).start()
    print(f"Azurite (local storage) on 127.0.0.1:10000-10002, data in {DATA_DIR / 'azurite'}")
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


def _run_host(env: dict[str, str]) -> int:
    host = subprocess.Popen(
        [sys.executable, "-m", "devstack.host", "--port", str(DEFAULT_PORT)], env=env
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
