from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from typing import Any, cast

import pytest
from azure.core import MatchConditions
from azure.core.exceptions import (
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
)
from azure.data.tables import TableClient, TableEntity, UpdateMode
from azure.identity import ManagedIdentityCredential

from shared.errors import ConcurrentUpdate, StorageUnavailable
from shared.models import ProviderError
from shared.openapi import MessageStatusDocument
from shared.replay_advice import API_KEY, CAUSES, INVALID_REQUEST, SENDER_IDENTITY, Replay
from shared.settings import Settings
from shared.status import (
    FINAL_STATES,
    MAX_OUTCOMES,
    MessageState,
    MessageStatus,
    Outcome,
    StatusStore,
    _from_entity,
)
from tests.samples import BASE_ENV, NOW

LATER = NOW + timedelta(minutes=1)
QUEUED = MessageStatus(id="msg-s1", state=MessageState.QUEUED, accepted_at=NOW, updated_at=NOW)


class RecordingTable:
    """The few TableClient calls StatusStore makes, recorded; `error` makes each call raise it."""

    table_name = "mailstatus"

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.calls: list[tuple[str, Any, dict[str, Any]]] = []

    def create_table(self) -> None:
        self._call("create_table", None, {})

    def get_entity(self, partition_key: str, row_key: str) -> Any:
        self._call("get_entity", (partition_key, row_key), {})
        raise AssertionError("not reached in these tests")

    def create_entity(self, entity: dict[str, Any], **options: Any) -> dict[str, Any]:
        self._call("create_entity", entity, options)
        return {"etag": "etag-created"}

    def update_entity(self, entity: dict[str, Any], **options: Any) -> dict[str, Any]:
        self._call("update_entity", entity, options)
        return {"etag": "etag-updated"}

    def upsert_entity(self, entity: dict[str, Any], **options: Any) -> dict[str, Any]:
        self._call("upsert_entity", entity, options)
        return {"etag": "etag-upserted"}

    def delete_entity(self, partition_key: str, row_key: str, **options: Any) -> None:
        self._call("delete_entity", (partition_key, row_key), options)

    def query_entities(self, query: str, **options: Any) -> list[Any]:
        self._call("query_entities", query, options)
        return []

    def _call(self, name: str, argument: Any, options: dict[str, Any]) -> None:
        self.calls.append((name, argument, options))
        if self.error is not None:
            raise self.error


def store(table: RecordingTable) -> StatusStore:
    return StatusStore(cast(TableClient, table))


# --- the record ----------------------------------------------------------------------------


def test_should_move_a_record_to_a_new_state_keeping_what_it_knows() -> None:
    retrying = replace(QUEUED, attempts=2, next_attempt_at=NOW, last_error="503", etag="e1")

    sending = retrying.moved(MessageState.SENDING, LATER, attempts=3)

    assert (sending.state, sending.updated_at, sending.attempts) == (MessageState.SENDING, LATER, 3)
    assert (sending.id, sending.accepted_at, sending.last_error, sending.etag) == (
        "msg-s1",
        NOW,
        "503",
        "e1",
    )
    assert sending.next_attempt_at is None


def test_should_move_a_record_to_retrying_with_its_next_attempt_time() -> None:
    retrying = QUEUED.moved(MessageState.RETRYING, LATER, next_attempt_at=LATER)

    assert retrying.next_attempt_at == LATER


def test_should_call_sent_and_failed_final() -> None:
    assert {MessageState.SENT, MessageState.FAILED} == FINAL_STATES


def test_should_show_a_queued_record_with_only_its_basic_fields() -> None:
    assert QUEUED.to_document() == {
        "id": "msg-s1",
        "status": "queued",
        "attempts": 0,
        "accepted_at": "2026-03-02T09:30:00+00:00",
        "updated_at": "2026-03-02T09:30:00+00:00",
    }


