"""The fault suite's stack: its own Redis servers and moto server, real workers and beat.

Scenarios here kill workers, restart and flush Redis and break AWS, so nothing
runs on the shared Redis at 127.0.0.1:6379: the session starts three
``sandbox.RedisServer`` processes on free ports (broker, result backend, pool
state; each restartable on its own, the broker with an append-only file so a
restart keeps its queues like a production broker would) and one moto server
that applies one request at a time (``MotoServer(serialize_requests=True)``:
moto's Auto Scaling model is not thread-safe, see sandbox/moto_patches.py).
Each test then starts the worker processes it needs with the settings it needs
(``make_stack``, on ``sandbox.LocalStack``) and stops them afterwards. The
machinery is shared with the integration suite (tests/stacks.py).

redis-server missing: these tests fail under CI (env ``CI`` set) and skip locally.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import boto3
import pytest
from celery import Celery

from sandbox import DUMMY_CREDENTIAL, LocalStack, MotoServer, RedisServer, StackUrls, close_backend
from sandbox import make_client_app as client_app_on
from tests.stacks import (
    REGION,
    PoolStack,
    eventually,
    print_log_tails,
    require_redis_server,
    settings_env,
    start_stack,
    wait_for,
)

__all__ = [
    "ASG",
    "HOST",
    "REGION",
    "FaultStack",
    "Infra",
    "RedisServer",
    "StackConfig",
    "build_stack",
    "close_backend",
    "eventually",
    "make_client_app",
    "require_redis_server",
    "running_stack",
    "wait_for",
]

ASG = "faults-asg"
HOST = "faults"  # worker names are <name>@faults


@dataclass
class Infra:
    """What the whole session shares: three Redis servers and a moto server."""

    broker: RedisServer
    backend: RedisServer
    state: RedisServer
    moto: MotoServer
    logs: Path
    _clients: dict[str, Any] = field(default_factory=dict)

    @property
    def urls(self) -> StackUrls:
        return StackUrls(broker_url=self.broker.url(0), result_backend=self.backend.url(0), redis_url=self.state.url(0))

    @property
    def urls_sharing_state(self) -> StackUrls:
        """The broker on the state's Redis (how many dev setups run it): a crash loses jobs and state together."""
        return replace(self.urls, broker_url=self.state.url(1))

    def flush(self) -> None:
        for server in (self.broker, self.backend, self.state):
            if not server.answers():
                server.stop(kill=True)
                server.start()
            with contextlib.closing(server.client()) as r:
                r.flushall()

    def aws(self, service: str) -> Any:
        """A boto3 client straight to moto (never through a fault proxy); one per service."""
        if service not in self._clients:
            self._clients[service] = boto3.client(
                service,
                endpoint_url=self.moto.endpoint_url,
                region_name=REGION,
                aws_access_key_id=DUMMY_CREDENTIAL,
                aws_secret_access_key=DUMMY_CREDENTIAL,
            )
        return self._clients[service]


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    binary = require_redis_server()
    logs = tmp_path_factory.mktemp("faults")
    servers = [
        RedisServer(workdir=logs, name="broker", persistent=True, binary=binary),
        RedisServer(workdir=logs, name="backend", binary=binary),
        RedisServer(workdir=logs, name="state", binary=binary),
    ]
    try:
        for server in servers:
            server.start()
        with MotoServer(log_path=logs / "moto.log", serialize_requests=True) as moto:
            infra = Infra(broker=servers[0], backend=servers[1], state=servers[2], moto=moto, logs=logs)
            yield infra
            for client in infra._clients.values():
                client.close()
            # A test's AsyncResult caught in a reference cycle (an exception's traceback) is
            # freed whenever the collector runs; its __del__ unsubscribes from the result
            # backend, and fails loudly once that server is gone. Free them while it answers.
            gc.collect()
    finally:
        for server in servers:
            server.close()


