"""Pool-queue jobs of the operator commands: thin wrappers over tasks.pool.operations.

Like every pool job they take ``pool`` and ``group`` (keyword) and run only on the worker that
owns the pool; their side effects (terminations on resume, tags after adopt) are held and sent
after the result is stored (tasks.worker.pool_jobs).
"""

from __future__ import annotations

from typing import Any

from tasks.contract import TASK_ADOPT, TASK_FORCE_RELEASE, TASK_PAUSE, TASK_RECYCLE, TASK_RESUME
from tasks.pool import operations
from tasks.worker import pool_jobs
from tasks.worker.app import app, resolve

# Their side effects are held and sent after the result, like the other pool jobs'.
pool_jobs.POOL_JOBS = pool_jobs.POOL_JOBS | {TASK_PAUSE, TASK_RESUME, TASK_FORCE_RELEASE, TASK_ADOPT, TASK_RECYCLE}


@app.task(name=TASK_PAUSE)
def pause(*, group: Any = None, pool: Any = None) -> dict[str, Any]:
    if isinstance(rt := resolve(pool, group, task=TASK_PAUSE), dict):
        return rt
    return pool_jobs._guarded(rt, lambda: operations.pause(rt.service), None)


@app.task(name=TASK_RESUME)
def resume(*, group: Any = None, pool: Any = None) -> dict[str, Any]:
    if isinstance(rt := resolve(pool, group, task=TASK_RESUME), dict):
        return rt
    return pool_jobs._guarded(rt, lambda: operations.resume(rt.service), None)


@app.task(name=TASK_FORCE_RELEASE)
def force_release(project_id: Any, *, group: Any = None, pool: Any = None) -> dict[str, Any]:
    if isinstance(rt := resolve(pool, group, task=TASK_FORCE_RELEASE), dict):
        return rt
    return pool_jobs._guarded(rt, lambda: operations.force_release(rt.service, project_id), project_id)


@app.task(name=TASK_ADOPT)
def adopt(
    assignments: Any = None, *, dry_run: Any = False, none: Any = False, group: Any = None, pool: Any = None
) -> dict[str, Any]:
    """Adopt ``assignments`` (project -> instance), or with ``none`` confirm that nothing needs it."""
    if isinstance(rt := resolve(pool, group, task=TASK_ADOPT), dict):
        return rt
    if none is True:
        return pool_jobs._guarded(rt, lambda: operations.adopt_none(rt.service), None)
    return pool_jobs._guarded(rt, lambda: operations.adopt(rt.service, assignments, dry_run=dry_run is True), None)


@app.task(name=TASK_RECYCLE)
def recycle(
    *, older_than_s: Any = None, template_version: Any = None, group: Any = None, pool: Any = None
) -> dict[str, Any]:
    """Replace idle machines older than ``older_than_s`` or not of ``template_version``, gradually."""
    if isinstance(rt := resolve(pool, group, task=TASK_RECYCLE), dict):
        return rt
    return pool_jobs._guarded(
        rt,
        lambda: operations.recycle(rt.service, older_than_s=older_than_s, template_version=template_version),
        None,
    )
