"""The client store on an in-memory table: keys, authentication, senders and the rate counter."""

from __future__ import annotations

import random
import threading
from dataclasses import replace
from typing import Any

import pytest

from shared.clients import (
    CLIENT_CHECK_SECONDS,
    CLIENT_ROW,
    WINDOW_SECONDS,
    Client,
    ClientStore,
    bearer_key,
    client_name_of,
)
from shared.errors import (
    ClientError,
    InvalidMessage,
    RateLimited,
    StorageUnavailable,
    Unauthorized,
)
from tests.fakes import Clock, FakeTableClient, client_store

# 12:00:15 on some day: 45 s left in the minute's window.
START = 1_790_000_000 // 60 * 60 + 15.0


@pytest.fixture
def table() -> FakeTableClient:
    return FakeTableClient("clients")


@pytest.fixture
def clock() -> Clock:
    return Clock(START)


@pytest.fixture
def store(table: FakeTableClient, clock: Clock) -> ClientStore:
    return client_store(table, clock)


def bearer(key: str) -> str:
    return f"Bearer {key}"


# ---- creating ---------------------------------------------------------------------------------


def test_should_create_a_client_whose_key_names_it_and_is_stored_only_as_a_digest(
    store: ClientStore, table: FakeTableClient
) -> None:
    client, key = store.create("billing", "noreply@example.com, @Example.org", 120)

    assert key.startswith("mg_billing_")
    assert client_name_of(key) == "billing"
    assert (client.name, client.senders, client.rate_per_minute, client.enabled) == (
        "billing",
        ("noreply@example.com", "@example.org"),
        120,
        True,
    )
    row = table.rows[("billing", CLIENT_ROW)]
    assert all(key not in str(value) for value in row.values())
    assert row["key_digest"].startswith("sha256:")


def test_should_make_a_different_key_every_time(store: ClientStore) -> None:
    _, first = store.create("one", "@example.com")
    _, second = store.create("two", "@example.com")

    assert first.split("_", 2)[2] != second.split("_", 2)[2]


def test_should_refuse_a_name_that_is_taken(store: ClientStore) -> None:
    store.create("billing", "@example.com")

    with pytest.raises(ClientError, match="'billing' exists already"):
        store.create("billing", "@example.org")


@pytest.mark.parametrize(
    ("name", "senders", "rate", "complaint"),
    [
        ("Billing", "@example.com", 10, "client name 'Billing'"),
        ("-billing", "@example.com", 10, "client name"),
        ("bill_ing", "@example.com", 10, "client name"),
        ("b" * 41, "@example.com", 10, "client name"),
        ("billing", "", 10, "SENDERS is empty"),
        ("billing", "@example.com,example.com", 10, "SENDERS entry 2 is neither"),
        ("billing", "@example.com", 0, "the rate must be 1 to"),
    ],
)
def test_should_refuse_a_bad_client_naming_what_is_wrong(
    store: ClientStore, table: FakeTableClient, name: str, senders: str, rate: int, complaint: str
) -> None:
    with pytest.raises(ClientError, match=complaint):
        store.create(name, senders, rate)

    assert table.rows == {}


def test_should_list_clients_without_their_keys(store: ClientStore) -> None:
    store.create("zeta", "@example.com")
    store.create("alpha", "a@example.com", 5)

    listed = [c.describe() for c in store.all()]

    assert [c["name"] for c in listed] == ["alpha", "zeta"]
    assert listed[0]["senders"] == ["a@example.com"]
    assert all("key" not in field for c in listed for field in c)


# ---- authenticating ---------------------------------------------------------------------------


def test_should_authenticate_the_client_a_key_belongs_to(store: ClientStore) -> None:
    created, key = store.create("billing", "@example.com")

    assert store.authenticate(bearer(key)).name == created.name
    assert store.authenticate(f"bearer  {key} ").name == created.name


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Token mg_billing_x",
        "Bearer two words",
    ],
    ids=["missing", "empty", "no key", "blank key", "basic", "other scheme", "two words"],
)
def test_should_refuse_a_missing_or_malformed_header(
    store: ClientStore, header: str | None
) -> None:
    store.create("billing", "@example.com")

    with pytest.raises(Unauthorized) as caught:
        store.authenticate(header)

    assert caught.value.status == 401
    assert caught.value.headers["WWW-Authenticate"].startswith("Bearer")


