"""The operator console: `GET /api/console` (the page) and the operator JSON routes it reads.

The page is anonymous: it is the same static document for everyone, holds no data and no
secret, and asks the operator for the admin key itself (or finds them signed in with Entra ID),
so the key never has to travel in its address. Everything it shows comes from operator routes.
"""

from __future__ import annotations

import azure.functions as func

from functions.auth import operator_route
from functions.http_responses import json_response, refusal_response
from shared.console import console_page
from shared.errors import MailgateError
from shared.gateway import get_gateway

bp = func.Blueprint()


@bp.function_name("console")
@bp.route(route="console", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def console(req: func.HttpRequest) -> func.HttpResponse:
    """The page: static HTML whose script asks for the admin key and keeps it in the tab."""
    page = console_page()
    return func.HttpResponse(
        page.html, status_code=200, headers=page.headers, mimetype="text/html", charset="utf-8"
    )


@operator_route(bp, "console_summary", "v1/console/summary", ["GET"])
def console_summary(req: func.HttpRequest) -> func.HttpResponse:
    """Queue depths, outcomes per minute over the last hour, and the latest messages."""
    try:
        summary = get_gateway().console.summary()
    except MailgateError as error:
        return refusal_response(error, "the summary could not be read")
    return json_response(summary, 200, {"Cache-Control": "no-store"})


@operator_route(bp, "console_message", "v1/console/messages/{id}", ["GET"])
def console_message(req: func.HttpRequest) -> func.HttpResponse:
    """Any client's message: its status record and the latest outcomes it keeps, or 404."""
    try:
        document = get_gateway().console.message(req.route_params["id"])
    except MailgateError as error:
        return refusal_response(error, "the message could not be read")
    return json_response(document, 200, {"Cache-Control": "no-store"})
