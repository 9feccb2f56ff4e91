"""Queue trigger: deliver each message on the mail queue through SendGrid."""

from __future__ import annotations

import os

import azure.functions as func

from shared.gateway import deliver_queued
from shared.settings import data_connection

bp = func.Blueprint()


@bp.function_name("deliver_message")
# The connection the gateway's own clients use (MAILGATE_STORAGE, else AzureWebJobsStorage),
# chosen when the worker indexes the app: the host would not fall back on its own.
@bp.queue_trigger(
    arg_name="msg", queue_name="%MAIL_QUEUE_NAME%", connection=data_connection(os.environ)
)
def deliver_message(msg: func.QueueMessage) -> None:
    """Send one message, or put it back for later; an exception (only when the queue itself
    fails) leaves it to the host, which retries it after visibilityTimeout."""
    deliver_queued(msg.get_body(), dequeue_count=msg.dequeue_count or 1)
