"""`make run` (devstack/__main__.py): when it starts Azurite for the settings it is given, and
what its identity mode (`LOCAL_STORAGE_AUTH=identity`) gives the host and the operator."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import devstack.__main__ as devstack_main
from devstack.__main__ import _uses_development_storage
from devstack.azurite import Azurite
from devstack.local_tls import LocalTls
from shared.acs_client import email_client_from_settings
from shared.clients import ClientStore
from shared.settings import Settings

OPERATION_ID = "0190c0de-899f-7cce-acb5-3ec493af3801"
AZURE = "DefaultEndpointsProtocol=https;AccountName=stexample;EndpointSuffix=core.windows.net"


@pytest.mark.parametrize(
    ("settings", "starts"),
    [
        ({"AzureWebJobsStorage": "UseDevelopmentStorage=true"}, True),
        ({"AzureWebJobsStorage": AZURE}, False),
        ({"AzureWebJobsStorage": AZURE, "MAILGATE_STORAGE": "UseDevelopmentStorage=true"}, True),
        (
            {
                "AzureWebJobsStorage": AZURE,
                "AzureWebJobsMAILGATE_STORAGE": "usedevelopmentstorage=true",
            },
            True,
        ),
        ({"AzureWebJobsStorage": AZURE, "MAILGATE_STORAGE__accountName": "stdata"}, False),
    ],
)
def test_should_start_azurite_when_the_host_storage_or_the_data_uses_it(
    settings: dict[str, str], starts: bool
) -> None:
    assert _uses_development_storage(settings) is starts


def test_should_name_the_settings_an_old_local_settings_copy_lacks(tmp_path: Path) -> None:
    example = {"Values": {"AzureWebJobsStorage": "x", "RETENTION_SCHEDULE": "0 0 * * * *"}}
    (tmp_path / "local.settings.example.json").write_text(json.dumps(example))
    old_copy = {"Values": {"AzureWebJobsStorage": "x"}}
    (tmp_path / "local.settings.json").write_text(json.dumps(old_copy))

    # The retention timer would not start without it: `make run` says so, and how to fix it.
    assert devstack_main.missing_local_settings(tmp_path, old_copy["Values"], {}) == [
        "RETENTION_SCHEDULE"
    ]
    # Given by the environment instead, or no local.settings.json at all: nothing to say.
    given = {"RETENTION_SCHEDULE": "0 0 * * * *"}
    assert devstack_main.missing_local_settings(tmp_path, old_copy["Values"], given) == []
    (tmp_path / "local.settings.json").unlink()
    assert devstack_main.missing_local_settings(tmp_path, {}, {}) == []


def test_should_ship_a_local_settings_example_that_lacks_nothing_of_its_own() -> None:
    # make run's copy of the example: the check above finds nothing in a fresh checkout.
    root = Path(devstack_main.__file__).resolve().parent.parent
    example = json.loads((root / "local.settings.example.json").read_text())["Values"]
    assert devstack_main.missing_local_settings(root, example, {}) == []


@pytest.fixture
def in_a_fresh_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`make run` in an empty folder (its .devstack there), Azurite on free ports, and this
    process's environment given back afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(devstack_main, "IDENTITY_ENDPOINT_PORT", 0)

    @contextlib.contextmanager
    def azurite_on_free_ports(tls: LocalTls | None = None) -> Iterator[Azurite]:
        with Azurite(tls=tls, oauth=tls is not None) as running:
            yield running

    monkeypatch.setattr(devstack_main, "_azurite", azurite_on_free_ports)
    # Identity mode sets these in this process (it makes the dev client): undone after the test.
    for name in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "SSL_CERT_FILE"):
        monkeypatch.setenv(name, "")
    return tmp_path


def test_should_start_identity_mode_with_identity_settings_only_and_an_operator_file(
    in_a_fresh_folder: Path,
) -> None:
    local = {
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        "ALLOWED_SENDERS": "@example.com",
        "SENDGRID_API_KEY": "SG.x",
    }
    shell = {"MAILGATE_STORAGE": "UseDevelopmentStorage=true", "PATH": os.environ["PATH"]}

    with contextlib.ExitStack() as stack:
        values, env = devstack_main._identity_mode(stack, dict(local), dict(shell))
        settings = Settings.from_env(env)
        # What main() does next: the dev client, from this process, with the identity.
        key = devstack_main.dev_client_key(
            ClientStore.from_settings(settings), settings.allowed_senders
        )
        sourced = subprocess.run(
            ["sh", "-c", ". .devstack/identity.env && env"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()

    assert "AzureWebJobsStorage" not in values
    assert not {"AzureWebJobsStorage", "MAILGATE_STORAGE"} & set(env)
    assert not any("accountkey" in value.lower() for value in env.values())
    assert settings.storage.credential == "managedidentity"
    assert settings.storage.queue_service_uri is not None
    assert settings.storage.queue_service_uri.startswith("https://127.0.0.1:")
    assert env["SSL_CERT_FILE"] == str(in_a_fresh_folder / ".devstack" / "tls" / "ca-bundle.pem")
    assert key.startswith("mg_dev_")
    assert f"IDENTITY_HEADER={env['IDENTITY_HEADER']}" in sourced
    assert f"MAILGATE_STORAGE__queueServiceUri={settings.storage.queue_service_uri}" in sourced


def test_should_keep_the_identity_header_across_starts(in_a_fresh_folder: Path) -> None:
    headers = []
    for _ in range(2):
        with contextlib.ExitStack() as stack:
            _, env = devstack_main._identity_mode(stack, {}, {})
            headers.append(env["IDENTITY_HEADER"])

    assert headers[0] == headers[1]
    assert stat.S_IMODE((in_a_fresh_folder / ".devstack" / "identity-header").stat().st_mode) == (
        0o600
    )


def test_should_refuse_an_unknown_storage_auth_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOCAL_STORAGE_AUTH", "sas")
    monkeypatch.setattr(devstack_main, "read_local_settings", lambda *_: {})
    sigterm = signal.getsignal(signal.SIGTERM)  # main() makes SIGTERM stop the stack

    try:
        assert devstack_main.main() == 2
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    assert "LOCAL_STORAGE_AUTH must be 'key' or 'identity'" in capsys.readouterr().err


def test_should_run_identity_mode_with_acs_reached_by_the_managed_identity_over_https(
    in_a_fresh_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("SENDGRID_API_KEY", "ACS_EMAIL_ENDPOINT", "ACS_EMAIL_CONNECTION_STRING"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LOCAL_STORAGE_AUTH", "identity")
    monkeypatch.setenv("MAIL_PROVIDERS", "acs")
    monkeypatch.setenv("ALLOWED_SENDERS", "@example.com")
    monkeypatch.setattr(devstack_main, "read_local_settings", lambda *_: {})
    monkeypatch.setattr(devstack_main, "STANDIN_DEFAULT_PORT", 0)
    monkeypatch.setattr(devstack_main, "ACS_STANDIN_DEFAULT_PORT", 0)
    seen: dict[str, str] = {}

    def the_app_sends_one_mail(env: dict[str, str], options: list[str]) -> int:
        # What the host's acs provider does with these settings, while the stack runs; its
        # process has this one's identity variables and CA bundle (identity mode sets them).
        seen.update(env)
        client = email_client_from_settings(Settings.from_env(env))
        client.begin_send(
            {
                "senderAddress": "app@example.com",
                "content": {"subject": "Hi", "plainText": "text"},
                "recipients": {"to": [{"address": "ann@example.net"}]},
            },
            operation_id=OPERATION_ID,
            polling=False,
        ).result()
        return 0

    monkeypatch.setattr(devstack_main, "_run_host", the_app_sends_one_mail)
    sigterm = signal.getsignal(signal.SIGTERM)  # main() makes SIGTERM stop the stack
    try:
        assert devstack_main.main() == 0
    finally:
        signal.signal(signal.SIGTERM, sigterm)

    assert seen["ACS_EMAIL_ENDPOINT"].startswith("https://127.0.0.1:")
    assert seen["ACS_EMAIL_CONNECTION_STRING"] == ""
    assert seen["SSL_CERT_FILE"] == str(in_a_fresh_folder / ".devstack" / "tls" / "ca-bundle.pem")
    sent = json.loads(
        (in_a_fresh_folder / ".devstack" / "acs-outbox" / f"{OPERATION_ID}.json").read_text()
    )
    assert sent["payload"]["content"]["subject"] == "Hi"
