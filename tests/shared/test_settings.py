from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from shared.errors import ConfigurationError
from shared.settings import (
    APP_HOST_JSON,
    MAX_DEQUEUE_COUNT_SETTING,
    Settings,
    StorageSettings,
    connection_setting,
    data_connection,
    host_json_max_dequeue_count,
    refuse_unresolved_key_vault_references,
)
from tests.event_webhook_samples import WebhookSigner
from tests.samples import BASE_ENV, SENDGRID_API_KEY, STORAGE_ACCOUNT_KEY, settings_with

IDENTITY_ENV = {k: v for k, v in BASE_ENV.items() if k != "AzureWebJobsStorage"}


def refusal(env: dict[str, str]) -> str:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env(env)
    return str(caught.value)


@pytest.mark.parametrize(
    ("attribute", "default"),
    [
        ("mail_queue_name", "mail-outbound"),
        ("poison_queue_name", "mail-outbound-poison"),
        ("status_table_name", "mailstatus"),
        ("idempotency_retention_hours", 24.0),
        ("activity_retention_days", 7.0),
        ("large_message_retention_margin_days", 8.0),
        ("status_retention_days", 30.0),
        ("sendgrid_api_base_url", "https://api.sendgrid.com"),
        ("sendgrid_connect_timeout_seconds", 5.0),
        ("sendgrid_timeout_seconds", 30.0),
        ("max_request_bytes", 30_000_000),
        ("large_message_container_name", "mail-large"),
        ("max_delivery_attempts", 8),
        ("retry_base_delay_seconds", 30.0),
        ("retry_max_delay_seconds", 3600.0),
    ],
)
def test_should_default_each_optional_setting(attribute: str, default: Any) -> None:
    assert getattr(Settings.from_env(BASE_ENV), attribute) == default


@pytest.mark.parametrize("blank", ["", "   "])
def test_should_treat_a_blank_optional_setting_as_unset(blank: str) -> None:
    settings = settings_with(MAIL_QUEUE_NAME=blank, MAX_DELIVERY_ATTEMPTS=blank)

    assert (settings.mail_queue_name, settings.max_delivery_attempts) == ("mail-outbound", 8)


@pytest.mark.parametrize(
    ("name", "raw", "attribute", "expected"),
    [
        ("MAIL_QUEUE_NAME", "outbound-2", "mail_queue_name", "outbound-2"),
        ("MAIL_QUEUE_NAME", "abc", "mail_queue_name", "abc"),
        ("MAIL_QUEUE_NAME", "a" * 56, "mail_queue_name", "a" * 56),
        ("STATUS_TABLE_NAME", "MailStatus2", "status_table_name", "MailStatus2"),
        ("STATUS_TABLE_NAME", "abc", "status_table_name", "abc"),
        ("STATUS_TABLE_NAME", "t" * 63, "status_table_name", "t" * 63),
        ("IDEMPOTENCY_RETENTION_HOURS", "0.5", "idempotency_retention_hours", 0.5),
        ("IDEMPOTENCY_RETENTION_HOURS", "720", "idempotency_retention_hours", 720.0),
        # A minute, in days: what tests use to see rows expire.
        ("ACTIVITY_RETENTION_DAYS", str(1 / 1440), "activity_retention_days", 1 / 1440),
        ("ACTIVITY_RETENTION_DAYS", "0.5", "activity_retention_days", 0.5),
        ("ACTIVITY_RETENTION_DAYS", "3650", "activity_retention_days", 3650.0),
        ("STATUS_RETENTION_DAYS", "0.5", "status_retention_days", 0.5),
        ("STATUS_RETENTION_DAYS", "3650", "status_retention_days", 3650.0),
        (
            "LARGE_MESSAGE_RETENTION_MARGIN_DAYS",
            str(1 / 86400),
            "large_message_retention_margin_days",
            1 / 86400,
        ),
        (
            "SENDGRID_API_BASE_URL",
            "https://sg.example.com/",
            "sendgrid_api_base_url",
            "https://sg.example.com",
        ),
        (
            "SENDGRID_API_BASE_URL",
            "http://127.0.0.1:7072",
            "sendgrid_api_base_url",
            "http://127.0.0.1:7072",
        ),
        (
            "SENDGRID_API_BASE_URL",
            "http://localhost:7072",
            "sendgrid_api_base_url",
            "http://localhost:7072",
        ),
        (
            "SENDGRID_API_BASE_URL",
            "http://[::1]:7072",
            "sendgrid_api_base_url",
            "http://[::1]:7072",
        ),
        ("SENDGRID_CONNECT_TIMEOUT_SECONDS", "2.5", "sendgrid_connect_timeout_seconds", 2.5),
        ("SENDGRID_TIMEOUT_SECONDS", "200", "sendgrid_timeout_seconds", 200.0),
        ("MAX_REQUEST_BYTES", "1024", "max_request_bytes", 1024),
        ("MAX_REQUEST_BYTES", "30000000", "max_request_bytes", 30_000_000),
        ("LARGE_MESSAGE_CONTAINER_NAME", "bodies-2", "large_message_container_name", "bodies-2"),
        ("LARGE_MESSAGE_CONTAINER_NAME", "abc", "large_message_container_name", "abc"),
        ("LARGE_MESSAGE_CONTAINER_NAME", "c" * 63, "large_message_container_name", "c" * 63),
        ("MAX_DELIVERY_ATTEMPTS", " 3 ", "max_delivery_attempts", 3),
        ("MAX_DELIVERY_ATTEMPTS", "1", "max_delivery_attempts", 1),
        ("RETRY_BASE_DELAY_SECONDS", "5", "retry_base_delay_seconds", 5.0),
        ("RETRY_MAX_DELAY_SECONDS", "604800", "retry_max_delay_seconds", 604_800.0),
    ],
)
def test_should_read_each_setting(name: str, raw: str, attribute: str, expected: Any) -> None:
    # Status records kept long enough for any retry schedule, unless that is the setting read.
    overrides = {"STATUS_RETENTION_DAYS": "3650", name: raw}
    assert getattr(settings_with(**overrides), attribute) == expected


