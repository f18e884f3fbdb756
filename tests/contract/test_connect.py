"""Connections to the state store carry the process's name, so ``CLIENT LIST`` says who holds them."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from tasks.state.connect import async_state_client, client_name_of, state_client


def test_a_client_name_names_the_host_and_the_process() -> None:
    assert client_name_of() == f"warmpool-{socket.gethostname()}-{os.getpid()}"
    assert client_name_of(42, host="ide pool\n1") == "warmpool-ide_pool_1-42"  # CLIENT SETNAME refuses spaces


def test_the_state_client_names_its_connection(redis_url: str) -> None:
    # given a state client
    client = state_client(redis_url, socket_timeout=5)
    try:
        # when it talks to Redis
        client.ping()
        # expect its connection to carry this process's name, and to be listed under it
        assert client.client_getname() == client_name_of()
        assert any(c.get("name") == client_name_of() for c in client.client_list())
    finally:
        client.close()


def test_a_name_given_by_the_caller_wins(redis_url: str) -> None:
    client = state_client(redis_url, socket_timeout=5, client_name="warmpool-probe")
    try:
        assert client.client_getname() == "warmpool-probe"
    finally:
        client.close()


@pytest.mark.timeout(20)
def test_the_async_state_client_names_its_connection(redis_url: str) -> None:
    async def name() -> str | None:
        client = async_state_client(redis_url, socket_timeout=5)
        try:
            raw = await client.client_getname()
        finally:
            await client.aclose()
        return raw.decode() if isinstance(raw, bytes) else raw

    assert asyncio.run(name()) == client_name_of()
