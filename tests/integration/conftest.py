"""Real processes: Redis, a moto server, the pool worker, an aws worker and beat.

Each stack runs on a redis-server of its own, on a free port, so a demo, a
second test run or CI on the same machine never shares its queues or state.
redis-server absent: these tests fail under CI (CI=true) and skip locally.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from celery import Celery

from producer.client import PoolClient
from sandbox import (
    MotoServer,
    ProcessGroup,
    beat_argv,
    create_simulated_group,
    ensure_redis,
    free_port,
    stack_env,
    terminate,
    wait_for_workers,
    worker_argv,
)
from tasks.state.redis_store import RedisStore

ASG = "heavrdevs-asg"
REGION = "ap-south-1"
IDLE_TARGET = 4
REFRESH_S = 0.5


def require_redis() -> None:
    if shutil.which("redis-server"):
        return
    if os.environ.get("CI"):
        pytest.fail("redis-server is not installed (CI must install it: scripts/ensure_redis.py)")
    pytest.skip("redis-server is not installed")


@contextlib.contextmanager
def private_redis(logs: Path) -> Iterator[tuple[str, str, str]]:
    """A redis-server of this stack's own: broker, result backend and state URLs on it."""
    require_redis()
    base = f"redis://127.0.0.1:{free_port()}"
    proc = ensure_redis(base + "/0", log=lambda _: None, log_path=logs / "redis.log")
    try:
        yield base + "/0", base + "/1", base + "/2"
    finally:
        if proc is not None:
            terminate(proc, timeout_s=5)


def wait_for(check: Callable[[], Any], *, timeout_s: float = 15.0, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.1)


def make_client_app(broker_url: str, result_backend: str) -> Celery:
    app = Celery("warmpool-tests")
    app.config_from_object("celeryconfig")
    app.conf.update(broker_url=broker_url, result_backend=result_backend)
    return app


@dataclass
class Stack:
    moto: MotoServer
    procs: ProcessGroup
    env: dict[str, str]
    app: Celery
    client: PoolClient
    store: RedisStore
    logs: Path
    clients: dict[str, Any] = field(default_factory=dict)

    def aws(self, service: str) -> Any:
        """A boto3 client straight to moto; one per service and stack."""
        if service not in self.clients:
            self.clients[service] = boto3.client(
                service,
                endpoint_url=self.moto.endpoint_url,
                region_name=REGION,
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            )
        return self.clients[service]

    def group(self, name: str = ASG) -> dict[str, Any]:
        groups = self.aws("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[name])
        return dict(groups["AutoScalingGroups"][0])

    def tags_of(self, instance_id: str) -> dict[str, str]:
        reservations = self.aws("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"]
        inst = reservations[0]["Instances"][0]
        return {t["Key"]: t["Value"] for t in inst.get("Tags", [])}

    def fresh_group(self, *, min_size: int = 0, max_size: int = 20, desired: int = IDLE_TARGET) -> dict[str, Any]:
        """A new simulated group, and pool state that knows only it."""
        self.moto.reset()
        ids = create_simulated_group(
            self.moto.endpoint_url, name=ASG, region=REGION, min_size=min_size, max_size=max_size, desired=desired
        )
        self.store.reset()
        return ids

    def idle_count(self) -> int:
        return int(self.client.status()["counts"]["idle"])

    def start_pool_worker(self, name: str = "pool") -> None:
        self.procs.spawn(
            name,
            worker_argv("pool", hostname=f"{name}@tests", solo=True),
            env=self.env,
            log_path=self.logs / f"{name}.log",
        )
        wait_for_workers(self.app, [f"{name}@tests"], timeout_s=30)


@contextlib.contextmanager
def running_stack(
    logs: Path,
    *,
    idle_target: int = IDLE_TARGET,
    extra_env: dict[str, str] | None = None,
    broker_url: str | None = None,
) -> Iterator[Stack]:
    """Private Redis, moto server, aws worker, pool worker and beat (``broker_url``: another broker)."""
    with (
        private_redis(logs) as (redis_broker, backend, state),
        MotoServer(log_path=logs / "moto.log") as moto,
        ProcessGroup() as procs,
    ):
        broker = broker_url or redis_broker
        env = stack_env(
            endpoint_url=moto.endpoint_url,
            broker_url=broker,
            result_backend=backend,
            redis_url=state,
            asg_name=ASG,
            idle_target=idle_target,
            refresh_seconds=REFRESH_S,
            extra=extra_env,
        )
        app = make_client_app(broker, backend)
        stack = Stack(
            moto=moto,
            procs=procs,
            env=env,
            app=app,
            client=PoolClient(app=app),
            store=RedisStore.from_url(state, ASG),
            logs=logs,
        )
        stack.fresh_group(desired=idle_target)
        aws_argv = worker_argv("aws", hostname="aws@tests", concurrency=4, solo=False)
        procs.spawn("aws", aws_argv, env=env, log_path=logs / "aws.log")
        stack.start_pool_worker()
        procs.spawn("beat", beat_argv(schedule_path=logs / "beat-schedule"), env=env, log_path=logs / "beat.log")
        wait_for_workers(app, ["aws@tests"], timeout_s=30)
        yield stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("stack-logs")) as stack:
        yield stack


@pytest.fixture
def pool(stack: Stack) -> Stack:
    """The stack with a fresh group (desired = the idle target) whose machines are all idle."""
    stack.fresh_group()
    wait_for(lambda: stack.idle_count() == IDLE_TARGET, what="the idle buffer to fill")
    return stack
