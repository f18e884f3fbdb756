"""A redis-py client for a state store URL: plain Redis, TLS, a Unix socket, or a Sentinel-watched master.

``WARMPOOL_REDIS_URL`` accepts what the Redis broker accepts (kombu's syntax)::

    redis://[:password@]host:6379/2        rediss://...        unix:///run/redis.sock?db=2
    sentinel://[:password@]s1:26379;sentinel://s2:26379;sentinel://s3:26379/2

A ``sentinel://`` URL lists the Sentinels (``;``-separated, as kombu does) and
the database; the client asks them for the current master of
``WARMPOOL_SENTINEL_MASTER`` (the name the Sentinels monitor) on every
reconnect, so a failover moves the pool worker to the new master by itself.
The password (if any) is the Redis master's.
"""

from __future__ import annotations

import os
import re
import socket
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.sentinel import Sentinel

SENTINEL_SCHEME = "sentinel"


def is_sentinel(url: str) -> bool:
    return url.split("://", 1)[0].lower() == SENTINEL_SCHEME


def sentinel_hosts(url: str) -> tuple[list[tuple[str, int]], int, str | None]:
    """The Sentinels' (host, port) pairs, the database and the master's password of a ``sentinel://`` URL."""
    hosts: list[tuple[str, int]] = []
    db, password = 0, None
    for part in url.split(";"):
        parts = urlsplit(part.strip())
        if parts.scheme.lower() != SENTINEL_SCHEME or not parts.hostname:
            raise ValueError(f"not a sentinel:// address: {part.strip()[:80]!r}")
        hosts.append((parts.hostname, parts.port or 26379))
        if parts.password:
            password = unquote(parts.password)
        if parts.path.strip("/"):
            db = int(parts.path.strip("/"))
    return hosts, db, password


def client_name_of(pid: int | None = None, *, host: str | None = None) -> str:
    """The name (CLIENT SETNAME) of process ``pid``'s connections: ``warmpool-<host>-<pid>``.

    Every connection these clients open names itself so when it connects (a
    prefork child's connections carry the child's pid, not the parent's), so
    ``CLIENT LIST`` on the state store says which warmpool process, on which
    host, holds which connection. A Redis whose ACL refuses the command (Redis
    6 with ``-@dangerous``) leaves the connection unnamed, and usable.
    """
    host = host or socket.gethostname()
    return "warmpool-" + re.sub(r"[^A-Za-z0-9._-]", "_", host)[:64] + f"-{os.getpid() if pid is None else pid}"


def _connect_named(connection: Any) -> None:
    connection.on_connect()
    try:
        connection.send_command("CLIENT", "SETNAME", client_name_of(), check_health=False)
        connection.read_response()
    except redis.ResponseError:
        pass  # refused by an ACL: a name is a courtesy, the connection works without it


async def _aconnect_named(connection: Any) -> None:
    await connection.on_connect()
    try:
        await connection.send_command("CLIENT", "SETNAME", client_name_of(), check_health=False)
        await connection.read_response()
    except redis.ResponseError:
        pass


def state_client(url: str, *, master_name: str = "mymaster", **options: Any) -> redis.Redis:
    """A client of the store at ``url`` (``options``: redis-py connection options such as socket_timeout)."""
    if "client_name" not in options:
        options["redis_connect_func"] = _connect_named
    if not is_sentinel(url):
        client: redis.Redis = redis.Redis.from_url(url, **options)
        return client
    hosts, db, password = sentinel_hosts(url)
    timeouts = {k: v for k, v in options.items() if k in ("socket_timeout", "socket_connect_timeout")}
    sentinel = Sentinel(hosts, sentinel_kwargs=timeouts, **timeouts)  # type: ignore[no-untyped-call]
    master: redis.Redis = sentinel.master_for(master_name, db=db, password=password, **options)  # type: ignore[no-untyped-call]
    return master


def async_state_client(url: str, *, master_name: str = "mymaster", **options: Any) -> aioredis.Redis:
    """As state_client, for asyncio (redis.asyncio): the gateway's token store and event streams."""
    if "client_name" not in options:
        options["redis_connect_func"] = _aconnect_named
    if not is_sentinel(url):
        client: aioredis.Redis = aioredis.Redis.from_url(url, **options)
        return client
    hosts, db, password = sentinel_hosts(url)
    timeouts = {k: v for k, v in options.items() if k in ("socket_timeout", "socket_connect_timeout")}
    sentinel = AsyncSentinel(hosts, sentinel_kwargs=timeouts, **timeouts)  # type: ignore[no-untyped-call]
    master: aioredis.Redis = sentinel.master_for(master_name, db=db, password=password, **options)
    return master
