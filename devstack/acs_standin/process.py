"""``AcsEmailStandIn``: the ACS Email stand-in as a subprocess on loopback, driven as the
SendGrid stand-in is (same process handling, same control API)."""

from __future__ import annotations

import re
import ssl

from devstack.acs_standin.server import BEARER_AUTH, DEFAULT_ACCESS_KEY
from devstack.local_tls import LocalTls
from devstack.sendgrid_standin.process import SendGridStandIn

ACCESS_KEY_ENV = "ACS_STANDIN_ACCESS_KEY"
READY_LINE_PREFIX = "ACS Email stand-in listening on "


class AcsEmailStandIn(SendGridStandIn):
    """Run the ACS Email stand-in and drive its control API (`mails()`, `script()`, ...)."""

    module = "devstack.acs_standin"
    key_variable = ACCESS_KEY_ENV
    ready_pattern = re.compile(re.escape(READY_LINE_PREFIX) + r"(https?://\S+)")
    name = "ACS Email stand-in"

    def __init__(
        self, *, api_key: str = DEFAULT_ACCESS_KEY, tls: LocalTls | None = None, **options: object
    ) -> None:
        """As SendGridStandIn; `api_key` is the resource's access key (base64). With `tls`,
        it serves HTTPS with the local CA's certificate and takes bearer tokens instead of the
        key (the identity mode's ACS: reached as ACS_EMAIL_ENDPOINT with a managed identity)."""
        super().__init__(api_key=api_key, **options)  # type: ignore[arg-type]
        self.tls = tls

    def __enter__(self) -> AcsEmailStandIn:
        self.start()
        return self

    @property
    def connection_string(self) -> str:
        """ACS_EMAIL_CONNECTION_STRING for this stand-in, as the Azure portal writes one."""
        if self.tls is not None:
            raise ValueError("this stand-in takes bearer tokens: use ACS_EMAIL_ENDPOINT")
        return f"endpoint={self.base_url}/;accesskey={self.api_key}"

    def _more_arguments(self) -> list[str]:
        if self.tls is None:
            return []
        # The certificate Azurite serves in identity mode: for 127.0.0.1 and localhost.
        return [
            *("--tls-cert", str(self.tls.cert_chain.resolve())),
            *("--tls-key", str(self.tls.key.resolve())),
            *("--auth", BEARER_AUTH),
        ]

    def _verify(self) -> ssl.SSLContext | bool:
        if self.tls is None:
            return True
        return ssl.create_default_context(cafile=str(self.tls.ca))

    def set_running_polls(self, polls: int) -> None:
        """How many polls of each operation answer Running before its outcome (1 at first)."""
        self.client.post("/_standin/config", json={"running_polls": polls}).raise_for_status()

    def set_latency(self, latency_ms: int) -> None:
        """Not for this stand-in: script a `delay_ms` for the sends that should be slow."""
        raise NotImplementedError("script {'delay_ms': N} instead")

    def auth_headers(self) -> dict[str, str]:
        """Not for this stand-in: ACS requests are signed per request (see the SDK)."""
        raise NotImplementedError("sign requests with the SDK's HMACCredentialsPolicy")
