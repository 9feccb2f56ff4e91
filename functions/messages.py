"""`POST /api/v1/messages` queues a message; `GET /api/v1/messages/{id}` tells its status."""

from __future__ import annotations

import logging

import azure.functions as func

from functions.auth import client_route
from functions.http_responses import json_response, refusal_response
from shared.clients import Client
from shared.errors import MailgateError
from shared.gateway import get_gateway

logger = logging.getLogger(__name__)

bp = func.Blueprint()


@bp.function_name("submit_message")
@bp.route(route="v1/messages", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@client_route(accepts_mail=True)
def submit_message(req: func.HttpRequest, client: Client) -> func.HttpResponse:
    """Answer 202 once the message is on the queue, or a problem saying why not."""
    try:
        accepted = get_gateway().accept(
            req.get_body(),
            req.headers.get("Content-Type"),
            client,
            req.headers.get("Idempotency-Key"),
        )
    except MailgateError as error:
        return refusal_response(error, "the message was not accepted")
    headers = {"Location": f"/api/v1/messages/{accepted.id}"}
    if accepted.replayed:
        headers["Idempotent-Replayed"] = "true"
    return json_response({"id": accepted.id, "status": accepted.status}, 202, headers)


@bp.function_name("get_message_status")
@bp.route(route="v1/messages/{id}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@client_route()
def get_message_status(req: func.HttpRequest, client: Client) -> func.HttpResponse:
    """The client's own message's status record, with SendGrid's events once any came, or 404."""
    try:
        document = get_gateway().status_document(req.route_params["id"], client)
    except MailgateError as error:
        return refusal_response(error, "the status could not be read")
    return json_response(document, 200)
