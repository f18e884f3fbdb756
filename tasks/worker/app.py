"""The worker's Celery app and its per-process runtime (store, cloud, service)."""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any

import redis
from celery import Celery
from celery.signals import celeryd_after_setup, worker_ready

from tasks.cloud.boto3_cloud import Boto3Cloud
from tasks.config import Settings
from tasks.contract import CODE_WRONG_GROUP, failure, group_mismatch
from tasks.pool.policy import parse_schedules
from tasks.pool.ports import Cloud
from tasks.pool.service import PoolConfig, PoolService
from tasks.state.keys import PoolKeys
from tasks.state.redis_ledger import RedisLedger
from tasks.state.redis_store import RedisStore
from tasks.worker.redelivery import restore_orphaned_jobs
from tasks.worker.side_effects import CelerySideEffects

# Messages taken before this process started belong to a worker that is gone (redelivery.py).
PROCESS_STARTED_AT = time.time()

app = Celery("warmpool")
app.config_from_object("celeryconfig")
app.conf.include = ["tasks.worker.pool_jobs", "tasks.worker.aws_jobs", "tasks.worker.logs"]
# Every message is screened before Celery builds a job of it; one no job can be made
# of is set aside (dead-letter list, counted in status) instead of ending the worker.
app.conf.worker_consumer = "tasks.worker.screening:ScreeningConsumer"


@functools.cache
def settings() -> Settings:
    return Settings.from_env()


@functools.cache
def side_effects() -> CelerySideEffects:
    return CelerySideEffects(app, group=settings().asg_name)


def refuse_other_group(group: Any, *, task: str) -> dict[str, Any] | None:
    """The ``wrong_group`` failure for a job of another group than this worker's; None when it is ours.

    Each job carries its group (keyword ``group``; a job without one, from an
    older producer, is this worker's): on a broker two groups share, a job
    consumed by the other group's worker changes nothing there.
    """
    own = settings().asg_name
    mismatch = group_mismatch(group, own=own)
    if mismatch is None:
        return None
    logging.getLogger("warmpool.worker").error(
        "job refused: another group", extra={"task": task, "group": repr(group)[:255], "worker_group": own}
    )
    return failure(CODE_WRONG_GROUP, mismatch, group=group if isinstance(group, str) else None, worker_group=own)


@functools.cache
def service() -> PoolService:
    """The pool service of this worker process, built on first use."""
    s = settings()
    return PoolService(
        RedisStore.from_url(s.redis_url, s.asg_name),
        side_effects(),
        config=PoolConfig(
            asg_name=s.asg_name,
            idle_target=s.idle_target,
            address=s.address,
            lease_s=s.lease_seconds,
            require_ready_check=bool(s.ready_url),
            ready_timeout_s=s.ready_timeout_seconds,
            policy=s.policy,
            warm_goal=s.warm_goal,
            idle_max=s.idle_max,
            schedules=parse_schedules(s.schedules),
            scale_in_delay_s=s.scale_in_delay_s,
            scale_in_step=s.scale_in_step,
            pending_poll_s=s.pending_poll_s,
        ),
        ledger=RedisLedger.from_url(s.redis_url, s.asg_name),
    )


@functools.cache
def state_redis() -> redis.Redis:
    """A client of the state store for the aws workers' own coordination (capacity and refresh locks)."""
    return redis.Redis.from_url(settings().redis_url, socket_timeout=5, socket_connect_timeout=5)


@functools.cache
def pool_keys() -> PoolKeys:
    return PoolKeys.for_group(settings().asg_name)


@functools.cache
def cloud() -> Cloud:
    """The AWS adapter of this worker process (credentials: boto3's default chain)."""
    s = settings()
    return Boto3Cloud(s.asg_name, region=s.region)


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


@celeryd_after_setup.connect
def _side_effects_yield_the_cpu(instance: Any = None, **_: Any) -> None:
    # An aws worker only runs side effects nobody waits for; on a host it
    # shares with the pool worker, assigns must get the CPU first. Threads the
    # worker starts later inherit the lower priority.
    queues = set(getattr(instance, "app", app).amqp.queues.consume_from or {})
    increment = settings().aws_worker_nice
    if increment and queues and all(q == "aws" or q.endswith(".dq2") for q in queues):
        lower_cpu_priority(increment)
        logging.getLogger("warmpool.aws").info("aws worker: CPU priority lowered", extra={"nice": increment})


@worker_ready.connect
def _warm_up(sender: Any = None, **_: object) -> None:
    # Build the store and boto3 clients before the first job, not during it:
    # the first assign after a restart must be as fast as the rest.
    service()
    cloud()
    consumer_app = getattr(sender, "app", app)
    pool_queues = [q for q in consumer_app.amqp.queues.consume_from or {} if q == "pool" or q.startswith("pool.")]
    if pool_queues:
        restore_orphaned_jobs(consumer_app, pool_queues, taken_before=PROCESS_STARTED_AT)
