"""A tiny HTTPS server on loopback that answers every request `202` with an X-Message-Id.

    python -m bench.tls_server --cert-chain CHAIN.pem --key KEY.pem [--port 0]

The transport scenario's SendGrid: it reads each HTTP/1.1 request (Content-Length bodies),
keeps the connection open unless the client sent `Connection: close`, and does no other work,
so that the clients' differences (pooled keep-alive vs a new TLS connection per send) show.
Prints `listening on 127.0.0.1:PORT` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import ssl
import sys
from collections.abc import Sequence

HOST = "127.0.0.1"
MAX_HEAD_BYTES = 64 * 1024
_ids = itertools.count(1)


class BadRequest(ValueError):
    """The request head could not be read."""


def parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    """The request line and the headers (names lower-cased) of an HTTP/1.1 request head."""
    lines = head.decode("latin-1").split("\r\n")
    request_line = lines[0]
    if len(request_line.split(" ")) != 3:
        raise BadRequest(f"bad request line {request_line!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise BadRequest(f"bad header line {line!r}")
        headers[name.strip().lower()] = value.strip()
    return request_line, headers


def accepted_response(message_id: str, *, close: bool) -> bytes:
    """SendGrid's answer to an accepted mail: 202, no body, its message id."""
    return (
        "HTTP/1.1 202 Accepted\r\n"
        f"X-Message-Id: {message_id}\r\n"
        "Content-Length: 0\r\n"
        f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n"
    ).encode("latin-1")


async def handle_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer requests on one connection until the client closes it or asks to."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            _, headers = parse_head(head)
            if headers.get("transfer-encoding", "").lower() == "chunked":
                raise BadRequest("chunked bodies are not supported")
            length = int(headers.get("content-length") or 0)
            if length:
                await reader.readexactly(length)
            close = headers.get("connection", "").lower() == "close"
            writer.write(accepted_response(f"bench-{next(_ids)}", close=close))
            await writer.drain()
            if close:
                break
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, BadRequest, ValueError):
        pass
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()


async def serve(cert_chain: str, key: str, port: int) -> None:
    """Serve until killed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_chain, key)
    server = await asyncio.start_server(
        handle_connection, HOST, port, ssl=context, limit=MAX_HEAD_BYTES, backlog=512
    )
    bound = server.sockets[0].getsockname()[1]
    print(f"listening on {HOST}:{bound}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server in the foreground (SIGTERM or Ctrl-C stops it)."""
    parser = argparse.ArgumentParser(prog="python -m bench.tls_server", description=__doc__)
    parser.add_argument("--cert-chain", required=True, help="PEM: certificate and its chain")
    parser.add_argument("--key", required=True, help="PEM: the certificate's private key")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.cert_chain, args.key, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
