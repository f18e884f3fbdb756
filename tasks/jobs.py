"""Pool-queue jobs: thin wrappers that decode arguments and call PoolService.

Expected failures come back as results with a stable ``code`` (never as a
stack trace); only bugs surface as task failures.
"""

from __future__ import annotations

from typing import Any

from tasks.celery_app import app, service
from tasks.contract import (
    CODE_BAD_REQUEST,
    TASK_APPLY_SNAPSHOT,
    TASK_ASSIGN,
    TASK_REBALANCE,
    TASK_RELEASE,
    TASK_STATUS,
    failure,
)
from tasks.errors import InvalidProject, StoreUnavailable
from tasks.model import snapshot_from_json


def _guarded(project_id: Any, call: Any) -> dict[str, Any]:
    try:
        result: dict[str, Any] = call(project_id)
        return result
    except InvalidProject as exc:
        return failure(exc.code, str(exc))
    except StoreUnavailable as exc:
        return failure(exc.code, str(exc), project_id=project_id)


@app.task(name=TASK_ASSIGN)
def assign(project_id: Any) -> dict[str, Any]:
    return _guarded(project_id, service().assign)


@app.task(name=TASK_RELEASE)
def release(project_id: Any) -> dict[str, Any]:
    return _guarded(project_id, service().release)


@app.task(name=TASK_STATUS)
def status() -> dict[str, Any]:
    return service().status()


@app.task(name=TASK_REBALANCE, ignore_result=True)
def rebalance() -> dict[str, Any]:
    return service().rebalance()


@app.task(name=TASK_APPLY_SNAPSHOT, ignore_result=True)
def apply_snapshot(payload: Any) -> dict[str, Any]:
    if isinstance(payload, dict) and isinstance(payload.get("error"), str):
        return service().record_refresh_error(payload["error"])
    try:
        snapshot = snapshot_from_json(payload)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return failure(CODE_BAD_REQUEST, f"malformed snapshot: {type(exc).__name__}: {exc}")
    return service().apply_snapshot(snapshot)
