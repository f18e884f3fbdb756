"""Pool-queue jobs: thin wrappers that decode arguments and call PoolService.

Expected failures come back as results with a stable ``code`` (never as a
stack trace); only bugs surface as task failures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Task
from celery.exceptions import Ignore
from celery.signals import task_postrun, task_prerun, worker_process_shutdown, worker_shutdown

from tasks.contract import (
    CODE_BAD_REQUEST,
    MAX_INSTANCE_IDS,
    STATE_WAITING,
    STATUS_WAITING,
    TASK_APPLY_SNAPSHOT,
    TASK_ASSIGN,
    TASK_MARK_READY,
    TASK_PING,
    TASK_RELEASE,
    TASK_RELEASE_QUARANTINED,
    TASK_STATUS,
    TASK_TOP_UP,
    TASK_TOUCH,
    TASK_WITHDRAW,
    failure,
    is_instance_id,
)
from tasks.errors import InvalidProject, InvalidRequest, StoreUnavailable
from tasks.pool.model import snapshot_from_json
from tasks.pool.ports import RefreshStats
from tasks.worker.app import app, resolve, runtimes
from tasks.worker.runtime import PoolRuntime


def _guarded(rt: PoolRuntime, call: Callable[[], dict[str, Any]], project_id: Any) -> dict[str, Any]:
    try:
        result = call()
    except (InvalidProject, InvalidRequest) as exc:
        result = failure(exc.code, str(exc))
    except StoreUnavailable as exc:
        result = failure(exc.code, str(exc), project_id=project_id)
    # Every result names its pool (a caller of several pools can tell them apart).
    return {**result, "pool": rt.name}


# The pool-queue jobs below; their side effects are sent after their result is stored.
POOL_JOBS = frozenset(
    {
        TASK_ASSIGN,
        TASK_RELEASE,
        TASK_TOUCH,
        TASK_WITHDRAW,
        TASK_STATUS,
        TASK_TOP_UP,
        TASK_MARK_READY,
        TASK_APPLY_SNAPSHOT,
    }
)


@task_prerun.connect
def _hold_side_effects(sender: Any = None, **_: Any) -> None:
    # The job's pool is known only inside it: hold every pool's (a pool job
    # touches one; the others hold nothing and send nothing).
    if getattr(sender, "name", None) in POOL_JOBS:
        for rt in runtimes().built():
            rt.side_effects.hold()


@task_postrun.connect
def _send_side_effects(sender: Any = None, **_: Any) -> None:
    # task_postrun runs after the result was stored and before the job's
    # message is acknowledged (acks_late): the caller is answered first, and a
    # worker killed before this point runs the job again.
    if getattr(sender, "name", None) in POOL_JOBS:
        for rt in runtimes().built():
            rt.side_effects.send_held()


@worker_shutdown.connect
@worker_process_shutdown.connect  # a prefork child holds its own
def _send_lingering_tags(**_: Any) -> None:
    for rt in runtimes().built():
        rt.side_effects.flush_tags()


@app.task(name=TASK_ASSIGN, bind=True)
def assign(
    self: Task,
    project_id: Any,
    wait_s: Any = 0.0,
    lease_s: Any = None,
    deadline: Any = None,
    *,
    group: Any = None,
    pool: Any = None,
) -> dict[str, Any]:
    if isinstance(rt := resolve(pool, group, task=TASK_ASSIGN), dict):
        return rt
    result = _guarded(
        rt,
        lambda: rt.service.assign(
            project_id, wait_s=wait_s, lease_s=lease_s, request_id=self.request.id, deadline=deadline
        ),
        project_id,
    )
    if result.get("status") == STATUS_WAITING:
        # The caller waits in the FIFO queue; whoever serves it stores the
        # final result under this job's id. Mark the job as waiting so the
        # caller can tell "queued, no machine in time" from "no worker".
        self.update_state(state=STATE_WAITING, meta=result)
        raise Ignore()
    return result


@app.task(name=TASK_RELEASE)
def release(project_id: Any, *, group: Any = None, pool: Any = None) -> dict[str, Any]:
    if isinstance(rt := resolve(pool, group, task=TASK_RELEASE), dict):
        return rt
    return _guarded(rt, lambda: rt.service.release(project_id), project_id)


@app.task(name=TASK_WITHDRAW)
def withdraw(request_id: Any, project_id: Any, *, group: Any = None, pool: Any = None) -> dict[str, Any]:
    """The caller of assign ``request_id`` left: take its place in the queue back, or release what it got."""
    if isinstance(rt := resolve(pool, group, task=TASK_WITHDRAW), dict):
        return rt
    return _guarded(rt, lambda: rt.service.withdraw(request_id, project_id), project_id)


@app.task(name=TASK_TOUCH)
def touch(project_id: Any, lease_s: Any = None, *, group: Any = None, pool: Any = None) -> dict[str, Any]:
    if isinstance(rt := resolve(pool, group, task=TASK_TOUCH), dict):
        return rt
    return _guarded(rt, lambda: rt.service.touch(project_id, lease_s=lease_s), project_id)


@app.task(name=TASK_PING)
def ping() -> str:
    """The liveness probe's job: answered only by a worker that still consumes."""
    return "pong"


