"""Fixtures shared by every test: valid settings and the in-memory queue and provider."""

from __future__ import annotations

import pytest

from shared.settings import Settings
from tests.fakes import FakeMailQueue, FakeMailSender
from tests.samples import BASE_ENV


@pytest.fixture
def settings() -> Settings:
    """Valid settings with every optional setting at its default."""
    return Settings.from_env(BASE_ENV)


@pytest.fixture
def fake_queue() -> FakeMailQueue:
    """An empty in-memory mail queue that answers every call."""
    return FakeMailQueue()


@pytest.fixture
def fake_sender() -> FakeMailSender:
    """A provider client that accepts every message."""
    return FakeMailSender()