def test_should_refuse_unknown_wrong_and_disabled_keys(store: ClientStore) -> None:
    _, key = store.create("billing", "@example.com")
    secret = key.removeprefix("mg_billing_")
    wrong_secret = "mg_billing_" + ("A" if secret[0] != "A" else "B") + secret[1:]

    for unknown in (wrong_secret, "mg_nobody_" + secret, "SG.some-sendgrid-key", "mg_billing_"):
        with pytest.raises(Unauthorized, match="not valid"):
            store.authenticate(bearer(unknown))

    store.set_enabled("billing", False)
    with pytest.raises(Unauthorized, match="'billing' is disabled"):
        store.authenticate(bearer(key))

    store.set_enabled("billing", True)
    assert store.authenticate(bearer(key)).enabled


def test_should_retire_the_old_key_when_rotating(store: ClientStore) -> None:
    _, old = store.create("billing", "@example.com")

    rotated, new = store.rotate("billing")

    assert new != old
    assert store.authenticate(bearer(new)).name == rotated.name
    with pytest.raises(Unauthorized):
        store.authenticate(bearer(old))


def test_should_refuse_to_change_a_client_that_does_not_exist(store: ClientStore) -> None:
    with pytest.raises(ClientError, match="no client named 'ghost'"):
        store.set_enabled("ghost", False)
    with pytest.raises(ClientError, match="no client named 'ghost'"):
        store.rotate("ghost")


def test_should_read_a_bearer_key() -> None:
    assert bearer_key("Bearer mg_a_b") == "mg_a_b"
    with pytest.raises(Unauthorized, match="Bearer <key>"):
        bearer_key("mg_a_b")


def test_should_check_senders_by_address_and_by_domain(store: ClientStore) -> None:
    client, _ = store.create("billing", "noreply@example.com,@example.org")

    assert client.may_send_as("NoReply@Example.com")
    assert client.may_send_as("anyone@example.org")
    assert not client.may_send_as("other@example.com")
    assert not client.may_send_as("anyone@mail.example.org")


# ---- the rate counter -------------------------------------------------------------------------


def test_should_allow_the_rate_per_minute_then_answer_429_until_the_next_minute(
    store: ClientStore, clock: Clock
) -> None:
    client, _ = store.create("billing", "@example.com", 3)

    for _ in range(3):
        client = store.take(client)
    with pytest.raises(RateLimited) as caught:
        store.take(client)

    assert caught.value.status == 429
    assert caught.value.retry_after_seconds == 45
    assert caught.value.headers == {"Retry-After": "45"}

    clock.now += 45
    assert store.take(client).count == 1


def test_should_count_in_the_table_so_every_instance_shares_the_count(
    table: FakeTableClient, clock: Clock
) -> None:
    one, two = client_store(table, clock), client_store(table, clock)
    created, key = one.create("billing", "@example.com", 4)

    # Each instance authenticates (reads the row) and counts on its own copy.
    for store in (one, two, one, two):
        store.take(store.authenticate(bearer(key)))

    with pytest.raises(RateLimited):
        two.take(two.authenticate(bearer(key)))
    assert table.rows[("billing", CLIENT_ROW)]["count"] == created.rate_per_minute


def test_should_recount_when_another_instance_wrote_between_read_and_write(
    store: ClientStore, table: FakeTableClient, clock: Clock
) -> None:
    _, key = store.create("billing", "@example.com", 2)
    stale = store.authenticate(bearer(key))
    other = client_store(table, clock)
    table.before_update = lambda: other.take(other.authenticate(bearer(key)))

    # The stale copy says 0 sent; the other instance's message makes it 1, so this is the 2nd.
    assert store.take(stale).count == 2
    with pytest.raises(RateLimited):
        store.take(store.authenticate(bearer(key)))


