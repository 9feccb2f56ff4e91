"""Operator routes over the poison queue: list dead letters, replay them, purge them (each for
the admin key, and under `signed-in/` for an operator signed in with Entra ID)."""

from __future__ import annotations

import azure.functions as func

from functions.auth import operator_route
from functions.http_responses import json_response, refusal_response
from shared.dead_letters import parse_selection
from shared.errors import MailgateError
from shared.gateway import get_gateway

bp = func.Blueprint()


@operator_route(bp, "list_dead_letters", "v1/dead-letters", ["GET"])
def list_dead_letters(req: func.HttpRequest) -> func.HttpResponse:
    """Every dead letter with its reason."""
    try:
        entries = get_gateway().dead_letters.entries()
    except MailgateError as error:
        return refusal_response(error, "the dead letters could not be read")
    return json_response({"dead_letters": [e.to_document() for e in entries]}, 200)


@operator_route(bp, "replay_dead_letters", "v1/dead-letters/replay", ["POST"])
def replay_dead_letters(req: func.HttpRequest) -> func.HttpResponse:
    """Re-enqueue `{"ids": [...]}` or `{"all": true}` with their attempts reset."""
    try:
        selection = parse_selection(req.get_body())
        report = get_gateway().dead_letters.replay(selection.chosen())
    except MailgateError as error:
        return refusal_response(error, "nothing more was replayed")
    return json_response(report.to_document(), 200)


@operator_route(bp, "purge_dead_letters", "v1/dead-letters/purge", ["POST"])
def purge_dead_letters(req: func.HttpRequest) -> func.HttpResponse:
    """Delete dead letters for good; `confirm` must repeat the poison queue's name."""
    try:
        selection = parse_selection(req.get_body())
        dead_letters = get_gateway().dead_letters
        dead_letters.confirm_purge(selection.confirm)
        report = dead_letters.purge(selection.chosen())
    except MailgateError as error:
        return refusal_response(error, "nothing more was purged")
    return json_response(report.to_document(), 200)
