"""The state store behind Redis Sentinel: a sentinel:// URL, as the broker takes it, and a failover.

Real processes: two redis-servers (a master and its replica) and one Sentinel
(``redis-server --sentinel``) watching them. The store finds the master through
the Sentinel, runs its Lua transitions there, and after a failover (Sentinel
promotes the replica) finds the new master by itself.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from sandbox.processes import free_port, popen_child, stop_process
from tasks.pool.model import AddressKind
from tasks.state.connect import sentinel_hosts, state_client
from tasks.state.redis_store import RedisStore
from tests.builders import ASG, prime, ready, snapshot
from tests.stacks import require_redis_server, wait_for

MASTER = "warmpool-test"
PROJECTS = f"warmpool:{{{ASG}}}:projects"


def _serve(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return popen_child(argv, env=None, out=out)


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[tuple[str, int, int]]:
    require_redis_server()
    server = shutil.which("redis-server")
    assert server is not None
    master_port, replica_port, sentinel_port = free_port(), free_port(), free_port()
    procs = [
        _serve([server, "--port", str(master_port), "--save", "", "--dir", str(tmp_path)], tmp_path / "master.log"),
        _serve(
            [
                server,
                "--port",
                str(replica_port),
                "--save",
                "",
                "--dir",
                str(tmp_path),
                "--replicaof",
                "127.0.0.1",
                str(master_port),
            ],
            tmp_path / "replica.log",
        ),
    ]
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {sentinel_port}\n"
        f"sentinel monitor {MASTER} 127.0.0.1 {master_port} 1\n"
        f"sentinel down-after-milliseconds {MASTER} 1000\n"
        f"sentinel failover-timeout {MASTER} 5000\n",
        encoding="utf-8",
    )
    procs.append(_serve([server, str(conf), "--sentinel"], tmp_path / "sentinel.log"))
    try:
        for port in (master_port, replica_port, sentinel_port):
            wait_for(lambda p=port: _pings(p), timeout_s=20, what=f"redis on {port}")
        yield f"sentinel://127.0.0.1:{sentinel_port}/2", master_port, replica_port
    finally:
        for proc in procs:
            stop_process(proc, timeout_s=5)


def _pings(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def test_a_sentinel_url_lists_every_sentinel_and_the_database() -> None:
    hosts, db, password = sentinel_hosts("sentinel://:pw@s1:26379;sentinel://s2:26380;sentinel://s3/4")
    assert hosts == [("s1", 26379), ("s2", 26380), ("s3", 26379)] and db == 4 and password == "pw"
    with pytest.raises(ValueError, match="not a sentinel:// address"):
        sentinel_hosts("sentinel://s1:26379;redis://s2:6379")


def test_the_store_runs_on_the_master_sentinel_names_and_follows_a_failover(
    sentinel: tuple[str, int, int],
) -> None:
    url, master_port, replica_port = sentinel
    store = RedisStore.from_url(url, ASG, sentinel_master=MASTER)
    # given a pool state written through the Sentinel (Lua transitions included)
    prime(store)
    store.apply_snapshot(snapshot([ready(1), ready(2)]), kind=AddressKind.PUBLIC, now=1_000.0)
    first = store.assign("proj-1", now=2_000.0, assigned_at="t", idle_target=0, lease_s=0.0, request_id="r1")
    assert first.machine is not None
    assert redis.Redis(port=master_port, db=2).hget(PROJECTS, "proj-1")
    wait_for(
        lambda: redis.Redis(port=replica_port, db=2).hget(PROJECTS, "proj-1"),
        timeout_s=20,
        what="the replica to have the assignment",
    )
    # when the master goes away and the Sentinel promotes the replica
    redis.Redis(port=master_port).shutdown(nosave=True)
    watcher = state_client(url, master_name=MASTER, socket_timeout=2)

    def promoted() -> bool:
        try:
            return watcher.connection_pool.get_master_address()[1] == replica_port  # type: ignore[attr-defined]
        except redis.RedisError:
            return False

    wait_for(promoted, timeout_s=40, what="the Sentinel to promote the replica")

    # expect the same store to carry on on the new master: the assignment is there, new ones work
    def assigns() -> bool:
        try:
            return (
                store.assign(
                    "proj-2", now=2_001.0, assigned_at="t", idle_target=0, lease_s=0.0, request_id="r2"
                ).machine
                is not None
            )
        except Exception:
            time.sleep(0.2)
            return False

    wait_for(assigns, timeout_s=20, what="an assign on the new master")
    assert set(store.view().projects) == {"proj-1", "proj-2"}
    store._r.close()