def test_should_take_a_status_retention_of_minutes_with_retries_that_end_sooner() -> None:
    settings = settings_with(
        STATUS_RETENTION_DAYS=str(2 / 1440),
        MAX_DELIVERY_ATTEMPTS="3",
        RETRY_BASE_DELAY_SECONDS="1",
        RETRY_MAX_DELAY_SECONDS="10",
    )

    assert settings.status_retention_days == 2 / 1440


@pytest.mark.parametrize(
    "overrides",
    [
        # 8 attempts an hour apart (the defaults) outlive a third of a day.
        {"STATUS_RETENTION_DAYS": "0.3"},
        # 30 days (the default) against 8 attempts up to 4 days apart, and exactly as long.
        {"RETRY_MAX_DELAY_SECONDS": "345600"},
        {"MAX_DELIVERY_ATTEMPTS": "10", "RETRY_MAX_DELAY_SECONDS": "259200"},
    ],
)
def test_should_refuse_a_status_retention_a_message_on_the_queue_could_outlive(
    overrides: dict[str, str],
) -> None:
    message = refusal({**BASE_ENV, **overrides})

    assert message == (
        "STATUS_RETENTION_DAYS must be longer than a message can wait on the queue, "
        "MAX_DELIVERY_ATTEMPTS x RETRY_MAX_DELAY_SECONDS: raise it, or lower those"
    )


def test_should_name_the_poison_queue_after_the_mail_queue() -> None:
    assert settings_with(MAIL_QUEUE_NAME="mail-eu").poison_queue_name == "mail-eu-poison"


def test_should_read_allowed_senders_trimmed_and_lowercased() -> None:
    settings = settings_with(ALLOWED_SENDERS=" NoReply@Example.COM , ,@Example.org ")

    assert settings.allowed_senders == ("noreply@example.com", "@example.org")


