"""`GET /api/health` (anonymous: healthy or not) and `GET /api/health/details` (admin: why).

Load balancers and probes call the first without credentials, so it says no more than
`{"status": ...}`, from an answer at most HEALTH_CACHE_SECONDS old: a flood of probes costs one
storage check per instance every few seconds. Queue depths, storage errors and the names of
wrong settings are for the admin key, on a route of their own: on an anonymous route the
function cannot tell whether the caller had a key, as the Python library's HttpRequest carries
none of the identities the host sends along (Azure/azure-functions-host,
GrpcMessageConversionExtensions.cs ToRpcHttp; azure-functions, http.py
HttpRequestConverter.decode), so the host must check it, at the ADMIN level.
"""

from __future__ import annotations

import azure.functions as func

from functions.auth import operator_route
from functions.http_responses import (
    NOT_CONFIGURED_RETRY_AFTER_SECONDS,
    STORAGE_RETRY_AFTER_SECONDS,
    json_response,
    refusal_response,
)
from shared.errors import ConfigurationError
from shared.gateway import check_health, get_gateway, public_health

bp = func.Blueprint()


@bp.function_name("health")
@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    """`{"status": "healthy"}` (200), else `{"status": "unhealthy"}` (503, Retry-After)."""
    status = public_health()
    if status.healthy:
        return json_response({"status": "healthy"}, 200)
    retry_after = (
        STORAGE_RETRY_AFTER_SECONDS if status.configured else NOT_CONFIGURED_RETRY_AFTER_SECONDS
    )
    return json_response({"status": "unhealthy"}, 503, {"Retry-After": retry_after})


@operator_route(bp, "health_details", "health/details", ["GET"])
def health_details(req: func.HttpRequest) -> func.HttpResponse:
    """200 when every check passes, else 503; the body gives each check and the queue depths,
    whether the (optional) Event Webhook is configured, checked now, and each provider's
    breaker and brake. With settings that are wrong, 503 problem+json naming them, as every
    route answers then."""
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
            "providers": gateway.provider_guards(),
        },
        200 if report.healthy else 503,
        None if report.healthy else {"Retry-After": STORAGE_RETRY_AFTER_SECONDS},
    )
