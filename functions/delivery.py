"""Queue trigger: deliver each message on the mail queue through SendGrid."""

from __future__ import annotations

import logging

import azure.functions as func

from shared.gateway import get_gateway
from shared.settings import STORAGE_CONNECTION

logger = logging.getLogger(__name__)

bp = func.Blueprint()


@bp.function_name("deliver_message")
@bp.queue_trigger(arg_name="msg", queue_name="%MAIL_QUEUE_NAME%", connection=STORAGE_CONNECTION)
def deliver_message(msg: func.QueueMessage) -> None:
    """Send one message; an exception leaves it on the queue for the host to retry."""
    if (msg.dequeue_count or 0) > 1:
        # The gateway's own retries are new queue messages: a repeat here means an earlier
        # invocation crashed or could not write its outcome.
        logger.warning(
            "Queue message %s is delivered again (dequeue count %s)", msg.id, msg.dequeue_count
        )
    get_gateway().deliver(msg.get_body())
