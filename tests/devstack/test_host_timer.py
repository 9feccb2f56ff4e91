"""The local host's timer listener: schedule, start-up invocations, no overlap, clean stop."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import azure.functions as func
import pytest

from devstack.host_invoke import FunctionSpec, HostError, Invoker
from devstack.host_schedule import CronSchedule, parse_schedule
from devstack.host_timer import (
    ScheduleMonitor,
    ScheduleStatus,
    TimerConfig,
    TimerListener,
    check_past_due,
    default_host_id,
    timer_config,
    timer_configs,
    timer_request,
)

HOURLY = CronSchedule.parse("0 0 * * * *")
EVERY_SECOND = "* * * * * *"
NOW = datetime(2025, 1, 1, 12, 30, tzinfo=timezone.utc)


def hour(h: int) -> datetime:
    """2025-01-01 at h o'clock, UTC."""
    return datetime(2025, 1, 1, h, tzinfo=timezone.utc)


# ---------------------------------------------------------------- past due, as the host decides


def test_should_record_a_first_status_and_not_be_past_due() -> None:
    check = check_past_due(None, HOURLY, NOW)

    assert check.status == ScheduleStatus(None, hour(13), NOW)
    assert (check.changed, check.past_due) == (True, False)


def test_should_be_past_due_when_the_recorded_next_occurrence_has_passed() -> None:
    # Last ran at 10:00, so 11:00 was next; the host was down until 12:30.
    status = ScheduleStatus(hour(10), hour(11), hour(10))

    check = check_past_due(status, HOURLY, NOW)

    assert check.status == status
    assert (check.changed, check.past_due) == (False, True)


def test_should_not_be_past_due_before_the_next_occurrence() -> None:
    status = ScheduleStatus(hour(12), hour(13), hour(12))

    check = check_past_due(status, HOURLY, NOW)

    assert (check.changed, check.past_due) == (False, False)


def test_should_use_last_updated_when_the_timer_never_ran() -> None:
    status = ScheduleStatus(None, hour(11), datetime(2025, 1, 1, 10, 15, tzinfo=timezone.utc))

    check = check_past_due(status, HOURLY, NOW)

    assert (check.changed, check.past_due) == (False, True)


def test_should_not_call_a_changed_schedule_past_due() -> None:
    # Written for a daily schedule (next: midnight); the app now runs hourly.
    status = ScheduleStatus(hour(0), datetime(2025, 1, 2, tzinfo=timezone.utc), hour(0))

    check = check_past_due(status, HOURLY, NOW)

    assert check.status == ScheduleStatus(None, hour(13), NOW)
    assert (check.changed, check.past_due) == (True, False)


def test_should_round_trip_the_status_in_the_hosts_format() -> None:
    status = ScheduleStatus(None, hour(13), NOW)

    document = status.to_document()

    assert document["Last"] == "0001-01-01T00:00:00"
    assert document["Next"] == "2025-01-01T13:00:00+00:00"
    assert ScheduleStatus.from_document(document) == status
    # As .NET writes it: seven decimals, Z.
    written_by_dotnet = {"Last": "2025-01-01T12:00:00.1234567Z", "Next": "2025-01-01T13:00:00Z"}
    assert ScheduleStatus.from_document(written_by_dotnet).last == datetime(
        2025, 1, 1, 12, 0, 0, 123456, tzinfo=timezone.utc
    )


def test_should_pass_a_timer_request_like_the_worker() -> None:
    request = timer_request(True, ScheduleStatus(None, hour(13), NOW))

    assert isinstance(request, func.TimerRequest)
    assert request.past_due is True
    assert request.schedule_status["Next"] == "2025-01-01T13:00:00+00:00"
    assert timer_request(False, None).schedule_status == {}


def test_should_derive_a_host_id_of_at_most_32_characters() -> None:
    host_id = default_host_id("/some/app")

    assert 0 < len(host_id) <= 32
    assert host_id == default_host_id("/some/app")
    assert host_id != default_host_id("/another/app")
    assert not host_id.endswith("-")


# ---------------------------------------------------------------- configuration


def timer_spec(
    fn: Callable[..., Any],
    schedule: str = "0 */5 * * * *",
    run_on_startup: bool | None = None,
    use_monitor: bool | None = None,
    name: str = "tick",
) -> FunctionSpec:
    trigger = SimpleNamespace(
        name="timer",
        type="timerTrigger",
        schedule=schedule,
        run_on_startup=run_on_startup,
        use_monitor=use_monitor,
    )
    return FunctionSpec(name, fn, trigger, ".")


def test_should_take_the_local_override_of_the_schedule_and_resolve_settings() -> None:
    spec = timer_spec(lambda timer: None, schedule="%TICK_SCHEDULE%")

    plain = timer_config(spec, {"TICK_SCHEDULE": "0 0 * * * *"}, NOW)
    overridden = timer_config(
        spec, {"TICK_SCHEDULE": "0 0 * * * *", "LOCAL_TIMER_SCHEDULE_tick": EVERY_SECOND}, NOW
    )

    assert (str(plain.schedule), plain.override) == ("Cron: '0 0 * * * *'", None)
    assert str(overridden.schedule) == f"Cron: '{EVERY_SECOND}'"
    assert overridden.override == "LOCAL_TIMER_SCHEDULE_tick"


