"""SideEffects implementations: Celery messages on the ``aws`` queue, or a recording for tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from celery import Celery

from tasks.contract import (
    AWS_QUEUE,
    POOL_QUEUE,
    TASK_AWS_PROBE,
    TASK_AWS_SET_DESIRED,
    TASK_AWS_TAG,
    TASK_AWS_TERMINATE,
    TASK_REBALANCE,
    TASK_REFRESH,
)
from tasks.model import Machine

REBALANCE_DELAY_S = 0.5


class CelerySideEffects:
    """Each side effect is one durable broker message, retried by the aws workers."""

    def __init__(self, app: Celery) -> None:
        self._app = app

    def _send(self, name: str, queue: str, *args: Any, **kwargs: Any) -> None:
        self._app.send_task(name, args=args, kwargs=kwargs, queue=queue, ignore_result=True)

    def tag_assigned(self, machine: Machine) -> None:
        self._send(
            TASK_AWS_TAG,
            AWS_QUEUE,
            machine.instance_id,
            project_id=machine.project_id,
            assigned_at=machine.assigned_at,
        )

    def terminate(self, instance_id: str, *, decrement: bool) -> None:
        self._send(TASK_AWS_TERMINATE, AWS_QUEUE, instance_id, decrement=decrement)

    def set_desired(self, desired: int) -> None:
        self._send(TASK_AWS_SET_DESIRED, AWS_QUEUE, desired)

    def rebalance(self) -> None:
        # A short delay coalesces a burst of assigns into one rebalance (each
        # reads the whole pool): scale-up still comes long before a beat tick.
        self._app.send_task(
            TASK_REBALANCE, queue=POOL_QUEUE, countdown=REBALANCE_DELAY_S, expires=60, ignore_result=True
        )

    def refresh(self, *, delay_s: float) -> None:
        self._app.send_task(TASK_REFRESH, queue=AWS_QUEUE, countdown=delay_s, expires=delay_s + 10, ignore_result=True)

    def probe(self, candidates: list[tuple[str, str]]) -> None:
        self._send(TASK_AWS_PROBE, AWS_QUEUE, [list(c) for c in candidates])

    def deliver(self, request_id: str, result: dict[str, Any]) -> None:
        # The waiting caller's own job ended with Ignore(): its result is stored here.
        self._app.backend.store_result(request_id, result, "SUCCESS")


@dataclass
class RecordingSideEffects:
    """Keeps side effects in a list (unit tests), optionally applying them to a Cloud."""

    calls: list[tuple[str, Any]] = field(default_factory=list)

    def tag_assigned(self, machine: Machine) -> None:
        self.calls.append(("tag", (machine.instance_id, machine.project_id, machine.assigned_at)))

    def terminate(self, instance_id: str, *, decrement: bool) -> None:
        self.calls.append(("terminate", (instance_id, decrement)))

    def set_desired(self, desired: int) -> None:
        self.calls.append(("set_desired", desired))

    def rebalance(self) -> None:
        self.calls.append(("rebalance", None))

    def refresh(self, *, delay_s: float) -> None:
        self.calls.append(("refresh", delay_s))

    def probe(self, candidates: list[tuple[str, str]]) -> None:
        self.calls.append(("probe", list(candidates)))

    def deliver(self, request_id: str, result: dict[str, Any]) -> None:
        self.calls.append(("deliver", (request_id, result)))

    def of(self, kind: str) -> list[Any]:
        return [arg for k, arg in self.calls if k == kind]
