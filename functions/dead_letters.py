"""Operator routes over the poison queue: list dead letters, replay them, purge them (each for
the admin key, and under `signed-in/` for an operator signed in with Entra ID).

Each call goes through at most `limit` messages and answers within seconds, with a
`continuation` while there are more (see shared/poison_walk.py).
"""

from __future__ import annotations

import azure.functions as func

from functions.auth import operator_route
from functions.http_responses import json_response, refusal_response
from shared.dead_letters import parse_listing_query, parse_selection
from shared.errors import MailgateError
from shared.gateway import get_gateway

bp = func.Blueprint()


@operator_route(bp, "list_dead_letters", "v1/dead-letters", ["GET"])
def list_dead_letters(req: func.HttpRequest) -> func.HttpResponse:
    """Dead letters with their reasons, `?limit=` at a time, `?continuation=` from there."""
    try:
        query = parse_listing_query(req.params)
        page = get_gateway().dead_letters.list_page(query.limit, query.continuation)
    except MailgateError as error:
        return refusal_response(error, "the dead letters could not be read")
    return json_response(page.to_document(), 200)


@operator_route(bp, "replay_dead_letters", "v1/dead-letters/replay", ["POST"])
def replay_dead_letters(req: func.HttpRequest) -> func.HttpResponse:
    """Re-enqueue `{"ids": [...]}` or `{"all": true}` with their attempts reset."""
    try:
        selection = parse_selection(req.get_body())
        report = get_gateway().dead_letters.replay_page(
            selection.chosen(), selection.limit, selection.continuation
        )
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
        report = dead_letters.purge_page(
            selection.chosen(), selection.limit, selection.continuation
        )
    except MailgateError as error:
        return refusal_response(error, "nothing more was purged")
    return json_response(report.to_document(), 200)
