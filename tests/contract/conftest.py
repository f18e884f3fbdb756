"""Fixtures of the contract suites: state stores (in-memory and Redis) and clouds (fake and moto).

Redis: ``WARMPOOL_TEST_REDIS_URL`` [redis://127.0.0.1:6379/13]. When it does not answer, the
Redis-backed tests fail if the environment variable ``CI`` is set, and are skipped otherwise.
Every RedisStore gets its own ASG name, so its keys never meet another test's; they are
deleted afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from tasks.pool.ports import StateStore
from tasks.state.memory_store import InMemoryStore
from tasks.state.redis_store import RedisStore
from tests.builders import prime
from tests.conftest import REDIS_URL, _in_ci, _redis_problem  # noqa: F401 - shared with the suites that import them here


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