@pytest.mark.parametrize(
    ("overrides", "setting"),
    [
        ({"ALLOWED_SENDERS": ""}, "ALLOWED_SENDERS"),
        ({"ALLOWED_SENDERS": " , ,"}, "ALLOWED_SENDERS"),
        ({"ALLOWED_SENDERS": "noreply"}, "ALLOWED_SENDERS"),
        ({"ALLOWED_SENDERS": "example.com"}, "ALLOWED_SENDERS"),
        ({"ALLOWED_SENDERS": "@localhost"}, "ALLOWED_SENDERS"),
        ({"ALLOWED_SENDERS": "noreply@"}, "ALLOWED_SENDERS"),
        ({"ALLOWED_SENDERS": "no reply@example.com"}, "ALLOWED_SENDERS"),
        ({"SENDGRID_API_KEY": ""}, "SENDGRID_API_KEY"),
        ({"SENDGRID_API_KEY": "   "}, "SENDGRID_API_KEY"),
        ({"MAIL_QUEUE_NAME": "Mail-Outbound"}, "MAIL_QUEUE_NAME"),
        ({"MAIL_QUEUE_NAME": "ab"}, "MAIL_QUEUE_NAME"),
        ({"MAIL_QUEUE_NAME": "a" * 57}, "MAIL_QUEUE_NAME"),
        ({"MAIL_QUEUE_NAME": "a" * 63}, "MAIL_QUEUE_NAME"),
        ({"MAIL_QUEUE_NAME": "mail--outbound"}, "MAIL_QUEUE_NAME"),
        ({"MAIL_QUEUE_NAME": "-mail"}, "MAIL_QUEUE_NAME"),
        ({"MAIL_QUEUE_NAME": "mail-"}, "MAIL_QUEUE_NAME"),
        ({"MAIL_QUEUE_NAME": "mail_outbound"}, "MAIL_QUEUE_NAME"),
        ({"MAIL_QUEUE_NAME": "mail-outbound-poison"}, "MAIL_QUEUE_NAME"),
        ({"STATUS_TABLE_NAME": "ab"}, "STATUS_TABLE_NAME"),
        ({"STATUS_TABLE_NAME": "mail-status"}, "STATUS_TABLE_NAME"),
        ({"STATUS_TABLE_NAME": "mail_status"}, "STATUS_TABLE_NAME"),
        ({"STATUS_TABLE_NAME": "1status"}, "STATUS_TABLE_NAME"),
        ({"STATUS_TABLE_NAME": "t" * 64}, "STATUS_TABLE_NAME"),
        ({"IDEMPOTENCY_RETENTION_HOURS": "0"}, "IDEMPOTENCY_RETENTION_HOURS"),
        ({"LARGE_MESSAGE_RETENTION_MARGIN_DAYS": "0"}, "LARGE_MESSAGE_RETENTION_MARGIN_DAYS"),
        ({"IDEMPOTENCY_RETENTION_HOURS": "721"}, "IDEMPOTENCY_RETENTION_HOURS"),
        ({"IDEMPOTENCY_RETENTION_HOURS": "a day"}, "IDEMPOTENCY_RETENTION_HOURS"),
        ({"IDEMPOTENCY_RETENTION_HOURS": "nan"}, "IDEMPOTENCY_RETENTION_HOURS"),
        ({"ACTIVITY_RETENTION_DAYS": "0"}, "ACTIVITY_RETENTION_DAYS"),
        ({"ACTIVITY_RETENTION_DAYS": "0.0006"}, "ACTIVITY_RETENTION_DAYS"),
        ({"ACTIVITY_RETENTION_DAYS": "3651"}, "ACTIVITY_RETENTION_DAYS"),
        ({"ACTIVITY_RETENTION_DAYS": "-7"}, "ACTIVITY_RETENTION_DAYS"),
        ({"ACTIVITY_RETENTION_DAYS": "a week"}, "ACTIVITY_RETENTION_DAYS"),
        ({"ACTIVITY_RETENTION_DAYS": "inf"}, "ACTIVITY_RETENTION_DAYS"),
        ({"STATUS_RETENTION_DAYS": "0"}, "STATUS_RETENTION_DAYS"),
        ({"STATUS_RETENTION_DAYS": "3651"}, "STATUS_RETENTION_DAYS"),
        ({"STATUS_RETENTION_DAYS": "a month"}, "STATUS_RETENTION_DAYS"),
        ({"SENDGRID_API_BASE_URL": "http://api.sendgrid.com"}, "SENDGRID_API_BASE_URL"),
        ({"SENDGRID_API_BASE_URL": "http://10.0.0.5:8080"}, "SENDGRID_API_BASE_URL"),
        ({"SENDGRID_API_BASE_URL": "ftp://api.sendgrid.com"}, "SENDGRID_API_BASE_URL"),
        ({"SENDGRID_API_BASE_URL": "api.sendgrid.com"}, "SENDGRID_API_BASE_URL"),
        ({"SENDGRID_API_BASE_URL": "https://"}, "SENDGRID_API_BASE_URL"),
        ({"SENDGRID_CONNECT_TIMEOUT_SECONDS": "five"}, "SENDGRID_CONNECT_TIMEOUT_SECONDS"),
        ({"SENDGRID_CONNECT_TIMEOUT_SECONDS": "0"}, "SENDGRID_CONNECT_TIMEOUT_SECONDS"),
        ({"SENDGRID_CONNECT_TIMEOUT_SECONDS": "61"}, "SENDGRID_CONNECT_TIMEOUT_SECONDS"),
        ({"SENDGRID_TIMEOUT_SECONDS": "-1"}, "SENDGRID_TIMEOUT_SECONDS"),
        ({"SENDGRID_TIMEOUT_SECONDS": "201"}, "SENDGRID_TIMEOUT_SECONDS"),
        ({"SENDGRID_TIMEOUT_SECONDS": "nan"}, "SENDGRID_TIMEOUT_SECONDS"),
        ({"MAX_REQUEST_BYTES": "1023"}, "MAX_REQUEST_BYTES"),
        ({"MAX_REQUEST_BYTES": "1e9"}, "MAX_REQUEST_BYTES"),
        # SendGrid refuses a message of 30 MB or more: a larger request could never be sent.
        ({"MAX_REQUEST_BYTES": "30000001"}, "MAX_REQUEST_BYTES"),
        ({"LARGE_MESSAGE_CONTAINER_NAME": "Mail-Large"}, "LARGE_MESSAGE_CONTAINER_NAME"),
        ({"LARGE_MESSAGE_CONTAINER_NAME": "ab"}, "LARGE_MESSAGE_CONTAINER_NAME"),
        ({"LARGE_MESSAGE_CONTAINER_NAME": "c" * 64}, "LARGE_MESSAGE_CONTAINER_NAME"),
        ({"LARGE_MESSAGE_CONTAINER_NAME": "mail--large"}, "LARGE_MESSAGE_CONTAINER_NAME"),
        ({"LARGE_MESSAGE_CONTAINER_NAME": "-mail"}, "LARGE_MESSAGE_CONTAINER_NAME"),
        ({"LARGE_MESSAGE_CONTAINER_NAME": "mail-"}, "LARGE_MESSAGE_CONTAINER_NAME"),
        ({"LARGE_MESSAGE_CONTAINER_NAME": "mail_large"}, "LARGE_MESSAGE_CONTAINER_NAME"),
        ({"LARGE_MESSAGE_CONTAINER_NAME": "$root"}, "LARGE_MESSAGE_CONTAINER_NAME"),
        ({"MAX_REQUEST_BYTES": "1MB"}, "MAX_REQUEST_BYTES"),
        ({"MAX_DELIVERY_ATTEMPTS": "0"}, "MAX_DELIVERY_ATTEMPTS"),
        ({"MAX_DELIVERY_ATTEMPTS": "101"}, "MAX_DELIVERY_ATTEMPTS"),
        ({"MAX_DELIVERY_ATTEMPTS": "2.5"}, "MAX_DELIVERY_ATTEMPTS"),
        ({"MAX_DELIVERY_ATTEMPTS": "eight"}, "MAX_DELIVERY_ATTEMPTS"),
        ({"RETRY_BASE_DELAY_SECONDS": "0"}, "RETRY_BASE_DELAY_SECONDS"),
        ({"RETRY_BASE_DELAY_SECONDS": "thirty"}, "RETRY_BASE_DELAY_SECONDS"),
        ({"RETRY_MAX_DELAY_SECONDS": "604801"}, "RETRY_MAX_DELAY_SECONDS"),
        (
            {"RETRY_BASE_DELAY_SECONDS": "600", "RETRY_MAX_DELAY_SECONDS": "599"},
            "RETRY_MAX_DELAY_SECONDS",
        ),
        ({"PROVIDER_BREAKER_FAILURES": "-1"}, "PROVIDER_BREAKER_FAILURES"),
        ({"PROVIDER_BREAKER_FAILURES": "2.5"}, "PROVIDER_BREAKER_FAILURES"),
        ({"PROVIDER_BREAKER_FAILURES": "1001"}, "PROVIDER_BREAKER_FAILURES"),
        ({"PROVIDER_BREAKER_COOLDOWN_SECONDS": "0"}, "PROVIDER_BREAKER_COOLDOWN_SECONDS"),
        ({"PROVIDER_BREAKER_COOLDOWN_SECONDS": "soon"}, "PROVIDER_BREAKER_COOLDOWN_SECONDS"),
        ({"PROVIDER_BREAKER_COOLDOWN_SECONDS": "3601"}, "PROVIDER_BREAKER_COOLDOWN_SECONDS"),
        ({"SENDGRID_MAX_EMAILS_PER_SECOND": "0"}, "SENDGRID_MAX_EMAILS_PER_SECOND"),
        ({"SENDGRID_MAX_EMAILS_PER_SECOND": "0.0009"}, "SENDGRID_MAX_EMAILS_PER_SECOND"),
        ({"SENDGRID_MAX_EMAILS_PER_SECOND": "nan"}, "SENDGRID_MAX_EMAILS_PER_SECOND"),
        ({"SENDGRID_MAX_EMAILS_PER_SECOND": "-5"}, "SENDGRID_MAX_EMAILS_PER_SECOND"),
        ({"SMTP_MAX_EMAILS_PER_SECOND": "fast"}, "SMTP_MAX_EMAILS_PER_SECOND"),
        ({"ACS_MAX_EMAILS_PER_SECOND": "100001"}, "ACS_MAX_EMAILS_PER_SECOND"),
    ],
)
def test_should_refuse_an_invalid_setting_naming_it(
    overrides: dict[str, str], setting: str
) -> None:
    assert setting in refusal({**BASE_ENV, **overrides})


