"""Message status records in Azure Table storage: what became of every accepted message."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import TableClient, UpdateMode
from pydantic import TypeAdapter, ValidationError

from shared.errors import ConcurrentUpdate, MessageNotFound, StorageUnavailable
from shared.message_ids import MESSAGE_ID, storage_request_id, waiting_since
from shared.models import ProviderError
from shared.queue import storage_transport, token_credential
from shared.replay_advice import Advice, advice_for, classify
from shared.settings import Settings

logger = logging.getLogger(__name__)

STATUS_ROW = "status"
# Insert Entity answers 201 with the entity echoed back unless the request says
# `Prefer: return-no-content` (Microsoft's Table service REST reference, "Insert Entity"); then
# 204 with the ETag, nothing to parse: 0.08-0.1 ms of CPU less per insert. The SDK's
# create_entity passes it on to its generated operation as `response_preference`.
NO_ECHO: dict[str, Any] = {"response_preference": "return-no-content"}
_RETRY_OPTIONS: dict[str, Any] = {"retry_total": 2, "retry_backoff_factor": 0.5}


def known_message_id(text: str) -> str:
    """`text` as the gateway writes message ids (a lowercase UUID); MessageNotFound if it is
    not one.

    Checked before any lookup: anything else names no message, and some characters (`/`, `\\`,
    `#`, `?`, control characters) are not allowed in a table key at all (Microsoft's Table
    service data model, "Characters disallowed in key fields"), so that the service would refuse
    the read itself: a 503 and an ERROR for what is a mere unknown id. (Azurite takes them.)
    """
    message_id = text.lower()
    if not MESSAGE_ID.fullmatch(message_id):
        # Not echoed: it is the caller's text, of any length.
        raise MessageNotFound("no message has the id given: the gateway's message ids are UUIDs")
    return message_id


class MessageState(str, Enum):
    """Where a message is: queued → sending → sent, or retrying, or failed (dead-lettered)."""

    QUEUED = "queued"
    SENDING = "sending"
    RETRYING = "retrying"
    SENT = "sent"
    FAILED = "failed"


FINAL_STATES = frozenset({MessageState.SENT, MessageState.FAILED})
# A record keeps its latest delivery outcomes, at most this many (MAX_DELIVERY_ATTEMPTS may be
# up to 100): the console's view of one message reads them here, in the one row it reads anyway.
MAX_OUTCOMES = 20


@dataclass(frozen=True)
class Outcome:
    """One delivery outcome of a message: sent, retried or dead-lettered at an attempt."""

    state: MessageState
    attempt: int
    at: datetime

    def to_document(self) -> dict[str, Any]:
        """The outcome as the console's JSON shows it."""
        return {"state": self.state.value, "attempt": self.attempt, "at": self.at.isoformat()}


