"""SideEffects implementations: Celery messages on the ``aws`` queue, or a recording for tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from celery import Celery

from tasks.contract import (
    AWS_QUEUE,
    POOL_QUEUE,
    TASK_AWS_PROBE,
    TASK_AWS_SET_DESIRED,
    TASK_AWS_TAG_ASSIGNMENTS,
    TASK_AWS_TAG_GROUP,
    TASK_AWS_TERMINATE,
    TASK_REFRESH,
    TASK_TOP_UP,
)
from tasks.pool.model import Machine
from tasks.pool.ports import PROTECT_BATCH

REBALANCE_DELAY_S = 0.5
TAG_BATCH = PROTECT_BATCH  # assignments per tag message: one SetInstanceProtection call
TAG_LINGER_S = 0.1  # how long a tag may wait in the pool worker for others to share its message


@dataclass(frozen=True)
class _Message:
    name: str
    queue: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


class CelerySideEffects:
    """Each side effect is one durable broker message, retried by the aws workers.

    Between ``hold()`` and ``send_held()`` (one pool job: tasks.worker.pool_jobs calls
    them on task_prerun and task_postrun) messages are held and sent when the
    job has ended and its result is stored: the caller's answer never waits
    for them, and the job's own message is acknowledged only after they were
    sent (acks_late), so a worker killed in between runs the job again.

    Tags linger up to ``tag_linger_s`` in this process so that the assigns of
    that window share one aws message (one SetInstanceProtection call per 50
    machines, one job on the aws side) instead of one each. What that risks:
    a worker killed in the window loses the batch, and the next refresh's
    converge step re-sends it (the state still holds the assignments); a
    state store lost in the window does not touch the batch, which then lands
    and restores the assignments. Only both at once lose a tag.

    Lingering tags are sent by the worker's own thread when a job ends, after
    its answer; the linger timer sends them only when no job is running, so
    it never competes with an assign for the GIL.
    """

    def __init__(
        self,
        app: Celery,
        *,
        job_kwargs: dict[str, Any] | None = None,
        pool_queue: str = POOL_QUEUE,
        aws_queue: str = AWS_QUEUE,
        tag_linger_s: float = TAG_LINGER_S,
    ) -> None:
        self._app = app
        # Every message names the pool (and group) it is for: the aws workers act
        # on that pool's group, and a worker of another group sharing the broker
        # refuses it instead of acting on this group's machines.
        self._group_kwargs = dict(job_kwargs or {})
        self._pool_queue = pool_queue
        self._aws_queue = aws_queue
        self._local = threading.local()
        self._tag_linger_s = tag_linger_s
        self._tags: list[Machine] = []  # lingering, across jobs
        self._tags_lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._first_tag_at = 0.0  # monotonic time the oldest lingering tag arrived
        self._jobs_running = 0

    def hold(self) -> None:
        """Hold the messages of this thread from now on (the start of a pool job)."""
        self._local.held = []
        with self._tags_lock:
            self._jobs_running += 1

    def send_held(self) -> None:
        """Send what was held and stop holding (a full batch of lingering tags goes too)."""
        held: list[_Message] | None = getattr(self._local, "held", None)
        self._local.held = None
        with self._tags_lock:
            self._jobs_running = max(0, self._jobs_running - 1)
            due = len(self._tags) >= TAG_BATCH or (
                bool(self._tags) and time.monotonic() - self._first_tag_at >= self._tag_linger_s
            )
        if due:
            self.flush_tags()
        for message in held or ():
            self._publish(message)

    def flush_tags(self) -> None:
        """Send every lingering tag now (the linger timer, a full batch, worker shutdown)."""
        with self._tags_lock:
            machines, self._tags = self._tags, []
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        self._send_tags(machines)

    def _linger_ended(self) -> None:
        with self._tags_lock:
            self._timer = None
            if self._jobs_running and self._tags:
                # The job's end sends them; look again in case it was the last one.
                self._arm_timer(self._tag_linger_s / 2)
                return
        self.flush_tags()

    def _arm_timer(self, delay_s: float) -> None:
        # Called with _tags_lock held.
        self._timer = threading.Timer(delay_s, self._linger_ended)
        self._timer.daemon = True
        self._timer.start()

    def _send_tags(self, machines: Sequence[Machine]) -> None:
        for start in range(0, len(machines), TAG_BATCH):
            items = [[m.instance_id, m.project_id, m.assigned_at] for m in machines[start : start + TAG_BATCH]]
            self._publish(_Message(TASK_AWS_TAG_ASSIGNMENTS, self._aws_queue, (items,)))

    def _publish(self, m: _Message) -> None:
        kwargs = {**m.kwargs, **self._group_kwargs}
        self._app.send_task(m.name, args=m.args, kwargs=kwargs, queue=m.queue, ignore_result=True, **m.options)

    def _send(self, message: _Message) -> None:
        held = getattr(self._local, "held", None)
        if held is None:
            self._publish(message)
        else:
            held.append(message)

    def tag_assignments(self, machines: Sequence[Machine]) -> None:
        if getattr(self._local, "held", None) is None or self._tag_linger_s <= 0:
            self._send_tags(machines)  # outside a pool job: at once
            return
        with self._tags_lock:
            if not self._tags:
                self._first_tag_at = time.monotonic()
            self._tags.extend(machines)
            if self._timer is None:
                self._arm_timer(self._tag_linger_s)

    def terminate(self, instance_id: str, *, decrement: bool) -> None:
        self._send(_Message(TASK_AWS_TERMINATE, self._aws_queue, (instance_id,), {"decrement": decrement}))

    def set_desired(self, desired: int) -> None:
        self._send(_Message(TASK_AWS_SET_DESIRED, self._aws_queue, (desired,)))

    def tag_group(self, epoch: str) -> None:
        self._send(_Message(TASK_AWS_TAG_GROUP, self._aws_queue, (epoch,)))

    def top_up(self) -> None:
        # A short delay coalesces a burst of assigns into one top-up.
        self._send(_Message(TASK_TOP_UP, self._pool_queue, options={"countdown": REBALANCE_DELAY_S, "expires": 60}))

    def refresh(self, *, delay_s: float) -> None:
        options = {"countdown": delay_s, "expires": delay_s + 10}
        self._send(_Message(TASK_REFRESH, self._aws_queue, options=options))

    def probe(self, candidates: list[tuple[str, str]]) -> None:
        self._send(_Message(TASK_AWS_PROBE, self._aws_queue, ([list(c) for c in candidates],)))

    def deliver(self, request_id: str, result: dict[str, Any]) -> None:
        # The waiting caller's own job ended with Ignore(): its result is stored
        # here, at once (it is the answer, not a side effect).
        self._app.backend.store_result(request_id, result, "SUCCESS")


@dataclass
class RecordingSideEffects:
    """Keeps side effects in a list (unit tests), optionally applying them to a Cloud."""

    calls: list[tuple[str, Any]] = field(default_factory=list)

    def tag_assignments(self, machines: Sequence[Machine]) -> None:
        self.calls.append(("tag_message", len(machines)))
        for m in machines:
            self.calls.append(("tag", (m.instance_id, m.project_id, m.assigned_at)))

    def terminate(self, instance_id: str, *, decrement: bool) -> None:
        self.calls.append(("terminate", (instance_id, decrement)))

    def set_desired(self, desired: int) -> None:
        self.calls.append(("set_desired", desired))

    def tag_group(self, epoch: str) -> None:
        self.calls.append(("tag_group", epoch))

    def top_up(self) -> None:
        self.calls.append(("top_up", None))

    def refresh(self, *, delay_s: float) -> None:
        self.calls.append(("refresh", delay_s))

    def probe(self, candidates: list[tuple[str, str]]) -> None:
        self.calls.append(("probe", list(candidates)))

    def deliver(self, request_id: str, result: dict[str, Any]) -> None:
        self.calls.append(("deliver", (request_id, result)))

    def of(self, kind: str) -> list[Any]:
        return [arg for k, arg in self.calls if k == kind]
