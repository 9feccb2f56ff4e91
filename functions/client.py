"""`GET /api/v1/client`: whose key this is, and the gateway's limits for it.

For a caller that must check a key before it has a message to send: the SMTP relay
(relay/) answers an SMTP AUTH with it, and learns the size it may advertise (SIZE).
"""

from __future__ import annotations

import azure.functions as func

from functions.auth import client_route
from functions.http_responses import json_response
from shared.clients import Client
from shared.gateway import get_gateway

bp = func.Blueprint()


@bp.function_name("get_client")
@bp.route(route="v1/client", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@client_route()
def get_client(req: func.HttpRequest, client: Client) -> func.HttpResponse:
    """The calling client's name and the largest request the gateway accepts."""
    return json_response(get_gateway().client_document(client), 200)
