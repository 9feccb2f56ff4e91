"""A local stand-in for Azure Communication Services Email (devstack/acs_standin/server.py):
the send and its operation's status as `azure-communication-email` calls them, the access-key
signature checked (or, over HTTPS in identity mode, the managed identity's bearer token), each
accepted mail written to an outbox. `make run` starts it beside the SendGrid stand-in; tests
drive it through `AcsEmailStandIn`."""

from devstack.acs_standin.process import AcsEmailStandIn
from devstack.acs_standin.server import (
    ACS_AUDIENCE,
    API_VERSION,
    BEARER_AUTH,
    DEFAULT_ACCESS_KEY,
    DEFAULT_PORT,
    AcsState,
    create_app,
    signature_problem,
    token_problem,
)

__all__ = [
    "ACS_AUDIENCE",
    "API_VERSION",
    "BEARER_AUTH",
    "DEFAULT_ACCESS_KEY",
    "DEFAULT_PORT",
    "AcsEmailStandIn",
    "AcsState",
    "create_app",
    "signature_problem",
    "token_problem",
]