# -- one scenario's processes -------------------------------------------------------
@dataclass
class StackConfig:
    idle_target: int = 4
    refresh_s: float = 1.0
    min_size: int = 0
    max_size: int = 30
    desired: int | None = None  # initial desired capacity [idle_target]
    visibility_timeout_s: int | None = None  # WARMPOOL_VISIBILITY_TIMEOUT_S (Redis broker redelivery)
    endpoint_url: str | None = None  # what the workers use as AWS (a fault proxy); moto by default
    pool_workers: tuple[str, ...] = ("pool",)
    aws_workers: tuple[str, ...] = ("aws",)
    aws_concurrency: int = 4
    beats: tuple[str, ...] = ("beat",)
    extra_env: Mapping[str, str] = field(default_factory=dict)
    wait_idle: bool = True  # wait until the pool shows the initial machines idle
    broker_on_state: bool = False  # broker and state on one Redis (without persistence): both lost at once


class FaultStack(PoolStack):
    """One scenario's stack on the session's Infra (``stack.infra.broker.restart()``, ...)."""

    def __init__(self, local: LocalStack, *, infra: Infra, config: StackConfig, **options: Any) -> None:
        super().__init__(local, **options)
        self.infra = infra
        self.config = config

    def aws(self, service: str) -> Any:
        """Straight to moto, with the session's clients."""
        return self.infra.aws(service)


def make_client_app(infra: Infra) -> Celery:
    """A producer-side app on the fault stack's broker and result backend."""
    return client_app_on(infra.broker.url(0), infra.backend.url(0), name="warmpool-faults")


def build_stack(infra: Infra, config: StackConfig, logs: Path) -> FaultStack:
    """A fresh group on flushed Redis servers, and the processes ``config`` names, started."""
    infra.flush()
    local = LocalStack(
        logs,
        urls=infra.urls_sharing_state if config.broker_on_state else infra.urls,
        moto=infra.moto,
        aws_endpoint_url=config.endpoint_url,
        asg_name=ASG,
        region=REGION,
        idle_target=config.idle_target,
        refresh_s=config.refresh_s,
        extra_env=settings_env(visibility_timeout_s=config.visibility_timeout_s, extra=config.extra_env),
        node=HOST,
        app_name="warmpool-faults",
    )
    desired = config.idle_target if config.desired is None else config.desired
    local.start().create_group(min_size=config.min_size, max_size=config.max_size, desired=desired)
    stack = start_stack(
        local,
        aws_workers=config.aws_workers,
        pool_workers=config.pool_workers,
        beats=config.beats,
        stack_type=FaultStack,
        infra=infra,
        config=config,
        reply_timeout_s=15.0,
        aws_concurrency=config.aws_concurrency,
    )
    assert isinstance(stack, FaultStack)
    if config.wait_idle and config.pool_workers and config.aws_workers:
        # The pool settles at the idle target (clamped), whatever the initial desired capacity.
        settled = max(config.min_size, min(config.max_size, config.idle_target))

        def ready() -> bool:
            if not config.beats:
                stack.app.send_task("warmpool.refresh", queue="aws")
            return stack.idle_count() == settled

        wait_for(ready, timeout_s=60, what=f"{settled} idle machines", every_s=0.3)
    return stack


@contextlib.contextmanager
def running_stack(infra: Infra, logs: Path, **overrides: Any) -> Iterator[FaultStack]:
    """A stack for a whole module (``with running_stack(infra, logs, ...) as stack``), stopped on exit."""
    stack = build_stack(infra, StackConfig(**overrides), logs)
    try:
        yield stack
    finally:
        stack.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def make_stack(infra: Infra, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., FaultStack]]:
    """``make_stack(idle_target=..., visibility_timeout_s=..., ...)``: a fresh group and fresh processes.

    On failure, the tail of every process log is printed (pytest shows it with the failure).
    """
    stacks: list[FaultStack] = []

    def make(**overrides: Any) -> FaultStack:
        stacks.append(build_stack(infra, StackConfig(**overrides), tmp_path))
        return stacks[-1]

    yield make
    for stack in stacks:
        stack.procs.stop_all(timeout_s=5)
    for stack in stacks:
        stack.close()
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        print_log_tails(tmp_path)
