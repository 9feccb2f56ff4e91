"""``python -m devstack.sendgrid_standin``: run the stand-in in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from devstack.sendgrid_standin.process import API_KEY_ENV, READY_LINE_PREFIX
from devstack.sendgrid_standin.server import (
    DEFAULT_API_KEY,
    DEFAULT_OUTBOX,
    DEFAULT_PORT,
    StandInState,
    serve,
)

logger = logging.getLogger(__name__)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m devstack.sendgrid_standin",
        description="SendGrid v3 Mail Send stand-in (loopback).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="port; 0 picks a free one (default 7072)"
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV, DEFAULT_API_KEY),
        help=f"accepted Bearer key (default ${API_KEY_ENV}, else {DEFAULT_API_KEY})",
    )
    parser.add_argument(
        "--outbox", type=Path, default=DEFAULT_OUTBOX, help="folder for accepted mails"
    )
    parser.add_argument("--latency-ms", type=int, default=0, help="added latency per mail send")
    parser.add_argument(
        "--no-eml",
        action="store_true",
        help="write only each mail's .json record to the outbox, not its readable .eml",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the stand-in from the command line."""
    args = _parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not _host_is_loopback(args.host):
        logger.warning("binding %s: the stand-in is meant for loopback only", args.host)
    args.outbox.mkdir(parents=True, exist_ok=True)
    state = StandInState(
        api_key=args.api_key,
        outbox=args.outbox,
        latency_ms=max(0, args.latency_ms),
        write_eml=not args.no_eml,
    )

    def ready(url: str) -> None:
        # Parsed by SendGridStandIn (and handy for people): keep the wording stable.
        print(f"{READY_LINE_PREFIX}{url}", flush=True)
        logger.info("outbox: %s", args.outbox.resolve())

    try:
        asyncio.run(serve(args.host, args.port, state=state, on_ready=ready))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        logger.error("could not listen on %s:%s: %s", args.host, args.port, exc)
        return 1
    return 0


def _host_is_loopback(host: str) -> bool:
    """Tell whether a bind address is a loopback one."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


if __name__ == "__main__":
    sys.exit(main())
