"""PoolClient: enqueue pool jobs and turn their results into values or errors.

Producers never touch pool state: they send a job to the ``pool`` queue and
wait for its result in the result backend. Every job carries an expiry equal
to the caller's deadline, so a job still queued when its caller gave up is
discarded by the worker instead of handing a machine to nobody.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeoutError

from tasks.contract import (
    CODE_INVALID_PROJECT,
    CODE_NO_CAPACITY,
    CODE_STORE_UNAVAILABLE,
    MAX_LEASE_S,
    MAX_WAIT_S,
    POOL_QUEUE,
    STATE_WAITING,
    STATUS_FAILED,
    STATUS_NOT_ASSIGNED,
    STATUS_RELEASED,
    TASK_ASSIGN,
    TASK_RELEASE,
    TASK_STATUS,
    TASK_TOUCH,
    AssignedMachine,
    check_seconds,
    failure,
    validate_project_id,
)
from tasks.errors import (
    InvalidProject,
    JobFailed,
    NoCapacity,
    PoolUnavailable,
)

DEFAULT_REPLY_TIMEOUT_S = 10.0


def make_app() -> Celery:
    """A Celery app configured like the workers (celeryconfig), used only to send."""
    app = Celery("warmpool-producer")
    app.config_from_object("celeryconfig")
    return app


def configured_group() -> str | None:
    """The group jobs are sent for: WARMPOOL_ASG_NAME when set (None: jobs name no group)."""
    return os.environ.get("WARMPOOL_ASG_NAME", "").strip() or None


def with_group(kwargs: dict[str, Any] | None, group: str | None) -> dict[str, Any] | None:
    """A job's kwargs naming its ``group`` (a worker of another group refuses it: ``wrong_group``)."""
    if not group or (kwargs and "group" in kwargs):
        return kwargs
    return {**(kwargs or {}), "group": group}


def check_wait(wait: Any) -> float:
    """Validate a caller's wait in seconds: a finite number in [0, MAX_WAIT_S]."""
    return check_seconds(wait, "wait", high=MAX_WAIT_S)


def result_or_raise(result: Any, state: str) -> Any:
    """A job's result; a job that raised becomes JobFailed, an expired one PoolUnavailable."""
    if state == "REVOKED":
        raise PoolUnavailable("the job expired in the queue before a pool worker took it")
    if isinstance(result, BaseException):
        raise JobFailed(f"the pool worker failed the job: {type(result).__name__}: {result}")
    return result


def check_lease(lease: Any) -> float:
    """Validate a lease length in seconds: a finite number in [0, MAX_LEASE_S] (0: no lease)."""
    return check_seconds(lease, "lease", high=MAX_LEASE_S)


def assign_kwargs(wait: Any, lease: Any, *, reply_timeout_s: float) -> tuple[dict[str, Any], float]:
    """The assign job's keyword arguments and how long the caller waits for its result."""
    wait_s = check_wait(wait)
    lease_s = None if lease is None else check_lease(lease)
    timeout_s = wait_s if wait_s > 0 else reply_timeout_s
    # The absolute deadline lets the worker refuse to serve a caller that gave up,
    # even when the job sat in a backed-up queue (clocks of producer and worker hosts
    # are assumed NTP-synchronized).
    return {"wait_s": wait_s, "lease_s": lease_s, "deadline": time.time() + wait_s}, timeout_s


def timed_out_waiting(args: tuple[Any, ...], timeout_s: float, waiting: Any = None) -> dict[str, Any]:
    """The result of a caller that waited in the queue until its deadline.

    ``waiting`` is the worker's waiting-state record: why no machine was free
    (capped by MaxSize, scale-up paused) when the caller was queued.
    """
    project_id = args[0] if args else None
    note = waiting if isinstance(waiting, Mapping) else {}
    reason = f" ({note['reason']})" if note.get("reason") else ""
    return failure(
        CODE_NO_CAPACITY,
        f"no machine became available within {timeout_s:.1f}s{reason}",
        project_id=project_id,
        capped=bool(note.get("capped")),
        max_size=note.get("max_size"),
    )


def raise_for_failure(result: Any) -> Mapping[str, Any]:
    """Map a job result onto the contract's exceptions; return it when it is a success."""
    if not isinstance(result, Mapping) or "status" not in result:
        raise JobFailed(f"unexpected result from the pool worker: {result!r:.200}")
    if result["status"] != STATUS_FAILED:
        return result
    code, message = result.get("code"), str(result.get("message", ""))
    if code == CODE_INVALID_PROJECT:
        raise InvalidProject(message)
    if code == CODE_NO_CAPACITY:
        raise NoCapacity(message, capped=bool(result.get("capped")), max_size=result.get("max_size"))
    if code == CODE_STORE_UNAVAILABLE:
        raise PoolUnavailable(message)
    raise JobFailed(f"{code}: {message}")


