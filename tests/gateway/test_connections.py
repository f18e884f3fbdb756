"""The gateway's connection limits on a real uvicorn server (in this process, loopback only)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import uvicorn

from producer.gateway import create_app
from producer.gateway.connections import ConnectionLimits, guarded_protocol
from producer.gateway.constants import MAX_HEADER_BYTES
from tasks.config import Settings
from tasks.errors import ConfigError
from tests.gateway.gwfakes import FakePool

pytestmark = pytest.mark.timeout(60)

REQUEST = b"GET /v1/pool HTTP/1.1\r\nHost: gw\r\n\r\n"


@asynccontextmanager
async def serving(limits: ConnectionLimits) -> AsyncIterator[int]:
    """A gateway on FakePool, served by uvicorn with ``limits``, on a free loopback port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(FakePool()),
        log_config=None,
        log_level="warning",
        http=guarded_protocol(limits),
        ws="none",
        timeout_keep_alive=limits.idle_timeout_s,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        await task
        sock.close()


async def closed_within(reader: asyncio.StreamReader, timeout_s: float) -> bool:
    """Whether the server closes the connection within ``timeout_s`` (whatever it sends first)."""
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            data = await asyncio.wait_for(reader.read(65536), deadline - time.monotonic())
            if not data:
                return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return False


async def get_status(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUEST)
    line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    return line


def test_a_request_that_never_completes_is_closed_after_the_header_timeout() -> None:
    async def scenario() -> tuple[bool, bool, float]:
        async with serving(ConnectionLimits(header_timeout_s=1.0, idle_timeout_s=30)) as port:
            # given a connection that sends half a request, and one that answered a request
            # and then sends half of the next one (keep-alive: the deadline starts again)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /v1/pool HTTP/1.1\r\nHost: gw\r\n")
            kept_r, kept_w = await asyncio.open_connection("127.0.0.1", port)
            kept_w.write(REQUEST)
            first = await asyncio.wait_for(kept_r.readuntil(b"\r\n\r\n"), 10)
            assert first.startswith(b"HTTP/1.1 200")
            kept_w.write(b"GET /v1/pool HTTP/1.1\r\n")
            started = time.monotonic()
            # expect both closed by the server, though the idle timeout is far away
            half = await closed_within(reader, 10)
            second = await closed_within(kept_r, 10)
            writer.close()
            kept_w.close()
            return half, second, time.monotonic() - started

    half, second, took_s = asyncio.run(scenario())
    assert half and second
    assert took_s >= 0.5  # not at once: after the header timeout


def test_at_the_cap_the_longest_waiting_connection_makes_room() -> None:
    async def scenario() -> tuple[bytes, bool, bool]:
        async with serving(ConnectionLimits(header_timeout_s=30.0, max_connections=3)) as port:
            # given the cap full of connections that send nothing
            idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
            await asyncio.sleep(0.2)
            # when a legitimate client connects and asks
            status_line = await get_status(port)
            # expect it answered, the oldest idle connection closed, the newest still open
            oldest_closed = await closed_within(idle[0][0], 5)
            newest_closed = await closed_within(idle[2][0], 0.5)
            for _, writer in idle:
                writer.close()
            return status_line, oldest_closed, newest_closed

    status_line, oldest_closed, newest_closed = asyncio.run(scenario())
    assert status_line.startswith(b"HTTP/1.1 200")
    assert oldest_closed and not newest_closed


def test_headers_larger_than_the_bound_are_refused() -> None:
    async def scenario() -> bytes:
        async with serving(ConnectionLimits()) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /v1/pool HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"a" * (MAX_HEADER_BYTES + 10))
            line = await asyncio.wait_for(reader.readline(), 10)
            writer.close()
            return line

    assert asyncio.run(scenario()).startswith(b"HTTP/1.1 400")


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("WARMPOOL_GATEWAY_HEADER_TIMEOUT_S", "0"),
        ("WARMPOOL_GATEWAY_HEADER_TIMEOUT_S", "soon"),
        ("WARMPOOL_GATEWAY_HEADER_TIMEOUT_S", "nan"),
        ("WARMPOOL_GATEWAY_HEADER_TIMEOUT_S", "99999"),
        ("WARMPOOL_GATEWAY_IDLE_TIMEOUT_S", "1.5"),
        ("WARMPOOL_GATEWAY_IDLE_TIMEOUT_S", "0"),
        ("WARMPOOL_GATEWAY_MAX_CONNECTIONS", "-3"),
        ("WARMPOOL_GATEWAY_MAX_CONNECTIONS", "many"),
    ],
)
def test_invalid_limits_are_refused_naming_the_variable(name: str, bad: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: bad})


def test_limits_from_the_environment() -> None:
    assert ConnectionLimits.from_settings(Settings.from_env({})) == ConnectionLimits()
    limits = ConnectionLimits.from_settings(
        Settings.from_env(
            {
                "WARMPOOL_GATEWAY_HEADER_TIMEOUT_S": "2.5",
                "WARMPOOL_GATEWAY_IDLE_TIMEOUT_S": "7",
                "WARMPOOL_GATEWAY_MAX_CONNECTIONS": "50",
            }
        )
    )
    assert limits == ConnectionLimits(header_timeout_s=2.5, idle_timeout_s=7, max_connections=50)
