"""A Redis for a local stack: a private redis-server on a free port, or the one a URL names.

``RedisServer`` is a redis-server of the caller's own: on a free port (or a
given one), in a directory of its own, without persistence unless asked for
(``persistent=True``: an append-only file, fsynced on every write, so a
restart keeps the queues as a production broker would). It can be stopped,
SIGKILLed and restarted on the same port (the fault tests). ``ensure_redis``
is for a URL someone configured: it starts a server there only if none
answers.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

import redis

from sandbox.processes import free_port, kill_process, popen_child, stop_process, wait_until_up

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


def redis_server_binary() -> str | None:
    """The redis-server on PATH, or None."""
    return shutil.which("redis-server")


class RedisServer:
    """A redis-server of the caller's own, on a free port; restartable on the same port.

    ``with RedisServer(workdir=tmp) as server: server.url(2) ...``. Its files
    (``redis.log``, the append-only file) are in ``workdir`` (a temporary
    directory when none is given). FileNotFoundError when redis-server is not
    installed.
    """

    def __init__(
        self,
        *,
        workdir: Path | None = None,
        name: str = "redis",
        host: str = "127.0.0.1",
        port: int | None = None,
        persistent: bool = False,
        binary: str | None = None,
        start_timeout_s: float = 15.0,
    ) -> None:
        found = binary or redis_server_binary()
        if found is None:
            raise FileNotFoundError(INSTALL_REDIS_HINT)
        self.binary = found
        self.name = name
        self.host = host
        self.port = port or free_port(host)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix=f"warmpool-{name}-")
            workdir = Path(self._tmp.name)
        self.dir = workdir / name
        self.persistent = persistent
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def url(self, db: int = 0) -> str:
        """``redis://host:port/db`` of this server."""
        return f"redis://{self.host}:{self.port}/{db}"

    @property
    def log_path(self) -> Path:
        return self.dir / "redis.log"

    def answers(self) -> bool:
        """True when the server answers PING."""
        return redis_answers(self.url(), timeout_s=0.3)

    def argv(self) -> list[str]:
        """The server's command line: this port and directory, no RDB snapshots, AOF only if persistent."""
        return [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.persistent else "no",
            "--appendfsync",
            "always",
            "--logfile",
            str(self.log_path),
        ]

    def start(self) -> RedisServer:
        """Start the server (no-op while it runs) and wait until it answers."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = popen_child(self.argv(), env=None, out=subprocess.DEVNULL)
        try:
            wait_until_up(
                self.answers, timeout_s=self.start_timeout_s, what=f"redis-server {self.name}", proc=self.proc
            )
        except (RuntimeError, TimeoutError) as exc:
            self.stop(kill=True)
            raise RuntimeError(f"{exc} (port {self.port}; see {self.log_path})") from None
        return self

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server: SIGTERM (it exits cleanly), or SIGKILL with ``kill=True`` (a crash)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if kill:
            kill_process(proc)
        else:
            stop_process(proc, timeout_s=5)

    def restart(self, *, kill: bool = True, down_s: float = 0.0) -> None:
        """Stop (SIGKILL by default: a crash), stay down ``down_s``, start again on the same port."""
        self.stop(kill=kill)
        time.sleep(down_s)
        self.restarts += 1
        self.start()

    def client(self, db: int = 0) -> redis.Redis:
        """A redis-py client of database ``db`` (the caller closes it)."""
        return redis.Redis.from_url(self.url(db), socket_timeout=5, socket_connect_timeout=2)

    def close(self) -> None:
        """Stop the server and remove its temporary directory (if it made one)."""
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 6379


def ensure_redis(
    url: str,
    *,
    log: Callable[[str], None] = print,
    workdir: Path | None = None,
    timeout_s: float = 10.0,
) -> RedisServer | None:
    """Make sure a Redis answers at ``url``; start ``redis-server`` there if none does.

    Returns the started server (the caller stops it: ``server.close()``) or
    None when one was already answering. Raises SystemExit with instructions
    when Redis cannot be started: redis-server missing, or the URL names a
    remote host.
    """
    if redis_answers(url):
        return None
    host, port = _host_port(url)
    if host not in LOCAL_HOSTS:
        raise SystemExit(f"No Redis answers at {host}:{port} ({url}); start it or fix the URL.")
    if redis_server_binary() is None:
        raise SystemExit(f"No Redis answers at {host}:{port}, and {INSTALL_REDIS_HINT}")
    bind = "127.0.0.1" if host == "localhost" else host
    log(f"starting redis-server on {bind}:{port} (no persistence)")
    server = RedisServer(workdir=workdir, host=bind, port=port, start_timeout_s=timeout_s)
    try:
        return server.start()
    except RuntimeError as exc:
        server.close()
        raise SystemExit(f"could not start redis-server on {bind}:{port}: {exc}") from None
