"""A killed pool worker's jobs come back when its successor starts, not after the visibility timeout.

The Redis broker returns an unacknowledged message to its queue only after
the visibility timeout (300 s by default); tasks.worker.redelivery gives a
restarted pool worker the jobs its predecessor had taken at once.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from celery import Celery

from tasks.worker.redelivery import restore_orphaned_jobs
from tests.faults.conftest import Infra

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

DB = 7  # a database of the session's broker Redis that no stack uses

# Takes one message of the queue named in argv[2] without acknowledging it, says so, and waits to be killed.
TAKER = """
import sys, time
from kombu import Connection, Exchange, Queue
queue = Queue(sys.argv[2], Exchange(sys.argv[2]), routing_key=sys.argv[2])
with Connection(sys.argv[1], transport_options={"visibility_timeout": 3600}) as conn:
    with conn.Consumer(queue, callbacks=[lambda body, message: print("taken", flush=True)], accept=["json"]):
        conn.drain_events(timeout=20)
    time.sleep(60)
"""


@pytest.fixture
def broker(infra: Infra) -> Iterator[Celery]:
    app = Celery("redelivery-test")
    app.config_from_object("celeryconfig")
    app.conf.update(broker_url=infra.broker.url(DB), broker_transport_options={"visibility_timeout": 3600})
    try:
        yield app
    finally:
        with contextlib.closing(infra.broker.client(DB)) as r:
            r.flushdb()  # this database is the test's own


def take_and_die(url: str, queue: str) -> None:
    """A worker process takes one message of ``queue`` and is killed before acknowledging it."""
    with subprocess.Popen([sys.executable, "-c", TAKER, url, queue], stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "taken"
        finally:
            proc.kill()
            proc.wait(timeout=10)


def queue_length(infra: Infra, queue: str) -> int:
    with contextlib.closing(infra.broker.client(DB)) as r:
        return int(r.llen(queue))


def test_a_restarted_pool_worker_gets_its_predecessors_jobs_at_once(infra: Infra, broker: Celery) -> None:
    # given a pool job and an aws job, each taken by a worker killed before acknowledging it
    pool_job = broker.send_task("warmpool.status", queue="pool")
    take_and_die(infra.broker.url(DB), "pool")
    broker.send_task("warmpool.aws.terminate", args=["i-0123456789abcdef0"], queue="aws")
    take_and_die(infra.broker.url(DB), "aws")
    assert queue_length(infra, "pool") == queue_length(infra, "aws") == 0

    # when a pool worker starts (visibility timeout: an hour away)
    restored = restore_orphaned_jobs(broker, ["pool"], taken_before=time.time())

    # expect the pool job back on its queue at once, and the aws job left to the visibility timeout
    assert restored == [pool_job.id]
    assert queue_length(infra, "pool") == 1
    assert queue_length(infra, "aws") == 0


def test_jobs_taken_after_the_worker_started_are_left_alone(infra: Infra, broker: Celery) -> None:
    # given a pool job taken after the (new) pool worker started: its own, or a second worker's
    started = time.time()
    broker.send_task("warmpool.status", queue="pool")
    take_and_die(infra.broker.url(DB), "pool")

    # when the worker that started before it looks for orphans
    restored = restore_orphaned_jobs(broker, ["pool"], taken_before=started)

    # expect nothing restored
    assert restored == []
    assert queue_length(infra, "pool") == 0
