"""The gateway process under a slow-connection attack: it closes the attackers and keeps serving."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import Stack
from tests.integration.gateway_proc import running_gateway

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TOKEN = "s3cret-token-for-limits"
HEADER_TIMEOUT_S = 3.0
MAX_CONNECTIONS = 200
ATTACKERS = 300  # more than the cap: the cap must make room for the legitimate client
# The server closes an attacker HEADER_TIMEOUT_S after it connected (or evicts it
# sooner); the margin is for a loaded machine, never for a product that does not close.
CLOSE_MARGIN_S = 6.0
LIMITS = {
    "WARMPOOL_GATEWAY_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
    "WARMPOOL_GATEWAY_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
}


@pytest.fixture(scope="module")
def gateway(stack: Stack) -> Iterator[str]:
    with running_gateway(stack, name="gateway-limits", token=TOKEN, env=LIMITS) as url:
        yield url


async def slow_attacker(port: int, *, give_up_at: float) -> tuple[float, float | None]:
    """Send a request's headers a line at a time, never finishing them.

    Returns when it connected and when the server closed the connection (None: still open at ``give_up_at``).
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    opened = time.monotonic()
    try:
        writer.write(b"GET /v1/pool HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        line = 0
        while time.monotonic() < give_up_at:
            try:
                data = await asyncio.wait_for(reader.read(1024), 0.5)
            except TimeoutError:
                line += 1
                writer.write(b"X-Slow-%d: 1\r\n" % line)  # slowloris: headers that never end
                continue
            if not data:
                return opened, time.monotonic()  # the server closed the connection
        return opened, None
    except (ConnectionResetError, BrokenPipeError):
        return opened, time.monotonic()
    finally:
        writer.close()


async def legitimate_client(url: str, *, until: float) -> list[int]:
    """A well-behaved client asking for the pool status over fresh connections, while attackers hold theirs."""
    codes: list[int] = []
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=10, limits=limits) as http:
        while time.monotonic() < until or not codes:
            r = await http.get("/v1/pool", headers={"Authorization": f"Bearer {TOKEN}"})
            codes.append(r.status_code)
            await asyncio.sleep(0.2)
    return codes


def test_slow_connections_are_closed_while_legitimate_requests_are_served(pool: Stack, gateway: str) -> None:
    port = int(gateway.rsplit(":", 1)[1])

    async def scenario() -> tuple[list[tuple[float, float | None]], list[int]]:
        started = time.monotonic()
        give_up_at = started + HEADER_TIMEOUT_S + 2 * CLOSE_MARGIN_S
        # given a few hundred connections that send headers a line at a time and never finish them
        attackers = [asyncio.create_task(slow_attacker(port, give_up_at=give_up_at)) for _ in range(ATTACKERS)]
        await asyncio.sleep(0.5)
        # when a legitimate client asks for the pool status meanwhile
        codes = await legitimate_client(gateway, until=started + HEADER_TIMEOUT_S + 1)
        return list(await asyncio.gather(*attackers)), codes

    attacks, codes = asyncio.run(scenario())

    # expect every legitimate request answered, during the attack
    assert codes and set(codes) == {200}, codes
    # and every attacker's connection closed by the server within the header timeout (plus a load margin)
    still_open = [a for a in attacks if a[1] is None]
    assert not still_open, f"{len(still_open)} of {ATTACKERS} slow connections still open"
    held_s = [closed - opened for opened, closed in attacks if closed is not None]
    assert max(held_s) <= HEADER_TIMEOUT_S + CLOSE_MARGIN_S, max(held_s)
    # and the gateway still serves once the attack is over
    with httpx.Client(base_url=gateway, timeout=10) as http:
        assert http.get("/v1/pool", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
