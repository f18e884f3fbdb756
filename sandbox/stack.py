"""``LocalStack``: warmpool on one machine — Redis, a moto server, the pool worker, aws workers, beat.

The demo, the benchmarks and the test fixtures all start their processes
through it::

    with LocalStack(log_dir, asg_name="demo-asg", idle_target=2) as stack:
        stack.create_group(min_size=0, max_size=10, desired=2)
        stack.start_aws_worker()
        stack.start_pool_worker()
        stack.start_beat()
        ...  # stack.app, stack.env, stack.aws("autoscaling"), stack.log_path("pool")

What is passed in is used as it is and left running (the caller owns it):
``urls`` (broker, result backend and state URLs) and ``moto`` (a
``MotoServer``, started here if it is not running yet). What is not passed in
is started by ``start()`` and stopped by ``stop()``: a private ``RedisServer``
on a free port (broker database 0, result backend 1, pool state 2) and a plain
``MotoServer``. Every process the stack spawns is stopped by ``stop()``.

Processes are named (``pool``, ``aws``, ``beat``, or anything passed to
``spawn``); a worker started as NAME answers Celery pings as
``NAME@<node>``, and its output goes to ``<log_dir>/<log_prefix>NAME.log``.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import boto3
from celery import Celery

from sandbox.aws_group import create_simulated_group
from sandbox.moto_server import MotoServer
from sandbox.processes import (
    DUMMY_CREDENTIAL,
    ProcessGroup,
    beat_argv,
    stack_env,
    wait_for_workers,
    worker_argv,
)
from sandbox.redis_server import RedisServer
from tasks.config import DEFAULT_ASG_NAME, DEFAULT_REGION
from tasks.contract import AWS_QUEUE, POOL_QUEUE

WORKER_START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class StackUrls:
    """Where a stack's processes find Redis: the Celery broker, the result backend and the pool state."""

    broker_url: str
    result_backend: str
    redis_url: str

    @classmethod
    def on(cls, server: RedisServer) -> StackUrls:
        """Databases 0 (broker), 1 (results) and 2 (state) of one server."""
        return cls(broker_url=server.url(0), result_backend=server.url(1), redis_url=server.url(2))


def make_client_app(broker_url: str, result_backend: str, *, name: str = "warmpool-local") -> Celery:
    """A producer-side Celery app with warmpool's settings, on the given broker and result backend."""
    app = Celery(name)
    app.config_from_object("celeryconfig")
    app.conf.update(broker_url=broker_url, result_backend=result_backend)
    return app


def close_backend(app: Celery) -> None:
    """Close the calling thread's Celery result backend (Celery keeps one per thread, open until GC)."""
    backend = app.backend
    backend.result_consumer.stop()
    backend.client.connection_pool.disconnect()


@dataclass(frozen=True)
class _Spawned:
    argv: list[str]
    env: dict[str, str]


