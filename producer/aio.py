"""AsyncPoolClient: the asyncio variant of PoolClient, for async backends and the gateway.

With the Redis result backend it awaits results natively: it subscribes to the
result's pub/sub channel (Celery's Redis backend publishes every stored result
on a channel named like its key) before sending the job, so thousands of
concurrent calls share one connection and no thread. With any other backend
it runs the synchronous client in worker threads.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import redis.asyncio as aioredis
from celery import Celery

from producer.client import (
    DEFAULT_REPLY_TIMEOUT_S,
    PoolClient,
    assign_kwargs,
    check_lease,
    configured_group,
    make_app,
    raise_for_failure,
    raise_for_failure_except_capacity,
    timed_out_waiting,
    with_group,
)
from tasks.contract import (
    POOL_QUEUE,
    STATE_WAITING,
    STATUS_ASSIGNED,
    STATUS_NOT_ASSIGNED,
    STATUS_RELEASED,
    TASK_ASSIGN,
    TASK_RELEASE,
    TASK_STATUS,
    TASK_TOUCH,
    TASK_WITHDRAW,
    AssignedMachine,
    validate_project_id,
)
from tasks.errors import JobFailed, PoolUnavailable

_FINAL_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})


class _ResultListener:
    """One pub/sub connection delivering Celery results to waiting futures."""

    def __init__(self, url: str) -> None:
        self._redis = aioredis.Redis.from_url(url, socket_connect_timeout=5)
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        self._waiters: dict[str, asyncio.Future[Any]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._starting: asyncio.Lock | None = None

    async def _start(self) -> None:
        # Race guarded: concurrent first calls each issuing SUBSCRIBE before the
        # pub/sub connection exists would each open one (and leak all but one).
        # One subscription of our own is made first, under a lock; it also keeps
        # the connection subscribed between calls, so the reader can block.
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._reader is None or self._reader.done():
                await self._pubsub.subscribe(f"warmpool-client-{uuid.uuid4()}")
                self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        while True:
            message = await self._pubsub.get_message(timeout=None)
            if not message or message.get("type") != "message":
                continue
            channel = message["channel"].decode() if isinstance(message["channel"], bytes) else message["channel"]
            fut = self._waiters.get(channel)
            meta = json.loads(message["data"])
            # Only final states resolve the call; WAITING (queued for a machine) does not.
            if fut is not None and not fut.done() and meta.get("status") in _FINAL_STATES:
                fut.set_result(meta)

    async def subscribe(self, key: str) -> asyncio.Future[Any]:
        if self._reader is None or self._reader.done():
            await self._start()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters[key] = fut
        await self._pubsub.subscribe(key)
        return fut

    async def unsubscribe(self, key: str) -> None:
        self._waiters.pop(key, None)
        await self._pubsub.unsubscribe(key)

    async def get(self, key: str) -> Any:
        raw = await self._redis.get(key)
        return json.loads(raw) if raw else None

    async def aclose(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        await self._redis.aclose()


def _from_meta(meta: dict[str, Any]) -> Any:
    state = meta.get("status")
    if state == "SUCCESS":
        return meta.get("result")
    if state == "REVOKED":
        raise PoolUnavailable("the job expired in the queue before a pool worker took it")
    raise JobFailed(f"the pool worker failed the job: {meta.get('result')!r:.300}")


class AsyncPoolClient:
    """``await client.assign("proj-42", wait=30.0)``; same contract as PoolClient."""

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
        backend_url = str(self.app.conf.result_backend or "")
        native = backend_url.startswith(("redis://", "rediss://", "unix://"))
        self._listener = _ResultListener(backend_url) if native else None
        self._sync = None if native else PoolClient(app=self.app, reply_timeout_s=reply_timeout_s)

    async def call(
        self,
        task: str,
        *args: Any,
        timeout_s: float,
        kwargs: dict[str, Any] | None = None,
        task_id: str | None = None,
    ) -> Any:
        """Send one pool job and await its raw result (see PoolClient.call); ``task_id``: the job's id."""
        kwargs = with_group(kwargs, self.group)
        if self._listener is None:
            assert self._sync is not None
            return await asyncio.to_thread(
                self._sync.call, task, *args, timeout_s=timeout_s, kwargs=kwargs, task_id=task_id
            )
        task_id = task_id or str(uuid.uuid4())
        key = self.app.backend.get_key_for_task(task_id).decode()
        try:
            fut = await self._listener.subscribe(key)
        except Exception as exc:
            raise PoolUnavailable(f"result backend unreachable: {exc}") from exc
        try:
            try:
                self.app.send_task(task, args=args, kwargs=kwargs, task_id=task_id, queue=POOL_QUEUE, expires=timeout_s)
            except Exception as exc:
                raise PoolUnavailable(f"broker unreachable: {exc}") from exc
            try:
                meta = await asyncio.wait_for(fut, timeout_s)
            except TimeoutError:
                # The result may have been stored before our subscription took effect.
                meta = await self._listener.get(key)
                state = meta.get("status") if meta else None
                if state == STATE_WAITING:
                    return timed_out_waiting(args, timeout_s, meta.get("result") if meta else None)
                if state not in _FINAL_STATES:
                    raise PoolUnavailable(f"no pool worker answered within {timeout_s:.1f}s") from None
            return _from_meta(meta)
        finally:
            await self._listener.unsubscribe(key)

    async def assign_result(
        self, project_id: str, *, wait: float = 0.0, lease: float | None = None, request_id: str | None = None
    ) -> dict[str, Any]:
        """Assign and return the raw result dict (``no_capacity`` is a result, not an error).

        ``request_id`` (default: a new UUID) is the assign job's id: the one to
        withdraw_result() if the caller leaves before the answer.
        """
        validate_project_id(project_id)
        kwargs, timeout_s = assign_kwargs(wait, lease, reply_timeout_s=self.reply_timeout_s)
        result = await self.call(TASK_ASSIGN, project_id, kwargs=kwargs, timeout_s=timeout_s, task_id=request_id)
        raise_for_failure_except_capacity(result)
        return dict(result)

    async def withdraw_result(self, project_id: str, *, request_id: str, wait: float = 0.0) -> dict[str, Any]:
        """Withdraw the assign ``request_id`` of ``project_id`` whose caller left.

        Its waiter leaves the queue; a machine it was already handed is released
        (never one the project held before). Idempotent. ``wait``: the assign's;
        the withdraw job lives at least as long in the queue as that assign can.
        """
        validate_project_id(project_id)
        timeout_s = max(self.reply_timeout_s, wait)
        result = await self.call(TASK_WITHDRAW, request_id, project_id, timeout_s=timeout_s)
        return dict(raise_for_failure(result))

    async def assign(self, project_id: str, *, wait: float = 0.0, lease: float | None = None) -> AssignedMachine:
        """Return the project's machine; NoCapacity if none became idle within ``wait``."""
        result = raise_for_failure(await self.assign_result(project_id, wait=wait, lease=lease))
        if result.get("status") != STATUS_ASSIGNED:
            raise JobFailed(f"unexpected assign result {result!r:.200}")
        return AssignedMachine.from_result(result)

    async def release_result(self, project_id: str) -> dict[str, Any]:
        validate_project_id(project_id)
        result = await self.call(TASK_RELEASE, project_id, timeout_s=self.reply_timeout_s)
        return dict(raise_for_failure(result))

    async def release(self, project_id: str) -> bool:
        """True if a machine was released, False if the project held none."""
        result = await self.release_result(project_id)
        if result["status"] not in (STATUS_RELEASED, STATUS_NOT_ASSIGNED):
            raise JobFailed(f"unexpected release result {result!r:.200}")
        return bool(result["status"] == STATUS_RELEASED)

    async def touch_result(self, project_id: str, *, lease: float | None = None) -> dict[str, Any]:
        validate_project_id(project_id)
        lease_s = None if lease is None else check_lease(lease)
        result = await self.call(TASK_TOUCH, project_id, kwargs={"lease_s": lease_s}, timeout_s=self.reply_timeout_s)
        return dict(raise_for_failure(result))

    async def touch(self, project_id: str, *, lease: float | None = None) -> bool:
        """Renew the lease of the project's machine; False if the project holds none."""
        result = await self.touch_result(project_id, lease=lease)
        return bool(result["status"] != STATUS_NOT_ASSIGNED)

    async def status(self) -> dict[str, Any]:
        result = await self.call(TASK_STATUS, timeout_s=self.reply_timeout_s)
        if not isinstance(result, dict) or "counts" not in result:
            raise JobFailed(f"unexpected status result {result!r:.200}")
        return result

    async def aclose(self) -> None:
        if self._listener is not None:
            await self._listener.aclose()

    async def __aenter__(self) -> AsyncPoolClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
