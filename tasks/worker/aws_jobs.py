"""aws-queue jobs: the refresh read and the side effects. Idempotent, retried on throttling.

Retries back off exponentially (with jitter) on throttling and AWS outages;
validation answers are final. Whatever a retry budget cannot fix, the next
refresh detects and re-issues (tasks/pool/upkeep.py converge).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import Any

from celery import Task
from celery.utils.time import get_exponential_backoff_interval
from redis.exceptions import LockError, RedisError

from tasks.cloud.readiness import probe_all
from tasks.contract import (
    TASK_APPLY_SNAPSHOT,
    TASK_AWS_PROBE,
    TASK_AWS_SET_DESIRED,
    TASK_AWS_TAG_ASSIGNMENTS,
    TASK_AWS_TAG_GROUP,
    TASK_AWS_TERMINATE,
    TASK_MARK_READY,
    TASK_REFRESH,
    validate_project_id,
)
from tasks.errors import (
    CapacityRejected,
    CloudError,
    CloudThrottled,
    CloudUnavailable,
    InvalidProject,
    StoreUnavailable,
)
from tasks.pool.model import snapshot_to_json
from tasks.pool.ports import PROTECT_BATCH
from tasks.state.keys import REFRESH_LOCK_TTL_S
from tasks.worker.app import app, resolve
from tasks.worker.batching import Coalescer, one_at_a_time
from tasks.worker.runtime import PoolRuntime

log = logging.getLogger("warmpool.aws")

_RETRY = {
    "autoretry_for": (CloudThrottled, CloudUnavailable),
    "retry_backoff": 1,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": 12,
    "ignore_result": True,
}


def _instance_id(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("i-") or len(value) > 32:
        raise ValueError(f"not an instance id: {value!r}")
    return value


_reported: dict[str, dict[str, dict[str, int]]] = {}  # pool -> calls|errors -> action -> attempts
_reported_lock = threading.Lock()


def _held_back(rt: PoolRuntime, task: str) -> dict[str, Any] | None:
    """Why this AWS change is not made now (its pool paused by an operator, or a dry run), or None.

    The pool worker sends no change while paused, but one queued (or retrying through an
    AWS outage) from before the pause must not land either: it is dropped, and what it
    would have done is redone after resume (releasing machines terminated, tags converged,
    capacity rebalanced: tasks.pool.operations.resume).
    """
    if rt.settings.dry_run:
        log.info("dry run: AWS change not made", extra={"task": task, "pool": rt.name})
        return {"skipped": "dry_run"}
    try:
        paused_at = float(rt.state_redis.hget(rt.keys.group, "paused_at") or 0)
    except (RedisError, ValueError):
        return None  # cannot tell: as before pausing existed
    if paused_at > 0:
        log.info("paused: AWS change dropped (redone after resume)", extra={"task": task, "pool": rt.name})
        return {"skipped": "paused"}
    return None


def _stats_since_last_report(rt: PoolRuntime, duration_s: float) -> dict[str, Any]:
    """This worker's AWS attempts for the pool since its previous report (counters live per process)."""
    with _reported_lock:
        now = {"calls": rt.cloud.api_calls(), "errors": rt.cloud.api_errors()}
        before = _reported.setdefault(rt.name, {"calls": {}, "errors": {}})
        delta = {
            kind: {a: n - before[kind].get(a, 0) for a, n in now[kind].items() if n > before[kind].get(a, 0)}
            for kind in now
        }
        before.update(now)
    return {"duration_s": round(duration_s, 4), "aws_calls": delta["calls"], "aws_errors": delta["errors"]}


@app.task(name=TASK_REFRESH, ignore_result=True)
def refresh(*, group: Any = None, pool: Any = None) -> dict[str, Any]:
    """Read the group from AWS and hand the snapshot (with call statistics) to the pool worker.

    One refresh at a time per group: when AWS answers slower than beat's
    interval, a refresh that finds another running is skipped instead of
    piling up (each would be slower, and throttled reads would multiply).
    """
    if isinstance(rt := resolve(pool, group, task=TASK_REFRESH, owner=False), dict):
        return rt
    with one_at_a_time(rt.state_redis, rt.keys.refresh_lock, ttl_s=REFRESH_LOCK_TTL_S) as go_ahead:
        if not go_ahead:
            log.info("refresh skipped: another is still running", extra={"pool": rt.name})
            return {"ok": False, "status": "skipped", "reason": "another refresh is running"}
        return _refresh(rt)