def test_should_refuse_a_client_disabled_while_counting(
    store: ClientStore, table: FakeTableClient
) -> None:
    _, key = store.create("billing", "@example.com", 5)
    client = store.authenticate(bearer(key))
    table.before_update = lambda: store.set_enabled("billing", False)

    with pytest.raises(Unauthorized, match="disabled"):
        store.take(client)


def test_should_report_storage_failures_as_storage_unavailable(
    store: ClientStore, table: FakeTableClient
) -> None:
    client, key = store.create("billing", "@example.com")
    table.make_unavailable({"get", "update"})

    with pytest.raises(StorageUnavailable):
        store.authenticate(bearer(key))
    with pytest.raises(StorageUnavailable):
        store.take(client)


# ---- accepting mail: the key check from this instance's own copy of the row -------------------


def test_should_check_a_counted_request_without_reading_the_row_once_it_was_written(
    store: ClientStore, table: FakeTableClient
) -> None:
    _, key = store.create("billing", "@example.com", 100)
    store.take(store.authenticate(bearer(key), counted=True))
    reads = table.calls["get"]

    for _ in range(5):
        store.take(store.authenticate(bearer(key), counted=True))

    assert table.calls["get"] == reads
    # Six messages from leases of 1, 2 and 4 tokens: the row counts the 7 leased.
    assert table.rows[("billing", CLIENT_ROW)]["count"] == 7
    # A request that writes nothing (a status lookup) always reads.
    store.authenticate(bearer(key))
    assert table.calls["get"] == reads + 1


@pytest.mark.parametrize("change", ["disable", "rotate"])
def test_should_refuse_a_counted_request_once_another_instance_changed_the_client(
    store: ClientStore, table: FakeTableClient, clock: Clock, change: str
) -> None:
    _, key = store.create("billing", "@example.com", 100)
    store.take(store.authenticate(bearer(key), counted=True))
    operator = client_store(table, clock)
    if change == "disable":
        operator.set_enabled("billing", False)
    else:
        operator.rotate("billing")

    # Accepted from this instance's copy; with no token left (the first lease is 1 token), the
    # write that would lease more finds the row changed, reads it and refuses.
    client = store.authenticate(bearer(key), counted=True)
    with pytest.raises(Unauthorized):
        store.take(client)
    assert table.rows[("billing", CLIENT_ROW)]["count"] == 1


def test_should_take_the_new_key_at_once_after_a_rotation_elsewhere(
    store: ClientStore, table: FakeTableClient, clock: Clock
) -> None:
    _, old = store.create("billing", "@example.com", 100)
    store.take(store.authenticate(bearer(old), counted=True))
    _, new = client_store(table, clock).rotate("billing")

    # The minute's second lease, 2 tokens, on top of the first message.
    assert store.take(store.authenticate(bearer(new), counted=True)).count == 3


def test_should_answer_a_disabled_client_over_its_rate_with_401_not_429(
    store: ClientStore, table: FakeTableClient, clock: Clock
) -> None:
    _, key = store.create("billing", "@example.com", 1)
    store.take(store.authenticate(bearer(key), counted=True))
    client_store(table, clock).set_enabled("billing", False)

    with pytest.raises(Unauthorized, match="disabled"):
        store.take(store.authenticate(bearer(key), counted=True))


# ---- leasing: most messages cost no storage call --------------------------------------------


def row(table: FakeTableClient, name: str = "billing") -> dict[str, Any]:
    return table.rows[(name, CLIENT_ROW)]


def counted(store: ClientStore, key: str) -> Client:
    """What accepting one message does: the key check, then one message off the rate."""
    return store.take(store.authenticate(bearer(key), counted=True))


def until_refused(store: ClientStore, key: str) -> int:
    """How many messages the instance accepts before its first 429."""
    for admitted in range(10_000):
        try:
            counted(store, key)
        except RateLimited:
            return admitted
    raise AssertionError("never refused")


def grants(store: ClientStore, table: FakeTableClient, key: str, messages: int) -> list[int]:
    """By how much each write raised the row's count, over `messages` accepted messages."""
    raised: list[int] = []
    for _ in range(messages):
        writes, before = table.calls["update"], row(table)["count"]
        counted(store, key)
        if table.calls["update"] != writes:
            raised.append(row(table)["count"] - before)
    return raised