class PoolClient:
    """Synchronous client for backends. Configuration comes from the environment."""

    def __init__(
        self,
        *,
        app: Celery | None = None,
        reply_timeout_s: float = DEFAULT_REPLY_TIMEOUT_S,
        group: str | None = None,
    ) -> None:
        self.app = app or make_app()
        self.reply_timeout_s = reply_timeout_s
        self.group = group or configured_group()

    def call(
        self,
        task: str,
        *args: Any,
        timeout_s: float,
        kwargs: dict[str, Any] | None = None,
        task_id: str | None = None,
    ) -> Any:
        """Send one pool job and return its raw result (``task_id``: the job's id, default a new one).

        PoolUnavailable when no worker answered in time; a ``no_capacity``
        result when the worker queued the caller (assign with wait) and no
        machine became available before the deadline.
        """
        kwargs = with_group(kwargs, self.group)
        try:
            async_result = self.app.send_task(
                task, args=args, kwargs=kwargs, queue=POOL_QUEUE, expires=timeout_s, task_id=task_id
            )
        except Exception as exc:  # kombu raises many types for an unreachable broker
            raise PoolUnavailable(f"broker unreachable: {exc}") from exc
        try:
            result = async_result.get(timeout=timeout_s, propagate=False, disable_sync_subtasks=False)
        except CeleryTimeoutError:
            if async_result.state == STATE_WAITING:
                return timed_out_waiting(args, timeout_s, async_result.info)
            raise PoolUnavailable(f"no pool worker answered within {timeout_s:.1f}s") from None
        except Exception as exc:
            raise PoolUnavailable(f"result backend unreachable: {exc}") from exc
        return result_or_raise(result, async_result.state)

    def assign_result(self, project_id: str, *, wait: float = 0.0, lease: float | None = None) -> dict[str, Any]:
        """Assign and return the raw result dict (the CLI's and gateway's --json shape).

        ``no_capacity`` is a result here, not an exception: callers that print
        or forward results need it as data.
        """
        validate_project_id(project_id)
        kwargs, timeout_s = assign_kwargs(wait, lease, reply_timeout_s=self.reply_timeout_s)
        result = self.call(TASK_ASSIGN, project_id, kwargs=kwargs, timeout_s=timeout_s)
        raise_for_failure_except_capacity(result)
        return dict(result)

    def assign(self, project_id: str, *, wait: float = 0.0, lease: float | None = None) -> AssignedMachine:
        """Return the project's machine; NoCapacity if none became idle within ``wait`` seconds.

        Waiting callers are served in arrival order as machines become ready.
        ``lease`` (seconds) overrides WARMPOOL_LEASE_SECONDS for this assignment.
        """
        result = raise_for_failure(self.assign_result(project_id, wait=wait, lease=lease))
        return AssignedMachine.from_result(result)

    def touch_result(self, project_id: str, *, lease: float | None = None) -> dict[str, Any]:
        validate_project_id(project_id)
        lease_s = None if lease is None else check_lease(lease)
        result = self.call(TASK_TOUCH, project_id, kwargs={"lease_s": lease_s}, timeout_s=self.reply_timeout_s)
        return dict(raise_for_failure(result))

    def touch(self, project_id: str, *, lease: float | None = None) -> bool:
        """Renew the lease of the project's machine; False if the project holds none."""
        return bool(self.touch_result(project_id, lease=lease)["status"] != STATUS_NOT_ASSIGNED)

    def release_result(self, project_id: str) -> dict[str, Any]:
        validate_project_id(project_id)
        result = self.call(TASK_RELEASE, project_id, timeout_s=self.reply_timeout_s)
        return dict(raise_for_failure(result))

    def release(self, project_id: str) -> bool:
        """Release the project's machine: True if one was released, False if none was held."""
        result = self.release_result(project_id)
        if result["status"] not in (STATUS_RELEASED, STATUS_NOT_ASSIGNED):
            raise JobFailed(f"unexpected release result {result!r:.200}")
        return bool(result["status"] == STATUS_RELEASED)

    def status(self) -> dict[str, Any]:
        """The pool snapshot: counts by state, machines, desired/min/max, lost machines."""
        result = self.call(TASK_STATUS, timeout_s=self.reply_timeout_s)
        if not isinstance(result, dict) or "counts" not in result:
            raise JobFailed(f"unexpected status result {result!r:.200}")
        return result


def raise_for_failure_except_capacity(result: Any) -> None:
    """raise_for_failure, except that no_capacity is left to the waiting loop."""
    if isinstance(result, Mapping) and result.get("code") == CODE_NO_CAPACITY:
        return
    raise_for_failure(result)
