"""Timer triggers with the semantics of the host's timer extension (WebJobs Extensions Timers).

One listener per timer function runs one loop: wait for the next occurrence, invoke, then
compute the next occurrence from the time the invocation started. So two invocations of one
timer never overlap: an invocation that outlasts the following occurrence is followed by one
immediate invocation (not one per missed occurrence), as in the host. A failed invocation is
logged and the schedule goes on; the host's retry policies are not modelled.

At start-up, before the schedule, comes at most one extra invocation: `past_due` when the
schedule status says an occurrence was missed while the host was down, else one for
`run_on_startup`. The schedule status is what `use_monitor` keeps: the last and next
occurrences, in the blob `timers/<host id>/Host.Functions.<name>/status` of the container
`azure-webjobs-hosts` in the AzureWebJobsStorage account, as the host keeps it. `use_monitor`
left unset means on, and the host turns it off, set or not, for a schedule that fires more than
once a minute.

Schedules run in UTC (Azure's default time zone). Locally, the app setting
`LOCAL_TIMER_SCHEDULE_<function name>` replaces a function's schedule, so that tests and
`make run` need not wait for a five-minute timer; the real host never reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import socket
import zlib
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.functions.timer import TimerRequest
from azure.storage.blob import BlobServiceClient, ContainerClient, LinearRetry

from devstack.host_invoke import FunctionSpec, HostError, Invoker
from devstack.host_queue import (
    UnresolvedSetting,
    get_setting,
    resolve_connection,
    resolve_setting_expressions,
)
from devstack.host_schedule import (
    ConstantSchedule,
    CronSchedule,
    fires_more_than_once_a_minute,
    next_occurrences,
    parse_schedule,
)
from shared.queue import storage_tls_verify

logger = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], datetime]

LOCAL_SCHEDULE_PREFIX = "LOCAL_TIMER_SCHEDULE_"
STATUS_CONTAINER = "azure-webjobs-hosts"
HOST_ID_SETTING = "AzureFunctionsWebHost__hostid"
OCCURRENCES_LOGGED = 5
# Waits are cut into pieces of at most this long, so that a jump of the wall clock shows.
MAX_WAIT_SECONDS = 60.0
# What .NET writes for a DateTime that was never set.
_NEVER = "0001-01-01T00:00:00"
_FRACTION = re.compile(r"(\.\d{6})\d+")


def utc_now() -> datetime:
    """The current time in UTC."""
    return datetime.now(timezone.utc)


def _format_time(moment: datetime | None) -> str:
    return moment.isoformat() if moment is not None else _NEVER


def _parse_time(text: object) -> datetime | None:
    """An ISO time as the host or this module wrote it; None for .NET's unset DateTime."""
    if not isinstance(text, str) or not text or text.startswith("0001-01-01"):
        return None
    # .NET writes seven decimals and may end in Z; Python 3.10 reads neither.
    cleaned = _FRACTION.sub(r"\1", text.strip()).replace("Z", "+00:00")
    moment = datetime.fromisoformat(cleaned)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class ScheduleStatus:
    """The host's record of a timer: the last occurrence, the next one, and when it was set."""

    last: datetime | None
    next: datetime | None
    last_updated: datetime | None

    def to_document(self) -> dict[str, str]:
        """The record as the host writes it (and passes it in `TimerRequest.schedule_status`)."""
        return {
            "Last": _format_time(self.last),
            "Next": _format_time(self.next),
            "LastUpdated": _format_time(self.last_updated),
        }

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> ScheduleStatus:
        """Read a record; ValueError if it is not one."""
        return cls(
            _parse_time(document.get("Last")),
            _parse_time(document.get("Next")),
            _parse_time(document.get("LastUpdated")),
        )


@dataclass(frozen=True)
class PastDueCheck:
    """The outcome of the start-up check: the status to use, whether to save it, past due."""

    status: ScheduleStatus
    changed: bool
    past_due: bool


