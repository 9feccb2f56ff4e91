"""A loopback stand-in for SendGrid's v3 Mail Send API, for tests and the local stack.

It validates every payload with pydantic models that encode SendGrid's published request
schema and its documented limits, answers like SendGrid (401/400/413/202/200), writes each
accepted mail to an outbox folder as ``<x-message-id>.json`` and ``<x-message-id>.eml``, and
offers a control API under ``/_standin/`` so tests can script failures, dropped connections
and latency.

Run it with ``python -m devstack.sendgrid_standin [--port 0]``, or from tests with
``SendGridStandIn().start()``.

Modules: ``schema`` (request models, ``validate_mail_send``), ``errors`` (SendGrid error
entries), ``outbox`` (``.eml`` and ``.json`` files), ``server`` (endpoint, control API,
``serve``), ``process`` (the ``SendGridStandIn`` subprocess wrapper), ``__main__`` (the CLI).
"""

from devstack.sendgrid_standin.errors import UNAUTHORIZED_BODY, validation_errors
from devstack.sendgrid_standin.outbox import build_eml, new_message_id, write_outbox
from devstack.sendgrid_standin.process import (
    API_KEY_ENV,
    READY_LINE_PREFIX,
    SendGridStandIn,
    StandInError,
)
from devstack.sendgrid_standin.schema import RESERVED_HEADERS, MailSend, validate_mail_send
from devstack.sendgrid_standin.server import (
    DEFAULT_API_KEY,
    DEFAULT_OUTBOX,
    DEFAULT_PORT,
    MAX_BODY_BYTES,
    MailSendEndpoint,
    ScriptedResponse,
    StandInState,
    create_app,
    serve,
)

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_API_KEY",
    "DEFAULT_OUTBOX",
    "DEFAULT_PORT",
    "MAX_BODY_BYTES",
    "READY_LINE_PREFIX",
    "RESERVED_HEADERS",
    "UNAUTHORIZED_BODY",
    "MailSend",
    "MailSendEndpoint",
    "ScriptedResponse",
    "SendGridStandIn",
    "StandInError",
    "StandInState",
    "build_eml",
    "create_app",
    "new_message_id",
    "serve",
    "validate_mail_send",
    "validation_errors",
    "write_outbox",
]