@pytest.mark.parametrize(
    "allowed_senders",
    ["noreply@example.com;@example.org", "noreply@example.com @example.org", "a@b@example.com"],
)
def test_should_refuse_allowed_senders_entries_that_are_not_one_address_or_domain(
    allowed_senders: str,
) -> None:
    # Accepted today: such an entry matches no sender, so every message gets a puzzling 403.
    assert "ALLOWED_SENDERS" in refusal({**BASE_ENV, "ALLOWED_SENDERS": allowed_senders})


@pytest.mark.parametrize("setting", ["ALLOWED_SENDERS", "SENDGRID_API_KEY"])
def test_should_refuse_a_missing_required_setting_naming_it(setting: str) -> None:
    env = {k: v for k, v in BASE_ENV.items() if k != setting}

    assert setting in refusal(env)


def test_should_say_which_bound_a_number_broke() -> None:
    message = refusal({**BASE_ENV, "MAX_DELIVERY_ATTEMPTS": "101"})

    assert "between 1 and 100" in message


def test_should_say_a_whole_number_is_needed_for_attempts() -> None:
    assert "whole number" in refusal({**BASE_ENV, "MAX_DELIVERY_ATTEMPTS": "2.5"})


@pytest.mark.parametrize(
    "setting",
    [
        "SENDGRID_API_KEY",
        "ALLOWED_SENDERS",
        "AzureWebJobsStorage",
        "MAIL_QUEUE_NAME",
        "STATUS_TABLE_NAME",
        "LARGE_MESSAGE_CONTAINER_NAME",
        "IDEMPOTENCY_RETENTION_HOURS",
        "ACTIVITY_RETENTION_DAYS",
        "STATUS_RETENTION_DAYS",
        "SENDGRID_API_BASE_URL",
        "MAX_DELIVERY_ATTEMPTS",
    ],
)
def test_should_refuse_an_unresolved_key_vault_reference(setting: str) -> None:
    reference = "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/x/)"

    message = refusal({**BASE_ENV, setting: reference})

    assert setting in message
    assert "Key Vault" in message


def test_should_refuse_an_unresolved_key_vault_reference_in_identity_storage_settings() -> None:
    env = {
        **IDENTITY_ENV,
        "AzureWebJobsStorage__accountName": "@Microsoft.KeyVault(VaultName=kv;SecretName=acct)",
    }

    assert "AzureWebJobsStorage__accountName" in refusal(env)


def test_should_refuse_missing_storage_naming_every_way_to_give_it() -> None:
    message = refusal(IDENTITY_ENV)

    assert "AzureWebJobsStorage" in message
    assert "AzureWebJobsStorage__queueServiceUri" in message
    assert "AzureWebJobsStorage__accountName" in message


def test_should_refuse_identity_settings_without_an_account_or_uri() -> None:
    env = {**IDENTITY_ENV, "AzureWebJobsStorage__credential": "managedidentity"}

    assert "AzureWebJobsStorage" in refusal(env)