@app.task(name=TASK_STATUS)
def status(*, group: Any = None, pool: Any = None) -> dict[str, Any]:
    if isinstance(rt := resolve(pool, group, task=TASK_STATUS), dict):
        return rt
    return {**rt.service.status(), "pool": rt.name}


@app.task(name=TASK_TOP_UP, ignore_result=True)
def top_up(*, group: Any = None, pool: Any = None) -> dict[str, Any]:
    if isinstance(rt := resolve(pool, group, task=TASK_TOP_UP), dict):
        return rt
    return rt.service.top_up()


def _instance_ids(value: Any, job: str) -> list[str]:
    """A bounded list of instance ids, or InvalidRequest naming what is wrong."""
    if not isinstance(value, list) or not all(isinstance(i, str) and is_instance_id(i) for i in value):
        raise InvalidRequest(f"{job} takes a list of instance ids (i-...)")
    if len(value) > MAX_INSTANCE_IDS:
        raise InvalidRequest(f"{job} takes at most {MAX_INSTANCE_IDS} instance ids, got {len(value)}")
    return value


@app.task(name=TASK_MARK_READY, ignore_result=True)
def mark_ready(instance_ids: Any, *, group: Any = None, pool: Any = None) -> dict[str, Any]:
    if isinstance(rt := resolve(pool, group, task=TASK_MARK_READY), dict):
        return rt
    return _guarded(rt, lambda: rt.service.mark_ready(_instance_ids(instance_ids, "mark_ready")), None)


@app.task(name=TASK_RELEASE_QUARANTINED)
def release_quarantined(instance_ids: Any = None, *, group: Any = None, pool: Any = None) -> dict[str, Any]:
    """An operator's word that quarantined machines (None: all) are in nobody's use."""
    if isinstance(rt := resolve(pool, group, task=TASK_RELEASE_QUARANTINED), dict):
        return rt
    return _guarded(
        rt,
        lambda: rt.service.release_quarantined(
            None if instance_ids is None else _instance_ids(instance_ids, "release_quarantined")
        ),
        None,
    )


@app.task(name=TASK_APPLY_SNAPSHOT, ignore_result=True)
def apply_snapshot(payload: Any, *, pool: Any = None) -> dict[str, Any]:
    """Fold a refresh in; the snapshot names its group (``name``), which PoolService checks."""
    group = payload.get("name") if isinstance(payload, dict) else None
    if isinstance(rt := resolve(pool, group if isinstance(group, str) else None, task=TASK_APPLY_SNAPSHOT), dict):
        return rt
    stats = RefreshStats.from_json(payload.get("stats")) if isinstance(payload, dict) else None
    if isinstance(payload, dict) and isinstance(payload.get("error"), str):
        return rt.service.record_refresh_error(payload["error"], stats=stats)
    try:
        snapshot = snapshot_from_json(payload)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return failure(CODE_BAD_REQUEST, f"malformed snapshot: {type(exc).__name__}: {exc}")
    return rt.service.apply_snapshot(snapshot, stats=stats)
