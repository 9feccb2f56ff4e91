"""A TCP proxy on loopback that delays every byte, standing in for network latency (no netem).

    python -m bench.delay_proxy --upstream-port PORT --round-trip-ms 20 [--port 0]

Each direction is held back by half the round trip, without limiting bandwidth: data keeps
being read while earlier data waits, and leaves in order once due. A new connection also waits
one round trip before anything flows, as a TCP handshake would cost. Prints
`listening on 127.0.0.1:PORT` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Sequence

HOST = "127.0.0.1"
CHUNK_BYTES = 64 * 1024


async def delayed_pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float
) -> None:
    """Copy reader to writer, each chunk `delay` seconds after it arrived; pass on the EOF."""
    loop = asyncio.get_running_loop()
    line: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            due, data = await line.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(send())
    try:
        while True:
            data = await reader.read(CHUNK_BYTES)
            line.put_nowait((loop.time() + delay, data))
            if not data:
                break
        await sender
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await sender


class DelayProxy:
    """Forwards connections on HOST:port to HOST:upstream_port with an added round trip."""

    def __init__(self, upstream_port: int, round_trip: float) -> None:
        self.upstream_port = upstream_port
        self.one_way = round_trip / 2
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self, port: int = 0) -> int:
        """Listen; return the port."""
        self._server = await asyncio.start_server(self._handle, HOST, port, backlog=512)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            # The handshake's round trip: loopback's own SYN/ACK costs nothing.
            await asyncio.sleep(2 * self.one_way)
            upstream_reader, upstream_writer = await asyncio.open_connection(
                HOST, self.upstream_port
            )
            await asyncio.gather(
                delayed_pipe(client_reader, upstream_writer, self.one_way),
                delayed_pipe(upstream_reader, client_writer, self.one_way),
                return_exceptions=True,
            )
        except (ConnectionError, OSError):
            pass
        finally:
            for writer in (client_writer, upstream_writer):
                if writer is not None:
                    writer.close()
                    with contextlib.suppress(ConnectionError, OSError):
                        await writer.wait_closed()


async def serve(upstream_port: int, round_trip: float, port: int) -> None:
    """Serve until killed."""
    proxy = DelayProxy(upstream_port, round_trip)
    bound = await proxy.start(port)
    print(f"listening on {HOST}:{bound}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await proxy.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the proxy in the foreground (SIGTERM or Ctrl-C stops it)."""
    parser = argparse.ArgumentParser(prog="python -m bench.delay_proxy", description=__doc__)
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--round-trip-ms", type=float, default=20.0)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.upstream_port, args.round_trip_ms / 1000, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
