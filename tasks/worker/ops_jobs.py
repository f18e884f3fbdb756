"""Pool-queue jobs of the operator commands: thin wrappers over tasks.pool.operations.

Their side effects (terminations on resume, tags after adopt) are held and sent after the
result is stored, like every pool job's (tasks.worker.pool_jobs).
"""

from __future__ import annotations

from typing import Any

from tasks.contract import TASK_ADOPT, TASK_FORCE_RELEASE, TASK_PAUSE, TASK_RECYCLE, TASK_RESUME
from tasks.pool import operations
from tasks.worker import pool_jobs
from tasks.worker.app import app, refuse_other_group, service

# Their side effects are held and sent after the result, like the other pool jobs'.
pool_jobs.POOL_JOBS = pool_jobs.POOL_JOBS | {TASK_PAUSE, TASK_RESUME, TASK_FORCE_RELEASE, TASK_ADOPT, TASK_RECYCLE}


@app.task(name=TASK_PAUSE)
def pause(group: Any = None) -> dict[str, Any]:
    if (refused := refuse_other_group(group, task=TASK_PAUSE)) is not None:
        return refused
    return pool_jobs._guarded(lambda: operations.pause(service()), None)


@app.task(name=TASK_RESUME)
def resume(group: Any = None) -> dict[str, Any]:
    if (refused := refuse_other_group(group, task=TASK_RESUME)) is not None:
        return refused
    return pool_jobs._guarded(lambda: operations.resume(service()), None)


@app.task(name=TASK_FORCE_RELEASE)
def force_release(project_id: Any, group: Any = None) -> dict[str, Any]:
    if (refused := refuse_other_group(group, task=TASK_FORCE_RELEASE)) is not None:
        return refused
    return pool_jobs._guarded(lambda: operations.force_release(service(), project_id), project_id)


@app.task(name=TASK_ADOPT)
def adopt(assignments: Any = None, dry_run: Any = False, none: Any = False, group: Any = None) -> dict[str, Any]:
    """Adopt ``assignments`` (project -> instance), or with ``none`` confirm that nothing needs it."""
    if (refused := refuse_other_group(group, task=TASK_ADOPT)) is not None:
        return refused
    if none is True:
        return pool_jobs._guarded(lambda: operations.adopt_none(service()), None)
    return pool_jobs._guarded(lambda: operations.adopt(service(), assignments, dry_run=dry_run is True), None)


@app.task(name=TASK_RECYCLE)
def recycle(older_than_s: Any = None, template_version: Any = None, group: Any = None) -> dict[str, Any]:
    """Replace idle machines older than ``older_than_s`` or not of ``template_version``, gradually."""
    if (refused := refuse_other_group(group, task=TASK_RECYCLE)) is not None:
        return refused
    return pool_jobs._guarded(
        lambda: operations.recycle(service(), older_than_s=older_than_s, template_version=template_version), None
    )
