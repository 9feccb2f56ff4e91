"""Client authentication for the mail routes, which the host serves at its anonymous level.

The host's function keys cannot tell apps apart, and SendGrid's SDKs send only
`Authorization: Bearer <key>`; so mail routes run at `AuthLevel.ANONYMOUS` and every one of them
is wrapped in `client_route`, which refuses the request with 401 before the handler runs unless
it carries the key of an enabled client. tests/functions/test_auth.py checks that no anonymous
route goes without it, except the few listed public there.
"""

from __future__ import annotations

from collections.abc import Callable

import azure.functions as func

from functions.http_responses import refusal_response
from shared.clients import Client
from shared.errors import MailgateError
from shared.gateway import get_gateway

ClientHandler = Callable[[func.HttpRequest, Client], func.HttpResponse]
Refusal = Callable[[MailgateError, str], func.HttpResponse]

# Set on every handler client_route wraps, so a test can find routes that lack it.
REQUIRES_CLIENT_KEY = "requires_client_key"


def client_route(
    refuse: Refusal = refusal_response,
) -> Callable[[ClientHandler], Callable[[func.HttpRequest], func.HttpResponse]]:
    """Run the handler with the authenticated client, or answer 401 (in `refuse`'s format)."""

    def wrap(handler: ClientHandler) -> Callable[[func.HttpRequest], func.HttpResponse]:
        # The worker binds parameters by name: the wrapper must take `req` and nothing else,
        # so it is a plain function rather than functools.wraps (whose signature follows the
        # handler's).
        def req_with_client(req: func.HttpRequest) -> func.HttpResponse:
            try:
                client = get_gateway().authenticate(req.headers.get("Authorization"))
            except MailgateError as error:
                return refuse(error, "the client key could not be checked")
            return handler(req, client)

        req_with_client.__name__ = handler.__name__
        req_with_client.__qualname__ = handler.__qualname__
        req_with_client.__doc__ = handler.__doc__
        req_with_client.__module__ = handler.__module__
        setattr(req_with_client, REQUIRES_CLIENT_KEY, True)
        return req_with_client

    return wrap
