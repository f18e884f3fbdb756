"""AsyncPoolClient: the asyncio variant of PoolClient, for async backends and the gateway.

Same calls, same results, same errors: both clients build their calls with
producer.calls and differ only in the transport. Here, with the Redis result
backend, results are awaited natively: one pub/sub connection (the
``_ResultListener``) is subscribed to each call's result channel (Celery's
Redis backend publishes every stored result on a channel named like its key)
before the job is sent, so thousands of concurrent calls share one connection
and no thread. With any other backend the synchronous client runs in worker
threads.

Time bound: every call ends within its wait (or the reply timeout) plus
``CLIENT_MARGIN_S`` (2 s), whatever Redis does: a call whose result cannot be
received (result backend down, broker down, no worker) raises PoolUnavailable,
never a Redis or Celery exception. The listener reconnects on its own when
Redis comes back (new connection, every waiting call resubscribed, results
stored meanwhile read back), so the caller does nothing but call again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from producer.calls import (
    CLIENT_MARGIN_S,
    FINAL_STATES,
    REDIS_IO_TIMEOUT_S,
    Assign,
    BaseClient,
    Job,
    Operator,
    Release,
    Reply,
    Touch,
    outcome,
    publish,
    reply_from_meta,
)
from producer.client import PoolClient
from tasks.contract import AssignedMachine
from tasks.errors import PoolUnavailable

log = logging.getLogger("warmpool.client")

# After a lost connection the listener waits this long before connecting again
# (a Redis that is down refuses at once: no busy loop).
RECONNECT_PAUSE_S = 0.2


class _ResultListener:
    """One pub/sub connection delivering Celery results to waiting futures; reconnects on its own.

    Race guarded (lost results): a call's result is either published after its
    subscription is confirmed by Redis (``subscribe`` returns only then), or
    stored before the catch-up read that follows every reconnect; a result
    published while the connection was down is found by that read. A call
    whose subscription cannot be confirmed fails before its job is sent.
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self._redis = self._new_redis()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._own = f"warmpool-client-{uuid.uuid4()}"  # keeps the connection subscribed between calls
        self._pubsub: aioredis.client.PubSub | None = None
        self._waiters: dict[str, asyncio.Future[Reply]] = {}
        self._confirming: dict[str, asyncio.Future[None]] = {}
        self._unsubscribe: set[str] = set()
        self._reader: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._attempted = asyncio.Event()  # set once each attempt to connect has ended
        self._unreachable: BaseException | None = None  # why the last attempt failed
        self._closed = False

    # -- the callers' side --
    async def subscribe(self, key: str, *, timeout_s: float) -> asyncio.Future[Reply]:
        """A future for the result stored under ``key``, once Redis confirmed the subscription.

        PoolUnavailable at once while Redis is known to be unreachable (the
        listener's last attempt to connect failed), or when it does not
        confirm within ``timeout_s`` (a Redis that is slow under load still
        counts as answering, so this is the call's own budget).
        """
        if self._closed:
            raise PoolUnavailable("the client is closed")
        loop = asyncio.get_running_loop()
        if self._reader is None or self._reader.done():
            self._start_reader(loop)
        fut: asyncio.Future[Reply] = loop.create_future()
        confirmed: asyncio.Future[None] = loop.create_future()
        self._waiters[key] = fut
        self._confirming[key] = confirmed
        try:
            async with asyncio.timeout(timeout_s):
                pubsub = await self._connection()
                await pubsub.subscribe(key)
                await confirmed
        except Exception as exc:
            self.forget(key)
            raise PoolUnavailable(f"result backend unreachable: {exc!r:.200}") from None
        return fut

    async def _connection(self) -> aioredis.client.PubSub:
        while not self._connected.is_set():
            if self._unreachable is not None:
                raise PoolUnavailable(f"result backend unreachable: {self._unreachable!r:.200}")
            await self._attempted.wait()
        assert self._pubsub is not None
        return self._pubsub

    def _new_redis(self) -> aioredis.Redis:
        # One immediate retry inside redis-py (it replaces a pooled connection that Redis
        # closed when it restarted), no back-off: an error reaches the reader at once.
        return aioredis.Redis.from_url(
            self._url,
            socket_connect_timeout=REDIS_IO_TIMEOUT_S,
            socket_timeout=REDIS_IO_TIMEOUT_S,
            retry=Retry(NoBackoff(), 1),
        )

    def _start_reader(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is not None and self._loop is not loop:
            # The reader ended with its event loop (asyncio.run returned): its
            # connections are bound to that loop, so start over on this one.
            self._redis = self._new_redis()
        self._loop = loop
        self._pubsub = None
        self._connected, self._attempted, self._unreachable = asyncio.Event(), asyncio.Event(), None
        self._reader = loop.create_task(self._run())

    def forget(self, key: str) -> None:
        """Stop waiting for ``key``; the reader unsubscribes it later (this never fails or blocks)."""
        self._waiters.pop(key, None)
        confirmed = self._confirming.pop(key, None)
        if confirmed is not None and not confirmed.done():
            confirmed.cancel()
        self._unsubscribe.add(key)

    async def last_look(self, key: str) -> Reply:
        """The result record stored under ``key`` now (one read, bounded); PoolUnavailable if unreachable."""
        try:
            async with asyncio.timeout(REDIS_IO_TIMEOUT_S):
                return reply_from_meta(await self._redis.get(key))
        except Exception as exc:
            raise PoolUnavailable(f"result backend unreachable: {exc!r:.200}") from None

    async def aclose(self) -> None:
        """Stop the reader and close both connections."""
        self._closed = True
        if self._loop is not None and self._loop is not asyncio.get_running_loop():
            return  # everything was bound to an event loop that is closed by now, and went with it
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self._drop()
        await self._redis.aclose()

    # -- the reader --
    async def _run(self) -> None:
        while not self._closed:
            try:
                if self._pubsub is None:
                    await self._connect()
                await self._flush_unsubscribes()
                message = await self._next_message()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # redis-py raises ConnectionError, TimeoutError, even AttributeError
                log.warning("result listener lost its connection (%r), reconnecting", exc)
                self._unreachable = exc
                self._attempted.set()
                await self._drop()
                await asyncio.sleep(RECONNECT_PAUSE_S)
                continue
            if message is not None:
                self._dispatch(message)

    async def _next_message(self) -> dict[str, Any] | None:
        assert self._pubsub is not None
        message: dict[str, Any] | None = await self._pubsub.get_message(timeout=REDIS_IO_TIMEOUT_S)
        return message

    async def _connect(self) -> None:
        """A new pub/sub connection subscribed to every waiting call, then the results stored meanwhile."""
        pubsub = self._redis.pubsub()
        self._pubsub = pubsub
        keys = list(self._waiters)
        async with asyncio.timeout(REDIS_IO_TIMEOUT_S * 2):
            await pubsub.subscribe(self._own, *keys)
            pending = {self._own, *keys}
            while pending:  # every confirmation, so the catch-up read below comes after them
                message = await pubsub.get_message(timeout=REDIS_IO_TIMEOUT_S)
                if message is not None:
                    pending.discard(_channel(message))
                    self._dispatch(message)
            # Only what this connection subscribed can need unsubscribing: a call that
            # ended during the reconnect (its key subscribed above) still does.
            self._unsubscribe.intersection_update(keys)
            self._connected.set()
            self._unreachable = None
            self._attempted.set()
            if keys:
                for key, raw in zip(keys, await self._redis.mget(keys), strict=True):
                    self._resolve(key, reply_from_meta(raw))

    async def _flush_unsubscribes(self) -> None:
        if self._unsubscribe and self._pubsub is not None:
            keys = [k for k in self._unsubscribe if k not in self._waiters]
            self._unsubscribe.clear()
            if keys:
                await self._pubsub.unsubscribe(*keys)

    async def _drop(self) -> None:
        self._connected.clear()
        # Subscriptions sent on the lost connection are never confirmed: those callers
        # fail now, before sending their job (calls already waiting are resubscribed).
        for confirmed in self._confirming.values():
            if not confirmed.done():
                confirmed.set_exception(PoolUnavailable("the result backend connection was lost"))
        self._confirming.clear()
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            # A broken connection may fail to close: nothing is left to lose by then.
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind, key = message.get("type"), _channel(message)
        if kind == "subscribe":
            confirmed = self._confirming.pop(key, None)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)
        elif kind == "message":
            self._resolve(key, reply_from_meta(message["data"]))

    def _resolve(self, key: str, reply: Reply) -> None:
        # Only final states resolve the call; WAITING (queued for a machine) does not.
        fut = self._waiters.get(key)
        if fut is not None and not fut.done() and reply.state in FINAL_STATES:
            fut.set_result(reply)


