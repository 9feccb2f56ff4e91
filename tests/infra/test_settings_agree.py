"""One list of settings: what the code reads, what infra/ sets on the Function App, the keys of
local.settings.example.json and the rows of the settings table in docs/settings.md agree, but
for the few settings below that belong to some of those places only."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from shared.errors import ConfigurationError
from shared.settings import Settings, data_connection
from tests.infra.conftest import INFRA, parse_bicep
from tests.infra.test_audit_and_access import flat
from tests.infra.venvs import ROOT

CODE, INFRA_APP, LOCAL, DOCS = "code", "infra", "local.settings.example.json", "docs/settings.md"
EVERYWHERE = frozenset({CODE, INFRA_APP, LOCAL, DOCS})
# Settings that belong in some places only, and why. Any other setting belongs everywhere.
PLACES: dict[str, frozenset[str]] = {
    # A connection string locally (Azurite); in Azure the identity-based settings below.
    "AzureWebJobsStorage": frozenset({CODE, LOCAL, DOCS}),
    "AzureWebJobsStorage__accountName": frozenset({CODE, INFRA_APP, DOCS}),
    "AzureWebJobsStorage__credential": frozenset({CODE, INFRA_APP, DOCS}),
    "AzureWebJobsStorage__clientId": frozenset({CODE, INFRA_APP, DOCS}),
    # Alternatives to __accountName that the code honours; infra/ uses __accountName.
    "AzureWebJobsStorage__queueServiceUri": frozenset({CODE, DOCS}),
    "AzureWebJobsStorage__tableServiceUri": frozenset({CODE, DOCS}),
    "AzureWebJobsStorage__blobServiceUri": frozenset({CODE, DOCS}),
    "AzureWebJobsStorage__serviceUri": frozenset({CODE, DOCS}),
    # The gateway's data: unset locally (it defaults to AzureWebJobsStorage there), the
    # identity-based form in infra/ (today the host's own account).
    "MAILGATE_STORAGE": frozenset({CODE, DOCS}),
    "MAILGATE_STORAGE__accountName": frozenset({CODE, INFRA_APP, DOCS}),
    "MAILGATE_STORAGE__credential": frozenset({CODE, INFRA_APP, DOCS}),
    "MAILGATE_STORAGE__clientId": frozenset({CODE, INFRA_APP, DOCS}),
    "MAILGATE_STORAGE__queueServiceUri": frozenset({CODE, DOCS}),
    "MAILGATE_STORAGE__tableServiceUri": frozenset({CODE, DOCS}),
    "MAILGATE_STORAGE__blobServiceUri": frozenset({CODE, DOCS}),
    "MAILGATE_STORAGE__serviceUri": frozenset({CODE, DOCS}),
    # Where the host looks for connection MAILGATE_STORAGE first; the code looks there too, so
    # that it never disagrees with the queue trigger, but nobody should set it.
    "AzureWebJobsMAILGATE_STORAGE": frozenset({CODE}),
    # Telemetry with the app's identity: read by the Functions host and by the exporter the
    # Python worker sets up (not through Settings); unset locally, so nothing is exported.
    "APPLICATIONINSIGHTS_CONNECTION_STRING": frozenset({INFRA_APP, DOCS}),
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": frozenset({INFRA_APP, DOCS}),
    # Read by the Python worker (and the local host), not by the gateway's code.
    "PYTHON_THREADPOOL_THREAD_COUNT": frozenset({INFRA_APP, LOCAL, DOCS}),
    # Read by glibc when the worker process starts (so not from local.settings.json, which the
    # local host reads after it started); bench/stack.py sets it for the bench's hosts.
    "MALLOC_MMAP_THRESHOLD_": frozenset({INFRA_APP, DOCS}),
    "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY": frozenset({INFRA_APP, LOCAL, DOCS}),
    # Core Tools needs it locally; Flex Consumption takes the runtime from functionAppConfig
    # and refuses it as an app setting.
    "FUNCTIONS_WORKER_RUNTIME": frozenset({LOCAL}),
    # Set by App Service while its authentication runs (read-only there); the gateway reads it to
    # know whether the sign-in headers can be trusted (shared/operator_sign_in.py).
    "WEBSITE_AUTH_ENABLED": frozenset({CODE, DOCS}),
    # The host's override of host.json; optional, read only to word a host-moved dead letter.
    "AzureFunctionsJobHost__extensions__queues__maxDequeueCount": frozenset({CODE, DOCS}),
    # The local host's admin key (devstack); Azure manages host keys itself.
    "LOCAL_ADMIN_KEY": frozenset({LOCAL, DOCS}),
    # Optional, for tests that kill the local host; it defaults to the real host's 10 minutes.
    "LOCAL_QUEUE_HOLD_SECONDS": frozenset({DOCS}),
    # Read by the host, which resolves the retention timer's `%RETENTION_SCHEDULE%` schedule.
    "RETENTION_SCHEDULE": frozenset({INFRA_APP, LOCAL, DOCS}),
    # Optional, one per timer function: the local host's replacement for its schedule, so that
    # tests and `make run` need not wait five minutes.
    "LOCAL_TIMER_SCHEDULE_<function>": frozenset({DOCS}),
    # The acs provider's access key, for the local stand-in: in Azure the app's identity signs
    # in (ACS_EMAIL_ENDPOINT), and no key exists to keep.
    "ACS_EMAIL_CONNECTION_STRING": frozenset({CODE, LOCAL, DOCS}),
}
# What App Service puts in place of the Key Vault reference once it resolves it.
RESOLVED_SECRET = "SG.resolved-from-key-vault"
# Values for the required main.bicep parameters that have no default.
REQUIRED_PARAMETERS = {"allowedSenders": "noreply@example.com,@example.org"}


class RecordingEnviron(Mapping[str, str]):
    """App settings that remember every name looked up in them."""

    def __init__(self, values: dict[str, str]) -> None:
        self._values = values
        self.looked_up: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.looked_up.add(name)
        return self._values[name]

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str):
            self.looked_up.add(name)
        return name in self._values

    def get(self, name: str, default: Any = None) -> Any:
        self.looked_up.add(name)
        return self._values.get(name, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def code_settings() -> set[str]:
    """Every name `Settings.from_env` looks up, over the ways storage can be given."""
    common = {"ALLOWED_SENDERS": "@example.com", "SENDGRID_API_KEY": "SG.key"}
    names: set[str] = set()
    for prefix in ("AzureWebJobsStorage", "MAILGATE_STORAGE"):
        identity = {
            f"{prefix}__credential": "managedidentity",
            f"{prefix}__clientId": "00000000-0000-0000-0000-000000000000",
        }
        for storage, valid in [
            ({prefix: "UseDevelopmentStorage=true"}, True),
            ({f"{prefix}__accountName": "stexample", **identity}, True),
            # No account: the code looks up every alternative before it gives up.
            (identity, False),
        ]:
            environ = RecordingEnviron({**common, **storage})
            if valid:
                Settings.from_env(environ)
            else:
                with pytest.raises(ConfigurationError):
                    Settings.from_env(environ)
            names |= environ.looked_up
    return names


def infra_app_settings() -> dict[str, Any]:
    """The app settings infra/app/api.bicep sets, as pycep parses them."""
    variables = parse_bicep(INFRA / "app" / "api.bicep")["variables"]
    settings: dict[str, Any] = variables["appSettings"]["value"]
    return settings


def local_example_settings() -> set[str]:
    document = json.loads((ROOT / "local.settings.example.json").read_text(encoding="utf-8"))
    return set(document["Values"])


def documented_settings() -> set[str]:
    """The names in the first column of the settings table in docs/settings.md."""
    text = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    names: set[str] = set()
    for row in re.findall(r"^\| (`[^|]*) \|", text, re.MULTILINE):
        cell = re.findall(r"`([^`]+)`", row)
        base = cell[0].split("__")[0]
        # `AzureWebJobsStorage__accountName` / `__queueServiceUri`: the second shares the prefix.
        names |= {f"{base}{name}" if name.startswith("__") else name for name in cell}
    assert names, "docs/settings.md has no settings table"
    return names


def test_should_list_the_same_settings_in_code_infra_local_example_and_docs() -> None:
    found = {
        CODE: code_settings(),
        INFRA_APP: set(infra_app_settings()),
        LOCAL: local_example_settings(),
        DOCS: documented_settings(),
    }
    everything = set().union(*found.values(), PLACES)
    problems = []
    for place, names in found.items():
        expected = {n for n in everything if place in PLACES.get(n, EVERYWHERE)}
        if missing := sorted(expected - names):
            problems.append(f"{place} lacks {missing}")
        if extra := sorted(names - expected):
            problems.append(f"{place} has {extra}, which belong(s) elsewhere (see PLACES)")
    assert problems == [], "settings disagree:\n" + "\n".join(problems)


# Enough for Settings to read MAIL_PROVIDERS, whatever it lists.
VALID_ELSE = {
    "AzureWebJobsStorage": "UseDevelopmentStorage=true",
    "ALLOWED_SENDERS": "@example.com",
    "SENDGRID_API_KEY": "SG.key",
    "SMTP_HOST": "smtp.example.com",
    "ACS_EMAIL_ENDPOINT": "https://acs.example.communication.azure.com",
    "ACS_EMAIL_SENDERS": "@example.com",
}


# api.bicep's variables that say whether MAIL_PROVIDERS lists a provider.
USES = {"usesSendGrid": "sendgrid", "usesSmtp": "smtp"}


def resolved_infra_settings(**parameters_given: Any) -> dict[str, str]:
    """infra's app settings with main.bicep's defaults (or the parameters given), as the
    deployed app would see them."""
    parameters = parse_bicep(INFRA / "main.bicep")["parameters"]
    # api.bicep's own defaults first, for its parameters main.bicep does not pass.
    module = parse_bicep(INFRA / "app" / "api.bicep")["parameters"]
    values = {name: p.get("default") for name, p in module.items() if "default" in p}
    values.update({name: p.get("default") for name, p in parameters.items()})
    values.update(REQUIRED_PARAMETERS)
    values.update(parameters_given)
    samples = {
        "storageAccountName": "stexample",
        "dataStorageAccountName": "stdata",
        "identityClientId": "00000000-0000-0000-0000-000000000000",
    }

    def resolve(value: Any) -> str:
        if isinstance(value, dict) and "operator" in value:
            # `usesSmtp ? reference : ''`: api.bicep's variables, read here as the code reads it.
            operator = value["operator"]
            assert operator["type"] == "conditional", value
            provider = USES[operator["operands"]["condition"]]
            uses = (
                provider
                in Settings.from_env(
                    {"MAIL_PROVIDERS": str(values["mailProviders"]), **VALID_ELSE}
                ).mail_providers
            )
            return resolve(operator["operands"]["true_value" if uses else "false_value"])
        if isinstance(value, dict):
            [argument] = value["function"]["parameters"].values()
            assert value["function"]["type"] == "string", value
            return resolve(argument)
        if value in samples:
            return samples[value]
        if value in values:
            return str(values[value])
        return str(value)

    return {name: resolve(value) for name, value in infra_app_settings().items()}


def test_should_deploy_settings_the_code_accepts() -> None:
    settings = resolved_infra_settings()
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert settings["SENDGRID_API_KEY"].startswith("@Microsoft.KeyVault(SecretUri=")
    # Unresolved, the reference is refused by name; resolved, the settings are valid.
    with pytest.raises(ConfigurationError, match="SENDGRID_API_KEY"):
        Settings.from_env(settings)
    valid = Settings.from_env({**settings, "SENDGRID_API_KEY": RESOLVED_SECRET})
    assert valid.storage.credential == "managedidentity"
    # The data and the queue trigger in the data account, which api.bicep takes on its own.
    assert valid.storage.queue_service_uri == "https://stdata.queue.core.windows.net"
    assert data_connection(settings) == "MAILGATE_STORAGE"


def test_should_deploy_no_smtp_password_reference_without_the_smtp_provider() -> None:
    settings = resolved_infra_settings()

    assert settings["MAIL_PROVIDERS"] == "sendgrid"
    assert settings["SMTP_PASSWORD"] == ""
    assert settings["SMTP_PORT"] == "587"
    assert settings["FAILOVER_ON_AMBIGUOUS"].lower() == "false"


def test_should_deploy_no_sendgrid_key_reference_without_sendgrid() -> None:
    settings = resolved_infra_settings(
        mailProviders="smtp", smtpHost="smtp.example.com", smtpUsername="apikey"
    )

    assert settings["SENDGRID_API_KEY"] == ""
    # So an smtp-only deployment needs no SendGrid secret: it starts with its own secret alone.
    valid = Settings.from_env({**settings, "SMTP_PASSWORD": "resolved"})
    assert valid.mail_providers == ("smtp",)


def test_should_deploy_the_smtp_password_as_a_key_vault_reference_with_the_smtp_provider() -> None:
    settings = resolved_infra_settings(
        mailProviders="sendgrid, smtp", smtpHost="smtp.example.com", smtpUsername="apikey"
    )

    assert settings["SMTP_PASSWORD"].startswith("@Microsoft.KeyVault(SecretUri=")
    # Unresolved, it is refused by name, as SENDGRID_API_KEY is; resolved, the settings are valid.
    with pytest.raises(ConfigurationError, match="SMTP_PASSWORD"):
        Settings.from_env({**settings, "SENDGRID_API_KEY": RESOLVED_SECRET})
    valid = Settings.from_env(
        {**settings, "SENDGRID_API_KEY": RESOLVED_SECRET, "SMTP_PASSWORD": "resolved"}
    )
    assert valid.mail_providers == ("sendgrid", "smtp")
    assert (valid.smtp_host, valid.smtp_port) == ("smtp.example.com", 587)


def test_should_point_the_acs_provider_at_the_resource_infra_creates_and_its_sender() -> None:
    main = parse_bicep(INFRA / "main.bicep")
    given = main["modules"]["api"]["config"]["params"]
    outputs = parse_bicep(INFRA / "app" / "acs.bicep")["outputs"]
    # What main.bicep gives api.bicep with acs listed, and the two outputs it takes them from.
    assert flat(given["acsEmailEndpoint"]) == "conditional(usesAcs, acs.outputs.endpoint, )"
    assert flat(given["acsEmailSenders"]) == (
        "conditional(usesAcs, conditional(empty(acsEmailSenders), "
        "DoNotReply@${acs.outputs.senderDomain}, acsEmailSenders), )"
    )
    assert outputs["endpoint"]["value"] == "https://${communication.properties.hostName}"
    assert flat(outputs["senderDomain"]["value"]) == "managedDomain.properties.mailFromSenderDomain"
    # Those values, as Azure fills them in (hostName and mailFromSenderDomain as in the REST
    # spec's examples), are settings the code accepts.
    settings = resolved_infra_settings(mailProviders="sendgrid,acs")
    settings["ACS_EMAIL_ENDPOINT"] = "https://acs-x.unitedstates.communication.azure.com"
    settings["ACS_EMAIL_SENDERS"] = "DoNotReply@0b1c2d3e.azurecomm.net"

    valid = Settings.from_env({**settings, "SENDGRID_API_KEY": RESOLVED_SECRET})

    assert valid.mail_providers == ("sendgrid", "acs")
