"""The expiry scenario: a small real run, and how its figures become rows."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.expire import (
    KEPT_BLOBS,
    LEGACY_IN_RANGE,
    NEWER_MESSAGES,
    NEWER_ROWS,
    ROWS_PER_MESSAGE,
    ROWS_PER_MINUTE,
    BodyExpireResult,
    ExpireResult,
    run_expire,
    run_expire_bodies,
    run_expire_statuses,
)
from bench.run import EVERY_ROW, expire_rows, status_expire_rows
from devstack.azurite import Azurite


@pytest.fixture(scope="module")
def azurite() -> Iterator[Azurite]:
    with Azurite(in_memory=True) as running:
        yield running


def test_should_delete_every_old_row_and_keep_the_newer_ones(azurite: Azurite) -> None:
    rows = 2 * ROWS_PER_MINUTE + 30

    result = run_expire(azurite, rows)

    assert (result.deleted, result.left, result.kept) == (rows, NEWER_ROWS + 2, NEWER_ROWS + 2)
    # Per minute: 2 full transactions and one of 50; then one of 30; and the pages read.
    assert result.calls == 3 + 3 + 1 + 1
    assert all(row.met is not False for row in expire_rows(result))


def result(deleted: int, left: int, kept: int) -> ExpireResult:
    return ExpireResult(1000, 10, deleted, 13, 2.0, 0.5, None, left, kept)


def test_should_report_calls_and_cpu_per_deleted_row() -> None:
    rows = {row.figure: row for row in expire_rows(result(1000, 12, 12))}

    assert rows["storage calls per deleted row"].gateway == pytest.approx(0.013)
    assert rows["CPU µs per deleted row, bench process"].gateway == pytest.approx(500.0)
    assert rows["rows deleted/s"].gateway == pytest.approx(500.0)
    assert all(row.met is not False for row in rows.values())


def test_should_miss_the_target_when_rows_are_left_or_newer_ones_deleted() -> None:
    deleted, kept = expire_rows(result(900, 112, 12))[:2]
    assert (deleted.met, deleted.target) == (False, EVERY_ROW)
    assert kept.met is False
    _, too_much = expire_rows(result(1000, 5, 5))[:2]
    assert too_much.met is False


def test_should_delete_every_leftover_live_body_and_keep_the_others(azurite: Azurite) -> None:
    bodies = run_expire_bodies(azurite, 30)

    assert (bodies.deleted, bodies.left, bodies.left_kept) == (30, 2 * KEPT_BLOBS, 2 * KEPT_BLOBS)
    assert bodies.ms_per_blob is not None
    with_bodies = ExpireResult(1000, 10, 1000, 13, 2.0, 0.5, None, 12, 12, bodies=bodies)
    body_rows = expire_rows(with_bodies)[-4:]
    assert [row.met for row in body_rows[:2]] == [True, True]


def test_should_miss_the_target_when_a_kept_body_is_deleted() -> None:
    bodies = BodyExpireResult(30, 200, 30, 1.0, 0.1, left=199, left_kept=199)
    with_bodies = ExpireResult(1000, 10, 1000, 13, 2.0, 0.5, None, 12, 12, bodies=bodies)

    deleted, kept = expire_rows(with_bodies)[-4:-2]

    assert deleted.met is True
    assert kept.met is False


def test_should_delete_every_old_message_whole_and_keep_newer_and_legacy_rows(
    azurite: Azurite,
) -> None:
    rows = 50 * ROWS_PER_MESSAGE + 2

    result = run_expire_statuses(azurite, rows)

    to_keep = NEWER_MESSAGES * ROWS_PER_MESSAGE + LEGACY_IN_RANGE
    assert (result.deleted, result.deleted_messages, result.skipped) == (rows, 51, LEGACY_IN_RANGE)
    assert (result.left, result.kept, result.to_keep) == (to_keep, to_keep, to_keep)
    # The watermark and the replay marks read, the watermark written, 2 pages of keys, one
    # transaction per message.
    assert result.calls == 2 + 2 + 51 + 1
    assert all(row.met is not False for row in status_expire_rows(result))