def test_should_accept_most_messages_without_writing_the_row(
    store: ClientStore, table: FakeTableClient
) -> None:
    _, key = store.create("billing", "@example.com", 600)
    writes, reads = table.calls["update"], table.calls["get"]

    for _ in range(200):
        counted(store, key)

    # Leases of 1, 2, 4, 8, 16, 32, then 60 (600 // 10) tokens: 9 writes cover 243 messages,
    # and one read, by the first key check (this instance had no copy of the row yet).
    assert table.calls["update"] - writes == 9
    assert table.calls["get"] - reads == 1
    assert row(table)["count"] == 243


def test_should_double_each_lease_up_to_a_tenth_of_the_rate(
    store: ClientStore, table: FakeTableClient
) -> None:
    _, key = store.create("billing", "@example.com", 100)

    assert grants(store, table, key, 100) == [1, 2, 4, 8] + [10] * 8 + [5]
    # The minute's whole rate was leased and used: the next message is refused.
    with pytest.raises(RateLimited):
        counted(store, key)
    assert row(table)["count"] == 100


@pytest.mark.parametrize(("rate", "leases"), [(9, [1] * 9), (25, [1, 2, 2, 2, 2, 2])])
def test_should_lease_one_token_at_a_time_to_a_client_with_a_low_rate(
    store: ClientStore, table: FakeTableClient, rate: int, leases: list[int]
) -> None:
    _, key = store.create("billing", "@example.com", rate)

    assert grants(store, table, key, sum(leases)) == leases


def test_should_never_let_two_instances_together_pass_the_rate(
    table: FakeTableClient, clock: Clock
) -> None:
    one, two = client_store(table, clock), client_store(table, clock)
    _, key = one.create("billing", "@example.com", 100)
    picks = random.Random(7)
    admitted = {"one": 0, "two": 0}
    refused = {"one": False, "two": False}

    # Requests land on either instance at random until both have answered 429.
    while not all(refused.values()):
        name = picks.choice(("one", "two"))
        try:
            counted(one if name == "one" else two, key)
            admitted[name] += 1
        except RateLimited:
            refused[name] = True
        assert row(table)["count"] <= 100

    # Each instance used up its tokens before it was refused, so none were lost.
    assert sum(admitted.values()) == 100
    assert min(admitted.values()) > 0