class LocalStack:
    """Redis, a moto server and warmpool's processes on one machine (see the module docstring)."""

    def __init__(
        self,
        log_dir: Path,
        *,
        urls: StackUrls | None = None,
        moto: MotoServer | None = None,
        aws_endpoint_url: str | None = None,
        asg_name: str = DEFAULT_ASG_NAME,
        region: str = DEFAULT_REGION,
        idle_target: int = 2,
        refresh_s: float = 10.0,
        extra_env: Mapping[str, str] | None = None,
        node: str = "local",
        log_prefix: str = "",
        app_name: str = "warmpool-local",
    ) -> None:
        self.log_dir = log_dir
        self.asg_name = asg_name
        self.region = region
        self.idle_target = idle_target
        self.refresh_s = refresh_s
        self.extra_env = dict(extra_env or {})
        self.node = node
        self.log_prefix = log_prefix
        self.app_name = app_name
        self.processes = ProcessGroup()
        self.redis_server: RedisServer | None = None  # the private one, when the stack started it
        self._urls = urls
        self._moto = moto
        self._own_moto = moto is None
        self._aws_endpoint_url = aws_endpoint_url
        self._env: dict[str, str] | None = None
        self._app: Celery | None = None
        self._clients: dict[str, Any] = {}
        self._spawned: dict[str, _Spawned] = {}

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> LocalStack:
        """Start the Redis and moto server the stack owns (none was passed in); idempotent."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self._urls is None:
            self.redis_server = RedisServer(workdir=self.log_dir, name="redis").start()
            self._urls = StackUrls.on(self.redis_server)
        if self._moto is None:
            # One request at a time: moto's Auto Scaling model is not thread-safe, and a test that
            # resizes the group while the aws workers terminate instances broke it (InvalidAttachment).
            self._moto = MotoServer(log_path=self.log_path("moto"), serialize_requests=True)
        self._moto.start()
        if self._env is None:
            self._env = self.process_env()
        return self

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """Stop every process the stack spawned, then the moto server and Redis it started."""
        self.processes.stop_all(timeout_s=timeout_s)
        if self._app is not None:
            with contextlib.suppress(Exception):  # closing must not hide why the stack stops
                close_backend(self._app)
            self._app.close()
            self._app = None
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        if self._own_moto and self._moto is not None:
            self._moto.stop()
            self._moto = None
        if self.redis_server is not None:
            self.redis_server.close()
            self.redis_server = None
            self._urls = None

    def __enter__(self) -> LocalStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- what the processes are given --------------------------------------------------
    @property
    def urls(self) -> StackUrls:
        if self._urls is None:
            raise RuntimeError("the stack is not started (no Redis yet)")
        return self._urls

    @property
    def moto(self) -> MotoServer:
        if self._moto is None:
            raise RuntimeError("the stack is not started (no moto server yet)")
        return self._moto

    @property
    def aws_endpoint_url(self) -> str:
        """What the workers use as AWS: moto, or the proxy in front of it that was passed in."""
        return self._aws_endpoint_url or self.moto.endpoint_url

    @property
    def env(self) -> dict[str, str]:
        """The environment every process of the stack gets (WARMPOOL_* settings, moto as AWS)."""
        if self._env is None:
            raise RuntimeError("the stack is not started")
        return self._env

    def process_env(self, **extra: str) -> dict[str, str]:
        """A fresh copy of the stack's environment with ``extra`` variables on top."""
        urls = self.urls
        return stack_env(
            endpoint_url=self.aws_endpoint_url,
            broker_url=urls.broker_url,
            result_backend=urls.result_backend,
            redis_url=urls.redis_url,
            asg_name=self.asg_name,
            idle_target=self.idle_target,
            refresh_seconds=self.refresh_s,
            region=self.region,
            extra={**self.extra_env, **extra},
        )

    @property
    def app(self) -> Celery:
        """A producer-side Celery app on the stack's broker and result backend (closed by ``stop``)."""
        if self._app is None:
            self._app = make_client_app(self.urls.broker_url, self.urls.result_backend, name=self.app_name)
        return self._app

    def aws(self, service: str) -> Any:
        """A boto3 client straight to moto (never through a proxy); one per service, closed by ``stop``."""
        if service not in self._clients:
            make_client: Any = boto3.client  # any service name, not one of the typed overloads
            self._clients[service] = make_client(
                service,
                endpoint_url=self.moto.endpoint_url,
                region_name=self.region,
                aws_access_key_id=DUMMY_CREDENTIAL,
                aws_secret_access_key=DUMMY_CREDENTIAL,
            )
        return self._clients[service]

    def create_group(self, *, min_size: int, max_size: int, desired: int, reset: bool = True) -> dict[str, Any]:
        """The simulated group ``asg_name`` in moto (``reset``: after forgetting every simulated resource)."""
        if reset:
            self.moto.reset()
        return create_simulated_group(
            self.moto.endpoint_url,
            name=self.asg_name,
            region=self.region,
            min_size=min_size,
            max_size=max_size,
            desired=desired,
        )

    # -- processes -------------------------------------------------------------------
    def worker_name(self, name: str) -> str:
        """The Celery node name of the worker started as ``name``."""
        return f"{name}@{self.node}"

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{self.log_prefix}{name}.log"

    def log_text(self, name: str) -> str:
        """What process ``name`` wrote so far ("" before it started)."""
        path = self.log_path(name)
        return path.read_text(errors="replace") if path.exists() else ""

    def spawn(self, name: str, argv: list[str], *, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``argv`` as ``name`` with the stack's environment (``env``: variables on top)."""
        full_env = {**self.env, **(env or {})}
        self._spawned[name] = _Spawned(argv=list(argv), env=full_env)
        return self.processes.spawn(name, argv, env=full_env, log_path=self.log_path(name))

    def respawn(self, name: str) -> subprocess.Popen[bytes]:
        """Start ``name`` again as it was last started (what a supervisor does); stops it first if it runs."""
        spawned = self._spawned[name]
        self.processes.stop(name)
        return self.processes.spawn(name, spawned.argv, env=spawned.env, log_path=self.log_path(name))

    def start_pool_worker(
        self,
        name: str = "pool",
        *,
        queue: str = POOL_QUEUE,
        env: Mapping[str, str] | None = None,
        wait: bool = True,
        timeout_s: float = WORKER_START_TIMEOUT_S,
    ) -> None:
        """A solo pool worker on ``queue`` (``pool``: every pool; ``pool.NAME``: that pool's owner);
        ``wait``: until it answers a ping."""
        self.spawn(name, worker_argv(queue, hostname=self.worker_name(name), solo=True), env=env)
        if wait:
            self.wait_for_workers([name], timeout_s=timeout_s)

    def start_aws_worker(
        self,
        name: str = "aws",
        *,
        concurrency: int = 4,
        queues: Sequence[str] = (AWS_QUEUE,),
        env: Mapping[str, str] | None = None,
        wait: bool = True,
        timeout_s: float = WORKER_START_TIMEOUT_S,
    ) -> None:
        """An aws worker (``-Q aws -P threads -c concurrency``; ``queues``: the AWS queues it consumes);
        ``wait``: until it answers a ping."""
        argv = worker_argv(",".join(queues), hostname=self.worker_name(name), concurrency=concurrency, solo=False)
        self.spawn(name, argv, env=env)
        if wait:
            self.wait_for_workers([name], timeout_s=timeout_s)

    def start_beat(self, name: str = "beat", *, env: Mapping[str, str] | None = None) -> None:
        """Celery beat, its schedule file beside the logs."""
        schedule = self.log_dir / f"{self.log_prefix}{name}-schedule"
        self.spawn(name, beat_argv(schedule_path=schedule), env=env)

    def wait_for_workers(self, names: Iterable[str], *, timeout_s: float = WORKER_START_TIMEOUT_S) -> None:
        """Return once the workers started as ``names`` answer a ping; TimeoutError naming the silent ones."""
        wait_for_workers(self.app, [self.worker_name(n) for n in names], timeout_s)

    def pid(self, name: str) -> int:
        return int(self.processes.get(name).pid)
