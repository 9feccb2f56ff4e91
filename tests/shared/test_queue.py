from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Any, cast

import pytest
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError, ServiceRequestError
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential
from azure.storage.queue import QueueClient, QueueMessage, QueueProperties

from shared.errors import StorageUnavailable
from shared.queue import (
    NEVER_EXPIRES,
    MailQueue,
    QueueMeasurement,
    storage_tls_verify,
    storage_transport,
    summary,
    token_credential,
)
from shared.settings import MAX_RETRY_DELAY_SECONDS, Settings, StorageSettings
from shared.storage_transport import shared_transport
from tests.samples import BASE_ENV, NOW, envelope

IDENTITY_ENV = {k: v for k, v in BASE_ENV.items() if k != "AzureWebJobsStorage"}
CLIENT_ID = "00000000-0000-0000-0000-0000000000c1"


class RecordingQueueClient:
    """The few QueueClient calls MailQueue makes, recorded; `error` makes each call raise it."""

    def __init__(
        self,
        queue_name: str,
        error: Exception | None = None,
        message_count: int | None = 0,
        front: list[QueueMessage] | None = None,
    ) -> None:
        self.queue_name = queue_name
        self.error = error
        self.message_count = message_count
        # What a peek sees: the visible messages at the front of the queue.
        self.front = front or []
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.created = 0
        self.property_reads = 0
        self.peeks: list[int | None] = []

    def send_message(self, content: str, **options: Any) -> None:
        self._maybe_fail()
        self.sent.append((content, options))

    def create_queue(self) -> None:
        self._maybe_fail()
        self.created += 1

    def get_queue_properties(self) -> QueueProperties:
        self._maybe_fail()
        self.property_reads += 1
        properties = QueueProperties()
        properties.approximate_message_count = self.message_count
        return properties

    def peek_messages(self, max_messages: int | None = None) -> list[QueueMessage]:
        self._maybe_fail()
        self.peeks.append(max_messages)
        return self.front[: max_messages or 1]

    def _maybe_fail(self) -> None:
        if self.error is not None:
            raise self.error


def mail_queue(mail: RecordingQueueClient, poison: RecordingQueueClient | None = None) -> MailQueue:
    poison = poison or RecordingQueueClient("mail-outbound-poison")
    return MailQueue(cast(QueueClient, mail), cast(QueueClient, poison))


@pytest.mark.parametrize(
    ("storage", "credential_type"),
    [
        (
            StorageSettings(
                queue_service_uri="https://a.queue.core.windows.net",
                credential="managedidentity",
                client_id=CLIENT_ID,
            ),
            ManagedIdentityCredential,
        ),
        (
            StorageSettings(
                queue_service_uri="https://a.queue.core.windows.net",
                credential="ManagedIdentity",
                client_id=CLIENT_ID,
            ),
            ManagedIdentityCredential,
        ),
        (
            StorageSettings(
                queue_service_uri="https://a.queue.core.windows.net", credential="managedidentity"
            ),
            ManagedIdentityCredential,
        ),
        (
            StorageSettings(queue_service_uri="https://a.queue.core.windows.net"),
            DefaultAzureCredential,
        ),
        (
            StorageSettings(
                queue_service_uri="https://a.queue.core.windows.net", client_id=CLIENT_ID
            ),
            DefaultAzureCredential,
        ),
    ],
)
def test_should_pick_the_credential_the_host_would_use(
    storage: StorageSettings, credential_type: type
) -> None:
    assert type(token_credential(storage)) is credential_type


@pytest.mark.parametrize(
    ("identity_env", "account", "queue_url"),
    [
        (
            {
                "AzureWebJobsStorage__accountName": "mailgateprod",
                "AzureWebJobsStorage__credential": "managedidentity",
                "AzureWebJobsStorage__clientId": CLIENT_ID,
            },
            "mailgateprod",
            "https://mailgateprod.queue.core.windows.net/mail-outbound",
        ),
        (
            {
                "AzureWebJobsStorage__queueServiceUri": "https://mailgatedev.queue.core.windows.net",
                "AzureWebJobsStorage__tableServiceUri": "https://mailgatedev.table.core.windows.net",
                "AzureWebJobsStorage__blobServiceUri": "https://mailgatedev.blob.core.windows.net",
            },
            "mailgatedev",
            "https://mailgatedev.queue.core.windows.net/mail-outbound",
        ),
    ],
)
def test_should_aim_identity_based_clients_at_the_configured_account(
    identity_env: dict[str, str], account: str, queue_url: str
) -> None:
    queue = MailQueue.from_settings(Settings.from_env({**IDENTITY_ENV, **identity_env}))

    assert (queue._mail.account_name, queue._mail.url) == (account, queue_url)
    assert queue._poison.url == queue_url + "-poison"
    assert isinstance(queue._mail.credential, (ManagedIdentityCredential, DefaultAzureCredential))


