"""Scenario 4: the broker's Redis restarts; a worker that silently stops consuming is detected.

The broker here keeps an append-only file (as a production broker should), so
a restart keeps queued jobs; what is tested is that the pool worker, the aws
worker and beat reconnect on their own and keep consuming and scheduling.
Celery has known cases of a worker that stays up, answers pings, and no
longer consumes after a reconnect: a liveness probe must tell that apart.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import pytest

from tasks.errors import PoolUnavailable, WarmpoolError
from tests.faults.conftest import FaultStack, wait_for
from tests.faults.invariants import assert_invariants

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]


def try_assign(stack: FaultStack, project: str) -> str | None:
    try:
        return stack.client.assign(project, wait=3).instance_id
    except WarmpoolError:
        return None


def refreshed_since(stack: FaultStack, t: float) -> bool:
    try:
        age = stack.status()["refresh_age_s"]
    except WarmpoolError:
        return False
    return age is not None and time.time() - age > t


@pytest.mark.slow
def test_broker_restart_workers_and_beat_reconnect_and_keep_consuming(make_stack: Any) -> None:
    # given a settled pool with an assignment
    stack: FaultStack = make_stack(idle_target=3, refresh_s=1.0)
    holders = {"before": stack.client.assign("before", wait=10).instance_id}

    # when the broker's Redis crashes
    stack.infra.broker.stop(kill=True)
    try:
        # expect callers meanwhile told the pool is unavailable, in time
        started = time.monotonic()
        with pytest.raises(PoolUnavailable):
            stack.client.assign("during", wait=2)
        assert time.monotonic() - started < stack.client.reply_timeout_s + 5
        time.sleep(3)  # workers and beat notice the lost connection
    finally:
        # and comes back on the same port
        stack.infra.broker.start()
    back_at = time.time()

    # expect, under a supervisor that restarts exited processes (as the compose file's
    # restart policy does), the pool worker consuming again (a job round trip, not a ping)
    def supervised(check: Any) -> Any:
        stack.supervise()
        return check()

    after = wait_for(lambda: supervised(lambda: try_assign(stack, "after")), timeout_s=45, what="the pool to serve")
    holders["after"] = after
    # and beat scheduling refreshes that the aws worker runs and the pool worker applies
    wait_for(lambda: supervised(lambda: refreshed_since(stack, back_at + 1)), timeout_s=30, what="a refresh")
    # and the side effects of the new assignment (aws worker) landing; every process up
    assert_invariants(stack, holders=holders, settle=True)
    stack.supervise()
    assert all(stack.procs.alive(name) for name in ("pool", "aws", "beat"))
    # Celery/kombu 5.7 sometimes exits a worker ("Unrecoverable error" closing the lost
    # connection, exit code 1) instead of reconnecting; the supervisor's restart covers it.
    print("processes restarted by the supervisor:", stack.crashed)


def probe(stack: FaultStack, worker: str, timeout_s: float = 3.0) -> subprocess.CompletedProcess[str]:
    """The worker liveness probe a supervisor (a container healthcheck) runs."""
    return subprocess.run(
        [sys.executable, "-m", "producer.probe", "--worker", worker, "--timeout", str(timeout_s)],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_worker_that_stopped_consuming_is_detected_and_a_restart_recovers(make_stack: Any) -> None:
    # given a healthy pool worker: its liveness probe passes
    stack: FaultStack = make_stack(idle_target=2, refresh_s=1.0)
    name = stack.worker_name("pool")
    healthy = probe(stack, name)
    assert healthy.returncode == 0, healthy.stderr

    # when it silently stops consuming, as Celery workers have been seen to do after a
    # Redis reconnect (simulated: every queue consumer cancelled, the process left up)
    queues = (stack.app.control.inspect([name], timeout=3).active_queues() or {}).get(name, [])
    assert queues
    for queue in queues:
        stack.app.control.cancel_consumer(queue["name"], destination=[name], reply=True, timeout=3)

    # expect a ping to still answer (so ping-based healthchecks see nothing wrong)
    assert stack.app.control.ping([name], timeout=3)
    # and the liveness probe to fail, saying so
    stalled = probe(stack, name)
    assert stalled.returncode == 1 and stalled.stderr.strip()

    # when the supervisor acts on it (restarts the worker)
    stack.procs.kill("pool")
    stack.start_pool_worker("pool")

    # expect the probe to pass again and the pool to serve, with nothing lost
    assert probe(stack, name).returncode == 0
    holders = {"after": stack.client.assign("after", wait=10).instance_id}
    assert_invariants(stack, holders=holders, settle=True)