def test_should_refuse_a_malformed_storage_connection_string_naming_it() -> None:
    # Settings accept any text today; the queue client then fails with a bare ValueError when
    # the gateway is first built, so both HTTP functions crash instead of answering cleanly.
    env = {**BASE_ENV, "AzureWebJobsStorage": "not-a-connection-string"}

    assert "AzureWebJobsStorage" in refusal(env)


@pytest.mark.parametrize(
    "connection_string",
    [
        "UseDevelopmentStorage=true",
        BASE_ENV["AzureWebJobsStorage"],
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
        "QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;",
    ],
)
def test_should_keep_a_storage_connection_string(connection_string: str) -> None:
    settings = settings_with(AzureWebJobsStorage=connection_string)

    assert settings.storage == StorageSettings(connection_string=connection_string)


@pytest.mark.parametrize(
    ("identity_env", "expected"),
    [
        (
            {"AzureWebJobsStorage__accountName": "mailgateprod"},
            StorageSettings(
                queue_service_uri="https://mailgateprod.queue.core.windows.net",
                table_service_uri="https://mailgateprod.table.core.windows.net",
                blob_service_uri="https://mailgateprod.blob.core.windows.net",
            ),
        ),
        (
            {
                "AzureWebJobsStorage__queueServiceUri": "https://q.example.net",
                "AzureWebJobsStorage__tableServiceUri": "https://t.example.net",
                "AzureWebJobsStorage__blobServiceUri": "https://b.example.net",
            },
            StorageSettings(
                queue_service_uri="https://q.example.net",
                table_service_uri="https://t.example.net",
                blob_service_uri="https://b.example.net",
            ),
        ),
        (
            # The host takes AzureWebJobsStorage__serviceUri as its blob service's URI.
            {
                "AzureWebJobsStorage__queueServiceUri": "https://q.example.net",
                "AzureWebJobsStorage__tableServiceUri": "https://t.example.net",
                "AzureWebJobsStorage__serviceUri": "https://s.example.net",
            },
            StorageSettings(
                queue_service_uri="https://q.example.net",
                table_service_uri="https://t.example.net",
                blob_service_uri="https://s.example.net",
            ),
        ),
        (
            {
                "AzureWebJobsStorage__accountName": "mailgateprod",
                "AzureWebJobsStorage__credential": "managedidentity",
                "AzureWebJobsStorage__clientId": "00000000-0000-0000-0000-000000000001",
            },
            StorageSettings(
                queue_service_uri="https://mailgateprod.queue.core.windows.net",
                table_service_uri="https://mailgateprod.table.core.windows.net",
                blob_service_uri="https://mailgateprod.blob.core.windows.net",
                credential="managedidentity",
                client_id="00000000-0000-0000-0000-000000000001",
            ),
        ),
    ],
    ids=["accountName", "service URIs", "serviceUri as the blob's", "managed identity"],
)
def test_should_read_an_identity_based_storage_connection(
    identity_env: dict[str, str], expected: StorageSettings
) -> None:
    assert Settings.from_env({**IDENTITY_ENV, **identity_env}).storage == expected


def test_should_refuse_a_service_uri_as_the_queue_service_uri_naming_both() -> None:
    # One serviceUri cannot name the queue, table and blob services at once (Microsoft's queue
    # binding reference); for host storage it is the blob service's.
    env = {
        **IDENTITY_ENV,
        "AzureWebJobsStorage__serviceUri": "https://s.example.net",
        "AzureWebJobsStorage__tableServiceUri": "https://t.example.net",
        "AzureWebJobsStorage__blobServiceUri": "https://b.example.net",
    }

    message = refusal(env)

    assert "AzureWebJobsStorage__queueServiceUri" in message
    assert "AzureWebJobsStorage__serviceUri is taken as the blob service's URI" in message


def test_should_refuse_a_queue_service_uri_without_a_table_service_uri_naming_it() -> None:
    env = {**IDENTITY_ENV, "AzureWebJobsStorage__queueServiceUri": "https://q.example.net"}

    assert "AzureWebJobsStorage__tableServiceUri" in refusal(env)


def test_should_refuse_queue_and_table_service_uris_without_a_blob_service_uri_naming_it() -> None:
    env = {
        **IDENTITY_ENV,
        "AzureWebJobsStorage__queueServiceUri": "https://q.example.net",
        "AzureWebJobsStorage__tableServiceUri": "https://t.example.net",
    }

    message = refusal(env)

    assert "AzureWebJobsStorage__blobServiceUri" in message
    assert "Blob storage" in message


@pytest.mark.parametrize(
    ("connection_string", "missing"),
    [
        ("QueueEndpoint=https://q.example.net;SharedAccessSignature=sv=1", "TableEndpoint"),
        (
            "QueueEndpoint=https://q.example.net;TableEndpoint=https://t.example.net;"
            "SharedAccessSignature=sv=1",
            "BlobEndpoint",
        ),
    ],
)
def test_should_refuse_a_connection_string_of_endpoints_without_table_or_blob_naming_it(
    connection_string: str, missing: str
) -> None:
    message = refusal({**BASE_ENV, "AzureWebJobsStorage": connection_string})

    assert "AzureWebJobsStorage" in message
    assert missing in message


def test_should_keep_a_connection_string_of_all_three_endpoints() -> None:
    connection_string = (
        "QueueEndpoint=https://q.example.net;TableEndpoint=https://t.example.net;"
        "BlobEndpoint=https://b.example.net;SharedAccessSignature=sv=1"
    )

    assert settings_with(AzureWebJobsStorage=connection_string).storage == StorageSettings(
        connection_string=connection_string
    )