def test_should_verify_storage_tls_against_ssl_cert_file_when_it_is_set() -> None:
    assert storage_tls_verify({"SSL_CERT_FILE": "/etc/local-ca.pem"}) == "/etc/local-ca.pem"
    assert storage_tls_verify({"SSL_CERT_FILE": ""}) is True
    assert storage_tls_verify({}) is True


def test_should_give_the_storage_transport_the_ca_file_of_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # requests ignores SSL_CERT_FILE and the transport reads no environment per call: without
    # this, identity mode's HTTPS to Azurite would fail certificate verification.
    monkeypatch.setenv("SSL_CERT_FILE", "/etc/local-ca.pem")
    with_ca = storage_transport()
    monkeypatch.delenv("SSL_CERT_FILE")
    default = storage_transport()

    # One transport per CA setting, shared by every client of the process.
    assert with_ca is not default
    assert with_ca is shared_transport("/etc/local-ca.pem")
    assert default is shared_transport(True)


def test_should_aim_connection_string_clients_at_azurite() -> None:
    settings = Settings.from_env({**BASE_ENV, "AzureWebJobsStorage": "UseDevelopmentStorage=true"})

    queue = MailQueue.from_settings(settings)

    assert queue._mail.url == "http://127.0.0.1:10001/devstoreaccount1/mail-outbound"
    assert (queue.name, queue.poison_name) == ("mail-outbound", "mail-outbound-poison")


def test_should_name_the_queues_from_settings() -> None:
    queue = MailQueue.from_settings(Settings.from_env({**BASE_ENV, "MAIL_QUEUE_NAME": "mail-eu"}))

    assert (queue.name, queue.poison_name) == ("mail-eu", "mail-eu-poison")


def test_should_encode_messages_in_base64_as_the_host_reads_them() -> None:
    # The host's default messageEncoding is base64: raw text would go straight to poison.
    queue = MailQueue.from_settings(Settings.from_env(BASE_ENV))

    for client in (queue._mail, queue._poison):
        encoded = client._message_encode_policy('{"version":1}')
        assert base64.b64decode(encoded) == b'{"version":1}'


def test_should_read_raw_text_on_either_queue_without_failing() -> None:
    # A producer that forgot base64 leaves raw text on the mail queue until the host moves it
    # to poison: a peek (the queue monitor) must not fail on it.
    queue = MailQueue.from_settings(Settings.from_env(BASE_ENV))

    no_response: Any = None
    for client in (queue._mail, queue._poison):
        decode = client._message_decode_policy.decode
        encoded = base64.b64encode(b'{"version":1}').decode()
        assert decode(encoded, no_response) == '{"version":1}'
        assert decode('{"not": "base64"}', no_response) == '{"not": "base64"}'


def test_should_send_the_envelope_json_visible_at_once() -> None:
    mail = RecordingQueueClient("mail-outbound")
    queued = envelope(id="msg-7")

    mail_queue(mail).enqueue(queued)

    [(text, options)] = mail.sent
    assert json.loads(text) == json.loads(queued.to_json())
    assert options.get("visibility_timeout") is None


def test_should_send_a_retry_invisible_for_its_delay() -> None:
    mail = RecordingQueueClient("mail-outbound")

    mail_queue(mail).enqueue(envelope(), delay_seconds=120)

    [(_, options)] = mail.sent
    assert options["visibility_timeout"] == 120


def test_should_keep_dead_letters_forever_on_the_poison_queue() -> None:
    mail, poison = (
        RecordingQueueClient("mail-outbound"),
        RecordingQueueClient("mail-outbound-poison"),
    )

    mail_queue(mail, poison).dead_letter('{"dead_letter": {}}')

    assert mail.sent == []
    assert poison.sent == [
        ('{"dead_letter": {}}', {"client_request_id": None, "time_to_live": NEVER_EXPIRES})
    ]
    assert NEVER_EXPIRES == -1


MESSAGE_ID = "01a24607-424f-78a4-a0be-3c7bb76bafa8"


def test_should_name_the_message_in_each_write_about_it_for_storage_logs() -> None:
    mail, poison = (
        RecordingQueueClient("mail-outbound"),
        RecordingQueueClient("mail-outbound-poison"),
    )
    queue = mail_queue(mail, poison)

    queue.enqueue(envelope(id=MESSAGE_ID))
    queue.put_back("{}", delay_seconds=15, message_id=MESSAGE_ID)
    queue.dead_letter("{}", message_id=MESSAGE_ID)

    assert [options["client_request_id"] for _, options in mail.sent + poison.sent] == [
        MESSAGE_ID
    ] * 3