def _refresh(rt: PoolRuntime) -> dict[str, Any]:
    # The snapshot's place in the pool's order is taken before AWS is read, from the
    # pool's own state: a snapshot whose read started later is newer, whatever any
    # clock says (an aws worker's clock may be wrong, or stepped back by NTP).
    try:
        seq = rt.service.store.next_refresh_seq()
    except StoreUnavailable as exc:
        log.error("refresh skipped: the state store is unreachable", extra={"error": str(exc), "pool": rt.name})
        return {"ok": False, "status": "skipped", "reason": str(exc)}
    started = time.perf_counter()
    group = rt.settings.asg_name
    to_pool = {"kwargs": {"pool": rt.name}, "queue": rt.pool.queue}
    try:
        snapshot = rt.cloud.describe_group()
    except CloudError as exc:
        log.error("refresh failed", extra={"error": str(exc), "action": exc.action, "pool": rt.name})
        stats = _stats_since_last_report(rt, time.perf_counter() - started)
        payload: dict[str, Any] = {"error": str(exc), "name": group, "seq": seq, "stats": stats}
        app.send_task(TASK_APPLY_SNAPSHOT, args=[payload], **to_pool)
        return {"ok": False, "error": str(exc)}
    snapshot = replace(snapshot, seq=seq)
    payload = {**snapshot_to_json(snapshot), "stats": _stats_since_last_report(rt, time.perf_counter() - started)}
    app.send_task(TASK_APPLY_SNAPSHOT, args=[payload], **to_pool)
    return {"ok": True, "instances": len(snapshot.instances), "seq": seq}


# Tag jobs running at the same moment on one worker share a SetInstanceProtection call.
PROTECT_WINDOW_S = 0.02


_protectors: dict[str, Coalescer] = {}
_protectors_lock = threading.Lock()


def _protector(rt: PoolRuntime) -> Coalescer:
    with _protectors_lock:
        if rt.name not in _protectors:
            _protectors[rt.name] = Coalescer(rt.cloud.protect, window_s=PROTECT_WINDOW_S, max_items=PROTECT_BATCH)
        return _protectors[rt.name]


def _tag_items(items: Any) -> list[tuple[str, str, str]]:
    """The valid [instance id, project id, assigned at] triples of a tag message; the rest is logged and dropped."""
    if not isinstance(items, list):
        raise ValueError("tag takes a list of [instance id, project id, assigned at] triples")
    valid: list[tuple[str, str, str]] = []
    for item in items:
        try:
            iid, project, assigned_at = item
            validate_project_id(project)
            valid.append((_instance_id(iid), project, str(assigned_at)[:64]))
        except (TypeError, ValueError, InvalidProject):
            log.error("tag request refused", extra={"item": repr(item)[:200]})
    return valid


@app.task(name=TASK_AWS_TAG_ASSIGNMENTS, bind=True, ignore_result=True, max_retries=_RETRY["max_retries"])
def tag_assignments(
    self: Task, items: Any, tagged: Any = None, *, group: Any = None, pool: Any = None
) -> dict[str, Any]:
    """Tag a batch of assigned instances with their projects, then protect them from scale-in.

    Tags first, one call each, without waiting: after a state loss the tag is
    what gives a machine back to its project, and a refresh running beside
    this job must find it as early as possible. Protection then goes in one
    call shared with the tag jobs running beside this one. On throttling or an
    AWS outage the job is retried (exponential back-off with jitter); the
    retry skips the tags already made (``tagged``).
    """
    if isinstance(rt := resolve(pool, group, task=TASK_AWS_TAG_ASSIGNMENTS, owner=False), dict):
        return rt
    if (held := _held_back(rt, TASK_AWS_TAG_ASSIGNMENTS)) is not None:
        return held
    todo = _tag_items(items)
    done = {i for i in tagged if isinstance(i, str)} if isinstance(tagged, list) else set()
    present: set[str] = set()
    try:
        for iid, project, assigned_at in todo:
            if iid not in done and not rt.cloud.tag_project(iid, project_id=project, assigned_at=assigned_at):
                continue  # gone: nothing to protect either
            done.add(iid)
        present = _protector(rt).call([iid for iid, _, _ in todo if iid in done])
    except (CloudThrottled, CloudUnavailable, TimeoutError) as exc:
        # The back-off the autoretried aws jobs get (_RETRY), computed the same way.
        countdown = get_exponential_backoff_interval(
            factor=_RETRY["retry_backoff"],
            retries=self.request.retries,
            maximum=_RETRY["retry_backoff_max"],
            full_jitter=True,
        )
        remaining = [list(item) for item in todo]
        retry_kwargs = {"tagged": sorted(done), "group": group, "pool": pool}
        raise self.retry(args=[remaining], kwargs=retry_kwargs, exc=exc, countdown=countdown) from exc
    return {"tagged": len(present), "gone": len(todo) - len(present)}


