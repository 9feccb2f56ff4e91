"""Turning the gateway's outcomes into HTTP responses."""

from __future__ import annotations

import json
import logging
from typing import Any

import azure.functions as func

from shared.errors import ConfigurationError, MailgateError, RequestRejected, StorageUnavailable
from shared.problems import PROBLEM_CONTENT_TYPE, Problem
from shared.sendgrid_v3.error_format import refusal_body

logger = logging.getLogger(__name__)

STORAGE_RETRY_AFTER_SECONDS = "5"
# Settings come right by an operator's hand (and an app restart): ask for a minute.
NOT_CONFIGURED_RETRY_AFTER_SECONDS = "60"


def json_response(
    document: Any, status_code: int, headers: dict[str, str] | None = None
) -> func.HttpResponse:
    """A JSON response."""
    return func.HttpResponse(
        json.dumps(document), status_code=status_code, headers=headers, mimetype="application/json"
    )


def problem_response(problem: Problem) -> func.HttpResponse:
    """An RFC 9457 problem+json response."""
    return func.HttpResponse(
        problem.body(),
        status_code=problem.status,
        headers=problem.headers,
        mimetype=PROBLEM_CONTENT_TYPE,
    )


def refusal_response(error: MailgateError, unavailable: str) -> func.HttpResponse:
    """The problem response for a gateway error; `unavailable` says what did not happen."""
    return problem_response(problem_for(error, unavailable))


def sendgrid_refusal_response(error: MailgateError, unavailable: str) -> func.HttpResponse:
    """The same refusal as SendGrid words one: status and headers kept, SendGrid's error body."""
    problem = problem_for(error, unavailable)
    return json_response(
        refusal_body(problem.detail, problem.errors, problem.errors_left_out),
        problem.status,
        problem.headers,
    )


def problem_for(error: MailgateError, unavailable: str) -> Problem:
    """The status, explanation and headers a gateway error is answered with, logged if ours."""
    if isinstance(error, RequestRejected):
        return Problem.from_rejection(error)
    if isinstance(error, StorageUnavailable):
        logger.error("Storage unavailable: %s", error)
        return Problem(
            503,
            f"storage is unavailable and {unavailable}; try again later",
            headers={"Retry-After": STORAGE_RETRY_AFTER_SECONDS},
        )
    if isinstance(error, ConfigurationError):
        # Logged where it is raised (shared.gateway.get_gateway), once a minute. The message
        # names the settings at fault and never their values (shared.settings).
        return Problem(
            503,
            f"the gateway is not configured and {unavailable}: {error}",
            headers={"Retry-After": NOT_CONFIGURED_RETRY_AFTER_SECONDS},
        )
    logger.error("Request failed: %s", error)
    return Problem(503, f"{unavailable}; try again later")