def test_should_prefer_a_storage_connection_string_over_identity_settings() -> None:
    settings = Settings.from_env({**BASE_ENV, "AzureWebJobsStorage__accountName": "elsewhere"})

    assert settings.storage.connection_string == BASE_ENV["AzureWebJobsStorage"]
    assert settings.storage.queue_service_uri is None


def test_should_prefer_account_name_over_queue_service_uri_as_the_host_does() -> None:
    # The Functions host (StorageClientProvider.TryGetServiceUri) reads accountName first:
    # the gateway must enqueue to the account the queue trigger listens on.
    settings = Settings.from_env(
        {
            **IDENTITY_ENV,
            "AzureWebJobsStorage__accountName": "hostreads",
            "AzureWebJobsStorage__queueServiceUri": "https://other.queue.core.windows.net",
        }
    )

    assert settings.storage.queue_service_uri == "https://hostreads.queue.core.windows.net"
    assert settings.storage.table_service_uri == "https://hostreads.table.core.windows.net"
    assert settings.storage.blob_service_uri == "https://hostreads.blob.core.windows.net"


def test_should_keep_secrets_out_of_the_settings_repr() -> None:
    settings = Settings.from_env(BASE_ENV)

    shown = repr(settings) + str(settings) + repr(settings.storage)

    assert SENDGRID_API_KEY not in shown
    assert STORAGE_ACCOUNT_KEY not in shown
    assert "mail-outbound" in shown


def test_should_be_frozen() -> None:
    settings = Settings.from_env(BASE_ENV)

    with pytest.raises(AttributeError):
        settings.sendgrid_api_key = "other"  # type: ignore[misc]


def test_should_name_every_setting_that_holds_an_unresolved_key_vault_reference() -> None:
    reference = "@Microsoft.KeyVault(VaultName=kv;SecretName=x)"
    environ = {"SENDGRID_API_KEY": f" {reference}", "OTHER": reference, "FINE": "value"}

    with pytest.raises(ConfigurationError) as caught:
        refuse_unresolved_key_vault_references(environ)

    assert str(caught.value).startswith("OTHER, SENDGRID_API_KEY: unresolved Key Vault")
    assert "FINE" not in str(caught.value)
    refuse_unresolved_key_vault_references({"SENDGRID_API_KEY": "SG.resolved"})


def test_should_leave_the_event_webhook_closed_without_its_key() -> None:
    assert Settings.from_env(BASE_ENV).sendgrid_webhook_public_key is None
    assert settings_with(SENDGRID_WEBHOOK_PUBLIC_KEY="  ").sendgrid_webhook_public_key is None


def test_should_read_the_event_webhook_key_as_sendgrid_shows_it_or_as_pem() -> None:
    signer = WebhookSigner()

    plain = settings_with(SENDGRID_WEBHOOK_PUBLIC_KEY=signer.public_key)
    pem = settings_with(SENDGRID_WEBHOOK_PUBLIC_KEY=signer.public_key_pem)

    assert plain.sendgrid_webhook_public_key == signer.public_key
    assert pem.sendgrid_webhook_public_key == signer.public_key


@pytest.mark.parametrize("key", ["SG.not-a-public-key", "MFkwEwYHKoZIzj0CAQ"])
def test_should_refuse_a_malformed_event_webhook_key_naming_it(key: str) -> None:
    message = refusal({**BASE_ENV, "SENDGRID_WEBHOOK_PUBLIC_KEY": key})

    assert "SENDGRID_WEBHOOK_PUBLIC_KEY" in message
    assert key not in message


# ---------------------------------------------------------------- the data connection

DATA_ACCOUNT = "https://stdata.queue.core.windows.net"


@pytest.mark.parametrize(
    ("environ", "connection"),
    [
        ({}, "AzureWebJobsStorage"),
        ({"MAILGATE_STORAGE": ""}, "AzureWebJobsStorage"),
        ({"MAILGATE_STORAGE__accountName": "  "}, "AzureWebJobsStorage"),
        ({"MAILGATE_STORAGE_OTHER": "x"}, "AzureWebJobsStorage"),
        ({"MAILGATE_STORAGE": "UseDevelopmentStorage=true"}, "MAILGATE_STORAGE"),
        ({"MAILGATE_STORAGE__accountName": "stdata"}, "MAILGATE_STORAGE"),
        # .NET configuration keys ignore case.
        ({"mailgate_storage__ACCOUNTNAME": "stdata"}, "MAILGATE_STORAGE"),
        ({"MAILGATE_STORAGE__credential": "managedidentity"}, "MAILGATE_STORAGE"),
        ({"AzureWebJobsMAILGATE_STORAGE": "UseDevelopmentStorage=true"}, "MAILGATE_STORAGE"),
    ],
)
def test_should_bind_the_data_to_mailgate_storage_only_once_a_setting_configures_it(
    environ: dict[str, str], connection: str
) -> None:
    assert data_connection({**BASE_ENV, **environ}) == connection


@pytest.mark.parametrize(
    ("environ", "setting"),
    [
        (
            {"AzureWebJobsMAILGATE_STORAGE": "a", "MAILGATE_STORAGE": "b"},
            "AzureWebJobsMAILGATE_STORAGE",
        ),
        # The first section that exists is the only one the host reads, even without a value.
        (
            {"AzureWebJobsMAILGATE_STORAGE__accountName": "a", "MAILGATE_STORAGE": "b"},
            "AzureWebJobsMAILGATE_STORAGE",
        ),
        ({"MAILGATE_STORAGE__queueServiceUri": DATA_ACCOUNT}, "MAILGATE_STORAGE"),
        ({"AzureWebJobsStorage": "x"}, None),
    ],
)
def test_should_find_a_connection_where_the_host_looks_first(
    environ: dict[str, str], setting: str | None
) -> None:
    assert connection_setting(environ, "MAILGATE_STORAGE") == setting