@dataclass(frozen=True)
class MessageStatus:
    """One message's status record."""

    id: str
    state: MessageState
    accepted_at: datetime
    updated_at: datetime
    attempts: int = 0
    next_attempt_at: datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    # SendGrid's own errors of the last attempt (bounded, masked), and once the message failed
    # the cause (shared/replay_advice.py); records from before them have neither.
    provider_errors: tuple[ProviderError, ...] = ()
    last_error_cause: str | None = None
    # The last attempt timed out after sending: SendGrid may have accepted the mail.
    ambiguous: bool = False
    provider_message_id: str | None = None
    # The client that submitted the message: only it may read this record.
    client: str | None = None
    # Its latest delivery outcomes, oldest first (records from before them have none).
    outcomes: tuple[Outcome, ...] = ()
    # The provider that sent it, and every provider an attempt used, in the order first used
    # (shared/providers.py); records from before providers have neither.
    provider: str | None = None
    providers_tried: tuple[str, ...] = ()
    # Providers an attempt passed over because their circuit breaker was open (shared/breaker.py),
    # in the order first passed over.
    providers_skipped: tuple[str, ...] = ()
    etag: str | None = None

    @classmethod
    def queued(cls, message_id: str, accepted_at: datetime, client: str | None) -> MessageStatus:
        """The record as the accept writes it. Delivery's first attempt claims that record by
        its ETag without reading it, so this is also what it assumes the record holds."""
        return cls(
            id=message_id,
            state=MessageState.QUEUED,
            accepted_at=accepted_at,
            updated_at=accepted_at,
            client=client,
        )

    def moved(self, state: MessageState, now: datetime, **changes: Any) -> MessageStatus:
        """The same record in a new state; next_attempt_at is cleared unless given."""
        return replace(self, state=state, updated_at=now, **{"next_attempt_at": None, **changes})

    def concluded(
        self, state: MessageState, attempt: int, now: datetime, **changes: Any
    ) -> MessageStatus:
        """The record moved to the outcome of `attempt` (sent, retrying or failed), with that
        outcome added to its latest ones."""
        outcomes = (*self.outcomes, Outcome(state, attempt, now))[-MAX_OUTCOMES:]
        return self.moved(state, now, outcomes=outcomes, **changes)

    def tried(self, provider: str) -> tuple[str, ...]:
        """The providers tried, with `provider` added if it is new."""
        return (
            self.providers_tried
            if provider in self.providers_tried
            else (
                *self.providers_tried,
                provider,
            )
        )

    def skipped(self, providers: tuple[str, ...]) -> tuple[str, ...]:
        """The providers skipped, with `providers` added where new."""
        return (*self.providers_skipped, *(p for p in providers if p not in self.providers_skipped))

    def to_document(self) -> dict[str, Any]:
        """The record as `GET /api/v1/messages/{id}` shows it."""
        document: dict[str, Any] = {
            "id": self.id,
            "status": self.state.value,
            "attempts": self.attempts,
            "accepted_at": self.accepted_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }
        if self.next_attempt_at is not None:
            document["next_attempt_at"] = self.next_attempt_at.isoformat()
        if self.last_error is not None or self.last_status_code is not None:
            last_error: dict[str, Any] = {
                "status_code": self.last_status_code,
                "reason": self.last_error,
                "ambiguous": self.ambiguous,
            }
            if self.provider_errors:
                last_error["provider_errors"] = [e.model_dump() for e in self.provider_errors]
            advice = self.advice()
            if advice is not None:
                last_error.update(advice.to_document())
            document["last_error"] = last_error
        if self.provider_message_id is not None:
            document["provider_message_id"] = self.provider_message_id
            # As before other providers existed, for SendGrid's id only.
            if self.provider in (None, "sendgrid"):
                document["sendgrid_message_id"] = self.provider_message_id
        if self.provider is not None:
            document["provider"] = self.provider
        if self.providers_tried:
            document["providers_tried"] = list(self.providers_tried)
        if self.providers_skipped:
            document["providers_skipped"] = list(self.providers_skipped)
        return document

    def advice(self) -> Advice | None:
        """Whether a replay can help a failed message, and what to do first; for a record
        written before causes were kept, what its status code tells."""
        if self.state is not MessageState.FAILED:
            return None
        cause = self.last_error_cause or classify(
            self.last_status_code, self.provider_errors, ambiguous=self.ambiguous
        )
        return advice_for(cause)


def write_unless_changed(
    table: TableClient, entity: dict[str, Any], etag: str | None
) -> str | None:
    """Insert `entity` if `etag` is None, else replace it only while it still has `etag`; its
    new ETag. ResourceExistsError or ResourceModifiedError when another writer came first."""
    if etag is None:
        metadata = table.create_entity(entity, **NO_ECHO)
    else:
        metadata = table.update_entity(
            entity,
            mode=UpdateMode.REPLACE,
            etag=etag,
            match_condition=MatchConditions.IfNotModified,
        )
    written = metadata.get("etag")
    return written if isinstance(written, str) else None


def waiting_status(
    message_id: str, client: str, now: datetime, retention: timedelta
) -> MessageStatus | None:
    """The `queued` status of a message with no record yet (no delivery attempt has claimed
    it), as its id tells it; None unless the id says the gateway accepted it for `client`
    within `retention` (shared/message_ids.py)."""
    at = waiting_since(message_id, client, now, retention)
    return None if at is None else MessageStatus.queued(message_id, at, client)