def check_past_due(
    status: ScheduleStatus | None, schedule: CronSchedule | ConstantSchedule, now: datetime
) -> PastDueCheck:
    """Whether an occurrence was missed since the status was written, as the host decides.

    A status written for another schedule (the next occurrence it holds is not the one the
    current schedule gives) is recomputed first, and from now if that would lie in the past:
    a changed schedule is not past due.
    """
    if status is None:
        fresh = ScheduleStatus(None, schedule.next_after(now), now)
        return PastDueCheck(fresh, changed=True, past_due=False)
    basis = status.last or status.last_updated or now
    expected = schedule.next_after(basis)
    changed = False
    if status.next != expected:
        if expected is not None and now > expected:
            expected, basis = schedule.next_after(now), now
        status = ScheduleStatus(None, expected, basis)
        changed = True
    past_due = status.next is not None and now > status.next
    return PastDueCheck(status, changed=changed, past_due=past_due)


def default_host_id(app_dir: str) -> str:
    """A host id as Core Tools derives one locally: machine name and a hash of the app path."""
    raw = f"{socket.gethostname()}-{zlib.crc32(app_dir.encode('utf-8'))}".lower()
    cleaned = re.sub(r"[^a-z0-9-]", "-", raw)[:32]
    return cleaned.rstrip("-") or "localhost"


class ScheduleMonitor:
    """Schedule statuses in blobs of the host storage account, one per timer."""

    def __init__(self, container: ContainerClient, host_id: str) -> None:
        self._container = container
        self.host_id = host_id

    @classmethod
    def from_settings(cls, settings: Mapping[str, str], app_dir: str) -> ScheduleMonitor:
        """The monitor on AzureWebJobsStorage; HostError if that connection is not usable."""
        connection = resolve_connection("Storage", settings)
        options: dict[str, Any] = {
            # Short retries: the SDK's default waits 15 s and more between attempts.
            "retry_policy": LinearRetry(backoff=1, retry_total=3, random_jitter_range=1),
            # The local CA of the identity mode's HTTPS, if any (SSL_CERT_FILE).
            "connection_verify": storage_tls_verify(),
        }
        try:
            if connection.connection_string:
                service = BlobServiceClient.from_connection_string(
                    connection.connection_string, **options
                )
            else:
                # The host's blob client: `serviceUri` is the blob service's for host storage.
                blob_uri = connection.service_uri("blob")
                if blob_uri is None:
                    raise HostError("AzureWebJobsStorage gives no blob service (__blobServiceUri)")
                service = BlobServiceClient(blob_uri, credential=connection.credential(), **options)
        except ValueError as exc:
            raise HostError(f"AzureWebJobsStorage is not usable: {exc}") from exc
        host_id = get_setting(settings, HOST_ID_SETTING) or default_host_id(app_dir)
        return cls(service.get_container_client(STATUS_CONTAINER), host_id)

    def blob_name(self, timer_name: str) -> str:
        """Where the status of a timer is kept."""
        return f"timers/{self.host_id}/{timer_name}/status"

    def get(self, timer_name: str) -> ScheduleStatus | None:
        """The recorded status, or None if there is none (or it cannot be read as one)."""
        try:
            data = self._container.download_blob(self.blob_name(timer_name)).readall()
        except ResourceNotFoundError:
            return None
        try:
            return ScheduleStatus.from_document(json.loads(data))
        except (ValueError, AttributeError) as exc:
            logger.warning("Ignoring the unreadable schedule status of '%s': %s", timer_name, exc)
            return None

    def update(self, timer_name: str, status: ScheduleStatus) -> None:
        """Record the status, creating the container on first use."""
        data = json.dumps(status.to_document())
        try:
            self._container.upload_blob(self.blob_name(timer_name), data, overwrite=True)
        except ResourceNotFoundError:
            with contextlib.suppress(ResourceExistsError):
                self._container.create_container()
            self._container.upload_blob(self.blob_name(timer_name), data, overwrite=True)

    def close(self) -> None:
        """Close the storage client."""
        self._container.close()