def test_should_keep_the_data_in_the_host_storage_while_mailgate_storage_is_unset() -> None:
    assert Settings.from_env(BASE_ENV).storage == StorageSettings(
        connection_string=BASE_ENV["AzureWebJobsStorage"]
    )


def test_should_keep_the_data_in_mailgate_storage_apart_from_the_host_storage() -> None:
    data = "UseDevelopmentStorage=true"

    settings = Settings.from_env({**BASE_ENV, "MAILGATE_STORAGE": data})

    assert settings.storage == StorageSettings(connection_string=data)


def test_should_read_an_identity_based_mailgate_storage_and_ignore_the_host_storage() -> None:
    settings = Settings.from_env(
        {
            **BASE_ENV,
            "AzureWebJobsStorage__accountName": "sthost",
            "MAILGATE_STORAGE__accountName": "stdata",
            "MAILGATE_STORAGE__credential": "managedidentity",
            "MAILGATE_STORAGE__clientId": "00000000-0000-0000-0000-000000000002",
        }
    )

    assert settings.storage == StorageSettings(
        queue_service_uri=DATA_ACCOUNT,
        table_service_uri="https://stdata.table.core.windows.net",
        blob_service_uri="https://stdata.blob.core.windows.net",
        credential="managedidentity",
        client_id="00000000-0000-0000-0000-000000000002",
    )


def test_should_read_mailgate_storage_from_its_azurewebjobs_section_first_as_the_host_does() -> (
    None
):
    settings = Settings.from_env(
        {
            **BASE_ENV,
            "AzureWebJobsMAILGATE_STORAGE": "UseDevelopmentStorage=true",
            "MAILGATE_STORAGE": "not-read",
        }
    )

    assert settings.storage.connection_string == "UseDevelopmentStorage=true"


def test_should_refuse_a_mailgate_storage_without_a_queue_service_rather_than_fall_back() -> None:
    # The trigger binds MAILGATE_STORAGE once any of its settings exists: so must the data.
    message = refusal({**BASE_ENV, "MAILGATE_STORAGE__credential": "managedidentity"})

    assert message.startswith("MAILGATE_STORAGE names no queue service")
    assert "MAILGATE_STORAGE__accountName" in message


def test_should_name_mailgate_storage_when_its_connection_string_is_malformed() -> None:
    message = refusal({**BASE_ENV, "MAILGATE_STORAGE": "not-a-connection-string"})

    assert message.startswith("MAILGATE_STORAGE is not a storage connection string")


# --- the host's maxDequeueCount, for the reason of a message the host moved -----------------


def test_should_read_the_hosts_max_dequeue_count_from_the_apps_host_json() -> None:
    app_host_json = json.loads(APP_HOST_JSON.read_text(encoding="utf-8"))

    count = Settings.from_env(BASE_ENV).host_max_dequeue_count

    assert count == app_host_json["extensions"]["queues"]["maxDequeueCount"]


def test_should_let_the_hosts_app_setting_override_host_json_max_dequeue_count() -> None:
    settings = settings_with(**{MAX_DEQUEUE_COUNT_SETTING: "3"})

    assert settings.host_max_dequeue_count == 3


@pytest.mark.parametrize("value", ["0", "three", "2.5"])
def test_should_refuse_a_max_dequeue_count_override_that_is_not_a_positive_integer(
    value: str,
) -> None:
    assert MAX_DEQUEUE_COUNT_SETTING in refusal({**BASE_ENV, MAX_DEQUEUE_COUNT_SETTING: value})


@pytest.mark.parametrize(
    ("content", "count"),
    [
        ('{"version": "2.0", "extensions": {"queues": {"maxDequeueCount": 3}}}', 3),
        ('{"version": "2.0", "Extensions": {"Queues": {"MaxDequeueCount": "7"}}}', 7),
        ('{"version": "2.0", "extensions": {"queues": {"batchSize": 8}}}', 5),
        ('{"version": "2.0"}', 5),
        ('{"version": "2.0", "extensions": {"queues": {"maxDequeueCount": 0}}}', 5),
        ("not json", 5),
    ],
    ids=["set", "any case", "other options only", "no queues section", "zero", "unreadable"],
)
def test_should_read_max_dequeue_count_from_host_json_or_default_to_the_hosts_5(
    tmp_path: Path, content: str, count: int
) -> None:
    path = tmp_path / "host.json"
    path.write_text(content, encoding="utf-8")

    assert host_json_max_dequeue_count(path) == count


def test_should_default_max_dequeue_count_to_5_without_a_host_json(tmp_path: Path) -> None:
    assert host_json_max_dequeue_count(tmp_path / "host.json") == 5


def test_should_keep_live_bodies_for_every_wait_at_its_longest_plus_the_margin() -> None:
    defaults = Settings.from_env(BASE_ENV)
    short = Settings.from_env(
        {
            **BASE_ENV,
            "MAX_DELIVERY_ATTEMPTS": "3",
            "RETRY_BASE_DELAY_SECONDS": "1",
            "RETRY_MAX_DELAY_SECONDS": "2",
            "LARGE_MESSAGE_RETENTION_MARGIN_DAYS": str(5 / 86400),
        }
    )

    # 8 attempts x 1 h, plus 7 days of the host's poison copy and a day.
    assert defaults.large_message_retention == timedelta(hours=8, days=8)
    assert short.large_message_retention == timedelta(seconds=3 * 2 + 5)