@pytest.mark.parametrize(
    "message_id",
    [None, "msg-7", MESSAGE_ID.upper(), MESSAGE_ID + "0", "x\r\nx-ms-version: 1", "a" * 64],
)
def test_should_leave_the_request_id_to_the_sdk_for_an_id_the_gateway_never_gives(
    message_id: str | None,
) -> None:
    # An envelope's id is what its queue message says: only the gateway's shape goes into a
    # header; the SDK makes up a uuid1 for the rest.
    mail = RecordingQueueClient("mail-outbound")
    queue = mail_queue(mail)

    queue.put_back("{}", delay_seconds=15, message_id=message_id)
    queue.enqueue(envelope(id=message_id or "m"))

    assert [options["client_request_id"] for _, options in mail.sent] == [None, None]


def test_should_report_storage_unavailable_naming_the_queue_when_a_send_fails() -> None:
    mail = RecordingQueueClient("mail-outbound", error=ServiceRequestError("connection refused"))

    with pytest.raises(StorageUnavailable, match="mail-outbound"):
        mail_queue(mail).enqueue(envelope())


def test_should_report_storage_unavailable_when_a_dead_letter_fails() -> None:
    poison = RecordingQueueClient("mail-outbound-poison", error=ServiceRequestError("timed out"))

    with pytest.raises(StorageUnavailable, match="mail-outbound-poison"):
        mail_queue(RecordingQueueClient("mail-outbound"), poison).dead_letter("{}")


def test_should_mask_a_sas_signature_that_a_storage_error_quotes() -> None:
    # What requests says when a SAS connection string's account cannot be reached.
    refused = ServiceRequestError(
        "HTTPConnectionPool(host='acct.queue.core.windows.net', port=443): Max retries exceeded "
        "with url: /mail-outbound?restype=service&sv=2022-11-02&sp=raup&sig=c2lnbmF0dXJl%3D "
        "(Caused by NewConnectionError('Connection refused'))"
    )
    poison = RecordingQueueClient("mail-outbound-poison", error=refused)

    with pytest.raises(StorageUnavailable) as caught:
        mail_queue(RecordingQueueClient("mail-outbound"), poison).depths()

    # The error reaches the logs, and GET /api/health/details shows it to the admin.
    assert "c2lnbmF0dXJl" not in str(caught.value)
    assert "sp=raup&sig=REDACTED (Caused by" in str(caught.value)
    assert summary(refused).startswith("ServiceRequestError: HTTPConnectionPool(")


def test_should_create_both_queues() -> None:
    mail, poison = (
        RecordingQueueClient("mail-outbound"),
        RecordingQueueClient("mail-outbound-poison"),
    )

    mail_queue(mail, poison).ensure_exists()

    assert (mail.created, poison.created) == (1, 1)


def test_should_accept_queues_that_already_exist() -> None:
    mail = RecordingQueueClient("mail-outbound", error=ResourceExistsError("QueueAlreadyExists"))
    poison = RecordingQueueClient("mail-outbound-poison", error=ResourceExistsError("exists"))

    mail_queue(mail, poison).ensure_exists()


def test_should_report_storage_unavailable_when_a_queue_cannot_be_created() -> None:
    mail = RecordingQueueClient("mail-outbound", error=ServiceRequestError("connection refused"))

    with pytest.raises(StorageUnavailable, match="mail-outbound"):
        mail_queue(mail).ensure_exists()


def test_should_check_storage_by_reading_the_mail_queue() -> None:
    mail = RecordingQueueClient("mail-outbound")

    mail_queue(mail).check()

    assert mail.property_reads == 1


def test_should_report_storage_unavailable_when_the_check_fails() -> None:
    mail = RecordingQueueClient("mail-outbound", error=ServiceRequestError("connection refused"))

    with pytest.raises(StorageUnavailable, match="ServiceRequestError"):
        mail_queue(mail).check()


def test_should_report_the_depth_of_both_queues() -> None:
    mail = RecordingQueueClient("mail-outbound", message_count=12)
    poison = RecordingQueueClient("mail-outbound-poison", message_count=3)

    assert mail_queue(mail, poison).depths() == {"mail-outbound": 12, "mail-outbound-poison": 3}


def test_should_report_a_missing_queue_as_empty() -> None:
    # The host creates the poison queue only when it first moves a message there.
    mail = RecordingQueueClient("mail-outbound", message_count=None)
    poison = RecordingQueueClient("mail-outbound-poison", error=ResourceNotFoundError("gone"))

    assert mail_queue(mail, poison).depths() == {"mail-outbound": 0, "mail-outbound-poison": 0}


