from __future__ import annotations

import hashlib

import pytest

from shared.errors import InvalidMessage
from shared.idempotency import check_key, digest


@pytest.mark.parametrize("key", ["a", "x" * 255, " ", "order-42", "~!@#$%^&*()_+{}|:<>?"])
def test_should_accept_a_key_of_1_to_255_printable_ascii_characters(key: str) -> None:
    assert check_key(key) == key


@pytest.mark.parametrize(
    "key",
    ["", "x" * 256, "a\tb", "a\nb", "a\x00b", "\x1f", "\x7f", "caf\u00e9", "\u00a0"],
    ids=["empty", "256", "tab", "LF", "NUL", "US", "DEL", "non-ASCII", "NBSP"],
)
def test_should_refuse_any_other_key_naming_the_header(key: str) -> None:
    with pytest.raises(InvalidMessage, match="Idempotency-Key") as caught:
        check_key(key)

    assert caught.value.status == 400


def test_should_keep_only_a_sha256_digest_of_keys_and_bodies() -> None:
    assert digest("order-42") == hashlib.sha256(b"order-42").hexdigest()
    assert digest(b"{}") == digest("{}")
    assert len(digest(b"")) == 64