# The retention's own rows in the status table (shared/status_retention.py): where expiry got
# to, and a row per replayed message, whose record is kept for STATUS_RETENTION_DAYS from its
# replay rather than from its acceptance.
RETENTION_PARTITION = "retention"
REPLAYED_ROW_PREFIX = "replayed-"


def by_message(message_id: str | None) -> dict[str, Any]:
    """The options of a table call about one message: its id as the call's client request id,
    so that Storage's logs name it (shared/message_ids.py). azure-core's RequestIdPolicy takes
    it as `request_id`; without one it makes up a uuid1 as before."""
    request_id = storage_request_id(message_id)
    return {} if request_id is None else {"request_id": request_id}


class StatusStore:
    """Reads and writes status records; one row per message, keyed by the message id."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    @classmethod
    def from_settings(cls, settings: Settings) -> StatusStore:
        """A store on the configured account's status table."""
        return cls(table_client(settings, settings.status_table_name))

    @property
    def table(self) -> TableClient:
        """The underlying table, shared with the idempotency records."""
        return self._table

    def ensure_exists(self) -> None:
        """Create the table if it is missing."""
        try:
            self._table.create_table()
        except ResourceExistsError:
            pass
        except AzureError as error:
            raise StorageUnavailable(f"cannot create table {self._table.table_name}") from error

    def get(self, message_id: str) -> MessageStatus | None:
        """The record of a message, or None if there is none."""
        try:
            entity = self._table.get_entity(message_id, STATUS_ROW, **by_message(message_id))
        except ResourceNotFoundError:
            return None
        except AzureError as error:
            raise StorageUnavailable(f"status of {message_id}: {type(error).__name__}") from error
        return _from_entity(entity)

    def claim(self, status: MessageStatus) -> MessageStatus:
        """Write a record only if nobody changed it since it was read (insert if new)."""
        try:
            if status.etag is None:
                # Insert Entity answers 409 Conflict when the row exists (Microsoft's Table
                # service REST reference, "Insert Entity"; the SDK raises ResourceExistsError):
                # a first delivery attempt's claim (shared/delivery.py) rests on it.
                metadata = self._table.create_entity(
                    _to_entity(status), **NO_ECHO, **by_message(status.id)
                )
            else:
                metadata = self._table.update_entity(
                    _to_entity(status),
                    mode=UpdateMode.REPLACE,
                    etag=status.etag,
                    match_condition=MatchConditions.IfNotModified,
                    **by_message(status.id),
                )
        except (ResourceExistsError, ResourceModifiedError) as error:
            raise ConcurrentUpdate(f"status of {status.id} changed meanwhile") from error
        except AzureError as error:
            raise StorageUnavailable(f"status of {status.id}: {type(error).__name__}") from error
        return replace(status, etag=metadata.get("etag"))

    def put(self, status: MessageStatus) -> MessageStatus:
        """Write a record whatever is there (the writer owns the message now)."""
        try:
            metadata = self._table.upsert_entity(
                _to_entity(status), mode=UpdateMode.REPLACE, **by_message(status.id)
            )
        except AzureError as error:
            raise StorageUnavailable(f"status of {status.id}: {type(error).__name__}") from error
        return replace(status, etag=metadata.get("etag"))

    def mark_replayed(self, message_id: str, at: datetime) -> None:
        """Note that an operator replayed the message at `at`, so that expiry keeps its record
        for the whole retention from then (written before the record itself)."""
        try:
            self._table.upsert_entity(
                {
                    "PartitionKey": RETENTION_PARTITION,
                    "RowKey": REPLAYED_ROW_PREFIX + message_id,
                    "replayed_at": at,
                },
                mode=UpdateMode.REPLACE,
                **by_message(message_id),
            )
        except AzureError as error:
            raise StorageUnavailable(f"status of {message_id}: {type(error).__name__}") from error

    def check(self) -> None:
        """Raise StorageUnavailable unless the table answers."""
        try:
            next(
                iter(self._table.query_entities("PartitionKey eq 'health'", results_per_page=1)),
                None,
            )
        except ResourceNotFoundError:
            pass  # not created yet: the first message creates it
        except AzureError as error:
            raise StorageUnavailable(
                f"table {self._table.table_name}: {type(error).__name__}"
            ) from error