def test_should_report_storage_unavailable_naming_the_queue_when_depths_fail() -> None:
    poison = RecordingQueueClient("mail-outbound-poison", error=ServiceRequestError("refused"))

    with pytest.raises(StorageUnavailable, match="mail-outbound-poison"):
        mail_queue(RecordingQueueClient("mail-outbound"), poison).depths()


def test_should_expose_the_poison_queue_client_for_operators() -> None:
    poison = RecordingQueueClient("mail-outbound-poison")

    queue = mail_queue(RecordingQueueClient("mail-outbound"), poison)

    assert queue.poison is cast(QueueClient, poison)


def test_should_keep_a_delayed_retry_on_the_queue_after_it_becomes_visible() -> None:
    # A queue message lives 7 days unless told otherwise, counted from the enqueue. A retry
    # delayed by D seconds is then visible for only 7 days - D: with the longest delay the
    # gateway schedules (Retry-After or RETRY_MAX_DELAY_SECONDS up to 7 days) it expires
    # the moment it becomes visible, and the message is lost while its status says retrying.
    # (Azurite shows it: a message sent with visibility_timeout=604800 has expires_on equal
    # to next_visible_on.)
    mail = RecordingQueueClient("mail-outbound")

    mail_queue(mail).enqueue(envelope(), delay_seconds=MAX_RETRY_DELAY_SECONDS)

    [(_, options)] = mail.sent
    time_to_live = options.get("time_to_live")
    assert time_to_live is not None, "sent with the default 7-day time-to-live"
    assert time_to_live == NEVER_EXPIRES or time_to_live >= 2 * MAX_RETRY_DELAY_SECONDS


def message_inserted(seconds_ago: float) -> QueueMessage:
    """A message as a peek returns it, inserted `seconds_ago` before NOW."""
    message = QueueMessage('{"version": 1}', id="m-1")
    message.inserted_on = NOW - timedelta(seconds=seconds_ago)
    return message


def test_should_measure_the_depth_and_the_age_of_the_oldest_visible_message() -> None:
    mail = RecordingQueueClient("mail-outbound", message_count=7, front=[message_inserted(95.8)])
    poison = RecordingQueueClient(
        "mail-outbound-poison", message_count=2, front=[message_inserted(3600)]
    )

    report = mail_queue(mail, poison).measure(NOW)

    assert report.mail == QueueMeasurement("mail-outbound", 7, 95)
    assert report.poison == QueueMeasurement("mail-outbound-poison", 2, 3600)
    assert report.measurements == (report.mail, report.poison)
    # One message peeked, without hiding it or counting a dequeue.
    assert (mail.peeks, poison.peeks) == ([1], [1])


def test_should_measure_an_empty_queue_with_no_age() -> None:
    report = mail_queue(RecordingQueueClient("mail-outbound", message_count=None)).measure(NOW)

    assert report.mail == QueueMeasurement("mail-outbound", 0, None)


def test_should_give_no_age_when_every_message_is_invisible() -> None:
    # Scheduled retries wait invisible: they count in the depth but a peek does not see them.
    mail = RecordingQueueClient("mail-outbound", message_count=3, front=[])

    assert mail_queue(mail).measure(NOW).mail == QueueMeasurement("mail-outbound", 3, None)


def test_should_count_a_message_seen_even_when_the_approximate_count_lags() -> None:
    poison = RecordingQueueClient(
        "mail-outbound-poison", message_count=0, front=[message_inserted(5)]
    )

    report = mail_queue(RecordingQueueClient("mail-outbound"), poison).measure(NOW)

    assert report.poison == QueueMeasurement("mail-outbound-poison", 1, 5)


def test_should_not_give_a_negative_age_when_the_server_clock_is_ahead() -> None:
    mail = RecordingQueueClient("mail-outbound", message_count=1, front=[message_inserted(-2)])

    assert mail_queue(mail).measure(NOW).mail.oldest_age_seconds == 0


def test_should_measure_a_missing_queue_as_empty_and_say_it_is_missing() -> None:
    # The host creates the poison queue only when it first moves a message there.
    poison = RecordingQueueClient("mail-outbound-poison", error=ResourceNotFoundError("gone"))

    report = mail_queue(RecordingQueueClient("mail-outbound"), poison).measure(NOW)

    assert report.poison == QueueMeasurement("mail-outbound-poison", 0, None, exists=False)


def test_should_report_storage_unavailable_naming_the_queue_when_a_measure_fails() -> None:
    poison = RecordingQueueClient("mail-outbound-poison", error=ServiceRequestError("refused"))

    with pytest.raises(StorageUnavailable, match="mail-outbound-poison: ServiceRequestError"):
        mail_queue(RecordingQueueClient("mail-outbound"), poison).measure(NOW)
