"""Queue trigger: deliver each message on the mail queue through SendGrid."""

from __future__ import annotations

import os

import azure.functions as func

from shared.gateway import get_gateway
from shared.settings import data_connection

bp = func.Blueprint()


@bp.function_name("deliver_message")
# The connection the gateway's own clients use (MAILGATE_STORAGE, else AzureWebJobsStorage),
# chosen when the worker indexes the app: the host would not fall back on its own.
@bp.queue_trigger(
    arg_name="msg", queue_name="%MAIL_QUEUE_NAME%", connection=data_connection(os.environ)
)
def deliver_message(msg: func.QueueMessage) -> None:
    """Send one message; an exception leaves it on the queue for the host to retry."""
    get_gateway().deliver(msg.get_body(), dequeue_count=msg.dequeue_count or 1)
