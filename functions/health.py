"""`GET /api/health`: whether the gateway is configured and its storage answers."""

from __future__ import annotations

import azure.functions as func

from functions.http_responses import STORAGE_RETRY_AFTER_SECONDS, json_response, refusal_response
from shared.errors import ConfigurationError
from shared.gateway import check_health, get_gateway

bp = func.Blueprint()


@bp.function_name("health")
@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    """200 when every check passes, else 503; the body gives each check and the queue depths,
    and whether the (optional) Event Webhook is configured. With settings that are wrong, 503
    problem+json naming them, as every route answers then."""
    try:
        gateway = get_gateway()
    except ConfigurationError as error:
        return refusal_response(error, "the gateway cannot work")
    report = check_health(gateway)
    return json_response(
        {
            "status": "healthy" if report.healthy else "unhealthy",
            "checks": report.checks,
            "queues": report.queue_depths,
            "event_webhook": report.event_webhook,
        },
        200 if report.healthy else 503,
        None if report.healthy else {"Retry-After": STORAGE_RETRY_AFTER_SECONDS},
    )
