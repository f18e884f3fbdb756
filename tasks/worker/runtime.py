"""One pool's runtime in a worker process: its store, service, side effects and AWS adapter, built on first use.

A worker serves the pools of its configuration (tasks/pools.py). A pool worker
owns only the pools whose queues it consumes (``pool.<name>``; ``pool`` means
every configured pool) and refuses a job of any other (``wrong_pool``): it
never writes the state of a pool it does not own. An aws worker serves every
configured pool, each through its own region, endpoint and credentials.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from typing import Any

import redis
from celery import Celery

from tasks.cloud.boto3_cloud import Boto3Cloud, pool_session
from tasks.contract import (
    CODE_BAD_REQUEST,
    CODE_UNKNOWN_POOL,
    CODE_WRONG_GROUP,
    CODE_WRONG_POOL,
    POOL_QUEUE,
    failure,
    group_mismatch,
)
from tasks.errors import InvalidRequest, UnknownPool
from tasks.pool.ports import Cloud
from tasks.pool.service import PoolService
from tasks.pools import Deployment, PoolSettings, pool_of_queue, service_config
from tasks.state.connect import state_client
from tasks.state.keys import PoolKeys
from tasks.state.redis_ledger import RedisLedger
from tasks.state.redis_store import RedisStore
from tasks.worker.dry_run import DryRunEffects
from tasks.worker.side_effects import CelerySideEffects

log = logging.getLogger("warmpool.worker")


class PoolRuntime:
    """Everything a worker process uses for one pool; each part is built on first use."""

    def __init__(self, app: Celery, pool: PoolSettings, *, state_redis: redis.Redis) -> None:
        self.app = app
        self.pool = pool
        self.name = pool.name
        self.settings = pool.settings
        self.keys = PoolKeys.for_group(pool.namespace)
        self.state_redis = state_redis  # the aws workers' own coordination (capacity and refresh locks)

    @functools.cached_property
    def side_effects(self) -> CelerySideEffects:
        return CelerySideEffects(
            self.app, job_kwargs=self.pool.job_kwargs(), pool_queue=self.pool.queue, aws_queue=self.pool.aws_queue
        )

    @functools.cached_property
    def service(self) -> PoolService:
        s = self.settings
        return PoolService(
            RedisStore.from_url(s.redis_url, self.pool.namespace, sentinel_master=s.sentinel_master),
            DryRunEffects(self.side_effects) if s.dry_run else self.side_effects,
            config=service_config(self.pool),
            ledger=RedisLedger.from_url(s.redis_url, self.pool.namespace, sentinel_master=s.sentinel_master),
        )

    @functools.cached_property
    def cloud(self) -> Cloud:
        """This pool's AWS adapter (credentials: boto3's default chain, or the pool's role via STS)."""
        s, p = self.settings, self.pool
        session = pool_session(
            region=s.region,
            endpoint_url=s.aws_endpoint_url,
            role_arn=p.role_arn,
            external_id=p.role_external_id,
            pool=p.name,
        )
        return Boto3Cloud(s.asg_name, region=s.region, session=session, endpoint_url=s.aws_endpoint_url)


class Runtimes:
    """The runtimes of every configured pool of one worker process, and which of them it owns."""

    def __init__(self, app: Celery, deployment: Deployment) -> None:
        self.app = app
        self.deployment = deployment
        self.owned: frozenset[str] | None = None  # None: not a pool worker yet (tests, eager calls): all
        shared = deployment.settings
        self._state_redis = state_client(
            shared.redis_url, master_name=shared.sentinel_master, socket_timeout=5, socket_connect_timeout=5
        )
        self._runtimes: dict[str, PoolRuntime] = {}

    def get(self, name: str | None = None) -> PoolRuntime:
        """The runtime of pool ``name`` (None: the default pool); InvalidRequest/UnknownPool otherwise."""
        pool = self.deployment.pool(name)
        runtime = self._runtimes.get(pool.name)
        if runtime is None:
            runtime = self._runtimes.setdefault(pool.name, PoolRuntime(self.app, pool, state_redis=self._state_redis))
        return runtime

    def owns(self, name: str) -> bool:
        """Whether this worker may run pool ``name``'s pool-queue jobs (every pool before it knows its queues)."""
        return self.owned is None or name in self.owned

    def built(self) -> list[PoolRuntime]:
        return list(self._runtimes.values())

    def own_queues(self, queues: Iterable[str]) -> list[str]:
        """Record the pools this worker owns from the queues it consumes; the pool queues to add for ``pool``."""
        queues = set(queues)
        names = set(self.deployment.names())
        named = {q: pool_of_queue(q) for q in queues}
        owned = {name for name in named.values() if name in names}
        strays = sorted(q for q, name in named.items() if name is not None and name not in names)
        if strays:
            log.warning(
                "consuming queues of pools the configuration does not name: their jobs are refused",
                extra={"queues": strays, "pools": sorted(names)},
            )
        add: list[str] = []
        if POOL_QUEUE in queues:  # `-Q pool`: every configured pool (and jobs of producers older than pools)
            owned = names
            add = [p.queue for p in self.deployment if p.queue not in queues]
        self.owned = frozenset(owned)
        return add

    def resolve(self, pool: Any, group: Any, *, task: str, owner: bool) -> PoolRuntime | dict[str, Any]:
        """The runtime a job of ``pool`` and ``group`` is for, or the failure that refuses it.

        ``owner``: a pool-queue job, which only the worker owning its pool may run.
        """
        try:
            runtime = self.get(pool)
        except UnknownPool as exc:
            return failure(CODE_UNKNOWN_POOL, str(exc), pool=exc.pool)
        except InvalidRequest as exc:
            return failure(CODE_BAD_REQUEST, str(exc))
        if owner and not self.owns(runtime.name):
            log.error("job refused: a pool this worker does not own", extra={"task": task, "pool": runtime.name})
            owned = ", ".join(sorted(self.owned or ())) or "none"
            return failure(
                CODE_WRONG_POOL,
                f"this worker does not own pool {runtime.name!r} (it owns {owned}): "
                f"only the worker consuming {runtime.pool.queue} may change its state",
                pool=runtime.name,
            )
        own = runtime.settings.asg_name
        mismatch = group_mismatch(group, own=own)
        if mismatch is None:
            return runtime
        log.error("job refused: another group", extra={"task": task, "group": repr(group)[:255], "worker_group": own})
        return failure(CODE_WRONG_GROUP, mismatch, group=group if isinstance(group, str) else None, worker_group=own)

    def for_queue(self, queue: str) -> PoolRuntime:
        """The runtime of the pool whose queue this is (the default pool for any other queue)."""
        try:
            return self.get(pool_of_queue(queue))
        except InvalidRequest:
            return self.get(None)

    def unmanaged_namespaces(self) -> list[str]:
        """Namespaces with pool state in Redis that no configured pool uses (a pool removed from the file)."""
        configured = {p.namespace for p in self.deployment}
        found = set()
        for key in self._state_redis.scan_iter(match=PoolKeys.GROUP_PATTERN, count=500):
            namespace = PoolKeys.namespace_of(key.decode() if isinstance(key, bytes) else str(key))
            if namespace is not None and namespace not in configured:
                found.add(namespace)
        return sorted(found)