def test_should_show_every_field_a_record_has() -> None:
    status = MessageStatus(
        id="msg-s2",
        state=MessageState.RETRYING,
        accepted_at=NOW,
        updated_at=LATER,
        attempts=3,
        next_attempt_at=LATER + timedelta(seconds=90),
        last_status_code=None,
        last_error="no answer from SendGrid: ReadTimeout",
        ambiguous=True,
        provider_message_id="sg-2",
        provider="sendgrid",
        providers_tried=("smtp", "sendgrid"),
        etag="never shown",
    )

    assert status.to_document() == {
        "id": "msg-s2",
        "status": "retrying",
        "attempts": 3,
        "accepted_at": "2026-03-02T09:30:00+00:00",
        "updated_at": "2026-03-02T09:31:00+00:00",
        "next_attempt_at": "2026-03-02T09:32:30+00:00",
        "last_error": {
            "status_code": None,
            "reason": "no answer from SendGrid: ReadTimeout",
            "ambiguous": True,
        },
        "provider_message_id": "sg-2",
        "sendgrid_message_id": "sg-2",
        "provider": "sendgrid",
        "providers_tried": ["smtp", "sendgrid"],
    }


def test_should_show_another_providers_id_apart_from_sendgrids() -> None:
    status = replace(QUEUED, provider_message_id="<id@example.com>", provider="smtp")

    document = status.to_document()

    assert document["provider_message_id"] == "<id@example.com>"
    assert "sendgrid_message_id" not in document


def test_should_show_a_last_error_that_has_only_a_status_code() -> None:
    status = replace(QUEUED, last_status_code=503)

    assert status.to_document()["last_error"] == {
        "status_code": 503,
        "reason": None,
        "ambiguous": False,
    }


UNVERIFIED = ProviderError(
    message="The from address does not match a verified Sender Identity.", field="from"
)


def test_should_show_a_failed_record_with_sendgrids_errors_and_whether_a_replay_helps() -> None:
    status = replace(
        QUEUED,
        state=MessageState.FAILED,
        last_status_code=403,
        last_error=f"SendGrid refused the message with 403: {UNVERIFIED}",
        provider_errors=(UNVERIFIED,),
        last_error_cause=SENDER_IDENTITY,
    )

    assert status.to_document()["last_error"] == {
        "status_code": 403,
        "reason": "SendGrid refused the message with 403: The from address does not match a "
        "verified Sender Identity. (field from)",
        "ambiguous": False,
        "provider_errors": [
            {
                "message": "The from address does not match a verified Sender Identity.",
                "field": "from",
            }
        ],
        **CAUSES[SENDER_IDENTITY].to_document(),
    }


@pytest.mark.parametrize(
    ("code", "ambiguous", "cause"),
    [
        (400, False, INVALID_REQUEST),
        (401, False, API_KEY),
        (503, False, "unavailable"),
        (None, True, "outcome_unknown"),
    ],
)
def test_should_advise_on_a_failed_record_written_before_causes_were_kept(
    code: int | None, ambiguous: bool, cause: str
) -> None:
    old = replace(
        QUEUED,
        state=MessageState.FAILED,
        last_status_code=code,
        last_error="SendGrid refused the message",
        ambiguous=ambiguous,
    )

    last_error = old.to_document()["last_error"]

    assert last_error["cause"] == cause
    assert last_error["replay"] == CAUSES[cause].replay.value
    assert "provider_errors" not in last_error


def test_should_show_an_old_failed_record_that_cannot_tell_its_cause_without_advice() -> None:
    old = replace(QUEUED, state=MessageState.FAILED, last_error="its body is missing")

    assert old.to_document()["last_error"] == {
        "status_code": None,
        "reason": "its body is missing",
        "ambiguous": False,
    }


def test_should_give_no_advice_while_a_message_is_still_retried() -> None:
    retrying = replace(
        QUEUED,
        state=MessageState.RETRYING,
        last_status_code=503,
        last_error="SendGrid answered 503: busy",
        provider_errors=(ProviderError(message="busy"),),
    )

    last_error = retrying.to_document()["last_error"]

    assert last_error["provider_errors"] == [{"message": "busy", "field": None}]
    assert not {"cause", "replay", "action"} & set(last_error)


# --- the store -----------------------------------------------------------------------------


def test_should_keep_sendgrids_errors_as_json_text_and_the_cause_in_the_row() -> None:
    table = RecordingTable()
    failed = replace(
        QUEUED,
        state=MessageState.FAILED,
        provider_errors=(UNVERIFIED,),
        last_error_cause=SENDER_IDENTITY,
    )

    store(table).put(failed)

    [(_, entity, _)] = table.calls
    assert json.loads(entity["provider_errors"]) == [UNVERIFIED.model_dump()]
    assert entity["last_error_cause"] == SENDER_IDENTITY