@dataclass(frozen=True)
class TimerConfig:
    """A timer function's schedule as this host runs it."""

    schedule: CronSchedule | ConstantSchedule
    run_on_startup: bool
    use_monitor: bool
    # The setting that replaced the app's schedule, if one did.
    override: str | None = None


def timer_config(spec: FunctionSpec, settings: Mapping[str, str], now: datetime) -> TimerConfig:
    """Read the trigger's schedule (after `%SETTING%` resolution, or the local override)."""
    trigger = spec.trigger
    override_name = LOCAL_SCHEDULE_PREFIX + spec.name
    override = get_setting(settings, override_name)
    expression = override or resolve_setting_expressions(
        str(getattr(trigger, "schedule", "") or ""), settings
    )
    try:
        schedule = parse_schedule(expression)
    except HostError as exc:
        source = f" (from {override_name})" if override else ""
        raise HostError(f"{spec.name}: invalid timer schedule{source}: {exc}") from None
    if isinstance(schedule, ConstantSchedule):
        logger.warning(
            "%s: the TimeSpan schedule '%s' runs only on App Service plans; Consumption and "
            "Flex Consumption need an NCRONTAB expression",
            spec.name,
            expression,
        )
    # UseMonitor is true unless set false, and TimerSchedule.Create turns it off for a schedule
    # that fires more than once a minute even when the app set it true (WebJobs Extensions).
    use_monitor = getattr(trigger, "use_monitor", None)
    if use_monitor is None or use_monitor:
        use_monitor = not fires_more_than_once_a_minute(schedule, now)
    return TimerConfig(
        schedule=schedule,
        run_on_startup=bool(getattr(trigger, "run_on_startup", None)),
        use_monitor=bool(use_monitor),
        override=override_name if override else None,
    )


def timer_configs(
    specs: list[FunctionSpec], settings: Mapping[str, str], now: datetime
) -> list[tuple[FunctionSpec, TimerConfig]]:
    """The timers this host runs: each spec with its config, but for a timer whose schedule
    names an app setting that is not set, which is logged as in error and left out.

    So the real host does: resolving the schedule fails that one function's indexing
    ("'%X%' does not resolve to a value.", Azure/azure-webjobs-sdk
    NameResolverExtensions.ResolveWholeString), which the host logs as "The '<name>' function is
    in error: ..." (Azure/azure-functions-host ScriptHostLoggerExtension.FunctionError) and runs
    the others. A schedule that is set but invalid still stops this host, to be fixed at once.
    """
    configs = []
    for spec in specs:
        try:
            configs.append((spec, timer_config(spec, settings, now)))
        except UnresolvedSetting as exc:
            logger.error("The '%s' function is in error: %s", spec.name, exc)
    return configs


def timer_request(past_due: bool, status: ScheduleStatus | None) -> TimerRequest:
    """The argument the worker builds from the host's TimerInfo."""
    return TimerRequest(
        past_due=past_due,
        schedule_status=status.to_document() if status is not None else None,
        schedule={"AdjustForDST": True},
    )


