"""The delaying proxy: a new connection costs a round trip, every exchange another one."""

from __future__ import annotations

import asyncio
import time

from bench.delay_proxy import DelayProxy

ROUND_TRIP = 0.04
# Timer slack on a loaded machine: lower bounds only, a little under the nominal delay.
SLACK = 0.9


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes
) -> tuple[bytes, float]:
    started = time.perf_counter()
    writer.write(payload)
    await writer.drain()
    received = await reader.readexactly(len(payload))
    return received, time.perf_counter() - started


async def _through_proxy() -> tuple[float, float, bytes, bytes]:
    upstream = await asyncio.start_server(_echo, "127.0.0.1", 0)
    proxy = DelayProxy(upstream.sockets[0].getsockname()[1], ROUND_TRIP)
    port = await proxy.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        first, first_seconds = await _exchange(reader, writer, b"hello")
        big = bytes(range(256)) * 4096
        second, second_seconds = await _exchange(reader, writer, big)
        writer.write_eof()
        tail = await asyncio.wait_for(reader.read(), timeout=5)
        writer.close()
        return first_seconds, second_seconds, first + second, tail
    finally:
        await proxy.close()
        upstream.close()
        await upstream.wait_closed()


def test_should_add_a_round_trip_per_exchange_and_one_for_the_handshake() -> None:
    first_seconds, second_seconds, _, _ = asyncio.run(_through_proxy())
    assert first_seconds >= 2 * ROUND_TRIP * SLACK
    assert second_seconds >= ROUND_TRIP * SLACK
    assert second_seconds < first_seconds


def test_should_pass_bytes_intact_in_order_and_forward_the_end_of_stream() -> None:
    _, _, received, tail = asyncio.run(_through_proxy())
    assert received == b"hello" + bytes(range(256)) * 4096
    assert tail == b""