def test_should_write_one_row_per_message_without_empty_fields() -> None:
    table = RecordingTable()

    store(table).claim(QUEUED)

    [(_, entity, options)] = table.calls
    # Answered with the ETag alone, not the entity echoed back.
    assert options == {"response_preference": "return-no-content"}
    assert entity == {
        "PartitionKey": "msg-s1",
        "RowKey": "status",
        "state": "queued",
        "accepted_at": NOW,
        "updated_at": NOW,
        "attempts": 0,
        "ambiguous": False,
    }


def test_should_claim_a_record_only_if_its_etag_still_matches() -> None:
    table = RecordingTable()

    claimed = store(table).claim(replace(QUEUED, state=MessageState.SENDING, etag="etag-read"))

    [(name, _, options)] = table.calls
    assert name == "update_entity"
    assert options == {
        "mode": UpdateMode.REPLACE,
        "etag": "etag-read",
        "match_condition": MatchConditions.IfNotModified,
    }
    assert claimed.etag == "etag-updated"


def test_should_claim_a_record_nobody_wrote_by_inserting_it() -> None:
    table = RecordingTable()

    claimed = store(table).claim(QUEUED)

    assert [name for name, _, _ in table.calls] == ["create_entity"]
    assert claimed.etag == "etag-created"


def test_should_put_a_record_whatever_is_there() -> None:
    table = RecordingTable()

    written = store(table).put(replace(QUEUED, etag="old"))

    [(name, _, options)] = table.calls
    assert (name, options) == ("upsert_entity", {"mode": UpdateMode.REPLACE})
    assert written.etag == "etag-upserted"


@pytest.mark.parametrize(
    "error",
    [
        ResourceExistsError("EntityAlreadyExists"),
        ResourceModifiedError("UpdateConditionNotSatisfied"),
    ],
)
@pytest.mark.parametrize("etag", [None, "etag-read"])
def test_should_report_a_lost_claim_as_a_concurrent_update(
    error: Exception, etag: str | None
) -> None:
    with pytest.raises(ConcurrentUpdate, match="msg-s1"):
        store(RecordingTable(error)).claim(replace(QUEUED, etag=etag))


def test_should_return_a_record_inserted_by_a_claim_with_its_etag() -> None:
    assert store(RecordingTable()).claim(QUEUED) == replace(QUEUED, etag="etag-created")


def test_should_accept_a_table_that_already_exists() -> None:
    store(RecordingTable(ResourceExistsError("TableAlreadyExists"))).ensure_exists()


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.get("msg-s1"),
        lambda s: s.claim(QUEUED),
        lambda s: s.claim(replace(QUEUED, etag="e")),
        lambda s: s.put(QUEUED),
        lambda s: s.check(),
        lambda s: s.ensure_exists(),
    ],
    ids=["get", "claim new", "claim", "put", "check", "ensure_exists"],
)
def test_should_report_storage_unavailable_when_the_table_does_not_answer(call: Any) -> None:
    with pytest.raises(StorageUnavailable, match=r"msg-s1|mailstatus"):
        call(store(RecordingTable(ServiceRequestError("connection refused"))))


def test_should_read_a_missing_record_as_none() -> None:
    assert store(RecordingTable(ResourceNotFoundError("ResourceNotFound"))).get("msg-x") is None


def test_should_aim_the_store_at_the_configured_table_through_a_connection_string() -> None:
    settings = Settings.from_env(
        {
            **BASE_ENV,
            "AzureWebJobsStorage": "UseDevelopmentStorage=true",
            "STATUS_TABLE_NAME": "st1",
        }
    )

    table = StatusStore.from_settings(settings).table

    assert table.table_name == "st1"
    assert table.url.startswith("http://127.0.0.1:10002/devstoreaccount1")


def test_should_aim_an_identity_based_store_at_the_account_table_service() -> None:
    env = {k: v for k, v in BASE_ENV.items() if k != "AzureWebJobsStorage"}
    settings = Settings.from_env(
        {
            **env,
            "AzureWebJobsStorage__accountName": "mailgateprod",
            "AzureWebJobsStorage__credential": "managedidentity",
        }
    )

    table = StatusStore.from_settings(settings).table

    assert table.url.startswith("https://mailgateprod.table.core.windows.net")
    assert table.table_name == "mailstatus"
    assert isinstance(table.credential, ManagedIdentityCredential)