def test_should_lose_at_most_the_unused_lease_of_an_instance_that_stops_getting_requests(
    table: FakeTableClient, clock: Clock
) -> None:
    one, two = client_store(table, clock), client_store(table, clock)
    _, key = one.create("billing", "@example.com", 100)
    # Leases of 1, 2, 4, 8 and 10: 25 tokens, 7 of them left unused on `one`.
    for _ in range(18):
        counted(one, key)
    assert row(table)["count"] == 25

    admitted = until_refused(two, key)

    assert 18 + admitted == 93
    assert 18 + admitted >= 100 - (100 // 10 - 1)


def test_should_count_exactly_the_rate_with_threads_of_one_instance(
    store: ClientStore, table: FakeTableClient
) -> None:
    _, key = store.create("billing", "@example.com", 300)
    outcomes: list[str] = []

    def send() -> None:
        for _ in range(50):
            try:
                counted(store, key)
                outcomes.append("ok")
            except RateLimited:
                outcomes.append("limited")

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert (outcomes.count("ok"), outcomes.count("limited")) == (300, 100)
    assert row(table)["count"] == 300


def test_should_drop_the_last_minutes_tokens_when_a_new_minute_starts(
    store: ClientStore, table: FakeTableClient, clock: Clock
) -> None:
    _, key = store.create("billing", "@example.com", 100)
    for _ in range(4):  # leases of 1, 2 and 4: 3 tokens left
        counted(store, key)
    assert row(table)["count"] == 7

    clock.now += WINDOW_SECONDS
    writes = table.calls["update"]
    counted(store, key)

    # Not served from the old tokens: a new lease of 1 in the new minute, which it counts alone.
    assert table.calls["update"] == writes + 1
    assert (row(table)["window"], row(table)["count"]) == (int(clock.now // WINDOW_SECONDS), 1)
    assert grants(store, table, key, 6) == [2, 4]


@pytest.mark.parametrize("change", ["disable", "rotate"])
def test_should_serve_tokens_then_refuse_a_client_changed_elsewhere_within_the_check_interval(
    store: ClientStore, table: FakeTableClient, clock: Clock, change: str
) -> None:
    _, key = store.create("billing", "@example.com", 100)
    for _ in range(4):  # leases of 1, 2 and 4: 3 tokens left, the last write at START
        counted(store, key)
    operator = client_store(table, clock)
    if change == "disable":
        operator.set_enabled("billing", False)
    else:
        operator.rotate("billing")
    reads, writes = table.calls["get"], table.calls["update"]

    # Still served from this instance's tokens until its copy is CLIENT_CHECK_SECONDS old.
    clock.now += CLIENT_CHECK_SECONDS - 0.5
    counted(store, key)
    assert (table.calls["get"], table.calls["update"]) == (reads, writes)

    clock.now += 0.5
    with pytest.raises(Unauthorized):
        counted(store, key)
    with pytest.raises(Unauthorized):
        counted(store, key)
    assert table.calls["update"] == writes
    assert row(table)["count"] == 7


def test_should_keep_the_tokens_when_the_check_finds_the_client_unchanged(
    store: ClientStore, table: FakeTableClient, clock: Clock
) -> None:
    _, key = store.create("billing", "@example.com", 100)
    for _ in range(4):  # 3 tokens left
        counted(store, key)
    reads, writes = table.calls["get"], table.calls["update"]

    clock.now += CLIENT_CHECK_SECONDS
    counted(store, key)  # reads the row, then uses a token
    clock.now += CLIENT_CHECK_SECONDS - 0.1
    counted(store, key)  # a token: the copy was checked 1.9 s ago
    counted(store, key)  # the last token

    assert (table.calls["get"], table.calls["update"]) == (reads + 1, writes)
    assert row(table)["count"] == 7
    counted(store, key)  # a new lease, of 8
    assert row(table)["count"] == 15


def test_should_not_serve_tokens_when_the_check_cannot_read_the_row(
    store: ClientStore, table: FakeTableClient, clock: Clock
) -> None:
    _, key = store.create("billing", "@example.com", 100)
    for _ in range(4):  # 3 tokens left
        counted(store, key)
    clock.now += CLIENT_CHECK_SECONDS
    table.fail_next("get")

    with pytest.raises(StorageUnavailable):
        counted(store, key)
    # Storage answers again: the check is made, and the 3 tokens are still there.
    writes = table.calls["update"]
    for _ in range(3):
        counted(store, key)
    assert table.calls["update"] == writes


def test_should_serve_the_new_key_from_the_tokens_once_the_row_shows_it(
    store: ClientStore, table: FakeTableClient, clock: Clock
) -> None:
    _, old = store.create("billing", "@example.com", 100)
    for _ in range(4):  # 3 tokens left
        counted(store, old)
    _, new = client_store(table, clock).rotate("billing")
    writes = table.calls["update"]

    counted(store, new)  # this instance's copy has the old key: it reads the row, then a token
    with pytest.raises(Unauthorized):  # the old key, refused at once now that the copy is new
        counted(store, old)
    counted(store, new)

    assert table.calls["update"] == writes
    assert row(table)["count"] == 7


def test_should_answer_a_client_disabled_elsewhere_with_401_even_over_its_rate(
    table: FakeTableClient, clock: Clock
) -> None:
    one, two = client_store(table, clock), client_store(table, clock)
    _, key = one.create("billing", "@example.com", 20)
    for _ in range(3):  # leases of 1 and 2, all used
        counted(one, key)
    assert until_refused(two, key) == 17
    two.set_enabled("billing", False)

    with pytest.raises(Unauthorized, match="disabled"):
        counted(one, key)


def test_should_refuse_to_count_a_disabled_client_it_is_handed(store: ClientStore) -> None:
    store.create("billing", "@example.com", 100)
    disabled = store.set_enabled("billing", False)  # the row as it is now, ETag and all

    with pytest.raises(Unauthorized, match="disabled"):
        store.take(disabled)


# ---- features ---------------------------------------------------------------------------------


def test_should_store_a_new_client_with_no_feature_unless_given(
    store: ClientStore, table: FakeTableClient
) -> None:
    plain, _ = store.create("plain", "@example.com")
    trusted, _ = store.create("trusted", "@example.com", 10, "tracking_settings, asm")

    assert plain.features == frozenset()
    assert trusted.features == {"asm", "tracking_settings"}
    assert row(table, "trusted")["features"] == "asm,tracking_settings"
    read = store.get("trusted")
    assert read is not None
    assert read == replace(trusted, etag=read.etag)
    assert [c.describe()["features"] for c in store.all()] == [[], ["asm", "tracking_settings"]]


def test_should_refuse_an_unknown_feature_naming_it(
    store: ClientStore, table: FakeTableClient
) -> None:
    with pytest.raises(ClientError, match="'bypass' is not a feature; the features are"):
        store.create("billing", "@example.com", 10, "asm,bypass")
    assert table.rows == {}

    store.create("billing", "@example.com")
    with pytest.raises(ClientError, match=r"'headers\.from' is not a feature"):
        store.set_features("billing", "headers.from")


def test_should_replace_a_clients_features_and_take_them_all_away_with_none(
    store: ClientStore,
) -> None:
    store.create("billing", "@example.com", 10, "asm")

    assert store.set_features("billing", "batch_id,ip_pool_name").features == {
        "batch_id",
        "ip_pool_name",
    }
    assert store.set_features("billing", "none").features == frozenset()
    with pytest.raises(ClientError, match="no client named 'ghost'"):
        store.set_features("ghost", "asm")


def test_should_read_a_row_from_before_features_as_having_none(
    store: ClientStore, table: FakeTableClient
) -> None:
    store.create("old", "@example.com", 10, "asm")
    del table.rows[("old", CLIENT_ROW)]["features"]

    client = store.get("old")

    assert client is not None
    assert client.features == frozenset()


def test_should_see_features_changed_elsewhere_once_its_copy_is_check_interval_old(
    store: ClientStore, table: FakeTableClient, clock: Clock
) -> None:
    _, key = store.create("billing", "@example.com", 100, "asm")
    counted(store, key)
    client_store(table, clock).set_features("billing", "none")

    # This instance's copy, checked just now, still says asm...
    assert store.authenticate(bearer(key), counted=True).features == {"asm"}
    clock.now += CLIENT_CHECK_SECONDS
    # ...and once it is CLIENT_CHECK_SECONDS old, the row is read again.
    reads = table.calls["get"]
    assert store.authenticate(bearer(key), counted=True).features == frozenset()
    assert table.calls["get"] == reads + 1
    # The read renewed the copy: taking a token costs no second read.
    store.take(store.authenticate(bearer(key), counted=True))
    assert table.calls["get"] == reads + 1


# ---- counting emails: requests of many recipients ---------------------------------------------


def test_should_lease_at_least_the_emails_a_request_needs(
    store: ClientStore, table: FakeTableClient
) -> None:
    _, key = store.create("billing", "@example.com", 600)
    client = store.authenticate(bearer(key), counted=True)

    store.take(client, 250)
    # A lease of 250 (more than the first block of 1), all used.
    assert row(table)["count"] == 250
    store.take(client, 1)
    # The next block doubles from the last grant, capped at a tenth of the rate: 60, 59 left.
    assert row(table)["count"] == 310
    writes = table.calls["update"]
    store.take(client, 59)
    assert table.calls["update"] == writes


def test_should_use_the_tokens_held_and_lease_only_the_rest(
    store: ClientStore, table: FakeTableClient
) -> None:
    _, key = store.create("billing", "@example.com", 100)
    for _ in range(4):  # leases of 1, 2 and 4: 3 tokens left, 7 counted
        counted(store, key)

    store.take(store.authenticate(bearer(key), counted=True), 20)

    # 3 held, 17 more leased (more than the block of 8).
    assert row(table)["count"] == 24


def test_should_refuse_a_request_of_more_emails_than_are_left_and_take_none(
    store: ClientStore, table: FakeTableClient, clock: Clock
) -> None:
    _, key = store.create("billing", "@example.com", 10)
    client = store.authenticate(bearer(key), counted=True)
    store.take(client, 7)

    with pytest.raises(RateLimited, match="makes 4 and 3 are left") as caught:
        store.take(client, 4)

    assert caught.value.retry_after_seconds == 45
    assert row(table)["count"] == 7
    store.take(client, 3)
    assert row(table)["count"] == 10


def test_should_refuse_a_request_of_more_emails_than_the_whole_rate_as_invalid(
    store: ClientStore, table: FakeTableClient
) -> None:
    _, key = store.create("billing", "@example.com", 10)

    with pytest.raises(InvalidMessage, match=r"makes 11 emails.*can never pass"):
        store.take(store.authenticate(bearer(key), counted=True), 11)

    assert row(table)["count"] == 0


def test_should_give_back_emails_to_the_tokens_until_the_minute_ends(
    store: ClientStore, table: FakeTableClient, clock: Clock
) -> None:
    _, key = store.create("billing", "@example.com", 10)
    client = store.authenticate(bearer(key), counted=True)
    store.take(client, 10)

    store.give_back(client, 4)
    writes = table.calls["update"]
    store.take(client, 4)  # from the tokens given back
    assert table.calls["update"] == writes
    with pytest.raises(RateLimited):
        store.take(client, 1)

    store.give_back(client, 4)
    clock.now += WINDOW_SECONDS
    store.take(client, 10)  # a new minute: the tokens given back were for the last one
    assert row(table)["count"] == 10


def test_should_refuse_a_spent_client_from_its_copy_without_a_storage_call(
    store: ClientStore, table: FakeTableClient, clock: Clock
) -> None:
    _, key = store.create("billing", "@example.com", 5)
    client = store.authenticate(bearer(key), counted=True)
    store.refuse_if_spent(client)  # no lease yet: nothing known, nothing refused
    store.take(client, 5)
    calls = dict(table.calls)

    with pytest.raises(RateLimited) as caught:
        store.refuse_if_spent(client)

    assert caught.value.retry_after_seconds == 45
    assert table.calls == calls
    # A copy as old as the check interval is not trusted for that; a new minute is not spent.
    clock.now += CLIENT_CHECK_SECONDS
    store.refuse_if_spent(client)
    clock.now += WINDOW_SECONDS
    store.refuse_if_spent(client)


def test_should_not_refuse_before_parsing_a_client_with_tokens_left(store: ClientStore) -> None:
    _, key = store.create("billing", "@example.com", 100)
    client = store.authenticate(bearer(key), counted=True)
    store.take(client, 90)
    store.take(client, 3)  # a block of 10: 7 tokens left, the row counts the whole rate

    store.refuse_if_spent(client)


# ---- the row's minute never moves back ---------------------------------------------------------


def test_should_count_in_the_rows_minute_when_this_instances_clock_is_behind(
    table: FakeTableClient,
) -> None:
    ahead, behind = Clock(START + 45.5 + 1.0), Clock(START + 45.5 - 1.0)
    one, two = client_store(table, ahead), client_store(table, behind)
    _, key = one.create("billing", "@example.com", 10)
    one.take(one.authenticate(bearer(key), counted=True), 6)
    assert row(table)["window"] == int(ahead.now // WINDOW_SECONDS)

    with pytest.raises(RateLimited) as caught:
        two.take(two.authenticate(bearer(key), counted=True), 5)
    two.take(two.authenticate(bearer(key), counted=True), 4)

    assert (row(table)["window"], row(table)["count"]) == (int(ahead.now // WINDOW_SECONDS), 10)
    # The row's minute ends 60 s after it began, 61 s from now on the slow clock.
    assert caught.value.retry_after_seconds == 61
