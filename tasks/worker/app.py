"""The worker's Celery app and its per-process runtime: one PoolRuntime per configured pool (runtime.py)."""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any

from celery import Celery
from celery.signals import celeryd_after_setup, worker_ready

from tasks.config import Settings
from tasks.contract import POOL_QUEUE
from tasks.pools import Deployment, load_deployment, pool_of_queue
from tasks.worker.redelivery import restore_orphaned_jobs
from tasks.worker.runtime import PoolRuntime, Runtimes

# Messages taken before this process started belong to a worker that is gone (redelivery.py).
PROCESS_STARTED_AT = time.time()

app = Celery("warmpool")
app.config_from_object("celeryconfig")
app.conf.include = ["tasks.worker.pool_jobs", "tasks.worker.ops_jobs", "tasks.worker.aws_jobs", "tasks.worker.logs"]
# Every message is screened before Celery builds a job of it; one no job can be made
# of is set aside (dead-letter list, counted in status) instead of ending the worker.
app.conf.worker_consumer = "tasks.worker.screening:ScreeningConsumer"

log = logging.getLogger("warmpool.worker")


@functools.cache
def deployment() -> Deployment:
    return load_deployment()


def settings() -> Settings:
    """The settings every pool shares (broker, state store, ...)."""
    return deployment().settings


@functools.cache
def runtimes() -> Runtimes:
    return Runtimes(app, deployment())


def runtime(pool: str | None = None) -> PoolRuntime:
    """The runtime of pool ``pool`` (None: the default pool)."""
    return runtimes().get(pool)


def resolve(pool: Any, group: Any, *, task: str, owner: bool = True) -> PoolRuntime | dict[str, Any]:
    """The runtime a job is for, or the failure refusing it (unknown pool, not owned here, another group)."""
    return runtimes().resolve(pool, group, task=task, owner=owner)


def lower_cpu_priority(increment: int) -> None:
    """Renice every thread of this process by ``increment`` (Linux nice values are per thread)."""
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        os.nice(increment)
        return
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + increment)
        except OSError:
            continue  # a thread that ended meanwhile


def _consumed(instance: Any) -> set[str]:
    return set(getattr(instance, "app", app).amqp.queues.consume_from or {})


@celeryd_after_setup.connect
def _own_pools(instance: Any = None, **_: Any) -> None:
    # `-Q pool` (warmpool worker --queue pool) owns every configured pool: add their queues.
    queues = getattr(instance, "app", app).amqp.queues
    for queue in runtimes().own_queues(_consumed(instance)):
        queues.select_add(queue)
    owned = sorted(runtimes().owned or ())
    if owned:
        log.info("pool worker: owns pools", extra={"pools": owned, "queues": sorted(_consumed(instance))})
        _say_unmanaged()


def _say_unmanaged() -> None:
    # A pool removed from the configuration keeps its machines: nothing terminates them.
    try:
        unmanaged = runtimes().unmanaged_namespaces()
    except Exception as exc:  # the store is down: the first job will say so
        log.warning("could not look for unmanaged pool state", extra={"error": str(exc)[:200]})
        return
    if unmanaged:
        log.warning(
            "pool state in Redis that no configured pool owns: warmpool no longer manages these groups "
            "and leaves their machines running",
            extra={"namespaces": unmanaged[:50]},
        )


@celeryd_after_setup.connect
def _side_effects_yield_the_cpu(instance: Any = None, **_: Any) -> None:
    # An aws worker only runs side effects nobody waits for; on a host it
    # shares with the pool worker, assigns must get the CPU first. Threads the
    # worker starts later inherit the lower priority.
    queues = _consumed(instance)
    increment = settings().aws_worker_nice
    if increment and queues and all(q == "aws" or q.startswith("aws.") or q.endswith(".dq2") for q in queues):
        lower_cpu_priority(increment)
        logging.getLogger("warmpool.aws").info("aws worker: CPU priority lowered", extra={"nice": increment})


@worker_ready.connect
def _warm_up(sender: Any = None, **_: object) -> None:
    # Build the stores and boto3 clients before the first job, not during it:
    # the first assign after a restart must be as fast as the rest.
    owned = runtimes().owned
    for pool in deployment():
        if owned is None or not owned or pool.name in owned:
            rt = runtime(pool.name)
            _service, _cloud = rt.service, rt.cloud
    consumer_app = getattr(sender, "app", app)
    consumed = consumer_app.amqp.queues.consume_from or {}
    pool_queues = [q for q in consumed if q == POOL_QUEUE or pool_of_queue(q) is not None]
    if pool_queues:
        restore_orphaned_jobs(consumer_app, pool_queues, taken_before=PROCESS_STARTED_AT)
        _resend_lost_side_effects()


def _resend_lost_side_effects() -> None:
    # A predecessor killed between a Lua transition and sending its messages lost them;
    # its redelivered job finds the transition done ("not_assigned") and sends nothing.
    for pool in deployment():
        if not runtimes().owns(pool.name):
            continue  # another worker's pool: its own worker re-sends them
        try:
            resent = runtime(pool.name).service.resend_side_effects()
        except Exception as exc:  # the state store not answering yet: converge catches up later
            log.warning("could not re-send side effects at start", extra={"pool": pool.name, "error": repr(exc)[:300]})
            continue
        if resent:
            log.info("side effects re-sent at start", extra={"pool": pool.name, "count": resent})