@app.task(name=TASK_AWS_TAG_GROUP, **_RETRY)
def tag_group(epoch: Any, *, group: Any = None, pool: Any = None) -> bool | dict[str, Any]:
    """Record on the group itself which pool state manages it (warmpool:epoch)."""
    if isinstance(rt := resolve(pool, group, task=TASK_AWS_TAG_GROUP, owner=False), dict):
        return rt
    if (held := _held_back(rt, TASK_AWS_TAG_GROUP)) is not None:
        return held
    if not isinstance(epoch, str) or not epoch.isalnum() or len(epoch) > 64:
        raise ValueError(f"not an epoch: {epoch!r:.80}")
    rt.cloud.tag_group(epoch)
    return True


@app.task(name=TASK_AWS_TERMINATE, **_RETRY)
def terminate(instance_id: Any, *, decrement: Any = True, group: Any = None, pool: Any = None) -> bool | dict[str, Any]:
    if isinstance(rt := resolve(pool, group, task=TASK_AWS_TERMINATE, owner=False), dict):
        return rt
    if (held := _held_back(rt, TASK_AWS_TERMINATE)) is not None:
        return held
    return rt.cloud.terminate_instance(_instance_id(instance_id), decrement=bool(decrement))


@app.task(name=TASK_AWS_SET_DESIRED, **_RETRY)
def set_desired(desired: Any, *, group: Any = None, pool: Any = None) -> bool | dict[str, Any]:
    if isinstance(rt := resolve(pool, group, task=TASK_AWS_SET_DESIRED, owner=False), dict):
        return rt
    if (held := _held_back(rt, TASK_AWS_SET_DESIRED)) is not None:
        return held
    if not isinstance(desired, int) or isinstance(desired, bool) or desired < 0:
        raise ValueError(f"not a capacity: {desired!r}")
    try:
        # Read-then-raise must not interleave between aws threads and workers.
        with rt.state_redis.lock(rt.keys.capacity_lock, timeout=30, blocking_timeout=30):
            return rt.cloud.raise_desired_capacity(desired)
    except CapacityRejected as exc:
        # Bounds changed since the last refresh; the next rebalance clamps anew.
        log.warning("capacity change rejected", extra={"desired": desired, "error": str(exc)})
        return False
    except LockError as exc:
        # The state Redis restarted while the lock was held (its key is gone): the raise
        # itself is done or not, and the next rebalance asks again either way.
        log.warning("capacity lock lost", extra={"desired": desired, "error": str(exc)})
        return False


@app.task(name=TASK_AWS_PROBE, ignore_result=True)
def probe(candidates: Any, *, group: Any = None, pool: Any = None) -> dict[str, Any]:
    """Run readiness checks in parallel (bounded timeout) and report the ready ones to the pool."""
    if isinstance(rt := resolve(pool, group, task=TASK_AWS_PROBE, owner=False), dict):
        return rt
    if not isinstance(candidates, list):
        raise ValueError("probe takes a list of [instance id, address] pairs")
    pairs = [(_instance_id(c[0]), str(c[1])) for c in candidates if isinstance(c, list | tuple) and len(c) == 2]
    template = rt.settings.ready_url
    if not template or not pairs:
        return {"ready": []}
    ready = probe_all(template, pairs)
    if ready:
        app.send_task(TASK_MARK_READY, args=[ready], kwargs=rt.pool.job_kwargs(), queue=rt.pool.queue)
    return {"ready": ready, "checked": len(pairs)}
