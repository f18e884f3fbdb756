"""Fixtures of the contract suites: state stores (in-memory and Redis) and clouds (fake and moto).

Redis: ``WARMPOOL_TEST_REDIS_URL`` [redis://127.0.0.1:6379/13]. When it does not answer, the
Redis-backed tests fail if the environment variable ``CI`` is set, and are skipped otherwise.
Every RedisStore gets its own ASG name, so its keys never meet another test's; they are
deleted afterwards.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from tasks.pool.ports import StateStore
from tasks.state.memory_store import InMemoryStore
from tasks.state.redis_store import RedisStore
from tests.builders import prime

REDIS_URL = os.environ.get("WARMPOOL_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@functools.cache
def _redis_problem() -> str | None:
    """Why Redis cannot be used (None when it answers); asked once per session."""
    client: redis.Redis[str] = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        return f"Redis not reachable at {REDIS_URL}: {exc}"
    finally:
        client.close()
    return None


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The Redis the contract tests use; fails in CI, skips locally when it does not answer."""
    problem = _redis_problem()
    if problem is not None:
        if _in_ci():
            pytest.fail(problem + " (CI is set: Redis is required)")
        pytest.skip(problem)
    return REDIS_URL


@pytest.fixture
def redis_store_factory(redis_url: str) -> Iterator[Callable[[str | None], RedisStore]]:
    """Builds RedisStores, each on its own connection; all keys and connections cleaned up after."""
    made: list[tuple[redis.Redis[str], RedisStore]] = []

    def make(asg_name: str | None = None) -> RedisStore:
        client: redis.Redis[str] = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=5)
        store = RedisStore(client, asg_name or f"contract-{uuid.uuid4().hex[:12]}")
        made.append((client, store))
        # A new group starts as warmpool would on it; a second store on the same
        # group (another worker) shares that start.
        return prime(store) if asg_name is None else store

    yield make
    for client, store in made:
        try:
            client.delete(*store.keys.all())
        finally:
            client.close()


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> StateStore:
    """One StateStore of each implementation: the contract suite runs against both."""
    if request.param == "memory":
        return prime(InMemoryStore())
    factory: Callable[[str | None], RedisStore] = request.getfixturevalue("redis_store_factory")
    return factory(None)
