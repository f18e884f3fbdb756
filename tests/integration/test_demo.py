"""``warmpool demo`` end to end: Redis, a moto server, both workers, beat, assigns and releases.

Runs ``python -m sandbox.demo --once`` (the demo without its endless status
loop) in a subprocess, pointed at a free port where no Redis answers: the demo
must start its own redis-server there (as on a fresh machine) and stop it
again, and never meets a real demo on the defaults. redis-server absent:
fails under CI, skips locally.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox import ensure_redis, free_port, redis_answers, terminate

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REDIS = f"redis://127.0.0.1:{free_port()}"
TEST_DATABASES = {
    "WARMPOOL_BROKER_URL": f"{REDIS}/0",
    "WARMPOOL_RESULT_BACKEND": f"{REDIS}/1",
    "WARMPOOL_REDIS_URL": f"{REDIS}/2",
}
ASSIGNED = re.compile(r"assign (demo-\d+)\s+-> (i-[0-9a-f]+)\s+ip (\S+)")


def require_redis() -> None:
    if shutil.which("redis-server"):
        return
    message = "redis-server is not installed (scripts/ensure_redis.py installs it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def demo_env() -> dict[str, str]:
    env = {**os.environ, **TEST_DATABASES, "COLUMNS": "120", "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}
    for name in ("FORCE_COLOR", "AWS_ENDPOINT_URL", "WARMPOOL_ASG_NAME", "WARMPOOL_IDLE_TARGET"):
        env.pop(name, None)
    return env


def logs_of(cwd: Path) -> str:
    parts = []
    for log in sorted((cwd / ".demo" / "logs").glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-40:]
        parts.append(f"--- {log.name} (last 40 lines) ---\n" + "\n".join(tail))
    return "\n".join(parts)


@pytest.mark.timeout(90)
def test_demo_once_assigns_and_releases_then_stops_cleanly(tmp_path: Path) -> None:
    require_redis()
    argv = [sys.executable, "-m", "sandbox.demo", "--once", "--rounds", "3", "--refresh-seconds", "1"]
    proc = subprocess.run(argv, cwd=tmp_path, env=demo_env(), capture_output=True, text=True, timeout=75)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"demo exited {proc.returncode}:\n{output}\n{logs_of(tmp_path)}"

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
    assert not redis_answers(TEST_DATABASES["WARMPOOL_BROKER_URL"]), "the Redis the demo started is stopped"
    assert (tmp_path / ".demo" / "logs" / "pool-worker.log").exists()


def test_ensure_redis_starts_and_stops_a_server_on_a_free_port(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH")
    url = f"redis://127.0.0.1:{free_port()}/0"
    messages: list[str] = []
    proc = ensure_redis(url, log=messages.append, log_path=tmp_path / "redis.log")
    assert proc is not None and redis_answers(url)
    assert messages and "starting redis-server" in messages[0]
    assert ensure_redis(url, log=messages.append) is None, "a Redis that answers is left alone"
    terminate(proc, timeout_s=5)
    assert not redis_answers(url)
