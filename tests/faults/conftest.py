"""The fault suite's stack: its own Redis servers and moto server, real workers and beat.

Scenarios here kill workers, restart and flush Redis and break AWS, so nothing
runs on the shared Redis at 127.0.0.1:6379: the session starts three
``redis-server`` processes on free ports (broker, result backend, pool state;
each restartable on its own, the broker with an append-only file so a restart
keeps its queues like a production broker would) and one moto server. Each
test then starts the worker processes it needs with the settings it needs
(``make_stack``) and stops them afterwards.

redis-server missing: these tests fail under CI (env ``CI`` set) and skip locally.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis
from celery import Celery

from producer.client import PoolClient
from sandbox import (
    MotoServer,
    ProcessGroup,
    beat_argv,
    create_simulated_group,
    free_port,
    redis_answers,
    stack_env,
    terminate,
    wait_for_workers,
    worker_argv,
)
from tasks.state.redis_store import RedisStore

ASG = "faults-asg"
REGION = "ap-south-1"
HOST = "faults"  # worker names are <name>@faults


# -- helpers used by every scenario ----------------------------------------------
def require_redis_server() -> str:
    """The redis-server binary; fail under CI, skip locally, when there is none."""
    path = shutil.which("redis-server")
    if path:
        return path
    message = "redis-server is not on PATH (the fault suite starts its own Redis servers)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def wait_for(
    check: Callable[[], Any], *, timeout_s: float = 20.0, what: str = "condition", every_s: float = 0.1
) -> Any:
    """Poll ``check`` until it returns something truthy; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(every_s)


def eventually(check: Callable[[], Any], *, timeout_s: float = 30.0, every_s: float = 0.25) -> Any:
    """Run ``check`` (which asserts) until it passes; re-raise its last AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        time.sleep(every_s)


def _child_setup() -> None:
    """New session (signals reach only the child's group); SIGTERM when the test process dies."""
    os.setsid()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


class RedisServer:
    """One ``redis-server`` on a free port, in a directory of its own; restartable on the same port."""

    def __init__(self, binary: str, name: str, workdir: Path, *, persistent: bool) -> None:
        self.binary = binary
        self.name = name
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.persistent = persistent
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def answers(self) -> bool:
        return redis_answers(self.url(), timeout_s=0.3)

    def start(self) -> RedisServer:
        argv = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.persistent else "no",
            "--appendfsync",
            "always",
            "--logfile",
            str(self.dir / "redis.log"),
        ]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, preexec_fn=_child_setup)
        deadline = time.monotonic() + 15
        while not self.answers():
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server {self.name} exited with {self.proc.returncode} (see {self.dir})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server {self.name} did not answer on port {self.port}")
            time.sleep(0.05)
        return self

    def stop(self, *, kill: bool = False) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if kill:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        else:
            terminate(proc, timeout_s=5)

    def restart(self, *, kill: bool = True, down_s: float = 0.0) -> None:
        """Stop (SIGKILL by default: a crash) and start again on the same port."""
        self.stop(kill=kill)
        time.sleep(down_s)
        self.restarts += 1
        self.start()

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis.from_url(self.url(db), socket_timeout=5, socket_connect_timeout=2)


class SerialMotoServer(MotoServer):
    """MotoServer, applying one request at a time (see tests/faults/serialmoto.py for why)."""

    def start(self) -> SerialMotoServer:
        if self._proc is not None:
            return self
        script = Path(__file__).with_name("serialmoto.py")
        argv = [sys.executable, str(script), "-H", self.host, "-p", str(self.port)]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
        out = open(self.log_path, "ab") if self.log_path is not None else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_child_setup
            )
        finally:
            if not isinstance(out, int):
                out.close()
        deadline = time.monotonic() + self.start_timeout_s
        while not self.answers():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the moto server did not start (see {self.log_path})")
            time.sleep(0.05)
        return self


