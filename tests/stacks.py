"""What the integration and fault suites share: real stacks on ``sandbox.LocalStack``, and how to wait for them.

``PoolStack`` is one running stack as a test sees it: the ``LocalStack``
(processes, environment, moto), a ``PoolClient`` and a ``RedisStore`` on it,
and the questions tests ask (the group in AWS, instance tags, pool counts).
The integration suite's ``Stack`` is a PoolStack; the fault suite's
``FaultStack`` adds its session ``Infra`` and ``StackConfig``.

redis-server absent: stacks fail under CI (env ``CI`` set) and skip locally.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from producer.client import PoolClient
from sandbox import LocalStack, MotoServer, ProcessGroup, redis_server_binary
from tasks.contract import TASK_REFRESH
from tasks.state.redis_store import RedisStore

REGION = "ap-south-1"


def require_redis_server() -> str:
    """The redis-server binary; fail under CI, skip locally, when there is none."""
    path = redis_server_binary()
    if path:
        return path
    message = "redis-server is not on PATH (these tests start their own Redis servers; scripts/ensure_redis.py)"
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


def print_log_tails(log_dir: Path, *, lines: int = 40) -> None:
    """Print the last lines of every process log in ``log_dir`` (pytest shows them with a failure)."""
    for log in sorted(log_dir.glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        print(f"\n===== {log.name} (last {lines} lines) =====")
        print("\n".join(line[:300] for line in tail))


class PoolStack:
    """A running ``LocalStack`` with a client and a store on it, and what tests ask of it."""

    def __init__(
        self,
        local: LocalStack,
        *,
        reply_timeout_s: float | None = None,
        aws_concurrency: int = 4,
        default_desired: int | None = None,
    ) -> None:
        self.local = local
        self.aws_concurrency = aws_concurrency
        self.default_desired = local.idle_target if default_desired is None else default_desired
        client_options = {} if reply_timeout_s is None else {"reply_timeout_s": reply_timeout_s}
        self.client = PoolClient(app=local.app, **client_options)
        self.store = RedisStore.from_url(local.urls.redis_url, local.asg_name)
        self.crashed: list[tuple[str, int | None]] = []

    # -- the pieces, as the test files name them --
    @property
    def procs(self) -> ProcessGroup:
        return self.local.processes

    @property
    def env(self) -> dict[str, str]:
        return self.local.env

    @property
    def app(self) -> Celery:
        return self.local.app

    @property
    def moto(self) -> MotoServer:
        return self.local.moto

    @property
    def logs(self) -> Path:
        return self.local.log_dir

    # -- AWS, read straight from moto --
    def aws(self, service: str) -> Any:
        return self.local.aws(service)

    def group(self, name: str | None = None) -> dict[str, Any]:
        groups = self.aws("autoscaling").describe_auto_scaling_groups(
            AutoScalingGroupNames=[name or self.local.asg_name]
        )
        return dict(groups["AutoScalingGroups"][0])

    def ec2_instances(self) -> dict[str, dict[str, Any]]:
        """Every EC2 instance of the group (moto keeps terminated ones listed), by id."""
        found: dict[str, dict[str, Any]] = {}
        pages = (
            self.aws("ec2")
            .get_paginator("describe_instances")
            .paginate(Filters=[{"Name": "tag:aws:autoscaling:groupName", "Values": [self.local.asg_name]}])
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

    def fresh_group(self, *, min_size: int = 0, max_size: int = 20, desired: int | None = None) -> dict[str, Any]:
        """A new simulated group (after a moto reset), and pool state that knows only it."""
        ids = self.local.create_group(
            min_size=min_size, max_size=max_size, desired=self.default_desired if desired is None else desired
        )
        self.store.reset()
        return ids

    # -- the pool --
    def status(self) -> dict[str, Any]:
        return self.client.status()

    def counts(self) -> dict[str, int]:
        return dict(self.status()["counts"])

    def idle_count(self) -> int:
        return int(self.counts()["idle"])

    def wait_until_idle(self, count: int, *, timeout_s: float = 40.0) -> None:
        wait_for(lambda: self.idle_count() >= count, timeout_s=timeout_s, what=f"{count} idle machines")

    def refresh_now(self, *, timeout_s: float = 20.0) -> dict[str, Any]:
        """Send one refresh (as beat would) and return the first status showing a refresh read after it."""
        sent = time.time()
        self.app.send_task(TASK_REFRESH, queue="aws")

        def applied() -> dict[str, Any] | None:
            status = self.status()
            age = status.get("refresh_age_s")
            return status if age is not None and time.time() - age >= sent else None

        result: dict[str, Any] = wait_for(applied, timeout_s=timeout_s, what="a refresh")
        return result

    # -- processes --
    def worker_name(self, name: str) -> str:
        return self.local.worker_name(name)

    def spawn(self, name: str, argv: list[str]) -> None:
        self.local.spawn(name, argv)

    def start_pool_worker(self, name: str = "pool", *, wait: bool = True) -> None:
        self.local.start_pool_worker(name, wait=wait)

    def start_aws_worker(self, name: str = "aws", *, wait: bool = True) -> None:
        self.local.start_aws_worker(name, concurrency=self.aws_concurrency, wait=wait)

    def start_beat(self, name: str = "beat") -> None:
        self.local.start_beat(name)

    def supervise(self) -> None:
        """What the deployment's supervisor does (compose ``restart: unless-stopped``): restart exited processes."""
        for name in self.procs.names():
            if not self.procs.alive(name):
                self.crashed.append((name, self.procs.get(name).returncode))
                self.local.respawn(name)

    def log_text(self, name: str) -> str:
        return self.local.log_text(name)

    def close(self) -> None:
        """Stop the stack's processes (and what it started), close the store and the producer app."""
        gc.collect()  # AsyncResults in reference cycles unsubscribe while the result backend still answers
        self.local.stop(timeout_s=5)
        self.store._r.close()


def start_stack(
    local: LocalStack,
    *,
    aws_workers: tuple[str, ...] = ("aws",),
    pool_workers: tuple[str, ...] = ("pool",),
    beats: tuple[str, ...] = ("beat",),
    stack_type: type[PoolStack] = PoolStack,
    **stack_options: Any,
) -> PoolStack:
    """Start ``local`` and the named aws workers, pool workers and beats on it; wait for every worker."""
    local.start()
    stack = stack_type(local, **stack_options)
    for name in aws_workers:
        stack.start_aws_worker(name, wait=False)
    for name in pool_workers:
        stack.start_pool_worker(name, wait=False)
    for name in beats:
        stack.start_beat(name)
    local.wait_for_workers([*aws_workers, *pool_workers])
    return stack


# Suites written before the delayed scale-in expect surplus gone at once (a test names a delay to see it).
IMMEDIATE_SCALE_IN = {"WARMPOOL_SCALE_IN_DELAY_S": "0", "WARMPOOL_SCALE_IN_STEP": "0"}


def settings_env(*, visibility_timeout_s: int | None, extra: Mapping[str, str]) -> dict[str, str]:
    """Extra WARMPOOL_* variables of a stack: ``extra`` plus the broker's redelivery delay when given."""
    env = {**IMMEDIATE_SCALE_IN, **extra}
    if visibility_timeout_s is not None:
        env["WARMPOOL_VISIBILITY_TIMEOUT_S"] = str(visibility_timeout_s)
    return env
