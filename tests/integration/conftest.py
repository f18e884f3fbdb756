"""Real processes: Redis, a moto server, the pool worker, an aws worker and beat (``sandbox.LocalStack``).

Each stack runs on a redis-server of its own, on a free port, so a demo, a
second test run or CI on the same machine never shares its queues or state.
The machinery is shared with the fault suite (tests/stacks.py).
redis-server absent: these tests fail under CI (CI=true) and skip locally.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import LocalStack, RedisServer, StackUrls
from tests.stacks import IMMEDIATE_SCALE_IN, REGION, PoolStack, require_redis_server, start_stack, wait_for

__all__ = ["ASG", "IDLE_TARGET", "REFRESH_S", "REGION", "Stack", "running_stack", "wait_for"]

ASG = "heavrdevs-asg"
IDLE_TARGET = 4
REFRESH_S = 0.5

Stack = PoolStack  # what the integration tests call a running stack


@contextlib.contextmanager
def running_stack(
    logs: Path,
    *,
    idle_target: int = IDLE_TARGET,
    extra_env: dict[str, str] | None = None,
    broker_url: str | None = None,
) -> Iterator[Stack]:
    """Private Redis, moto server, aws worker, pool worker and beat (``broker_url``: another broker)."""
    require_redis_server()
    with contextlib.ExitStack() as cleanup:
        urls = None  # the stack starts a private Redis of its own
        if broker_url is not None:  # results and state stay on a private Redis, the jobs go through broker_url
            private = cleanup.enter_context(RedisServer(workdir=logs))
            urls = dataclasses.replace(StackUrls.on(private), broker_url=broker_url)
        local = LocalStack(
            logs,
            urls=urls,
            asg_name=ASG,
            region=REGION,
            idle_target=idle_target,
            refresh_s=REFRESH_S,
            extra_env={**IMMEDIATE_SCALE_IN, **(extra_env or {})},
            node="tests",
            app_name="warmpool-tests",
        )
        cleanup.callback(local.stop)
        local.start().create_group(min_size=0, max_size=20, desired=idle_target)
        stack = start_stack(local, default_desired=IDLE_TARGET)
        cleanup.callback(stack.close)
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
