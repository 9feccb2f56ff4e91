"""Operators who sign in with Microsoft Entra ID instead of holding the Function App's admin key.

With App Service Authentication ("Easy Auth") in front of the app, the platform signs the
operator in and passes who they are to the app in `X-MS-CLIENT-PRINCIPAL-*` headers. Microsoft
documents that "external requests aren't allowed to set these headers, so they're present only
if set by App Service" (MicrosoftDocs/azure-docs,
articles/app-service/configure-authentication-user-identities.md). That holds only while the
platform's authentication runs: on Flex Consumption the Functions host runs it itself, when the
platform sets `WEBSITE_AUTH_ENABLED` (Azure/azure-functions-host, HostEasyAuthOptionsSetup.cs,
JobHostEasyAuthMiddleware.cs). Without it anyone can send the headers, so they are trusted only
when that variable says the platform's authentication is on, and only for the operators listed
by object id in OPERATOR_PRINCIPAL_IDS.

The host's own key check does not know Easy Auth identities (Azure/azure-functions-host,
AuthenticationLevelHandler.cs grants an auth level from keys only): a route at the host's ADMIN
level still wants the admin key from a signed-in operator. So the operator routes have twins at
the anonymous level under `signed-in/`, which accept a listed, signed-in operator and nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from shared.errors import ConfigurationError, OperatorNotAllowed, OperatorNotSignedIn

OPERATOR_PRINCIPAL_IDS = "OPERATOR_PRINCIPAL_IDS"
# Read-only, set by the platform while App Service Authentication is on (MicrosoftDocs/azure-docs,
# articles/app-service/reference-app-settings.md).
PLATFORM_SIGN_IN = "WEBSITE_AUTH_ENABLED"
PRINCIPAL_ID_HEADER = "X-MS-CLIENT-PRINCIPAL-ID"
PRINCIPAL_PROVIDER_HEADER = "X-MS-CLIENT-PRINCIPAL-IDP"
# The provider name App Service gives Microsoft Entra ID sign-ins.
ENTRA_PROVIDER = "aad"
# An Entra object id; a longer header value is refused before it is compared with anything.
_OBJECT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
MAX_OPERATORS = 100


@dataclass(frozen=True)
class OperatorSignIn:
    """Who may use the signed-in operator routes, and whether the platform signs anyone in."""

    principal_ids: frozenset[str] = frozenset()
    platform_enabled: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> OperatorSignIn:
        """Read OPERATOR_PRINCIPAL_IDS and WEBSITE_AUTH_ENABLED; ConfigurationError if bad."""
        raw = environ.get(OPERATOR_PRINCIPAL_IDS, "")
        entries = [entry.strip().lower() for entry in raw.split(",") if entry.strip()]
        if len(entries) > MAX_OPERATORS:
            raise ConfigurationError(
                f"{OPERATOR_PRINCIPAL_IDS} lists more than {MAX_OPERATORS} operators: "
                "sign them in as a group instead"
            )
        for position, entry in enumerate(entries, 1):
            if not _OBJECT_ID.fullmatch(entry):
                raise ConfigurationError(
                    f"{OPERATOR_PRINCIPAL_IDS} entry {position} is not an Entra object id "
                    "(a GUID such as 00000000-0000-0000-0000-000000000000)"
                )
        # The host parses the variable with bool.TryParse, then as an integer
        # (HostEasyAuthOptionsSetup.IsSiteAuthEnabled): "True", "true" and "1" all mean on.
        enabled = environ.get(PLATFORM_SIGN_IN, "").strip().lower() in {"true", "1"}
        return cls(frozenset(entries), enabled)

    @property
    def configured(self) -> bool:
        """Whether any operator may sign in."""
        return bool(self.principal_ids)

    def operator(self, headers: Mapping[str, str]) -> str:
        """The signed-in operator's object id; OperatorNotSignedIn, OperatorNotAllowed or
        ConfigurationError if the request may not use an operator route."""
        if not self.configured:
            raise OperatorNotSignedIn(
                "operator sign-in is off (OPERATOR_PRINCIPAL_IDS is empty): use the admin key "
                "on the routes without signed-in/"
            )
        if not self.platform_enabled:
            # The headers would be the caller's own: refuse every request, whatever it carries.
            raise ConfigurationError(
                f"{OPERATOR_PRINCIPAL_IDS} is set but App Service Authentication is off "
                f"({PLATFORM_SIGN_IN} is not true), so no sign-in can be trusted"
            )
        principal = (headers.get(PRINCIPAL_ID_HEADER) or "").strip().lower()
        provider = (headers.get(PRINCIPAL_PROVIDER_HEADER) or "").strip().lower()
        if not principal:
            raise OperatorNotSignedIn("not signed in: open /.auth/login/aad first")
        if provider != ENTRA_PROVIDER or not _OBJECT_ID.fullmatch(principal):
            raise OperatorNotAllowed("only a Microsoft Entra ID sign-in may use operator routes")
        if principal not in self.principal_ids:
            raise OperatorNotAllowed(
                f"the signed-in account {principal} is not listed in {OPERATOR_PRINCIPAL_IDS}"
            )
        return principal
