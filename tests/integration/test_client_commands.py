"""The operator's client commands and `make run`'s development client, against Azurite."""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from admin.__main__ import main
from devstack.__main__ import dev_client_key
from devstack.azurite import Azurite
from shared.clients import ClientStore
from shared.errors import Unauthorized
from shared.settings import Settings
from tests.infra.venvs import ROOT
from tests.samples import BASE_ENV


@pytest.fixture
def environment(
    azurite: Azurite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """Settings for the commands, in the environment, with a client table no other test uses."""
    values = {
        **BASE_ENV,
        "AzureWebJobsStorage": azurite.connection_string,
        "CLIENT_TABLE_NAME": f"clients{uuid.uuid4().hex[:16]}",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    # No local.settings.json here: the environment alone.
    monkeypatch.chdir(tmp_path)
    return values


@pytest.fixture
def store(environment: dict[str, str]) -> ClientStore:
    return ClientStore.from_settings(Settings.from_env(environment))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err


def test_should_create_a_client_and_print_its_key_on_the_last_line(
    store: ClientStore, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "client", "create", "billing", "--senders", "@example.com", "--json")

    assert code == 0
    key = out[-1]
    assert store.authenticate(f"Bearer {key}").name == "billing"
    described = json.loads("\n".join(out[:-2]))
    assert described["senders"] == ["@example.com"]
    assert described["rate_per_minute"] == 600


def test_should_print_a_new_client_as_a_table_with_its_key_still_last(
    store: ClientStore, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "100")

    code, out, _ = run(capsys, "client", "create", "billing", "--senders", "@example.com")

    assert code == 0
    assert out[0].split() == ["NAME", "ENABLED", "RATE/MIN", "FEATURES", "AGE", "SENDERS"]
    name, enabled, rate, features, age, senders = out[1].split()
    assert (name, enabled, rate, features, senders) == (
        "billing",
        "yes",
        "600",
        "-",
        "@example.com",
    )
    assert re.fullmatch(r"\d+s", age)
    assert out[2].startswith("Key of client 'billing', shown only now")
    assert store.authenticate(f"Bearer {out[-1]}").name == "billing"
    assert len(out) == 4


def test_should_list_disable_enable_and_rotate(
    store: ClientStore, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = run(
        capsys, "client", "create", "billing", "--senders", "a@example.com", "--rate", "7"
    )
    key = out[-1]

    _, listed, _ = run(capsys, "client", "list", "--json")
    assert json.loads("\n".join(listed))["clients"][0]["rate_per_minute"] == 7
    assert key not in "\n".join(listed)
    _, table, _ = run(capsys, "client", "list")
    assert table[1].split()[:3] == ["billing", "yes", "7"]
    assert key not in "\n".join(table)

    code, disabled, _ = run(capsys, "client", "disable", "billing")
    assert code == 0
    assert disabled[1].split()[:2] == ["billing", "no"]
    with pytest.raises(Unauthorized, match="disabled"):
        store.authenticate(f"Bearer {key}")
    assert run(capsys, "client", "enable", "billing")[0] == 0
    assert store.authenticate(f"Bearer {key}").enabled

    code, rotated, _ = run(capsys, "client", "rotate", "billing")
    assert code == 0
    assert store.authenticate(f"Bearer {rotated[-1]}").name == "billing"
    with pytest.raises(Unauthorized):
        store.authenticate(f"Bearer {key}")


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["client", "create", "Bad Name", "--senders", "@example.com"], "client name"),
        (["client", "create", "ok", "--senders", "nobody"], "SENDERS entry 1 is neither"),
        (["client", "disable", "ghost"], "no client named 'ghost'"),
    ],
)
def test_should_refuse_a_bad_command_naming_what_is_wrong(
    store: ClientStore, capsys: pytest.CaptureFixture[str], argv: list[str], complaint: str
) -> None:
    code, out, err = run(capsys, *argv)

    assert code == 1
    assert out == []
    assert complaint in err
    assert store.all() == []


def test_should_refuse_a_name_that_is_taken(
    store: ClientStore, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "client", "create", "billing", "--senders", "@example.com")

    code, _, err = run(capsys, "client", "create", "billing", "--senders", "@example.com")

    assert code == 1
    assert "exists already" in err


