"""Timer trigger: hourly, delete what is past its retention: the console's activity rows
(ACTIVITY_RETENTION_DAYS), status records with their delivery events (STATUS_RETENTION_DAYS),
idempotency keys (IDEMPOTENCY_RETENTION_HOURS), and the claim-check bodies left under live/ past
the longest a message can live.

Each run logs one INFO line for the table, `Retention: deleted N activity row(s) older than D
day(s) in C call(s); M message(s) older than S day(s) (R row(s)) in C call(s); K idempotency
key(s) in C call(s)`, plus `; N could not be deleted` and `; more left for the next run` when it
stopped at its bound (shared/retention.py, shared/status_retention.py), then `Retention: deleted
N leftover message body blob(s) older than H hour(s)`. While the settings are wrong it logs the
ERROR the queue monitor logs, `Gateway not configured: <the settings at fault>`, and deletes
nothing.
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
    """Delete what is past its retention; log what was deleted."""
    try:
        result = expire_due_data()
    except MailgateError as error:
        # Not raised: a timer is not retried, and the next run takes up where this one stopped.
        logger.error("Retention: expired rows could not be deleted: %s", error)
        return
    if result is None:
        return  # the settings are wrong: logged already, nothing deleted
    for line, counts in result.log_lines():
        logger.info("%s", line, extra=counts)
