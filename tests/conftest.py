"""Fixtures every suite may use: the shared test Redis (``WARMPOOL_TEST_REDIS_URL`` [redis://127.0.0.1:6379/13]).

When it does not answer, the Redis-backed tests fail if the environment variable
``CI`` is set, and are skipped otherwise.
"""

from __future__ import annotations

import functools
import os

import pytest
import redis

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