@dataclass
class Infra:
    """What the whole session shares: three Redis servers and a moto server."""

    broker: RedisServer
    backend: RedisServer
    state: RedisServer
    moto: MotoServer
    logs: Path
    _clients: dict[str, Any] = field(default_factory=dict)

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
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            )
        return self._clients[service]


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    binary = require_redis_server()
    logs = tmp_path_factory.mktemp("faults")
    servers = [
        RedisServer(binary, "broker", logs, persistent=True),
        RedisServer(binary, "backend", logs, persistent=False),
        RedisServer(binary, "state", logs, persistent=False),
    ]
    try:
        for server in servers:
            server.start()
        with SerialMotoServer(log_path=logs / "moto.log") as moto:
            infra = Infra(broker=servers[0], backend=servers[1], state=servers[2], moto=moto, logs=logs)
            yield infra
            for client in infra._clients.values():
                client.close()
    finally:
        for server in servers:
            server.stop()


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


@dataclass
class FaultStack:
    infra: Infra
    config: StackConfig
    procs: ProcessGroup
    env: dict[str, str]
    app: Celery
    client: PoolClient
    store: RedisStore
    logs: Path
    argv: dict[str, list[str]] = field(default_factory=dict)
    crashed: list[tuple[str, int | None]] = field(default_factory=list)

    # -- AWS, read straight from moto --
    def aws(self, service: str) -> Any:
        return self.infra.aws(service)

    def group(self) -> dict[str, Any]:
        groups = self.aws("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[ASG])
        return dict(groups["AutoScalingGroups"][0])

    def ec2_instances(self) -> dict[str, dict[str, Any]]:
        """Every EC2 instance of the group (moto keeps terminated ones listed), by id."""
        found: dict[str, dict[str, Any]] = {}
        pages = (
            self.aws("ec2")
            .get_paginator("describe_instances")
            .paginate(Filters=[{"Name": "tag:aws:autoscaling:groupName", "Values": [ASG]}])
        )
        for page in pages:
            for reservation in page["Reservations"]:
                for inst in reservation["Instances"]:
                    found[inst["InstanceId"]] = inst
        return found

    def all_instance_ids(self) -> set[str]:
        """Every EC2 instance moto ever launched since the last reset (terminated ones included)."""
        pages = self.aws("ec2").get_paginator("describe_instances").paginate()
        return {i["InstanceId"] for page in pages for r in page["Reservations"] for i in r["Instances"]}

    def tags_of(self, instance_id: str) -> dict[str, str]:
        reservations = self.aws("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"]
        return {t["Key"]: t["Value"] for t in reservations[0]["Instances"][0].get("Tags", [])}

    # -- the pool --
    def status(self) -> dict[str, Any]:
        return self.client.status()

    def counts(self) -> dict[str, int]:
        return dict(self.status()["counts"])

    def idle_count(self) -> int:
        return int(self.counts()["idle"])

    # -- processes --
    def worker_name(self, name: str) -> str:
        return f"{name}@{HOST}"

    def spawn(self, name: str, argv: list[str]) -> None:
        self.argv[name] = argv
        self.procs.spawn(name, argv, env=self.env, log_path=self.logs / f"{name}.log")

    def start_pool_worker(self, name: str = "pool", *, wait: bool = True) -> None:
        self.spawn(name, worker_argv("pool", hostname=self.worker_name(name), solo=True))
        if wait:
            wait_for_workers(self.app, [self.worker_name(name)], timeout_s=40)

    def start_aws_worker(self, name: str = "aws", *, wait: bool = True) -> None:
        concurrency = self.config.aws_concurrency
        self.spawn(name, worker_argv("aws", hostname=self.worker_name(name), concurrency=concurrency, solo=False))
        if wait:
            wait_for_workers(self.app, [self.worker_name(name)], timeout_s=40)

    def start_beat(self, name: str = "beat") -> None:
        self.spawn(name, beat_argv(schedule_path=self.logs / f"{name}-schedule"))

    def supervise(self) -> None:
        """What the deployment's supervisor does (compose ``restart: unless-stopped``): restart exited processes."""
        for name in self.procs.names():
            if not self.procs.alive(name):
                self.crashed.append((name, self.procs.get(name).returncode))
                self.procs.stop(name)
                self.spawn(name, self.argv[name])

    def log_text(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def refresh_now(self, *, timeout_s: float = 20.0) -> dict[str, Any]:
        """Send one refresh (as beat would) and return the first status showing a refresh read after it."""
        sent = time.time()
        self.app.send_task("warmpool.refresh", queue="aws")

        def applied() -> dict[str, Any] | None:
            status = self.status()
            age = status.get("refresh_age_s")
            return status if age is not None and time.time() - age >= sent else None

        result: dict[str, Any] = wait_for(applied, timeout_s=timeout_s, what="a refresh")
        return result

    def close(self) -> None:
        """Close this thread's result backend connections and the producer app."""
        close_backend(self.app)
        self.store._r.close()
        self.app.close()

    def wait_until_idle(self, count: int, *, timeout_s: float = 40.0) -> None:
        wait_for(lambda: self.idle_count() >= count, timeout_s=timeout_s, what=f"{count} idle machines")


def close_backend(app: Celery) -> None:
    """Close the calling thread's Celery result backend (Celery keeps one per thread, open until GC)."""
    backend = app.backend
    backend.result_consumer.stop()
    backend.client.connection_pool.disconnect()


def make_client_app(infra: Infra) -> Celery:
    """A producer-side app on the fault stack's broker and result backend."""
    app = Celery("warmpool-faults")
    app.config_from_object("celeryconfig")
    app.conf.update(broker_url=infra.broker.url(0), result_backend=infra.backend.url(0))
    return app


def build_stack(infra: Infra, config: StackConfig, procs: ProcessGroup, logs: Path) -> FaultStack:
    infra.flush()
    infra.moto.reset()
    desired = config.idle_target if config.desired is None else config.desired
    create_simulated_group(
        infra.moto.endpoint_url,
        name=ASG,
        region=REGION,
        min_size=config.min_size,
        max_size=config.max_size,
        desired=desired,
    )
    extra = dict(config.extra_env)
    if config.visibility_timeout_s is not None:
        extra["WARMPOOL_VISIBILITY_TIMEOUT_S"] = str(config.visibility_timeout_s)
    env = stack_env(
        endpoint_url=config.endpoint_url or infra.moto.endpoint_url,
        broker_url=infra.broker.url(0),
        result_backend=infra.backend.url(0),
        redis_url=infra.state.url(0),
        asg_name=ASG,
        idle_target=config.idle_target,
        refresh_seconds=config.refresh_s,
        region=REGION,
        extra=extra,
    )
    app = make_client_app(infra)
    stack = FaultStack(
        infra=infra,
        config=config,
        procs=procs,
        env=env,
        app=app,
        client=PoolClient(app=app, reply_timeout_s=15.0),
        store=RedisStore.from_url(infra.state.url(0), ASG),
        logs=logs,
    )
    for name in config.aws_workers:
        stack.start_aws_worker(name, wait=False)
    for name in config.pool_workers:
        stack.start_pool_worker(name, wait=False)
    for name in config.beats:
        stack.start_beat(name)
    wait_for_workers(app, [stack.worker_name(n) for n in (*config.aws_workers, *config.pool_workers)], timeout_s=60)
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
    with ProcessGroup() as procs:
        stack = build_stack(infra, StackConfig(**overrides), procs, logs)
        try:
            yield stack
        finally:
            procs.stop_all(timeout_s=5)
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
    groups: list[ProcessGroup] = []

    def make(**overrides: Any) -> FaultStack:
        procs = ProcessGroup()
        groups.append(procs)
        stacks.append(build_stack(infra, StackConfig(**overrides), procs, tmp_path))
        return stacks[-1]

    yield make
    for procs in groups:
        procs.stop_all(timeout_s=5)
    for stack in stacks:
        stack.close()
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        for log in sorted(tmp_path.glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()
            print(f"\n===== {log.name} (last 40 lines) =====")
            print("\n".join(line[:300] for line in lines[-40:]))
