"""``warmpool demo`` end to end, and the Redis it runs on.

Runs ``python -m sandbox.demo --once`` (the demo without its endless status
loop) in a subprocess. By default it must run on a private redis-server of its
own on a free port (never the Redis on 6379) and stop it again; pointed at a
URL where no Redis answers it starts one there; pointed at a Redis that holds
someone's pool state or has workers connected, it refuses and changes nothing.
redis-server absent: fails under CI, skips locally.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from sandbox import ProcessGroup, RedisServer, ensure_redis, free_port, make_client_app, redis_answers, worker_argv
from sandbox.demo_redis import REDIS_URL_VARIABLES, DemoError, clear_previous_demo, redis_is_explicit
from sandbox.stack import StackUrls
from tasks.contract import AWS_QUEUE, POOL_QUEUE
from tasks.state.keys import PoolKeys, demo_owner_key
from tests.stacks import require_redis_server, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ASG = "heavrdevs-asg"
ASSIGNED = re.compile(r"assign (demo-\d+)\s+-> (i-[0-9a-f]+)\s+ip (\S+)")
PRIVATE = re.compile(r"private redis-server on 127\.0\.0\.1:(\d+)")
DEMO_ARGV = [sys.executable, "-m", "sandbox.demo", "--once", "--rounds", "3", "--refresh-seconds", "1"]


def demo_env(**redis_urls: str) -> dict[str, str]:
    """The test's environment without any WARMPOOL_*/AWS setting the demo would pick up, plus ``redis_urls``."""
    env = {**os.environ, "COLUMNS": "120", "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}
    names = ("FORCE_COLOR", "AWS_ENDPOINT_URL", "WARMPOOL_ASG_NAME", "WARMPOOL_IDLE_TARGET", "WARMPOOL_CONFIG")
    for name in (*names, *REDIS_URL_VARIABLES):
        env.pop(name, None)
    return {**env, **redis_urls}


def on(base: str) -> dict[str, str]:
    """The three WARMPOOL_* Redis URLs on databases 0, 1, 2 of ``base``."""
    return {
        "WARMPOOL_BROKER_URL": f"{base}/0",
        "WARMPOOL_RESULT_BACKEND": f"{base}/1",
        "WARMPOOL_REDIS_URL": f"{base}/2",
    }


def logs_of(cwd: Path) -> str:
    parts = []
    for log in sorted((cwd / ".demo" / "logs").glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-40:]
        parts.append(f"--- {log.name} (last 40 lines) ---\n" + "\n".join(tail))
    return "\n".join(parts)


def run_demo(cwd: Path, env: dict[str, str], *, timeout_s: float = 75) -> tuple[int, str]:
    proc = subprocess.run(DEMO_ARGV, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)
    return proc.returncode, proc.stdout + proc.stderr


def assert_scripted_run(output: str) -> None:
    assigned = ASSIGNED.findall(output)
    first = {project: instance for project, instance, _ in assigned[:3]}
    assert list(first) == ["demo-1", "demo-2", "demo-3"], output
    assert len(set(first.values())) == 3, f"three projects must hold three machines:\n{output}"
    assert all(ip.count(".") == 3 for _, _, ip in assigned), f"every machine has an address:\n{output}"
    assert assigned[3][:2] == ("demo-1", first["demo-1"]), f"the same project gets the same machine:\n{output}"
    assert "demo-1 asked again: same machine" in output
    assert re.search(r"release demo-3\s+-> True", output), output
    assert re.search(r"release nobody\s+-> False", output), output
    assert "stopped everything the demo started" in output


@pytest.mark.timeout(90)
def test_demo_once_runs_on_a_private_redis_by_default_and_stops_it(tmp_path: Path) -> None:
    require_redis_server()
    # given no WARMPOOL_* Redis URL, when the demo runs its script
    code, output = run_demo(tmp_path, demo_env())
    # expect the scripted assigns and releases, on a redis-server of its own on a free port
    assert code == 0, f"demo exited {code}:\n{output}\n{logs_of(tmp_path)}"
    assert_scripted_run(output)
    found = PRIVATE.search(output)
    assert found is not None, output
    port = int(found.group(1))
    assert port != 6379
    assert not redis_answers(f"redis://127.0.0.1:{port}/0"), "the private Redis is stopped"
    assert (tmp_path / ".demo" / "logs" / "pool-worker.log").exists()


@pytest.mark.timeout(90)
def test_demo_once_starts_a_redis_where_the_configured_url_finds_none(tmp_path: Path) -> None:
    require_redis_server()
    # given WARMPOOL_* URLs on a free port where no Redis answers
    urls = on(f"redis://127.0.0.1:{free_port()}")
    # when the demo runs its script
    code, output = run_demo(tmp_path, demo_env(**urls))
    # expect it to start a redis-server there, run, and stop it again
    assert code == 0, f"demo exited {code}:\n{output}\n{logs_of(tmp_path)}"
    assert_scripted_run(output)
    assert "starting redis-server" in output and not PRIVATE.search(output)
    assert not redis_answers(urls["WARMPOOL_BROKER_URL"]), "the Redis the demo started is stopped"


@pytest.fixture
def someones_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis the demo did not start (this test's own)."""
    require_redis_server()
    with RedisServer(workdir=tmp_path) as server:
        yield server


def everything(server: RedisServer) -> tuple[dict[bytes, object], list[list[bytes]]]:
    """What must not change: every key and value of the state database, and the jobs queued on the broker.

    (A ping through the broker declares reply bindings there: the broker's
    other keys may change, its queues must not.)
    """
    with contextlib.closing(server.client(2)) as state, contextlib.closing(server.client(0)) as broker:
        return {key: state.dump(key) for key in state.scan_iter()}, [
            broker.lrange(queue, 0, -1) for queue in (POOL_QUEUE, AWS_QUEUE)
        ]


def flat(output: str) -> str:
    """The demo's output with rich's line wrapping undone."""
    return " ".join(output.split())


@pytest.mark.timeout(60)
def test_demo_refuses_a_pool_no_demo_made_and_changes_nothing(tmp_path: Path, someones_redis: RedisServer) -> None:
    # given someone's pool state and a queued job on an existing Redis
    keys = PoolKeys.for_group(ASG)
    with contextlib.closing(someones_redis.client(2)) as state:
        state.hset(keys.projects, "their-project", "i-0123456789abcdef0")
    with contextlib.closing(someones_redis.client(0)) as broker:
        broker.lpush(POOL_QUEUE, b'{"their": "job"}')
    before = everything(someones_redis)
    # when the demo is pointed at it
    code, output = run_demo(tmp_path, demo_env(**on(f"redis://127.0.0.1:{someones_redis.port}")), timeout_s=45)
    # expect a refusal naming what it found, and every key as it was
    assert code == 1, output
    assert "holds data no demo made (pool)" in flat(output), output
    assert everything(someones_redis) == before
    assert someones_redis.answers(), "a Redis the demo did not start keeps running"


@pytest.mark.timeout(60)
def test_demo_refuses_a_broker_with_workers_it_did_not_start(tmp_path: Path, someones_redis: RedisServer) -> None:
    # given a worker connected to an existing Redis broker
    urls = on(f"redis://127.0.0.1:{someones_redis.port}")
    with ProcessGroup() as procs:
        env = {**demo_env(**urls), "WARMPOOL_ASG_NAME": "their-asg"}
        procs.spawn("theirs", worker_argv(AWS_QUEUE, hostname="theirs@elsewhere", solo=True), env=env)
        app = make_client_app(urls["WARMPOOL_BROKER_URL"], urls["WARMPOOL_RESULT_BACKEND"])
        try:
            wait_for(lambda: app.control.ping(["theirs@elsewhere"], timeout=0.5), timeout_s=40, what="their worker")
        finally:
            app.close()
        before = everything(someones_redis)
        # when the demo is pointed at it
        code, output = run_demo(tmp_path, demo_env(**urls), timeout_s=45)
        # expect a refusal naming the worker, and the pool state untouched
        assert code == 1, output
        assert "workers are already connected" in flat(output) and "theirs@elsewhere" in output, output
        assert everything(someones_redis) == before
        assert procs.alive("theirs")


def test_only_a_previous_demo_s_state_is_cleared(someones_redis: RedisServer) -> None:
    urls = StackUrls.on(someones_redis)
    keys = PoolKeys.for_group(ASG)
    app: Celery = make_client_app(urls.broker_url, urls.result_backend)
    state, broker = someones_redis.client(2), someones_redis.client(0)
    try:
        # given pool state and a queued job that no demo made
        state.hset(keys.projects, "their-project", "i-1")
        broker.lpush(AWS_QUEUE, b"job")
        # expect a refusal, and nothing deleted
        with pytest.raises(DemoError, match="no demo made"):
            clear_previous_demo(urls, asg_name=ASG, app=app)
        assert state.hget(keys.projects, "their-project") == b"i-1" and broker.llen(AWS_QUEUE) == 1
        assert state.get(demo_owner_key(ASG)) is None

        # given the same left by a previous demo (its claim present)
        state.set(demo_owner_key(ASG), "warmpool demo")
        # when cleared
        clear_previous_demo(urls, asg_name=ASG, app=app)
        # expect the group's state and the queues gone, the claim kept, other groups' state untouched
        assert not any(state.exists(k) for k in keys.all()) and broker.llen(AWS_QUEUE) == 0
        assert state.get(demo_owner_key(ASG)) == b"warmpool demo"
    finally:
        state.close()
        broker.close()
        app.close()


def test_the_demo_redis_is_private_unless_a_url_is_set() -> None:
    assert not redis_is_explicit({})
    assert not redis_is_explicit({"WARMPOOL_REDIS_URL": "  ", "WARMPOOL_ASG_NAME": "x"})
    assert all(redis_is_explicit({name: "redis://127.0.0.1:6390/0"}) for name in REDIS_URL_VARIABLES)


def test_ensure_redis_starts_and_stops_a_server_on_a_free_port(tmp_path: Path) -> None:
    require_redis_server()
    url = f"redis://127.0.0.1:{free_port()}/0"
    messages: list[str] = []
    server = ensure_redis(url, log=messages.append, workdir=tmp_path)
    assert server is not None and redis_answers(url)
    assert messages and "starting redis-server" in messages[0]
    assert ensure_redis(url, log=messages.append) is None, "a Redis that answers is left alone"
    server.close()
    assert not redis_answers(url)


def _sourced(path: Path) -> dict[str, str]:
    """The variables of a ``set -a; . FILE`` as a shell would set them."""
    out = subprocess.run(
        ["bash", "-c", 'set -a; . "$0"; env -0', str(path)], capture_output=True, text=True, check=True, env={}
    ).stdout
    pairs = (item.split("=", 1) for item in out.split("\0") if "=" in item)
    return {k: v for k, v in pairs if k.startswith(("WARMPOOL_", "AWS_"))}


@pytest.mark.timeout(180)
def test_the_running_demo_is_reachable_from_another_terminal_and_its_buffer_follows_a_policy_change(
    tmp_path: Path,
) -> None:
    require_redis_server()
    # given the demo running (not --once), on its private Redis
    argv = [sys.executable, "-m", "sandbox.demo", "--rounds", "1", "--refresh-seconds", "1"]
    log = (tmp_path / "demo.out").open("w")
    proc = subprocess.Popen(argv, cwd=tmp_path, env=demo_env(), stdout=log, stderr=subprocess.STDOUT)
    env_file = tmp_path / ".demo" / "env"
    try:
        wait_for(
            lambda: "running: Ctrl-C" in (tmp_path / "demo.out").read_text() or proc.poll() is not None,
            timeout_s=90,
            what="the demo to run",
        )
        assert proc.poll() is None, (tmp_path / "demo.out").read_text()
        out = (tmp_path / "demo.out").read_text()
        assert f". {env_file.resolve()}" in out, out
        assert env_file.stat().st_mode & 0o077 == 0, "only its owner may read it (the Flower password)"
        # when another terminal sources .demo/env and asks for 4 idle machines
        cli = {**demo_env(), **_sourced(env_file)}

        def warmpool(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "producer.cli", *args], env=cli, capture_output=True, text=True, timeout=30
            )

        status = warmpool("status", "--json")
        assert status.returncode == 0, status.stderr
        assert warmpool("policy", "set", "fixed:4").returncode == 0

        # expect the running pool to follow it: four idle machines, target 4 from the override
        def four_idle() -> bool:
            answer = warmpool("status", "--json")
            pools = json.loads(answer.stdout) if answer.returncode == 0 else []
            pool = pools[0] if isinstance(pools, list) and pools else pools
            return bool(pool) and pool["counts"].get("idle", 0) == 4 and pool["economics"]["policy"]["target"] == 4

        wait_for(four_idle, timeout_s=45, what="the demo's pool to grow to 4 idle machines")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()  # never leave a demo running behind the test
            raise
        finally:
            log.close()
    # and Ctrl-C stops it cleanly and takes the env file away with it
    assert code == 0, (tmp_path / "demo.out").read_text()
    assert not env_file.exists()


REPO = Path(__file__).resolve().parents[2]
OTHER_POOL = re.compile(r"assign (demo-1)\s+-> (i-[0-9a-f]+)\s+in pool (\w+) \(group ([\w-]+)\)")


@pytest.mark.timeout(120)
def test_demo_with_a_pools_file_runs_a_group_and_a_worker_per_pool(tmp_path: Path) -> None:
    require_redis_server()
    # given the compose stack's pools file (two pools, two groups)
    argv = [*DEMO_ARGV, "--config", str(REPO / "deploy" / "compose" / "pools.toml")]
    # when the demo runs its script
    proc = subprocess.run(argv, cwd=tmp_path, env=demo_env(), capture_output=True, text=True, timeout=100)
    output = proc.stdout + proc.stderr
    # expect the usual script on the default pool (small), by one solo worker per pool
    assert proc.returncode == 0, f"demo exited {proc.returncode}:\n{output}\n{logs_of(tmp_path)}"
    assert_scripted_run(output)
    assert "pool-worker-small@" in output and "pool-worker-gpu@" in output
    # and the same project holding a second machine, from the gpu pool's own group
    other = OTHER_POOL.search(output)
    assert other is not None, output
    small = {instance for project, instance, _ in ASSIGNED.findall(output) if project == "demo-1"}
    assert other.group(3, 4) == ("gpu", "ide-gpu") and other.group(2) not in small


def test_demo_refuses_a_bad_pools_file_with_one_line_per_problem(tmp_path: Path) -> None:
    bad = tmp_path / "pools.toml"
    bad.write_text('[pools.small]\nasg = "ide-small"\nidle_target = -3\n', encoding="utf-8")
    argv = [*DEMO_ARGV, "--config", str(bad)]
    proc = subprocess.run(argv, cwd=tmp_path, env=demo_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "[pools.small]: idle_target = '-3'" in proc.stdout, proc.stdout
    assert not (tmp_path / ".demo" / "logs" / "pool-worker-small.log").exists()  # nothing was started
