"""The large-message scenario: its drain on the real stack, and the rows it adds."""

from __future__ import annotations

from pathlib import Path

from bench.large import INSTANCE_WORKER_MIB, MIB, LargeResult, LargeRun, drain_large
from bench.run import large_rows
from bench.stack import gateway_settings
from devstack.azurite import Azurite
from devstack.sendgrid_standin import SendGridStandIn


def test_should_drain_claim_checked_messages_through_the_host(tmp_path: Path) -> None:
    with (
        Azurite(in_memory=True) as azurite,
        SendGridStandIn(outbox=tmp_path / "outbox", write_eml=False) as standin,
    ):
        settings = gateway_settings(azurite, standin, queue="bench-large", table="benchlarge")

        run = drain_large(
            settings=settings,
            azurite=azurite,
            standin=standin,
            messages=3,
            at_once=1,
            timeout=60,
            log_dir=tmp_path,
            attachment_bytes=60_000,
        )
        payloads = [r for r in standin.requests() if r.get("status") == 202]

    assert (run.sent, run.timed_out, run.at_once) == (3, False, 1)
    assert run.peak_rss > 0
    assert len(payloads) == 3


def test_should_hold_the_bounded_peak_to_the_workers_share_of_an_instance() -> None:
    def at(at_once: int, peak_mib: float) -> LargeRun:
        return LargeRun(at_once, 24, 24, 30.0, int(peak_mib * MIB), False)

    result = LargeResult(idle_rss=80 * MIB, bounded=at(6, 700), unbounded=at(100, 2480))

    fits, before, seconds, per_message = large_rows(result)

    assert (fits.gateway, fits.baseline, fits.met) == (700, INSTANCE_WORKER_MIB, True)
    assert before.met is None
    assert before.ratio is not None
    assert before.ratio > 1
    assert seconds.ratio == 1.0
    assert per_message.gateway == (2480 - 80) / 24
    assert large_rows(LargeResult(80 * MIB, at(6, 1600), at(100, 2480)))[0].met is False
