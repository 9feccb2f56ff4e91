"""Timer trigger: every 5 minutes, log how full the mail and poison queues are.

While the settings are wrong, each run also logs an ERROR, `Gateway not configured: <the
settings at fault>` (alerted on too), and still measures the queues if the storage settings
are right. Each run logs one INFO line per queue, `Queue monitor: queue=<name> depth=<n>
oldest_age_seconds=<s or none>`, and a WARNING, `Poison queue not empty: queue=<name>
depth=<n>`, while dead letters wait; infra/app/alerts.bicep alerts on that warning. The
numbers are in the text because the Functions host forwards a log's message, not its `extra`
fields, to Application Insights; `extra` carries them for handlers that keep fields. No
message's content is read into a log.
"""

from __future__ import annotations

import logging

import azure.functions as func

from shared.errors import MailgateError
from shared.gateway import measure_queues
from shared.queue import QueueMeasurement

logger = logging.getLogger(__name__)

bp = func.Blueprint()

# Every 5 minutes on the minute, UTC (NCRONTAB: second minute hour day month day-of-week).
# Fixed rather than a setting: the alert on the warning below counts on this cadence.
SCHEDULE = "0 */5 * * * *"
POISON_WARNING = "Poison queue not empty"


@bp.function_name("monitor_queues")
# use_monitor=False: a run missed while the app was down is not worth catching up on start, as
# it would only report the present, which the next run does within 5 minutes anyway.
@bp.timer_trigger(arg_name="timer", schedule=SCHEDULE, run_on_startup=False, use_monitor=False)
def monitor_queues(timer: func.TimerRequest) -> None:
    """Log each queue's depth and oldest visible message's age; warn while dead letters wait."""
    try:
        report = measure_queues()
    except MailgateError as error:
        # Not raised: a timer is not retried, and the next run in 5 minutes tries again.
        logger.error("Queue monitor: the queues could not be measured: %s", error)
        return
    for measurement in report.measurements:
        _log_measurement(measurement)
    if report.poison.depth > 0:
        logger.warning(
            "%s: queue=%s depth=%d; dead letters wait for an operator (make poison)",
            POISON_WARNING,
            report.poison.queue,
            report.poison.depth,
            extra={"queue": report.poison.queue, "depth": report.poison.depth},
        )


def _log_measurement(measurement: QueueMeasurement) -> None:
    age = measurement.oldest_age_seconds
    logger.info(
        "Queue monitor: queue=%s depth=%d oldest_age_seconds=%s%s",
        measurement.queue,
        measurement.depth,
        "none" if age is None else age,
        "" if measurement.exists else " (the queue does not exist yet)",
        extra={
            "queue": measurement.queue,
            "depth": measurement.depth,
            "oldest_age_seconds": age,
        },
    )