def table_client(settings: Settings, name: str) -> TableClient:
    """A client for one table of the configured account, on the process's storage transport."""
    storage = settings.storage
    if storage.connection_string:
        return TableClient.from_connection_string(
            storage.connection_string, name, transport=storage_transport(), **_RETRY_OPTIONS
        )
    assert storage.table_service_uri is not None
    return TableClient(
        storage.table_service_uri,
        name,
        credential=token_credential(storage),
        transport=storage_transport(),
        **_RETRY_OPTIONS,
    )


_STORED_FIELDS = tuple(f for f in fields(MessageStatus) if f.name not in ("id", "etag"))


def _to_entity(status: MessageStatus) -> dict[str, Any]:
    # Shallow: every field is a plain value (asdict's deep copies cost more than the write).
    values = {f.name: getattr(status, f.name) for f in _STORED_FIELDS}
    values["state"] = status.state.value
    values["provider_errors"] = (
        json.dumps([e.model_dump() for e in status.provider_errors])
        if status.provider_errors
        else None
    )
    values["providers_tried"] = ",".join(status.providers_tried) if status.providers_tried else None
    values["providers_skipped"] = (
        ",".join(status.providers_skipped) if status.providers_skipped else None
    )
    values["outcomes"] = (
        json.dumps([[o.state.value, o.attempt, o.at.isoformat()] for o in status.outcomes])
        if status.outcomes
        else None
    )
    # Tables store no nulls: leave empty fields out.
    return {
        "PartitionKey": status.id,
        "RowKey": STATUS_ROW,
        **{k: v for k, v in values.items() if v is not None},
    }


def _from_entity(entity: Any) -> MessageStatus:
    return MessageStatus(
        id=entity["PartitionKey"],
        state=MessageState(entity["state"]),
        accepted_at=entity["accepted_at"],
        updated_at=entity["updated_at"],
        attempts=int(entity.get("attempts", 0)),
        next_attempt_at=entity.get("next_attempt_at"),
        last_status_code=entity.get("last_status_code"),
        last_error=entity.get("last_error"),
        provider_errors=_provider_errors(entity.get("provider_errors")),
        last_error_cause=entity.get("last_error_cause"),
        ambiguous=bool(entity.get("ambiguous", False)),
        provider_message_id=entity.get("provider_message_id"),
        client=entity.get("client"),
        outcomes=_outcomes(entity.get("outcomes")),
        provider=entity.get("provider"),
        providers_tried=_providers_tried(entity.get("providers_tried")),
        providers_skipped=_providers_tried(entity.get("providers_skipped")),
        etag=entity.metadata.get("etag"),
    )


_PROVIDER_ERRORS = TypeAdapter(list[ProviderError])


def _provider_errors(text: Any) -> tuple[ProviderError, ...]:
    # Kept as JSON text (a table has no lists); anything else reads as none.
    try:
        return tuple(_PROVIDER_ERRORS.validate_json(text)) if isinstance(text, str) else ()
    except ValidationError:
        return ()


def _providers_tried(text: Any) -> tuple[str, ...]:
    # Kept as comma-separated text (a table has no lists).
    return tuple(p for p in text.split(",") if p) if isinstance(text, str) else ()


def _outcomes(text: Any) -> tuple[Outcome, ...]:
    # Kept as JSON text, [[state, attempt, at], ...]; anything unreadable reads as none, since
    # they only feed the console's view and the record's other fields stay the truth.
    try:
        items = json.loads(text) if isinstance(text, str) else []
        return tuple(
            Outcome(MessageState(state), int(attempt), datetime.fromisoformat(at))
            for state, attempt, at in items[-MAX_OUTCOMES:]
        )
    except (TypeError, ValueError):
        return ()
