"""Authentication for the routes the host serves at its anonymous level.

The host's function keys cannot tell apps apart, and SendGrid's SDKs send only
`Authorization: Bearer <key>`; so mail routes run at `AuthLevel.ANONYMOUS` and every one of them
is wrapped in `client_route`, which refuses the request with 401 before the handler runs unless
it carries the key of an enabled client. SendGrid's Event Webhook carries no client key: its
ECDSA signature is the credential, and its route is wrapped in `sendgrid_signed_route`, which
refuses with 401 anything SendGrid did not sign within the last minutes (and with 413, before
reading it, a body larger than any batch SendGrid posts).

Operator routes are registered twice by `operator_route`: at the host's ADMIN level, where the
host checks the admin key, and under `signed-in/` at the anonymous level, wrapped in
`operator_signed_in`, which lets through only an operator the platform signed in with Microsoft
Entra ID (App Service Authentication) and OPERATOR_PRINCIPAL_IDS lists (shared/operator_sign_in.py).
tests/functions/test_auth.py checks that no anonymous route goes without one of the three, except
the few listed public there.

The three wrappers count refusals in the refusal log (shared/refusals.py): every 4xx answer of
a key or signature route, and every refused operator sign-in; route, status, client (or
"unknown key") and caller address, never the key or the body. The admin routes' refusals of a
missing or wrong key are the host's own: they never reach the app.
"""

from __future__ import annotations

from collections.abc import Callable

import azure.functions as func

from functions.http_responses import refusal_response
from shared.clients import Client
from shared.errors import MailgateError, Unauthorized
from shared.gateway import get_gateway
from shared.refusals import SENDGRID_CALLER, UNKNOWN_CLIENT, record_refusal
from shared.webhook_signature import SIGNATURE_HEADER, TIMESTAMP_HEADER, bounded_batch

Handler = Callable[[func.HttpRequest], func.HttpResponse]
ClientHandler = Callable[[func.HttpRequest, Client], func.HttpResponse]
Refusal = Callable[[MailgateError, str], func.HttpResponse]

# Set on every handler client_route (sendgrid_signed_route) wraps, so a test can find routes
# that lack both.
REQUIRES_CLIENT_KEY = "requires_client_key"
REQUIRES_SENDGRID_SIGNATURE = "requires_sendgrid_signature"
REQUIRES_OPERATOR_SIGN_IN = "requires_operator_sign_in"
# Where the signed-in twins of the operator routes live: `/api/signed-in/v1/...`.
SIGNED_IN_PREFIX = "signed-in/"


def client_route(
    refuse: Refusal = refusal_response, *, accepts_mail: bool = False
) -> Callable[[ClientHandler], Callable[[func.HttpRequest], func.HttpResponse]]:
    """Run the handler with the authenticated client, or answer 401 (in `refuse`'s format).

    `accepts_mail`: the handler accepts a message, which takes it from the client's rate
    (ClientStore.take checks the instance's copy of the client's row at least every
    CLIENT_CHECK_SECONDS); the key check may then use that copy instead of reading the row.
    """

    def wrap(handler: ClientHandler) -> Callable[[func.HttpRequest], func.HttpResponse]:
        def req_with_client(req: func.HttpRequest) -> func.HttpResponse:
            try:
                client = get_gateway().authenticate(
                    req.headers.get("Authorization"), counted=accepts_mail
                )
            except MailgateError as error:
                # A disabled client's genuine key names it; any other key names nobody.
                who = error.client if isinstance(error, Unauthorized) else None
                response = refuse(error, "the client key could not be checked")
                return _audited(req, handler, response, who or UNKNOWN_CLIENT)
            return _audited(req, handler, handler(req, client), client.name)

        _name_like(req_with_client, handler)
        setattr(req_with_client, REQUIRES_CLIENT_KEY, True)
        return req_with_client

    return wrap


def sendgrid_signed_route(handler: Handler) -> Handler:
    """Run the handler only for a body SendGrid signed lately, or answer 401 (503 without a
    verification key configured)."""

    def req_signed(req: func.HttpRequest) -> func.HttpResponse:
        try:
            body = bounded_batch(req.headers.get("Content-Length"), req.get_body)
            get_gateway().verify_sendgrid_signature(
                body, req.headers.get(SIGNATURE_HEADER), req.headers.get(TIMESTAMP_HEADER)
            )
        except MailgateError as error:
            response = refusal_response(error, "no event was recorded")
            return _audited(req, handler, response, UNKNOWN_CLIENT)
        return _audited(req, handler, handler(req), SENDGRID_CALLER)

    _name_like(req_signed, handler)
    setattr(req_signed, REQUIRES_SENDGRID_SIGNATURE, True)
    return req_signed


def _audited(
    req: func.HttpRequest, handler: Callable[..., object], response: func.HttpResponse, who: str
) -> func.HttpResponse:
    """The response, its refusal (any 4xx) counted under the route's function name."""
    if 400 <= response.status_code < 500:
        record_refusal(handler.__name__, response.status_code, who, req.headers)
    return response


def operator_signed_in(handler: Handler) -> Handler:
    """Run the handler only for an operator the platform signed in, or answer 401 or 403 (503
    while OPERATOR_PRINCIPAL_IDS is set without App Service Authentication in front)."""

    def req_operator(req: func.HttpRequest) -> func.HttpResponse:
        try:
            get_gateway().settings.operator_sign_in.operator(req.headers)
        except MailgateError as error:
            refused = refusal_response(error, "nothing was read or changed")
            return _audited(req, handler, refused, "operator sign-in")
        return handler(req)

    _name_like(req_operator, handler)
    setattr(req_operator, REQUIRES_OPERATOR_SIGN_IN, True)
    return req_operator


def operator_route(
    bp: func.Blueprint, name: str, route: str, methods: list[str]
) -> Callable[[Handler], Handler]:
    """Register an operator route for the admin key and, under `signed-in/`, for an operator
    signed in with Entra ID: function `name` at the ADMIN level and `<name>_signed_in` at the
    anonymous level behind operator_signed_in. Returns the handler, callable as before."""

    def register(handler: Handler) -> Handler:
        bp.function_name(f"{name}_signed_in")(
            bp.route(
                route=SIGNED_IN_PREFIX + route,
                methods=methods,
                auth_level=func.AuthLevel.ANONYMOUS,
            )(operator_signed_in(handler))
        )
        bp.function_name(name)(
            bp.route(route=route, methods=methods, auth_level=func.AuthLevel.ADMIN)(handler)
        )
        return handler

    return register


def _name_like(wrapper: Callable[..., object], handler: Callable[..., object]) -> None:
    # The worker binds parameters by name: a wrapper takes `req` alone, so it is a plain
    # function named like its handler rather than functools.wraps (whose signature follows it).
    wrapper.__name__ = handler.__name__
    wrapper.__qualname__ = handler.__qualname__
    wrapper.__doc__ = handler.__doc__
    wrapper.__module__ = handler.__module__
