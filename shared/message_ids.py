"""Message ids: UUIDv7s that say when, and for which client, the gateway accepted a message.

An accept makes one storage call, the enqueue. The message's status record is written by its
delivery's first attempt (shared/delivery.py claims the message by inserting it), so for as long
as a message waits on the queue it has no record, and the status route answers from its id:
`queued`, at the time the id carries, for the client the id was given to. So an id holds

    48 bits  the accept's time in Unix milliseconds (RFC 9562's UUIDv7 `unix_ts_ms`)
     4 bits  version 7
    12 bits  random (`rand_a`)
     2 bits  variant 0b10
    30 bits  random
    32 bits  check: BLAKE2b (4 bytes) of the 12 bytes before it and the client's name

The check is no secret and needs none. It binds the id to the client's name, so that a mistyped
id, or one of another client's, reads as unknown (404) rather than `queued`; whoever computes a
check themselves can only make the gateway tell *them* that a message nobody sent is queued.
The first 48 bits keep the ids time-ordered, so the records of the messages accepted before a
cutoff are one range of partition keys (shared/status_retention.py). The 42 random bits come
from `secrets`, a CSPRNG: two of 1,000 ids made in the same millisecond are alike about once in
10^7 such milliseconds, and an id is still not guessed (a status is shown only to its client).

Ids made before the check (UUIDv7s from the uuid6 package, uuid4s before them) stay valid: their
accept wrote a record, so they never need reading this way.

A storage call about one message (its queue writes, its status record, its delivery events, its
idempotency key) carries the message's id as its client request id, the
`x-ms-client-request-id` header, which Azure Storage's resource logs keep as `ClientRequestId`
(Microsoft Learn, Azure Monitor reference, StorageQueueLogs / StorageTableLogs). So an operator
finds every storage request the gateway made for a message in Log Analytics (infra/ sends the
queue, table and blob logs there) with `where ClientRequestId == "<id>"`, among them the ones
whose URL does not name it: the enqueue, the put-backs, the dead letter, the status record's
insert and the event transactions. Blob names carry the id already (shared/blobs.py).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from datetime import datetime, timedelta, timezone

# How far ahead of this instance's clock an id's time may be: another instance's clock may run
# ahead by a little. An id further ahead is not one the gateway gave.
CLOCK_SKEW = timedelta(minutes=5)
_CHECK_BYTES = 4
_CHECKED_BYTES = 16 - _CHECK_BYTES
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# The ids the gateway gives messages: UUIDv7s, uuid4s before; any lowercase UUID is taken, so
# that the ids of both stay valid.
MESSAGE_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def accept_time(now: datetime) -> datetime:
    """`now` to the millisecond, the precision an id keeps: the accept's time, as its record and
    its id both say it."""
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def new_message_id(accepted_at: datetime, client: str) -> str:
    """A fresh id for a message accepted at `accepted_at` (to the millisecond) for `client`."""
    milliseconds = (accepted_at - _EPOCH) // timedelta(milliseconds=1)
    head = bytearray(milliseconds.to_bytes(6, "big") + secrets.token_bytes(_CHECKED_BYTES - 6))
    head[6] = 0x70 | (head[6] & 0x0F)  # version 7
    head[8] = 0x80 | (head[8] & 0x3F)  # variant 0b10
    return str(uuid.UUID(bytes=bytes(head) + _check(bytes(head), client)))


def accepted_at(message_id: str, client: str) -> datetime | None:
    """When the gateway accepted the message `message_id` (a lowercase UUID) for `client`, as
    its id says; None if the gateway did not give that id to that client."""
    raw = uuid.UUID(message_id).bytes
    head, check = raw[:_CHECKED_BYTES], raw[_CHECKED_BYTES:]
    if raw[6] >> 4 != 7 or raw[8] >> 6 != 0b10:
        return None
    if not secrets.compare_digest(check, _check(head, client)):
        return None
    return _EPOCH + timedelta(milliseconds=int.from_bytes(raw[:6], "big"))


def waiting_since(
    message_id: str, client: str, now: datetime, retention: timedelta
) -> datetime | None:
    """When a message with no status record was accepted for `client`, if it may still be
    waiting on the queue: its id is one the gateway gave `client`, no later than `now` (give or
    take CLOCK_SKEW) and within `retention` (after that its record, had it one, is gone; the
    cutoff's own millisecond stays, as in shared/status_retention.py)."""
    at = accepted_at(message_id, client)
    if at is None or not now - retention <= at <= now + CLOCK_SKEW:
        return None
    return at


def storage_request_id(message_id: str | None) -> str | None:
    """The client request id of a storage call about the message `message_id`: the id itself
    if it has the shape of one the gateway gives, else None (the SDK then makes one up).

    An envelope's id is whatever its queue message says: only an id of that shape, 36
    characters the header takes as they are, goes into a request.
    """
    if message_id is not None and MESSAGE_ID.fullmatch(message_id):
        return message_id
    return None


def _check(head: bytes, client: str) -> bytes:
    digest = hashlib.blake2b(head, digest_size=_CHECK_BYTES, person=b"mailgate-id")
    digest.update(client.encode())
    return digest.digest()