def test_should_default_use_monitor_to_off_only_for_frequent_schedules() -> None:
    spec = timer_spec(lambda timer: None)

    assert timer_config(spec, {}, NOW).use_monitor is True
    assert timer_config(spec, {"LOCAL_TIMER_SCHEDULE_tick": EVERY_SECOND}, NOW).use_monitor is False
    explicit = timer_spec(lambda timer: None, use_monitor=False)
    assert timer_config(explicit, {}, NOW).use_monitor is False


def test_should_turn_use_monitor_off_for_a_frequent_schedule_even_when_the_app_sets_it() -> None:
    # TimerSchedule.Create cannot tell an explicit UseMonitor = true from the default.
    explicit = timer_spec(lambda timer: None, use_monitor=True)

    assert timer_config(explicit, {}, NOW).use_monitor is True
    assert (
        timer_config(explicit, {"LOCAL_TIMER_SCHEDULE_tick": EVERY_SECOND}, NOW).use_monitor
        is False
    )


def test_should_refuse_an_invalid_schedule_naming_the_function_and_the_override() -> None:
    with pytest.raises(HostError, match=r"tick: invalid timer schedule: .*needs 6 fields"):
        timer_config(timer_spec(lambda timer: None, schedule="*/5 * * * *"), {}, NOW)
    with pytest.raises(HostError, match=r"from LOCAL_TIMER_SCHEDULE_tick"):
        timer_config(timer_spec(lambda timer: None), {"LOCAL_TIMER_SCHEDULE_tick": "soon"}, NOW)


# ---------------------------------------------------------------- the listener, in process


@dataclass
class Call:
    """One invocation as the function saw it."""

    started: float
    ended: float = 0.0
    past_due: bool = False
    schedule_status: dict[str, Any] = field(default_factory=dict)


class Recorder:
    """A timer function that records its calls; it can take a while or fail."""

    def __init__(self, seconds: float = 0.0, fail: bool = False) -> None:
        self.calls: list[Call] = []
        self.seconds = seconds
        self.fail = fail
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def __call__(self, timer: func.TimerRequest) -> None:
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        call = Call(time.monotonic(), past_due=timer.past_due)
        call.schedule_status = dict(getattr(timer, "schedule_status", {}) or {})
        self.calls.append(call)
        try:
            time.sleep(self.seconds)
            if self.fail:
                raise RuntimeError("tick failed")
        finally:
            call.ended = time.monotonic()
            with self._lock:
                self.running -= 1


class MemoryMonitor(ScheduleMonitor):
    """A schedule monitor that keeps statuses in a dict."""

    def __init__(self, status: ScheduleStatus | None = None) -> None:
        self.statuses: dict[str, ScheduleStatus] = {}
        self.host_id = "test-host"
        self._initial = status

    def get(self, timer_name: str) -> ScheduleStatus | None:
        return self.statuses.get(timer_name, self._initial)

    def update(self, timer_name: str, status: ScheduleStatus) -> None:
        self.statuses[timer_name] = status


@pytest.fixture
def invoker() -> Iterator[Invoker]:
    running = Invoker(thread_count=4)
    yield running
    running.shutdown()


@pytest.fixture
def io() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=2)
    yield pool
    pool.shutdown()


def listener_for(
    recorder: Recorder,
    invoker: Invoker,
    io: ThreadPoolExecutor,
    schedule: str = EVERY_SECOND,
    *,
    run_on_startup: bool = False,
    monitor: ScheduleMonitor | None = None,
) -> TimerListener:
    config = TimerConfig(parse_schedule(schedule), run_on_startup, monitor is not None)
    return TimerListener(timer_spec(recorder, schedule), config, invoker, io, monitor)


def run_for(listener: TimerListener, seconds: float, stop_timeout: float = 10.0) -> bool:
    """Start the listener, let it run, stop it; whether it stopped with nothing running."""

    async def scenario() -> bool:
        await listener.start()
        await asyncio.sleep(seconds)
        return await listener.stop(stop_timeout)

    return asyncio.run(scenario())


def test_should_fire_on_each_occurrence(invoker: Invoker, io: ThreadPoolExecutor) -> None:
    recorder = Recorder()
    listener = listener_for(recorder, invoker, io)

    assert run_for(listener, 3.2)

    assert 2 <= len(recorder.calls) <= 4
    gaps = [b.started - a.started for a, b in itertools.pairwise(recorder.calls)]
    assert all(0.8 < gap < 1.2 for gap in gaps), gaps
    assert not any(call.past_due for call in recorder.calls)
    # Without use_monitor the function gets no schedule status, as from the host.
    assert all(call.schedule_status == {} for call in recorder.calls)