def test_should_print_the_key_last_through_make(environment: dict[str, str]) -> None:
    result = subprocess.run(
        [
            "make",
            "-s",
            "-C",
            str(ROOT),
            "client",
            "NAME=made",
            "SENDERS=@example.com",
            "RATE=9",
            "FEATURES=tracking_settings",
        ],
        env={**os.environ, **environment},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )

    key = result.stdout.splitlines()[-1]
    store = ClientStore.from_settings(Settings.from_env(environment))
    made = store.authenticate(f"Bearer {key}")
    assert (made.rate_per_minute, made.features) == (9, frozenset({"tracking_settings"}))


def test_should_grant_show_and_take_away_features(
    store: ClientStore, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(
        capsys,
        "client",
        "create",
        "billing",
        "--senders",
        "@example.com",
        "--features",
        "mail_settings.sandbox_mode,headers.message-id",
        "--json",
    )
    assert code == 0
    assert json.loads("\n".join(out[:-2]))["features"] == [
        "headers.message-id",
        "mail_settings.sandbox_mode",
    ]

    code, out, _ = run(capsys, "client", "features", "billing", "asm", "--format", "json")
    assert (code, json.loads("\n".join(out))["features"]) == (0, ["asm"])
    _, listed, _ = run(capsys, "client", "list", "--json")
    assert json.loads("\n".join(listed))["clients"][0]["features"] == ["asm"]

    assert run(capsys, "client", "features", "billing", "none")[0] == 0
    client = store.get("billing")
    assert client is not None
    assert client.features == frozenset()


@pytest.mark.parametrize(
    "argv",
    [
        ["client", "create", "billing", "--senders", "@example.com", "--features", "bypass"],
        ["client", "features", "ghost", "bypass"],
    ],
)
def test_should_refuse_an_unknown_feature_naming_it(
    store: ClientStore, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, out, err = run(capsys, *argv)

    assert code == 1
    assert out == []
    assert "'bypass' is not a feature" in err
    assert "mail_settings.bypass_list_management" in err
    assert store.all() == []


def test_should_set_features_through_make(environment: dict[str, str]) -> None:
    store = ClientStore.from_settings(Settings.from_env(environment))
    store.ensure_exists()
    store.create("made", "@example.com")

    subprocess.run(
        ["make", "-s", "-C", str(ROOT), "client-features", "NAME=made", "FEATURES=asm,batch_id"],
        env={**os.environ, **environment},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )

    client = store.get("made")
    assert client is not None
    assert client.features == {"asm", "batch_id"}


def test_should_make_the_development_client_once_and_keep_its_key(
    store: ClientStore, tmp_path: Path
) -> None:
    key_file = tmp_path / ".devstack" / "dev-client-key"

    first = dev_client_key(store, ("@example.com",), key_file)
    again = dev_client_key(store, ("@example.com",), key_file)

    assert first == again == key_file.read_text().strip()
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert store.authenticate(f"Bearer {first}").senders == ("@example.com",)

    store.rotate("dev")  # by hand: the saved key stops working, and a new one is made
    fresh = dev_client_key(store, ("@example.com",), key_file)
    assert fresh != first
    assert store.authenticate(f"Bearer {fresh}").name == "dev"


def make_clients(environment: dict[str, str], *variables: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "-s", "-C", str(ROOT), "clients", *variables],
        env={**os.environ, **environment, "COLUMNS": "100"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_should_list_clients_through_make_as_a_table_or_with_format_json_as_json(
    store: ClientStore, environment: dict[str, str]
) -> None:
    store.ensure_exists()
    store.create("made", "@example.com", 9)

    table = make_clients(environment)
    document = make_clients(environment, "FORMAT=json")
    wrong = make_clients(environment, "FORMAT=xml")

    assert table.returncode == 0, table.stderr
    row = table.stdout.splitlines()[1].split()
    assert row[:4] + row[5:] == ["made", "yes", "9", "-", "@example.com"]
    assert re.fullmatch(r"\d+[sm]", row[4])
    assert document.returncode == 0, document.stderr
    [made] = json.loads(document.stdout)["clients"]
    assert (made["name"], made["rate_per_minute"]) == ("made", 9)
    assert wrong.returncode != 0
    assert "argument --format: invalid choice: 'xml'" in wrong.stderr
