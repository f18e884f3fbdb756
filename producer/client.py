"""PoolClient: enqueue pool jobs and turn their results into values or errors.

Producers never touch pool state: they send a job to the ``pool`` queue and
wait for its result in the result backend. Every job carries an expiry equal
to the caller's deadline, so a job still queued when its caller gave up is
discarded by the worker instead of handing a machine to nobody.

The calls themselves (validation, encoding, result mapping) are producer.calls,
shared with AsyncPoolClient; this module is the synchronous transport. With
the Redis result backend it subscribes to the job's result channel before
sending the job, on a connection of its own per call, with every Redis
operation bounded; with any other backend it waits through Celery.

Time bound: every call ends within its wait (or the reply timeout) plus
``CLIENT_MARGIN_S`` (2 s), with its result, NoCapacity or PoolUnavailable, as
long as the broker's host answers or refuses connections (a host that drops
packets holds the send for kombu's connect timeout).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import redis
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeoutError
from redis.backoff import NoBackoff
from redis.retry import Retry

from producer.calls import (
    CLIENT_MARGIN_S,
    DEFAULT_REPLY_TIMEOUT_S,
    FINAL_STATES,
    REDIS_IO_TIMEOUT_S,
    Assign,
    BaseClient,
    Job,
    Operator,
    Release,
    Reply,
    Touch,
    check_lease,
    check_wait,
    make_app,
    outcome,
    publish,
    raise_for_failure,
    reply_from_meta,
)
from tasks.contract import STATE_WAITING, AssignedMachine
from tasks.errors import PoolUnavailable

# The client core's helpers the gateway, the probe and the CLI import from here.
__all__ = [
    "CLIENT_MARGIN_S",
    "DEFAULT_REPLY_TIMEOUT_S",
    "PoolClient",
    "check_lease",
    "check_wait",
    "make_app",
    "raise_for_failure",
]


class _Transport(Protocol):
    def round_trip(self, job: Job) -> Reply: ...


class _RedisTransport:
    """Subscribe to the job's result channel, send the job, read the channel until the deadline."""

    def __init__(self, app: Celery, url: str) -> None:
        self._app = app
        # One immediate retry (a pooled connection closed by a Redis restart is replaced),
        # no back-off, and every operation bounded: the deadline is ours to keep.
        self._redis = redis.Redis.from_url(
            url,
            socket_connect_timeout=REDIS_IO_TIMEOUT_S,
            socket_timeout=REDIS_IO_TIMEOUT_S,
            retry=Retry(NoBackoff(), 1),
        )

    def round_trip(self, job: Job) -> Reply:
        job, task_id = job.named()
        key = self._app.backend.get_key_for_task(task_id).decode()
        deadline = time.monotonic() + job.timeout_s
        pubsub = self._subscribed(key, deadline)
        if pubsub is None:
            raise PoolUnavailable("result backend unreachable (could not subscribe to the result)")
        try:
            publish(self._app, job, task_id=task_id)
            return self._read_until(pubsub, key, deadline)
        finally:
            # A failed close must not hide the result (or the error) the call already has.
            with contextlib.suppress(Exception):
                pubsub.close()

    def _subscribed(self, key: str, deadline: float) -> Any:
        """A pub/sub connection whose subscription to ``key`` Redis confirmed by ``deadline``; None if not."""
        pubsub = self._redis.pubsub()  # type: ignore[no-untyped-call]
        try:
            pubsub.subscribe(key)
            # Race guarded (a lost result): the job is sent only once Redis confirmed the
            # subscription, so a result published after that reaches this connection.
            while (remaining := deadline - time.monotonic()) > 0:
                message = pubsub.get_message(timeout=min(remaining, REDIS_IO_TIMEOUT_S))
                if message is not None and message.get("type") == "subscribe":
                    return pubsub
        except (redis.RedisError, OSError):
            pass
        with contextlib.suppress(Exception):
            pubsub.close()
        return None

    def _read_until(self, pubsub: Any, key: str, deadline: float) -> Reply:
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                message = pubsub.get_message(timeout=min(remaining, REDIS_IO_TIMEOUT_S))
            except (redis.RedisError, OSError):
                # The connection is lost; once Redis is back, the record itself is read below.
                message = None
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
                reply = self._look(key)
                if reply is not None and reply.state in FINAL_STATES:
                    return reply
                continue
            if message is not None and message.get("type") == "message":
                reply = reply_from_meta(message["data"])
                if reply.state in FINAL_STATES:
                    return reply
        # A result stored at the last moment, or the WAITING note of a queued caller.
        reply = self._look(key)
        if reply is None:
            raise PoolUnavailable("result backend unreachable")
        return reply

    def _look(self, key: str) -> Reply | None:
        """The result record stored under ``key`` now; None if Redis cannot be reached."""
        try:
            return reply_from_meta(self._redis.get(key))
        except (redis.RedisError, OSError):
            return None


class _CeleryTransport:
    """Any other result backend: Celery's own send and wait."""

    def __init__(self, app: Celery) -> None:
        self._app = app

    def round_trip(self, job: Job) -> Reply:
        try:
            result = self._app.send_task(
                job.task,
                args=job.args,
                kwargs=dict(job.kwargs),  # routed by its pool (tasks/routing.py)
                expires=job.timeout_s,
                task_id=job.task_id,
            )
        except Exception as exc:  # kombu raises many types for an unreachable broker
            raise PoolUnavailable(f"broker unreachable: {exc}") from exc
        try:
            value = result.get(timeout=job.timeout_s, propagate=False, disable_sync_subtasks=False)
        except CeleryTimeoutError:
            return Reply(STATE_WAITING, result.info) if result.state == STATE_WAITING else Reply(None)
        except Exception as exc:
            raise PoolUnavailable(f"result backend unreachable: {exc}") from exc
        return Reply(result.state, value)


