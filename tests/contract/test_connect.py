"""Connections to the state store carry the process's name, so ``CLIENT LIST`` says who holds them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import RedisServer
from tasks.state.connect import async_state_client, client_name_of, state_client
from tests.stacks import require_redis_server


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


def test_a_prefork_child_names_its_connections_with_its_own_pid(redis_url: str) -> None:
    # given a client built in this process (as a prefork worker's parent builds it)
    client = state_client(redis_url, socket_timeout=5)
    client.ping()
    read, write = os.pipe()
    # when a forked child uses it
    pid = os.fork()
    if pid == 0:  # the child: report the name its connection got, and leave at once
        try:
            os.write(write, (client.client_getname() or "").encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        name = os.read(read, 200).decode()
    finally:
        os.close(read)
        os.waitpid(pid, 0)
        client.close()
    # expect the child's own pid in the name, not the parent's
    assert name == client_name_of(pid)


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[RedisServer]:
    require_redis_server()
    with RedisServer(workdir=tmp_path) as server:
        with contextlib.closing(server.client()) as admin:
            # a user that may do everything but CLIENT (as Redis 6's "-@dangerous" users)
            admin.execute_command("ACL", "SETUSER", "limited", "on", ">secret", "~*", "&*", "+@all", "-client")
        yield server


def test_a_redis_that_refuses_client_setname_still_serves_the_store(acl_redis: RedisServer) -> None:
    # given a user whose ACL refuses CLIENT SETNAME
    url = f"redis://limited:secret@127.0.0.1:{acl_redis.port}/0"
    # when warmpool's clients connect as that user
    client = state_client(url, socket_timeout=5)

    async def async_round_trip() -> bytes | None:
        aclient = async_state_client(url, socket_timeout=5)
        try:
            await aclient.set("warmpool:test", "async")
            value: bytes | None = await aclient.get("warmpool:test")
            return value
        finally:
            await aclient.aclose()

    try:
        # expect them to work, unnamed
        client.set("warmpool:test", "sync")
        assert client.get("warmpool:test") == b"sync"
        assert asyncio.run(async_round_trip()) == b"async"
    finally:
        client.close()
    with contextlib.closing(acl_redis.client()) as admin:
        assert all(not c.get("name", "").startswith("warmpool-") for c in admin.client_list())
