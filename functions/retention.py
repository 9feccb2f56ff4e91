"""Timer trigger: hourly, delete the console's activity rows older than ACTIVITY_RETENTION_DAYS
and the claim-check bodies left under live/ past the longest a message can live.

Each run logs one INFO line, `Retention: deleted N activity row(s) older than D day(s) in C
call(s)`, plus `; more left for the next run` when it stopped at its bound
(shared/retention.py), then `Retention: deleted N leftover message body blob(s) older than H
hour(s)`. While the settings are wrong it logs the ERROR the queue monitor logs,
`Gateway not configured: <the settings at fault>`, and deletes nothing. Status records, delivery
events and idempotency keys do not expire yet (docs/operations.md).
"""

from __future__ import annotations

import logging

import azure.functions as func

from shared.errors import MailgateError
from shared.gateway import expire_data as expire_due_data

logger = logging.getLogger(__name__)

bp = func.Blueprint()

# NCRONTAB, UTC; default "0 17 * * * *" (hourly at an odd minute, off the hour everyone uses).
# A setting so that tests can run it every few seconds. The host resolves `%NAME%` through its
# INameResolver when it indexes the function, and a setting that is missing fails that
# function's indexing ("'%RETENTION_SCHEDULE%' does not resolve to a value.", Azure/
# azure-webjobs-sdk NameResolverExtensions.ResolveWholeString): infra/ and
# local.settings.example.json set it.
SCHEDULE = "%RETENTION_SCHEDULE%"


@bp.function_name("expire_data")
# use_monitor=True: a run missed while the app was down is made up at start (the host keeps
# the schedule's status in AzureWebJobsStorage), so an hour without a run does not double the
# next run's work. The host turns it off for a schedule that fires more than once a minute,
# as tests' schedules do (WebJobs Extensions TimerSchedule; devstack/host_timer.py).
@bp.timer_trigger(arg_name="timer", schedule=SCHEDULE, run_on_startup=False, use_monitor=True)
def expire_data(timer: func.TimerRequest) -> None:
    """Delete the activity rows that are past their retention; log what was deleted."""
    try:
        result = expire_due_data()
    except MailgateError as error:
        # Not raised: a timer is not retried, and the next run takes up where this one stopped.
        logger.error("Retention: activity rows could not be expired: %s", error)
        return
    if result is None:
        return  # the settings are wrong: logged already, nothing deleted
    logger.info(
        "Retention: deleted %d activity row(s) older than %s day(s) in %d call(s)%s%s",
        result.deleted,
        f"{result.retention_days:g}",
        result.calls,
        f"; {result.failed} could not be deleted" if result.failed else "",
        "; more left for the next run" if result.more_left else "",
        extra={"deleted": result.deleted, "calls": result.calls, "failed": result.failed},
    )
    if result.bodies is not None:
        logger.info(
            "Retention: deleted %d leftover message body blob(s) older than %s hour(s)%s",
            result.bodies.deleted,
            f"{result.bodies.retention_hours:g}",
            "; more left for the next run" if result.bodies.more_left else "",
            extra={"deleted": result.bodies.deleted},
        )
