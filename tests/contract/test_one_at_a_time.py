"""one_at_a_time: the refresh guard, against a real Redis (and one that does not answer)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tasks.worker.batching import one_at_a_time


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_url, socket_timeout=5)
    yield r
    r.close()


def test_a_second_caller_is_turned_away_while_the_first_holds_it(client: redis.Redis) -> None:
    key = f"test-refresh-lock-{uuid.uuid4().hex}"
    with one_at_a_time(client, key, ttl_s=30) as first:
        assert first is True
        with one_at_a_time(client, key, ttl_s=30) as second:
            assert second is False
    # and the key is free again once the first is done
    with one_at_a_time(client, key, ttl_s=30) as third:
        assert third is True
    assert client.exists(key) == 0


def test_a_holder_that_died_blocks_nobody_after_the_ttl(client: redis.Redis) -> None:
    key = f"test-refresh-lock-{uuid.uuid4().hex}"
    client.set(key, "a-worker-killed-mid-refresh", px=100)
    with one_at_a_time(client, key, ttl_s=30) as now:
        assert now is False
    time.sleep(0.3)
    with one_at_a_time(client, key, ttl_s=30) as later:
        assert later is True


def test_without_redis_the_caller_goes_ahead() -> None:
    unreachable = redis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.2, socket_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    with one_at_a_time(unreachable, "any", ttl_s=30) as go_ahead:
        assert go_ahead is True
