"""`POST /api/v1/messages`: validate a message and queue it for delivery."""

from __future__ import annotations

import logging

import azure.functions as func

from functions.http_responses import json_response, problem_response
from shared.errors import ConfigurationError, RequestRejected, StorageUnavailable
from shared.gateway import get_gateway
from shared.problems import Problem

logger = logging.getLogger(__name__)

bp = func.Blueprint()

STORAGE_RETRY_AFTER_SECONDS = "5"


@bp.function_name("submit_message")
@bp.route(route="v1/messages", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def submit_message(req: func.HttpRequest) -> func.HttpResponse:
    """Answer 202 once the message is on the queue, or a problem saying why not."""
    try:
        accepted = get_gateway().accept(req.get_body(), req.headers.get("Content-Type"))
    except RequestRejected as rejection:
        return problem_response(Problem.from_rejection(rejection))
    except StorageUnavailable as error:
        logger.error("Message not accepted, storage unavailable: %s", error)
        return problem_response(
            Problem(
                503,
                "the message could not be queued and was not accepted; try again later",
                headers={"Retry-After": STORAGE_RETRY_AFTER_SECONDS},
            )
        )
    except ConfigurationError as error:
        logger.error("Message not accepted, the gateway is misconfigured: %s", error)
        return problem_response(Problem(500, "the gateway is misconfigured; see its logs"))
    return json_response(
        {"id": accepted.id, "status": accepted.status},
        202,
        headers={"Location": f"/api/v1/messages/{accepted.id}"},
    )