def test_should_show_a_failed_record_as_the_published_contract_describes_it() -> None:
    failed = replace(
        QUEUED,
        state=MessageState.FAILED,
        last_status_code=403,
        last_error="SendGrid refused the message with 403: not verified (field from)",
        provider_errors=(UNVERIFIED,),
        last_error_cause=SENDER_IDENTITY,
    )

    document = MessageStatusDocument.model_validate(failed.to_document())

    assert document.last_error is not None
    assert document.last_error.replay is Replay.AFTER_FIX


def test_should_keep_a_records_latest_outcomes_oldest_first_and_at_most_twenty() -> None:
    record = replace(QUEUED, state=MessageState.SENDING)
    for attempt in range(1, 26):
        record = record.concluded(MessageState.RETRYING, attempt, NOW + timedelta(minutes=attempt))
    record = record.concluded(MessageState.SENT, 26, LATER + timedelta(hours=1), attempts=26)

    assert (record.state, record.attempts) == (MessageState.SENT, 26)
    assert len(record.outcomes) == MAX_OUTCOMES == 20
    assert [o.attempt for o in record.outcomes] == list(range(7, 27))
    assert record.outcomes[-1] == Outcome(MessageState.SENT, 26, LATER + timedelta(hours=1))


def test_should_keep_outcomes_as_json_text_and_read_them_back() -> None:
    table = RecordingTable()
    record = QUEUED.concluded(MessageState.RETRYING, 1, NOW).concluded(MessageState.SENT, 2, LATER)

    store(table).put(record)

    [(_, entity, _)] = table.calls
    assert json.loads(entity["outcomes"]) == [
        ["retrying", 1, NOW.isoformat()],
        ["sent", 2, LATER.isoformat()],
    ]
    read = TableEntity(entity)
    read._metadata = {"etag": "e", "timestamp": None}
    assert _from_entity(read).outcomes == record.outcomes


@pytest.mark.parametrize(
    "text",
    ["not json", '{"a": 1}', '[["exploded", 1, "2026-03-02T09:30:00+00:00"]]', "[[1, 2]]", 7],
)
def test_should_read_outcomes_it_cannot_understand_as_none(text: object) -> None:
    read = TableEntity(
        {
            "PartitionKey": "m",
            "state": "sent",
            "accepted_at": NOW,
            "updated_at": NOW,
            "outcomes": text,
        }
    )
    read._metadata = {"etag": "e", "timestamp": None}

    assert _from_entity(read).outcomes == ()


def test_should_keep_the_providers_tried_and_the_sender_and_read_them_back() -> None:
    table = RecordingTable()
    record = replace(
        QUEUED.concluded(MessageState.SENT, 2, LATER),
        provider="smtp",
        providers_tried=("sendgrid", "smtp"),
    )

    store(table).put(record)

    [(_, entity, _)] = table.calls
    assert entity["providers_tried"] == "sendgrid,smtp"
    assert entity["provider"] == "smtp"
    read = TableEntity(entity)
    read._metadata = {"etag": "e", "timestamp": None}
    back = _from_entity(read)
    assert (back.provider, back.providers_tried) == ("smtp", ("sendgrid", "smtp"))


def test_should_add_a_provider_tried_once_in_the_order_first_used() -> None:
    record = replace(QUEUED, providers_tried=("sendgrid", "smtp"))

    assert record.tried("sendgrid") == ("sendgrid", "smtp")
    assert replace(QUEUED).tried("smtp") == ("smtp",)


def test_should_keep_the_providers_skipped_and_read_them_back() -> None:
    table = RecordingTable()
    record = replace(
        QUEUED.concluded(MessageState.SENT, 1, LATER),
        provider="smtp",
        providers_tried=("smtp",),
        providers_skipped=("sendgrid",),
    )

    store(table).put(record)

    [(_, entity, _)] = table.calls
    assert entity["providers_skipped"] == "sendgrid"
    read = TableEntity(entity)
    read._metadata = {"etag": "e", "timestamp": None}
    assert _from_entity(read).providers_skipped == ("sendgrid",)
    assert record.to_document()["providers_skipped"] == ["sendgrid"]
    assert "providers_skipped" not in QUEUED.to_document()


def test_should_add_providers_skipped_once_in_the_order_first_skipped() -> None:
    record = replace(QUEUED, providers_skipped=("sendgrid",))

    assert record.skipped(("smtp", "sendgrid")) == ("sendgrid", "smtp")
