"""Turning the gateway's outcomes into HTTP responses."""

from __future__ import annotations

import json
from typing import Any

import azure.functions as func

from shared.problems import PROBLEM_CONTENT_TYPE, Problem


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
