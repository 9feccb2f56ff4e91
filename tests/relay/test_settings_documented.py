"""The relay's settings are named alike in its code, its docs page, its Dockerfile and its
systemd unit: every name those mention is one the relay reads, and the docs list them all."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mailgate_relay.__main__ import parse_settings

ROOT = Path(__file__).resolve().parents[2]
SETTING = re.compile(r"\bMAILGATE_(?:URL|RELAY_[A-Z_]*[A-Z])\b")


class RecordingEnvironment(dict[str, str]):
    """An empty environment that remembers which names were looked up."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: set[str] = set()

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        self.asked.add(key)
        return default


def settings_read() -> set[str]:
    environ = RecordingEnvironment()
    parse_settings([], environ)
    return environ.asked


@pytest.mark.parametrize(
    "path", ["docs/relay.md", "relay/Dockerfile", "relay/mailgate-relay.service"]
)
def test_should_mention_only_settings_the_relay_reads(path: str) -> None:
    mentioned = set(SETTING.findall((ROOT / path).read_text(encoding="utf-8")))

    assert mentioned
    assert mentioned <= settings_read()


def test_should_document_every_setting_the_relay_reads() -> None:
    table = (ROOT / "docs/relay.md").read_text(encoding="utf-8").split("## Settings")[1]

    assert settings_read() <= set(SETTING.findall(table))
