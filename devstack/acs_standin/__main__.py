"""``python -m devstack.acs_standin``: run the ACS Email stand-in in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from devstack.acs_standin.process import ACCESS_KEY_ENV, READY_LINE_PREFIX
from devstack.acs_standin.server import (
    BEARER_AUTH,
    DEFAULT_ACCESS_KEY,
    DEFAULT_OUTBOX,
    DEFAULT_PORT,
    HMAC_AUTH,
    AcsState,
    create_app,
)
from devstack.sendgrid_standin.__main__ import _host_is_loopback
from devstack.sendgrid_standin.server import serve

logger = logging.getLogger(__name__)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.acs_standin",
        description="Azure Communication Services Email stand-in (loopback).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="port; 0 picks a free one (default 7074)"
    )
    parser.add_argument(
        "--outbox", type=Path, default=DEFAULT_OUTBOX, help="folder for accepted mails"
    )
    # Taken for SendGridStandIn's command line, which this stand-in shares; unused here.
    parser.add_argument("--latency-ms", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--tls-cert", type=Path, help="serve HTTPS with this certificate chain (PEM)"
    )
    parser.add_argument("--tls-key", type=Path, help="the certificate's private key (PEM)")
    parser.add_argument(
        "--auth",
        choices=(HMAC_AUTH, BEARER_AUTH),
        default=HMAC_AUTH,
        help="the access key's HMAC signature (default), or Entra bearer tokens (needs TLS)",
    )
    parser.add_argument("--no-eml", action="store_true", help="write only each mail's .json record")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the stand-in from the command line; the access key comes from the environment."""
    args = _parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        print("--tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    # The SDK sends a token over https only (azure-core's BearerTokenCredentialPolicy).
    if args.auth == BEARER_AUTH and args.tls_cert is None:
        print("--auth bearer needs --tls-cert and --tls-key", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not _host_is_loopback(args.host):
        logger.warning("binding %s: the stand-in is meant for loopback only", args.host)
    args.outbox.mkdir(parents=True, exist_ok=True)
    state = AcsState(
        access_key=os.environ.get(ACCESS_KEY_ENV) or DEFAULT_ACCESS_KEY,
        auth=args.auth,
        outbox=args.outbox,
        write_eml=not args.no_eml,
    )

    def ready(url: str) -> None:
        # Parsed by AcsEmailStandIn: keep the wording stable.
        print(f"{READY_LINE_PREFIX}{url}", flush=True)
        logger.info("outbox: %s", args.outbox.resolve())

    tls = (str(args.tls_cert), str(args.tls_key)) if args.tls_cert is not None else None
    try:
        asyncio.run(serve(args.host, args.port, on_ready=ready, app=create_app(state), tls=tls))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        logger.error("could not listen on %s:%s: %s", args.host, args.port, exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
