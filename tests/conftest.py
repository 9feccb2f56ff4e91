"""Fixtures shared by every test: valid settings and the in-memory queue, stores and provider."""

from __future__ import annotations

import pytest

import shared.gateway
import shared.refusals
from shared.gateway import HealthCache
from shared.refusals import RefusalLog
from shared.settings import Settings
from tests.fakes import (
    FakeActivityLog,
    FakeIdempotencyStore,
    FakeMailQueue,
    FakeMailSender,
    FakeMessageBodyStore,
    FakeStatusStore,
    Journal,
)
from tests.samples import BASE_ENV


@pytest.fixture
def settings() -> Settings:
    """Valid settings with every optional setting at its default."""
    return Settings.from_env(BASE_ENV)


@pytest.fixture
def journal() -> Journal:
    """The order in which the fakes below were called."""
    return Journal()


@pytest.fixture
def fake_queue(journal: Journal) -> FakeMailQueue:
    """An empty in-memory mail queue and poison queue that answer every call."""
    return FakeMailQueue(journal=journal)


@pytest.fixture
def fake_bodies(journal: Journal) -> FakeMessageBodyStore:
    """An empty in-memory blob container for message bodies that answers every call."""
    return FakeMessageBodyStore(journal=journal)


@pytest.fixture
def fake_statuses(journal: Journal) -> FakeStatusStore:
    """An empty in-memory status store that answers every call."""
    return FakeStatusStore(journal=journal)


@pytest.fixture
def fake_keys() -> FakeIdempotencyStore:
    """An empty in-memory Idempotency-Key store with the default 24 h retention."""
    return FakeIdempotencyStore()


@pytest.fixture
def fake_sender(journal: Journal) -> FakeMailSender:
    """A provider client that accepts every message."""
    return FakeMailSender(journal=journal)


@pytest.fixture
def fake_activity() -> FakeActivityLog:
    """An empty in-memory activity log that answers every call."""
    return FakeActivityLog()


@pytest.fixture(autouse=True)
def refusal_log(monkeypatch: pytest.MonkeyPatch) -> RefusalLog:
    """The process's refusal log, fresh for each test and without its writer thread (a test
    writes due counts itself)."""
    log = RefusalLog(background=False)
    monkeypatch.setattr(shared.refusals, "_refusals", log)
    return log


@pytest.fixture(autouse=True)
def health_cache(monkeypatch: pytest.MonkeyPatch) -> HealthCache:
    """The process's cached anonymous health answer, empty for each test."""
    cache = HealthCache(shared.gateway._check_public_health)
    monkeypatch.setattr(shared.gateway, "_health_cache", cache)
    return cache
