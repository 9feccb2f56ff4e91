"""`POST /api/v3/mail/send`: SendGrid's own Mail Send request, queued like any other message.

An app that uses a SendGrid library sends through the gateway by pointing the library's host
at `https://<app>/api`; the answers are SendGrid's: 202 with an empty body and `X-Message-Id`
(the gateway id), or `{"errors": [{"message", "field", "help"}]}` with SendGrid's status codes.
"""

from __future__ import annotations

import azure.functions as func

from functions.auth import client_route
from functions.http_responses import sendgrid_refusal_response
from shared.clients import Client
from shared.errors import MailgateError
from shared.gateway import get_gateway

bp = func.Blueprint()


@bp.function_name("sendgrid_mail_send")
@bp.route(route="v3/mail/send", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@client_route(sendgrid_refusal_response, accepts_mail=True)
def sendgrid_mail_send(req: func.HttpRequest, client: Client) -> func.HttpResponse:
    """Answer 202 once the mail is on the queue, or SendGrid's error body saying why not."""
    try:
        accepted = get_gateway().accept_sendgrid(
            req.get_body(),
            req.headers.get("Content-Type"),
            client,
            req.headers.get("Idempotency-Key"),
        )
    except MailgateError as error:
        return sendgrid_refusal_response(error, "the mail was not accepted")
    headers = {"X-Message-Id": accepted.id}
    if accepted.replayed:
        headers["Idempotent-Replayed"] = "true"
    return func.HttpResponse(status_code=202, headers=headers)
