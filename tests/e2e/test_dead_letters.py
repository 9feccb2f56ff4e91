"""End to end: the dead-letter routes on the local host, on a large poison queue and on a message
the host itself moved there."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ResourceExistsError
from azure.data.tables import TableClient
from azure.storage.queue import QueueClient, TextBase64EncodePolicy

import admin.__main__ as admin_main
from devstack.azurite import Azurite
from devstack.sendgrid_standin import SendGridStandIn
from shared.models import DeadLetter
from shared.poison_walk import MAX_PAGE_LIMIT
from shared.settings import MAX_DEQUEUE_COUNT_SETTING, Settings
from shared.status import MessageState, StatusStore
from tests.e2e.conftest import Queues, RunningHost, gateway_settings, wait_for
from tests.samples import envelope

DEAD_LETTERS = 2000
# The front end's limit is 230 s; every call must answer far inside it. A generous bound for a
# slow, shared machine, not a benchmark.
CALL_SECONDS = 30.0
HOST_MOVED_QUEUE = "mail-hostmoved"
HOST_MAX_DEQUEUE_COUNT = 2


def fill_poison_queue(azurite: Azurite, queues: Queues, ids: list[str], client: str) -> None:
    """Dead letters of `client` as the gateway writes them (base64 envelopes with their reason),
    quickly; from a sender the client and ALLOWED_SENDERS allow, as a replay checks again."""
    poison = QueueClient.from_connection_string(
        azurite.connection_string,
        queues.poison.queue_name,
        message_encode_policy=TextBase64EncodePolicy(),
    )
    with contextlib.suppress(ResourceExistsError):
        poison.create_queue()
    record = DeadLetter(
        reason="SendGrid refused the message with 400",
        status_code=400,
        attempts=1,
        at=datetime.now(timezone.utc),
    )
    sender: dict[str, Any] = {"from": "app@example.com"}
    texts = [
        envelope(id=id, **sender)
        .model_copy(update={"client": client, "dead_letter": record})
        .to_json()
        for id in ids
    ]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(poison.send_message, texts))


def walk(stack: RunningHost, method: str, path: str, body: dict[str, Any] | None) -> list[Any]:
    """Every call of one walk, following its continuation: (document, seconds) each."""
    calls: list[Any] = []
    continuation = None
    while True:
        if method == "GET":
            params = {"limit": str(MAX_PAGE_LIMIT)}
            if continuation is not None:
                params["continuation"] = continuation
            request: dict[str, Any] = {"params": params}
        else:
            payload = {**(body or {}), "limit": MAX_PAGE_LIMIT}
            if continuation is not None:
                payload["continuation"] = continuation
            request = {"json": payload}
        started = time.monotonic()
        response = stack.admin(method, path, **request)
        seconds = time.monotonic() - started
        assert response.status_code == 200, response.text
        document = response.json()
        calls.append((document, seconds))
        continuation = document["continuation"]
        if continuation is None:
            return calls
        assert len(calls) < 100, "the walk does not end"


def sent_ids(standin: SendGridStandIn) -> Counter[str]:
    """How many mails the stand-in accepted for each gateway id."""
    return Counter(
        mail["payload"]["personalizations"][0]["custom_args"]["mailgate_id"]
        for mail in standin.mails()
    )


def test_should_walk_2000_dead_letters_in_calls_well_within_the_limit_and_replay_each_once(
    azurite: Azurite, stack: RunningHost, standin: SendGridStandIn, queues: Queues
) -> None:
    ids = [f"dl-{number:04}-{uuid.uuid4().hex[:8]}" for number in range(DEAD_LETTERS)]
    # As after the gateway's first accept, which dead letters follow: its status table exists.
    StatusStore.from_settings(Settings.from_env(stack.settings)).ensure_exists()
    fill_poison_queue(azurite, queues, ids, stack.client_name)

    listing = walk(stack, "GET", "/api/v1/dead-letters", None)
    replay = walk(stack, "POST", "/api/v1/dead-letters/replay", {"all": True})

    listed = Counter(d["id"] for document, _ in listing for d in document["dead_letters"])
    assert listed == Counter(ids)  # each once
    assert len(listing) >= DEAD_LETTERS // MAX_PAGE_LIMIT
    replayed = [id for document, _ in replay for id in document["done"]]
    assert Counter(replayed) == Counter(ids)
    assert all(document["skipped"] == {} for document, _ in replay)
    slowest = max(seconds for _, seconds in listing + replay)
    print(
        f"{DEAD_LETTERS} dead letters: listing calls "
        + ", ".join(f"{len(d['dead_letters'])} in {s:.1f} s" for d, s in listing)
        + "; replay calls "
        + ", ".join(f"{len(d['done'])} in {s:.1f} s" for d, s in replay)
    )
    assert slowest < CALL_SECONDS
    # The host delivers the replayed copies: every message is sent, and only once.
    wait_for(lambda: len(standin.mails()) >= DEAD_LETTERS, timeout=240, interval=1.0)
    time.sleep(2.5)  # a second send of any would show up within two polling intervals
    assert sent_ids(standin) == Counter(ids)
    assert queues.peek(queues.poison) == []
    statuses = TableClient.from_connection_string(azurite.connection_string, "mailstatuse2e")
    states = Counter(
        statuses.get_entity(id, "status")["state"] for id in ids[:: DEAD_LETTERS // 20]
    )
    assert states == Counter({MessageState.SENT.value: 20})


# --- a message the host moved: the reason says after how many dequeues ----------------------


@pytest.fixture
def host_moving_early(
    azurite: Azurite, standin: SendGridStandIn, tmp_path: Path
) -> Iterator[RunningHost]:
    """A gateway on a queue of its own whose host retries a failed message at once and moves
    it to poison after two dequeues: host.json overridden by app settings, as Azure allows."""
    settings = {
        **gateway_settings(azurite.connection_string, standin),
        "MAIL_QUEUE_NAME": HOST_MOVED_QUEUE,
        MAX_DEQUEUE_COUNT_SETTING: str(HOST_MAX_DEQUEUE_COUNT),
        "AzureFunctionsJobHost__extensions__queues__visibilityTimeout": "00:00:00",
    }
    running = RunningHost(settings, tmp_path)
    yield running
    running.stop()


def test_should_list_a_message_the_host_moved_with_the_hosts_dequeue_count(
    host_moving_early: RunningHost,
    standin: SendGridStandIn,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = Settings.from_env(host_moving_early.settings)
    queues = Queues(settings.storage.connection_string or "", HOST_MOVED_QUEUE)
    queues.clear()
    message_id = f"hm-{uuid.uuid4().hex[:12]}"
    # Raw text, not base64: the host cannot decode it and moves it to the poison queue without
    # calling the function, as the real host does (PLATFORM.md), its log saying it reached
    # MaxDequeueCount. (A function that fails now puts its message back rather than raising into
    # the host; only the host's own moves land in poison without a reason.)
    queues.mail.send_message(
        envelope(id=message_id, accepted_at=datetime.now(timezone.utc)).to_json()
    )

    wait_for(lambda: queues.poison_records(), timeout=20)

    reason = (
        f"moved to the poison queue by the Functions host after {HOST_MAX_DEQUEUE_COUNT} dequeues"
    )
    assert f"reached MaxDequeueCount of {HOST_MAX_DEQUEUE_COUNT}" in host_moving_early.log()
    listed = host_moving_early.admin("GET", "/api/v1/dead-letters").json()["dead_letters"]
    assert [(d["id"], d["reason"], d["cause"]) for d in listed] == [
        (message_id, reason, "host_moved")
    ]
    # `make poison FORMAT=json`: the operator command with the same app settings.
    for name, value in host_moving_early.settings.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    assert admin_main.main(["list", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)["dead_letters"]
    assert printed == listed