class TimerListener:
    """Runs one timer function on its schedule, one invocation at a time."""

    def __init__(
        self,
        spec: FunctionSpec,
        config: TimerConfig,
        invoker: Invoker,
        io: Executor,
        monitor: ScheduleMonitor | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self.spec = spec
        self.config = config
        self._invoker = invoker
        self._io = io
        self._monitor = monitor
        self._clock = clock
        self._param = spec.trigger.name
        # The host's name for the timer in its status records.
        self.timer_name = f"Host.Functions.{spec.name}"
        self._status = ScheduleStatus(None, None, None)
        self._past_due_at_start = False
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def monitored(self) -> bool:
        """Whether the schedule status is kept (use_monitor, with storage to keep it in)."""
        return self._monitor is not None

    @property
    def status(self) -> ScheduleStatus:
        """The current schedule status (the next occurrence once started)."""
        return self._status

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking storage call off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._io, functools.partial(fn, *args))

    async def start(self) -> None:
        """Read the schedule status, then run the schedule in the background."""
        await self._begin()
        self._task = asyncio.create_task(self._run(), name=f"timer {self.spec.name}")

    async def stop(self, timeout: float) -> bool:
        """Stop scheduling and wait up to `timeout` s for a running invocation; True if done."""
        self._stopping.set()
        if self._task is None:
            return True
        _, pending = await asyncio.wait({self._task}, timeout=timeout)
        return not pending

    def close(self) -> None:
        """Nothing to close: the schedule monitor's client is the host's."""

    async def _begin(self) -> None:
        now = self._clock()
        check: PastDueCheck | None = None
        if self._monitor is not None:
            try:
                recorded = await self._call(self._monitor.get, self.timer_name)
                check = check_past_due(recorded, self.config.schedule, now)
                if check.changed:
                    await self._call(self._monitor.update, self.timer_name, check.status)
            except Exception as exc:
                logger.warning(
                    "Cannot read or write the schedule status of '%s' (%s); not checking "
                    "for a missed occurrence",
                    self.spec.name,
                    exc,
                )
                check = None
        if check is not None:
            self._status = check.status
            self._past_due_at_start = check.past_due
        else:
            self._status = ScheduleStatus(None, self.config.schedule.next_after(now), None)
            self._past_due_at_start = False
        occurrences = next_occurrences(self.config.schedule, now, OCCURRENCES_LOGGED)
        logger.info(
            "The next %d occurrences of the '%s' schedule (%s) will be:%s",
            len(occurrences),
            self.spec.name,
            self.config.schedule,
            "".join(f"\n{moment.isoformat()}" for moment in occurrences),
        )

    async def _run(self) -> None:
        try:
            if self._past_due_at_start:
                await self._invoke(past_due=True, original=self._status.next)
            elif self.config.run_on_startup:
                await self._invoke(run_on_startup=True)
            while not self._stopping.is_set():
                upcoming = self._status.next
                if upcoming is None:
                    logger.warning("The '%s' schedule has no next occurrence", self.spec.name)
                    return
                if not await self._sleep_until(upcoming):
                    return
                await self._invoke()
        except Exception:
            logger.exception("The timer of '%s' stopped", self.spec.name)

    async def _sleep_until(self, moment: datetime) -> bool:
        """Wait until the wall clock reaches `moment`; False if stopped first."""
        while True:
            remaining = (moment - self._clock()).total_seconds()
            if remaining <= 0:
                return True
            try:
                await asyncio.wait_for(
                    self._stopping.wait(), timeout=min(remaining, MAX_WAIT_SECONDS)
                )
                return False
            except asyncio.TimeoutError:
                continue

    async def _invoke(
        self,
        *,
        past_due: bool = False,
        run_on_startup: bool = False,
        original: datetime | None = None,
    ) -> None:
        if self._stopping.is_set():
            return
        fired_at = self._clock()
        details = []
        if past_due:
            details.append("UnscheduledInvocationReason: IsPastDue")
        elif run_on_startup:
            details.append("UnscheduledInvocationReason: RunOnStartup")
        if original is not None:
            details.append(f"OriginalSchedule: {original.isoformat()}")
        if details:
            logger.info("Trigger Details: %s", ", ".join(details))
        passed_status = self._status if self._monitor is not None else None
        # The invoker logs a failure; it does not stop the schedule.
        with contextlib.suppress(Exception):
            await self._invoker.invoke(
                self.spec,
                lambda: {self._param: timer_request(past_due, passed_status)},
                f"Timer fired at {fired_at.isoformat()}",
            )
        # Computed from the invocation's start, so a long invocation is followed at once.
        basis = fired_at
        if not past_due and not run_on_startup and self._status.next is not None:
            basis = max(basis, self._status.next)
        self._status = ScheduleStatus(basis, self.config.schedule.next_after(basis), basis)
        if self._monitor is not None:
            try:
                await self._call(self._monitor.update, self.timer_name, self._status)
            except Exception as exc:
                logger.error(
                    "'%s' failed to update the timer trigger status: %s", self.spec.name, exc
                )
