"""The worker's Celery app and its per-process runtime (store, cloud, service)."""

from __future__ import annotations

import functools

import redis
from celery import Celery
from celery.signals import worker_ready

from tasks.cloud import Boto3Cloud, Cloud
from tasks.config import Settings
from tasks.effects import CelerySideEffects
from tasks.keys import PoolKeys
from tasks.service import PoolConfig, PoolService
from tasks.store import RedisStore

app = Celery("warmpool")
app.config_from_object("celeryconfig")
app.conf.include = ["tasks.jobs", "tasks.awsjobs", "tasks.logs"]


@functools.cache
def settings() -> Settings:
    return Settings.from_env()


@functools.cache
def service() -> PoolService:
    """The pool service of this worker process, built on first use."""
    s = settings()
    return PoolService(
        RedisStore.from_url(s.redis_url, s.asg_name),
        CelerySideEffects(app),
        config=PoolConfig(
            asg_name=s.asg_name,
            idle_target=s.idle_target,
            address=s.address,
            lease_s=s.lease_seconds,
            require_ready_check=bool(s.ready_url),
            ready_timeout_s=s.ready_timeout_seconds,
            recovery_grace_s=2 * s.refresh_seconds,
        ),
    )


@functools.cache
def state_redis() -> redis.Redis:
    """A client of the state store for the aws workers' own coordination (the capacity lock)."""
    return redis.Redis.from_url(settings().redis_url, socket_timeout=5, socket_connect_timeout=5)


def capacity_lock_key() -> str:
    return PoolKeys.for_group(settings().asg_name).capacity_lock


@functools.cache
def cloud() -> Cloud:
    """The AWS adapter of this worker process (credentials: boto3's default chain)."""
    s = settings()
    return Boto3Cloud(s.asg_name, region=s.region)


@worker_ready.connect
def _warm_up(**_: object) -> None:
    # Build the store and boto3 clients before the first job, not during it:
    # the first assign after a restart must be as fast as the rest.
    service()
    cloud()
