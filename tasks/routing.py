"""Which queue each job goes to: one queue per pool, one shared queue for AWS work.

A pool job goes to ``pool.<its pool>`` (keyword ``pool``; a job naming none is
the default pool's), consumed by that pool's one solo worker. The refresh and
every AWS side effect go to the pool's AWS queue: ``aws`` (shared by every
pool) unless the pool names one of its own (``aws_queue = "aws.<name>"``, for
a region whose outages must not tie up the other pools' aws workers). Any
number of aws workers serve an AWS queue: each job names its pool, and its AWS
calls use that pool's region, endpoint and credentials.

Celery calls the router for ``send_task`` and for the producers' ``publish``
alike (producer/calls.py), so both route the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tasks.contract import AWS_QUEUE, TASK_REFRESH
from tasks.pools import POOL_NAME_PATTERN, Deployment, pool_queue

Router = Callable[..., dict[str, Any] | None]


def job_router(deployment: Deployment) -> Router:
    """A Celery router (``task_routes``) for the pools of ``deployment``."""
    aws_queues = {p.name: p.aws_queue for p in deployment}

    def route(
        name: str, args: Any = None, kwargs: Mapping[str, Any] | None = None, options: Any = None, **_: Any
    ) -> dict[str, Any] | None:
        if not isinstance(name, str) or not name.startswith("warmpool."):
            return None
        pool = (kwargs or {}).get("pool")
        # A malformed pool name is refused by the producers before sending; a
        # job that carries one anyway goes to the default pool, whose worker
        # refuses it (unknown pool) instead of it waiting forever on no queue.
        if not isinstance(pool, str) or POOL_NAME_PATTERN.fullmatch(pool) is None:
            pool = deployment.default_pool
        if name.startswith("warmpool.aws.") or name == TASK_REFRESH:
            return {"queue": aws_queues.get(pool, AWS_QUEUE)}
        return {"queue": pool_queue(pool)}

    return route
