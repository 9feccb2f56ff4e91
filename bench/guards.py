"""Scenario 11: what a provider's circuit breaker and send-rate brake cost a delivery.

Against Azurite, on the gateway's storage transport, one instance's ProviderBreakers and
SendRateBrake are asked as delivery asks them: a breaker's verdict and a success per mail (a
closed breaker, the happy path), and a brake's token per mail at two rates for two seconds. It
counts the storage calls they make and the bench process's CPU per mail. A delivery without
either makes four and a fraction storage calls (docs/performance.md).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from azure.core.rest import HttpRequest, HttpResponse
from azure.data.tables import TableClient, TableServiceClient

from devstack.azurite import Azurite
from shared.brake import SendRateBrake
from shared.breaker import BreakerPolicy, ProviderBreakers, Verdict
from shared.storage_transport import StorageTransport

BREAKER_MAILS = 20_000
BRAKE_SECONDS = 2.0
BRAKE_RATES = (10, 1000)


class CountingTransport(StorageTransport):
    """The gateway's transport, counting the requests it sends."""

    calls = 0

    def send(self, request: HttpRequest, **kwargs: Any) -> HttpResponse:
        """Send, and count it."""
        self.calls += 1
        return super().send(request, **kwargs)


@dataclass(frozen=True)
class GuardCost:
    """Storage calls and the bench process's CPU per mail for one guard."""

    guard: str
    mails: int
    calls_per_mail: float
    cpu_per_mail: float


def run_guards(azurite: Azurite) -> list[GuardCost]:
    """The closed breaker's cost per mail, then the brake's at each of BRAKE_RATES."""
    table_name = f"benchguards{uuid.uuid4().hex[:8]}"
    with TableServiceClient.from_connection_string(azurite.connection_string) as service:
        service.create_table(table_name)
    transport = CountingTransport()
    table = TableClient.from_connection_string(
        azurite.connection_string, table_name, transport=transport
    )
    costs = []
    breakers = ProviderBreakers(table, BreakerPolicy(failures=5, cooldown_seconds=30))
    costs.append(_measure("breaker, closed: verdict + success", transport, _breaker(breakers)))
    for rate in BRAKE_RATES:
        brake = SendRateBrake(table, {"sendgrid": rate})
        costs.append(_measure(f"brake at {rate}/s: one mail", transport, _brake(brake)))
    table.close()
    return costs


def _breaker(breakers: ProviderBreakers) -> Any:
    def run() -> int:
        for _ in range(BREAKER_MAILS):
            assert breakers.verdict("sendgrid", 60) is Verdict.SEND
            breakers.succeeded("sendgrid")
        return BREAKER_MAILS

    return run


def _brake(brake: SendRateBrake) -> Any:
    def run() -> int:
        # From the start of a second, so that each run counts whole seconds.
        time.sleep(1 - time.time() % 1)
        deadline, mails = time.time() + BRAKE_SECONDS, 0
        while time.time() < deadline:
            if brake.take("sendgrid"):
                mails += 1
        return mails

    return run


def _measure(guard: str, transport: CountingTransport, work: Any) -> GuardCost:
    calls = transport.calls
    cpu = time.process_time()
    # The brake's waits are sleeps: they cost no CPU.
    mails: int = work()
    cpu = time.process_time() - cpu
    return GuardCost(guard, mails, (transport.calls - calls) / mails, cpu / mails)
