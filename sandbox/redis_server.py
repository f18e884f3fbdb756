"""A Redis for a local stack: use the one that answers, or start redis-server."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import redis

from sandbox.processes import popen_child, terminate, wait_until_up

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
INSTALL_REDIS_HINT = (
    "redis-server is not on PATH. Install Redis first:\n"
    "  Debian/Ubuntu: sudo apt-get install redis-server\n"
    "  macOS:         brew install redis\n"
    "or point WARMPOOL_BROKER_URL / WARMPOOL_RESULT_BACKEND / WARMPOOL_REDIS_URL at a running Redis."
)


def redis_answers(url: str, *, timeout_s: float = 0.5) -> bool:
    """True when a Redis server answers PING at ``url`` within ``timeout_s``."""
    client: redis.Redis = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 6379


def ensure_redis(
    url: str,
    *,
    log: Callable[[str], None] = print,
    log_path: Path | None = None,
    timeout_s: float = 10.0,
) -> subprocess.Popen[bytes] | None:
    """Make sure a Redis answers at ``url``; start ``redis-server`` there if none does.

    Returns the started server (the caller stops it, e.g. with ``terminate``) or
    None when one was already answering. Raises SystemExit with instructions when
    Redis cannot be started: redis-server missing, or the URL names a remote host.
    """
    if redis_answers(url):
        return None
    host, port = _host_port(url)
    if host not in LOCAL_HOSTS:
        raise SystemExit(f"No Redis answers at {host}:{port} ({url}); start it or fix the URL.")
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit(f"No Redis answers at {host}:{port}, and {INSTALL_REDIS_HINT}")
    bind = "127.0.0.1" if host == "localhost" else host
    argv = [server, "--port", str(port), "--bind", bind, "--save", "", "--appendonly", "no"]
    log(f"starting redis-server on {bind}:{port} (no persistence)")
    out: IO[Any] | int = open(log_path, "ab") if log_path is not None else subprocess.DEVNULL
    try:
        proc = popen_child(argv, env=None, out=out)
    finally:
        if not isinstance(out, int):
            out.close()
    try:
        wait_until_up(lambda: redis_answers(url), timeout_s=timeout_s, what="redis-server", proc=proc)
    except (RuntimeError, TimeoutError) as exc:
        terminate(proc, timeout_s=2)
        raise SystemExit(f"could not start redis-server on {bind}:{port}: {exc}") from None
    return proc
