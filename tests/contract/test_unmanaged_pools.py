"""A pool removed from the configuration: its state is found and named, never touched."""

from __future__ import annotations

import uuid
from pathlib import Path

import redis
from celery import Celery

from tasks.pools import load_deployment
from tasks.worker.runtime import Runtimes


def test_state_of_a_pool_no_longer_configured_is_named_and_left_alone(redis_url: str, tmp_path: Path) -> None:
    # given the state of two groups in Redis, and a configuration that names only one of them
    kept, removed = f"kept-{uuid.uuid4().hex[:8]}", f"removed-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url)
    keys = [f"warmpool:{{{name}}}:group" for name in (kept, removed)]
    try:
        for key in keys:
            client.hset(key, "min_size", 0)
        path = tmp_path / "warmpool.toml"
        path.write_text(f'[pools.kept]\nasg = "{kept}"\n', encoding="utf-8")
        deployment = load_deployment({"WARMPOOL_CONFIG": str(path), "WARMPOOL_REDIS_URL": redis_url})
        # when a worker looks for state no configured pool uses
        unmanaged = Runtimes(Celery("unmanaged-test"), deployment).unmanaged_namespaces()
        # expect the removed pool named, the kept one not, and its state still there
        assert removed in unmanaged and kept not in unmanaged
        assert client.hget(keys[1], "min_size") == b"0"
    finally:
        client.delete(*keys)
        client.close()
