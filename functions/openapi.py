"""`GET /api/openapi.json`: the API's OpenAPI 3.1 document, built from the request models."""

from __future__ import annotations

import azure.functions as func

from functions.http_responses import json_response
from shared.openapi import openapi_document

bp = func.Blueprint()


@bp.function_name("openapi")
@bp.route(route="openapi.json", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def openapi(req: func.HttpRequest) -> func.HttpResponse:
    """The document; public, as it holds no secret and clients generate code from it."""
    return json_response(openapi_document(), 200)
