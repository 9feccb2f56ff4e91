"""Transport: the gateway's pooled SendGrid client against the official `sendgrid` client.

Both send the same payloads (`build_payload` of the typical mail) to a local TLS server that
answers 202, one send at a time from the bench process, once directly and once through the
delaying proxy. The trust store of both is certifi's bundle plus the bench's own CA, so each
new connection of the official client loads a full CA bundle, as it does in production (there
from the system store).
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import certifi
import httpx
import trustme
from sendgrid import SendGridAPIClient

from bench.load import process_cpu_seconds
from bench.mail import typical_envelope
from bench.stack import HelperServer
from shared.sendgrid_client import SendGridClient, build_payload

API_KEY = "SG.bench-transport-key"
WARMUP_SENDS = 5
Send = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class TransportResult:
    """One client's sends over one path."""

    sends: int
    seconds: float
    cpu_seconds: float

    @property
    def per_second(self) -> float:
        """Sends per second."""
        return self.sends / self.seconds

    @property
    def cpu_per_send(self) -> float:
        """CPU seconds of the bench process per send."""
        return self.cpu_seconds / self.sends


@dataclass(frozen=True)
class TransportComparison:
    """Gateway and official client over one path."""

    round_trip_ms: float
    gateway: TransportResult
    official: TransportResult
    # The official client trusting the bench CA alone: TLS handshakes without the bundle load.
    official_ca_only: TransportResult | None = None


@dataclass(frozen=True)
class TrustFiles:
    """The server's certificate chain and key, the clients' CA bundle, and the CA alone."""

    cert_chain: Path
    key: Path
    ca_bundle: Path
    ca_only: Path


def make_trust(directory: Path) -> TrustFiles:
    """A self-signed CA, a certificate for 127.0.0.1 from it, and certifi's bundle plus the CA."""
    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    cert = ca.issue_cert("127.0.0.1", "localhost", key_type=trustme.KeyType.RSA)
    files = TrustFiles(
        directory / "chain.pem",
        directory / "key.pem",
        directory / "bundle.pem",
        directory / "ca.pem",
    )
    ca.cert_pem.write_to_path(str(files.ca_only))
    cert.private_key_pem.write_to_path(str(files.key))
    files.cert_chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    files.ca_bundle.write_bytes(Path(certifi.where()).read_bytes() + ca.cert_pem.bytes())
    return files


@contextmanager
def cert_file(path: Path) -> Iterator[None]:
    """Point OpenSSL's default trust store (what urllib uses) at `path` for a while."""
    before = os.environ.get("SSL_CERT_FILE")
    os.environ["SSL_CERT_FILE"] = str(path)
    try:
        yield
    finally:
        if before is None:
            del os.environ["SSL_CERT_FILE"]
        else:
            os.environ["SSL_CERT_FILE"] = before


def gateway_sender(base_url: str, ca_bundle: Path) -> tuple[Send, Callable[[], None]]:
    """The gateway's SendGridClient, trusting the bench CA; its pool is the one it always has."""
    context = ssl.create_default_context(cafile=str(ca_bundle))
    client = SendGridClient(base_url, API_KEY, transport=httpx.HTTPTransport(verify=context))

    def send(payload: dict[str, Any]) -> None:
        client.send(payload)

    return send, client.close


def official_sender(base_url: str) -> tuple[Send, Callable[[], None]]:
    """The official client; it trusts what SSL_CERT_FILE names (see cert_file)."""
    client = SendGridAPIClient(api_key=API_KEY, host=base_url)

    def send(payload: dict[str, Any]) -> None:
        response = client.client.mail.send.post(request_body=payload)
        if response.status_code != 202:
            raise RuntimeError(f"the TLS server answered {response.status_code}")

    return send, lambda: None


def measure(send: Send, payloads: Sequence[dict[str, Any]]) -> TransportResult:
    """Send every payload once, one after the other: wall time and the bench process's CPU."""
    for payload in payloads[:WARMUP_SENDS]:
        send(payload)
    pid = os.getpid()
    cpu_before = process_cpu_seconds(pid, descendants=False)
    started = time.perf_counter()
    for payload in payloads:
        send(payload)
    seconds = time.perf_counter() - started
    cpu = process_cpu_seconds(pid, descendants=False) - cpu_before
    return TransportResult(len(payloads), seconds, cpu)


def run_transport(
    workdir: Path, *, sends: int, round_trips_ms: Sequence[float]
) -> list[TransportComparison]:
    """Compare both clients directly (round trip 0) and through the proxy for each round trip."""
    trust = make_trust(workdir)
    payloads = [build_payload(typical_envelope(n)) for n in range(sends)]
    comparisons = []
    with HelperServer(
        "bench.tls_server",
        ["--cert-chain", str(trust.cert_chain), "--key", str(trust.key)],
        workdir / "tls_server.log",
    ) as server:
        for round_trip in round_trips_ms:
            if round_trip <= 0:
                comparisons.append(_compare(server.port, 0.0, trust, payloads))
                continue
            with HelperServer(
                "bench.delay_proxy",
                ["--upstream-port", str(server.port), "--round-trip-ms", str(round_trip)],
                workdir / f"delay_proxy_{round_trip:g}ms.log",
            ) as proxy:
                comparisons.append(_compare(proxy.port, round_trip, trust, payloads))
    return comparisons


def _compare(
    port: int, round_trip: float, trust: TrustFiles, payloads: Sequence[dict[str, Any]]
) -> TransportComparison:
    base_url = f"https://127.0.0.1:{port}"
    send, close = gateway_sender(base_url, trust.ca_bundle)
    try:
        gateway = measure(send, payloads)
    finally:
        close()
    with cert_file(trust.ca_bundle):
        send, close = official_sender(base_url)
        official = measure(send, payloads)
        close()
    official_ca_only = None
    if round_trip <= 0:
        with cert_file(trust.ca_only):
            send, close = official_sender(base_url)
            official_ca_only = measure(send, payloads)
            close()
    return TransportComparison(round_trip, gateway, official, official_ca_only)