def test_should_default_to_sendgrid_alone() -> None:
    settings = settings_with()

    assert settings.mail_providers == ("sendgrid",)
    assert settings.failover_on_ambiguous is False
    assert settings.smtp_port == 587


def test_should_read_mail_providers_in_order_trimmed_and_lowercased() -> None:
    settings = settings_with(MAIL_PROVIDERS=" SMTP , sendgrid ", SMTP_HOST="smtp.example.com")

    assert settings.mail_providers == ("smtp", "sendgrid")


@pytest.mark.parametrize(
    ("raw", "named"),
    [("sendgrid,ses", "'ses'"), ("mailgun", "'mailgun'"), ("sendgrid;smtp", "'sendgrid;smtp'")],
)
def test_should_refuse_an_unknown_provider_naming_the_setting_and_the_name(
    raw: str, named: str
) -> None:
    with pytest.raises(ConfigurationError, match="MAIL_PROVIDERS") as refused:
        settings_with(MAIL_PROVIDERS=raw)

    assert named in str(refused.value)


def test_should_refuse_a_provider_listed_twice() -> None:
    with pytest.raises(ConfigurationError, match="MAIL_PROVIDERS"):
        settings_with(MAIL_PROVIDERS="sendgrid,sendgrid")


def test_should_require_smtp_host_only_with_the_smtp_provider() -> None:
    with pytest.raises(ConfigurationError, match="SMTP_HOST is required"):
        settings_with(MAIL_PROVIDERS="sendgrid,smtp")
    assert settings_with().smtp_host is None


def test_should_require_the_sendgrid_key_only_with_the_sendgrid_provider() -> None:
    environ = {k: v for k, v in BASE_ENV.items() if k != "SENDGRID_API_KEY"}

    settings = Settings.from_env({**environ, "MAIL_PROVIDERS": "smtp", "SMTP_HOST": "127.0.0.1"})

    assert settings.mail_providers == ("smtp",)
    with pytest.raises(ConfigurationError, match="SENDGRID_API_KEY"):
        Settings.from_env(environ)


def test_should_want_smtp_username_and_password_together() -> None:
    with pytest.raises(ConfigurationError, match="SMTP_USERNAME and SMTP_PASSWORD"):
        settings_with(MAIL_PROVIDERS="smtp", SMTP_HOST="smtp.example.com", SMTP_USERNAME="u")


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("SMTP_PORT", "0"),
        ("SMTP_PORT", "70000"),
        ("SMTP_PORT", "five"),
        ("SMTP_HOST", "smtp example.com"),
        ("SMTP_HOST", "-smtp.example.com"),
        ("FAILOVER_ON_AMBIGUOUS", "yes"),
    ],
)
def test_should_refuse_a_bad_smtp_or_failover_setting_naming_it(name: str, raw: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        settings_with(**{"MAIL_PROVIDERS": "smtp", "SMTP_HOST": "smtp.example.com", name: raw})


def test_should_keep_the_smtp_password_out_of_the_settings_repr() -> None:
    settings = settings_with(
        MAIL_PROVIDERS="smtp", SMTP_HOST="h.example.com", SMTP_USERNAME="u", SMTP_PASSWORD="pw-1"
    )

    assert settings.smtp_password == "pw-1"
    assert "pw-1" not in repr(settings)


def test_should_name_an_unresolved_smtp_password_reference_alone() -> None:
    with pytest.raises(ConfigurationError) as refused:
        settings_with(
            MAIL_PROVIDERS="smtp",
            SMTP_HOST="smtp.example.com",
            SMTP_USERNAME="apikey",
            SMTP_PASSWORD="@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/s)",
        )

    assert "SMTP_PASSWORD" in str(refused.value)
    # Not also reported as missing its partner: it is there, only unresolved.
    assert "go together" not in str(refused.value)


@pytest.mark.parametrize("host", ["smtp.example.com", "127.0.0.1", "::1", "localhost"])
def test_should_take_a_host_name_or_an_ip_address_as_smtp_host(host: str) -> None:
    assert settings_with(MAIL_PROVIDERS="smtp", SMTP_HOST=host).smtp_host == host


def test_should_open_breakers_after_five_failures_and_brake_nothing_by_default() -> None:
    settings = Settings.from_env(BASE_ENV)

    assert settings.provider_breaker_failures == 5
    assert settings.provider_breaker_cooldown_seconds == 30.0
    assert settings.max_emails_per_second == {}


def test_should_read_each_providers_brake_by_its_own_name() -> None:
    settings = Settings.from_env(
        {
            **BASE_ENV,
            "SENDGRID_MAX_EMAILS_PER_SECOND": "100",
            "SMTP_MAX_EMAILS_PER_SECOND": " 5 ",
            "ACS_MAX_EMAILS_PER_SECOND": "0.5",
            "PROVIDER_BREAKER_FAILURES": "0",
            "PROVIDER_BREAKER_COOLDOWN_SECONDS": "2.5",
        }
    )

    assert settings.max_emails_per_second == {"sendgrid": 100, "smtp": 5, "acs": 0.5}
    assert settings.provider_breaker_failures == 0
    assert settings.provider_breaker_cooldown_seconds == 2.5
