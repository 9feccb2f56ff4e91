"""`POST /api/v1/events/sendgrid`: SendGrid's Event Webhook, recording what became of each mail.

SendGrid posts batches of events signed with its key; `sendgrid_signed_route` refuses anything
else. The answer is 200 with counts as soon as the batch is recorded: SendGrid retries any other
answer, and recording the same batch again changes nothing.
"""

from __future__ import annotations

import azure.functions as func

from functions.auth import sendgrid_signed_route
from functions.http_responses import json_response, refusal_response
from shared.errors import MailgateError
from shared.gateway import get_gateway

bp = func.Blueprint()


@bp.function_name("sendgrid_events")
@bp.route(route="v1/events/sendgrid", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@sendgrid_signed_route
def sendgrid_events(req: func.HttpRequest) -> func.HttpResponse:
    """Record a signed batch of events; 200 with how many were recorded, duplicate or unknown."""
    try:
        report = get_gateway().record_sendgrid_events(req.get_body())
    except MailgateError as error:
        return refusal_response(error, "the events were not all recorded")
    return json_response(report.to_document(), 200)
