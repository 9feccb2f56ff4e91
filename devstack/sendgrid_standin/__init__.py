"""A loopback stand-in for SendGrid's v3 Mail Send API, for tests and the local stack.

It validates every payload with the gateway's own models of SendGrid's published request
schema and its documented limits (``shared.sendgrid_v3``, deployed with the gateway), answers
like SendGrid (401/400/413/415/202/200), writes each accepted mail to an outbox folder as
``<x-message-id>.json`` and ``<x-message-id>.eml``, and offers a control API under
``/_standin/`` so tests can script failures (``UNVERIFIED_SENDER_REFUSAL``: SendGrid's own
refusal of an unverified sender), dropped connections and latency.

Run it with ``python -m devstack.sendgrid_standin [--port 0]``, or from tests with
``SendGridStandIn().start()``.

Modules: ``outbox`` (``.eml`` and ``.json`` files), ``server`` (endpoint, control API,
``serve``), ``process`` (the ``SendGridStandIn`` subprocess wrapper), ``__main__`` (the CLI).
The request models and SendGrid's error format live in ``shared.sendgrid_v3``.
"""

from devstack.sendgrid_standin.outbox import build_eml, new_message_id, write_outbox
from devstack.sendgrid_standin.process import (
    API_KEY_ENV,
    READY_LINE_PREFIX,
    SendGridStandIn,
    StandInError,
)
from devstack.sendgrid_standin.server import (
    DEFAULT_API_KEY,
    DEFAULT_OUTBOX,
    DEFAULT_PORT,
    MAX_BODY_BYTES,
    UNVERIFIED_SENDER_REFUSAL,
    MailSendEndpoint,
    ScriptedResponse,
    StandInState,
    create_app,
    serve,
)
from shared.sendgrid_v3.error_format import UNAUTHORIZED_BODY, validation_errors
from shared.sendgrid_v3.schema import RESERVED_HEADERS, MailSend, validate_mail_send

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_API_KEY",
    "DEFAULT_OUTBOX",
    "DEFAULT_PORT",
    "MAX_BODY_BYTES",
    "READY_LINE_PREFIX",
    "RESERVED_HEADERS",
    "UNAUTHORIZED_BODY",
    "UNVERIFIED_SENDER_REFUSAL",
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