def test_should_never_run_two_invocations_at_once_and_catch_up_once(
    invoker: Invoker, io: ThreadPoolExecutor
) -> None:
    # Each call outlasts the next occurrence.
    recorder = Recorder(seconds=1.5)
    listener = listener_for(recorder, invoker, io)

    assert run_for(listener, 4.0)

    assert recorder.most_at_once == 1
    calls = recorder.calls
    assert 2 <= len(calls) <= 3
    for before, after in itertools.pairwise(calls):
        # Missed occurrences make one immediate call, not one per occurrence.
        assert 0 <= after.started - before.ended < 0.3


def test_should_run_on_startup_once_then_keep_to_the_schedule(
    invoker: Invoker, io: ThreadPoolExecutor
) -> None:
    recorder = Recorder()
    yearly = "0 0 0 1 1 *"
    listener = listener_for(recorder, invoker, io, yearly, run_on_startup=True)

    assert run_for(listener, 1.0)

    [call] = recorder.calls
    assert call.past_due is False
    next_year = datetime.now(timezone.utc).year + 1
    assert listener.status.next == datetime(next_year, 1, 1, tzinfo=timezone.utc)


def test_should_keep_the_schedule_after_a_failed_invocation(
    invoker: Invoker, io: ThreadPoolExecutor, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder(fail=True)
    listener = listener_for(recorder, invoker, io)

    assert run_for(listener, 2.5)

    assert len(recorder.calls) >= 2
    assert "Executed 'Functions.tick' (Failed" in caplog.text


def test_should_wait_for_a_running_invocation_when_stopping_and_start_no_other(
    invoker: Invoker, io: ThreadPoolExecutor
) -> None:
    recorder = Recorder(seconds=1.0)
    listener = listener_for(recorder, invoker, io)

    async def scenario() -> tuple[bool, float]:
        await listener.start()
        while not recorder.calls:
            await asyncio.sleep(0.01)
        stopping_at = time.monotonic()
        return await listener.stop(10.0), stopping_at

    finished, stopping_at = asyncio.run(scenario())

    assert finished
    [call] = recorder.calls
    assert call.ended > stopping_at
    assert recorder.running == 0


def test_should_report_an_invocation_that_outlives_the_stop_timeout(
    invoker: Invoker, io: ThreadPoolExecutor
) -> None:
    recorder = Recorder(seconds=2.0)
    listener = listener_for(recorder, invoker, io, "0 0 0 1 1 *", run_on_startup=True)

    assert run_for(listener, 0.3, stop_timeout=0.2) is False


def test_should_invoke_once_past_due_instead_of_on_startup_and_record_the_next_occurrence(
    invoker: Invoker, io: ThreadPoolExecutor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    # An hourly timer that last ran two hours ago: the occurrence an hour ago was missed.
    now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    missed = now - timedelta(hours=1)
    monitor = MemoryMonitor(ScheduleStatus(missed - timedelta(hours=1), missed, None))
    recorder = Recorder()
    listener = listener_for(
        recorder, invoker, io, "0 0 * * * *", run_on_startup=True, monitor=monitor
    )

    assert run_for(listener, 1.0)

    [call] = recorder.calls
    assert call.past_due is True
    assert call.schedule_status["Next"] == missed.isoformat()
    saved = monitor.statuses["Host.Functions.tick"]
    assert saved.last is not None
    assert saved.next == HOURLY.next_after(saved.last)
    assert saved.next is not None
    assert saved.next > now
    assert "UnscheduledInvocationReason: IsPastDue" in caplog.text


def test_should_leave_out_a_timer_whose_schedule_setting_is_unset_and_run_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # As the real host: that function fails indexing, the rest of the app runs.
    unset = timer_spec(lambda timer: None, schedule="%RETENTION_SCHEDULE%", name="expire")
    fixed = timer_spec(lambda timer: None, name="monitor")

    with caplog.at_level(logging.ERROR, logger="devstack.host_timer"):
        configs = timer_configs([unset, fixed], {}, NOW)

    assert [spec.name for spec, _ in configs] == ["monitor"]
    [error] = caplog.records
    assert error.getMessage() == (
        "The 'expire' function is in error: '%RETENTION_SCHEDULE%' does not resolve to a value: "
        "the app setting 'RETENTION_SCHEDULE' is not set"
    )
    resolved = timer_configs([unset], {"RETENTION_SCHEDULE": "0 17 * * * *"}, NOW)
    assert [str(config.schedule) for _, config in resolved] == ["Cron: '0 17 * * * *'"]


def test_should_still_refuse_a_timer_whose_schedule_setting_is_invalid() -> None:
    spec = timer_spec(lambda timer: None, schedule="%RETENTION_SCHEDULE%")

    with pytest.raises(HostError, match="invalid timer schedule"):
        timer_configs([spec], {"RETENTION_SCHEDULE": "hourly"}, NOW)