def _channel(message: dict[str, Any]) -> str:
    channel = message.get("channel")
    return channel.decode() if isinstance(channel, bytes) else str(channel)


class AsyncPoolClient(BaseClient):
    """``await client.assign("proj-42", wait=30.0)``; same contract as PoolClient.

    Every call ends within its wait (or ``reply_timeout_s``) plus
    ``CLIENT_MARGIN_S``, with its result, NoCapacity or PoolUnavailable.
    """

    _listener: _ResultListener | None
    _sync: PoolClient | None
    _sender: ThreadPoolExecutor

    def _open(self) -> None:
        native = self.redis_backend
        self._listener = _ResultListener(self.backend_url) if native else None
        # Any other result backend: the synchronous client's Celery transport, in threads.
        self._sync = None
        if not native:
            self._sync = PoolClient(
                app=self.app,
                reply_timeout_s=self.reply_timeout_s,
                group=self.group,
                pool=self.pool,
                deployment=self.deployment,
            )
        # One thread sends every job: a broker that is down must not stall the event loop
        # (every other call) while kombu retries, and jobs leave in the order of the calls.
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="warmpool-send")

    async def call(
        self,
        task: str,
        *args: Any,
        timeout_s: float,
        kwargs: dict[str, Any] | None = None,
        task_id: str | None = None,
        pool: str | None = None,
    ) -> Any:
        """Send one pool job and await its raw result (see PoolClient.call); ``task_id``: the job's id."""
        return await self._send(Job(task, args, kwargs or {}, timeout_s, task_id), pool)

    async def _send(self, job: Job, pool: str | None = None) -> Any:
        job = self._for_pool(job, pool)
        if self._listener is None:
            assert self._sync is not None
            return await asyncio.to_thread(self._sync._send, job)
        try:
            async with asyncio.timeout(job.timeout_s + CLIENT_MARGIN_S):
                reply = await self._round_trip(self._listener, job)
        except TimeoutError:  # only the hard bound above: Redis or the broker hung
            raise PoolUnavailable(f"no answer within {job.timeout_s + CLIENT_MARGIN_S:.1f}s") from None
        return outcome(job, reply)

    async def _round_trip(self, listener: _ResultListener, job: Job) -> Reply:
        job, task_id = job.named()
        key = self.app.backend.get_key_for_task(task_id).decode()
        deadline = asyncio.get_running_loop().time() + job.timeout_s
        fut = await listener.subscribe(key, timeout_s=job.timeout_s)
        try:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._sender, self._publish_unless_late, job, task_id, deadline, loop)
            try:
                return await asyncio.wait_for(fut, max(0.0, deadline - asyncio.get_running_loop().time()))
            except TimeoutError:
                # A result stored at the last moment, or the WAITING note of a queued caller.
                return await listener.last_look(key)
        finally:
            listener.forget(key)

    def _publish_unless_late(self, job: Job, task_id: str, deadline: float, loop: asyncio.AbstractEventLoop) -> None:
        # Behind sends that wait for a broker that is down, a call may have given up by
        # now: its job is not sent at all (it would only expire in the queue).
        if loop.time() >= deadline:
            raise PoolUnavailable("broker unreachable: the job could not be sent in time")
        publish(self.app, job, task_id=task_id)

    async def assign_result(
        self,
        project_id: str,
        *,
        wait: float = 0.0,
        lease: float | None = None,
        request_id: str | None = None,
        pool: str | None = None,
    ) -> dict[str, Any]:
        """Assign and return the raw result dict (``no_capacity`` is a result, not an error).

        ``request_id`` (default: a new UUID) is the assign job's id: the one to
        withdraw_result() if the caller leaves before the answer.
        """
        call = self._assign(project_id, wait, lease)
        return call.result(await self._send(replace(call.job, task_id=request_id), pool))

    async def withdraw_result(
        self, project_id: str, *, request_id: str, wait: float = 0.0, pool: str | None = None
    ) -> dict[str, Any]:
        """Withdraw the assign ``request_id`` of ``project_id`` whose caller left.

        Its waiter leaves the queue; a machine it was already handed is released
        (never one the project held before). Idempotent. ``wait``: the assign's;
        the withdraw job lives at least as long in the queue as that assign can.
        """
        call = self._withdraw(project_id, request_id, wait)
        return call.result(await self._send(call.job, pool))

    async def release_quarantined(
        self, instance_ids: Sequence[str] | None = None, *, pool: str | None = None
    ) -> dict[str, Any]:
        """An operator's word that these quarantined machines (None: all) are in nobody's use."""
        call = self._release_quarantined(instance_ids)
        return call.result(await self._send(call.job, pool))

    async def operate(self, call: Operator, *, pool: str | None = None) -> dict[str, Any]:
        """Send one operator command (producer.calls.Operator: pause, resume, force_release, recycle, adopt)."""
        return call.result(await self._send(call.job, pool))

    async def assign(
        self, project_id: str, *, wait: float = 0.0, lease: float | None = None, pool: str | None = None
    ) -> AssignedMachine:
        """Return the project's machine; NoCapacity if none became idle within ``wait``."""
        return Assign.value(await self.assign_result(project_id, wait=wait, lease=lease, pool=pool))

    async def release_result(self, project_id: str, *, pool: str | None = None) -> dict[str, Any]:
        """Release and return the raw result dict (released, not_assigned)."""
        call = self._release(project_id)
        return call.result(await self._send(call.job, pool))

    async def release(self, project_id: str, *, pool: str | None = None) -> bool:
        """True if a machine was released, False if the project held none."""
        return Release.value(await self.release_result(project_id, pool=pool))

    async def touch_result(
        self, project_id: str, *, lease: float | None = None, pool: str | None = None
    ) -> dict[str, Any]:
        """Touch and return the raw result dict (touched, no_lease, not_assigned)."""
        call = self._touch(project_id, lease)
        return call.result(await self._send(call.job, pool))

    async def touch(self, project_id: str, *, lease: float | None = None, pool: str | None = None) -> bool:
        """Renew the lease of the project's machine; False if the project holds none."""
        return Touch.value(await self.touch_result(project_id, lease=lease, pool=pool))

    async def status(self, *, pool: str | None = None) -> dict[str, Any]:
        """The pool snapshot: counts by state, machines, desired/min/max, lost machines."""
        call = self._status()
        return call.result(await self._send(call.job, pool))

    async def aclose(self) -> None:
        """Close the result listener's connections and stop the sending thread."""
        self._sender.shutdown(wait=False, cancel_futures=True)
        if self._listener is not None:
            await self._listener.aclose()

    async def __aenter__(self) -> AsyncPoolClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