class PoolClient(BaseClient):
    """Synchronous client for backends. Configuration comes from the environment.

    Every call ends within its wait (or ``reply_timeout_s``) plus
    ``CLIENT_MARGIN_S``, with its result, NoCapacity or PoolUnavailable.
    """

    _transport: _Transport

    def _open(self) -> None:
        self._transport = (
            _RedisTransport(self.app, self.backend_url) if self.redis_backend else _CeleryTransport(self.app)
        )

    def call(
        self,
        task: str,
        *args: Any,
        timeout_s: float,
        kwargs: dict[str, Any] | None = None,
        task_id: str | None = None,
        pool: str | None = None,
    ) -> Any:
        """Send one pool job and return its raw result (``task_id``: the job's id, default a new one).

        PoolUnavailable when no worker answered in time; a ``no_capacity``
        result when the worker queued the caller (assign with wait) and no
        machine became available before the deadline.
        """
        return self._send(Job(task, args, kwargs or {}, timeout_s, task_id), pool)

    def _send(self, job: Job, pool: str | None = None) -> Any:
        job = self._for_pool(job, pool)
        return outcome(job, self._transport.round_trip(job))

    def assign_result(
        self, project_id: str, *, wait: float = 0.0, lease: float | None = None, pool: str | None = None
    ) -> dict[str, Any]:
        """Assign and return the raw result dict (the CLI's and gateway's --json shape).

        ``no_capacity`` is a result here, not an exception: callers that print
        or forward results need it as data.
        """
        call = self._assign(project_id, wait, lease)
        return call.result(self._send(call.job, pool))

    def assign(
        self, project_id: str, *, wait: float = 0.0, lease: float | None = None, pool: str | None = None
    ) -> AssignedMachine:
        """Return the project's machine; NoCapacity if none became idle within ``wait`` seconds.

        Waiting callers are served in arrival order as machines become ready.
        ``lease`` (seconds) overrides WARMPOOL_LEASE_SECONDS for this assignment.
        """
        return Assign.value(self.assign_result(project_id, wait=wait, lease=lease, pool=pool))

    def touch_result(self, project_id: str, *, lease: float | None = None, pool: str | None = None) -> dict[str, Any]:
        """Touch and return the raw result dict (touched, no_lease, not_assigned)."""
        call = self._touch(project_id, lease)
        return call.result(self._send(call.job, pool))

    def touch(self, project_id: str, *, lease: float | None = None, pool: str | None = None) -> bool:
        """Renew the lease of the project's machine; False if the project holds none."""
        return Touch.value(self.touch_result(project_id, lease=lease, pool=pool))

    def release_result(self, project_id: str, *, pool: str | None = None) -> dict[str, Any]:
        """Release and return the raw result dict (released, not_assigned)."""
        call = self._release(project_id)
        return call.result(self._send(call.job, pool))

    def release(self, project_id: str, *, pool: str | None = None) -> bool:
        """Release the project's machine: True if one was released, False if none was held."""
        return Release.value(self.release_result(project_id, pool=pool))

    def status(self, *, pool: str | None = None) -> dict[str, Any]:
        """The pool snapshot: counts by state, machines, desired/min/max, lost machines."""
        call = self._status()
        return call.result(self._send(call.job, pool))

    def release_quarantined(
        self, instance_ids: Sequence[str] | None = None, *, pool: str | None = None
    ) -> dict[str, Any]:
        """An operator's word that these quarantined machines (None: all) are in nobody's use."""
        call = self._release_quarantined(instance_ids)
        return call.result(self._send(call.job, pool))

    # -- operator commands (tasks.pool.operations; docs/operations.md) ---------------------
    def operate(self, call: Operator, *, pool: str | None = None) -> dict[str, Any]:
        """Send one operator command (producer.calls.Operator) to ``pool`` and return its result."""
        return call.result(self._send(call.job, pool))

    def pause(self, *, pool: str | None = None) -> dict[str, Any]:
        """Stop every AWS change of the pool until resume (assigns and releases keep working)."""
        return self.operate(Operator.pause(reply_timeout_s=self.reply_timeout_s), pool=pool)

    def resume(self, *, pool: str | None = None) -> dict[str, Any]:
        """Resume AWS changes; machines released while paused are terminated now."""
        return self.operate(Operator.resume(reply_timeout_s=self.reply_timeout_s), pool=pool)

    def force_release(self, project_id: str, *, pool: str | None = None) -> dict[str, Any]:
        """An operator takes the project's machine back (recorded as force_release)."""
        return self.operate(Operator.force_release(project_id, reply_timeout_s=self.reply_timeout_s), pool=pool)

    def recycle(
        self, *, older_than_s: float | None = None, template_version: str | None = None, pool: str | None = None
    ) -> dict[str, Any]:
        """Replace idle machines older than ``older_than_s`` or not of ``template_version`` (one of them)."""
        call = Operator.recycle(
            older_than_s=older_than_s, template_version=template_version, reply_timeout_s=self.reply_timeout_s
        )
        return self.operate(call, pool=pool)

    def adopt(
        self, assignments: Mapping[str, str] | None, *, dry_run: bool = False, pool: str | None = None
    ) -> dict[str, Any]:
        """Adopt assignments made outside warmpool (project -> instance); None: nothing needs adopting."""
        call = Operator.adopt(assignments, dry_run=dry_run, reply_timeout_s=self.reply_timeout_s)
        return self.operate(call, pool=pool)
