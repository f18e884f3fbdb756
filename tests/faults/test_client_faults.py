"""The clients while Redis restarts or dies: every call ends in time, with a result or PoolUnavailable.

Many AsyncPoolClient calls are in flight (and more keep arriving) when the
result backend's or the broker's Redis is killed. Each call must end within its
wait (or reply timeout) plus CLIENT_MARGIN_S, with a result, NoCapacity or
PoolUnavailable and never another exception; the client's result listener must
recover on its own once Redis is back; and the gateway must answer such
failures 503/504, never 500.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from producer.aio import AsyncPoolClient
from producer.calls import CLIENT_MARGIN_S
from producer.client import PoolClient
from tasks.errors import NoCapacity, PoolUnavailable
from tests.faults.conftest import FaultStack, RedisServer, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]

WAIT_S = 8.0  # the assigns' wait
REPLY_S = 4.0  # the other calls' reply timeout


@dataclass
class Ended:
    kind: str
    budget_s: float  # its wait or reply timeout
    started: float
    elapsed_s: float
    outcome: str  # assigned | status | released | not_assigned | no_capacity | pool_unavailable | <exception type>
    detail: str = ""


async def timed(kind: str, budget_s: float, call: Awaitable[Any]) -> Ended:
    started = time.monotonic()
    try:
        result = await call
    except PoolUnavailable as exc:
        outcome, detail = "pool_unavailable", str(exc)[:200]
    except NoCapacity as exc:
        outcome, detail = "no_capacity", str(exc)[:200]
    except Exception as exc:  # what the test is looking for: nothing else may escape
        outcome, detail = type(exc).__name__, repr(exc)[:300]
    else:
        # (assign_result answers no_capacity as data: {"status": "failed", "code": "no_capacity"})
        outcome, detail = ("status" if kind == "status" else str(result.get("code") or result.get("status"))), ""
    return Ended(kind, budget_s, started, time.monotonic() - started, outcome, detail)


async def burst(client: AsyncPoolClient, *, calls: int, spread_s: float, prefix: str) -> list[Ended]:
    """``calls`` calls arriving evenly over ``spread_s``: assigns, status and releases."""

    async def one(i: int) -> Ended:
        await asyncio.sleep(spread_s * i / calls)
        if i % 3 == 0:
            return await timed("assign", WAIT_S, client.assign_result(f"{prefix}-{i}", wait=WAIT_S))
        if i % 3 == 1:
            return await timed("status", REPLY_S, client.status())
        return await timed("release", REPLY_S, client.release_result(f"{prefix}-{i - 2}"))

    return list(await asyncio.gather(*(one(i) for i in range(calls))))


class Background:
    """Runs a coroutine in a thread of its own (its own event loop), so the test's main thread can
    kill and restart Redis meanwhile (a server dies with the thread that started it: PR_SET_PDEATHSIG)."""

    def __init__(self, coro: Any) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(coro,))
        self._thread.start()

    def _run(self, coro: Any) -> None:
        try:
            self.value = asyncio.run(coro)
        except BaseException as exc:
            self.error = exc

    def alive(self) -> bool:
        return self._thread.is_alive()

    def result(self, timeout_s: float) -> Any:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), f"still running after {timeout_s}s"
        if self.error is not None:
            raise self.error
        return self.value


def assert_every_call_ended_in_time(ended: list[Ended]) -> None:
    print("outcomes:", Counter((e.kind, e.outcome) for e in ended))
    expected = ("assigned", "status", "released", "not_assigned", "no_capacity", "pool_unavailable")
    leaked = [e for e in ended if e.outcome not in expected]
    assert not leaked, f"{len(leaked)} calls raised something else, e.g. {leaked[:3]}"
    late = [e for e in ended if e.elapsed_s > e.budget_s + CLIENT_MARGIN_S]
    assert not late, f"{len(late)} calls ended after their budget + {CLIENT_MARGIN_S}s, e.g. {late[:3]}"


def serves_again(stack: FaultStack) -> bool:
    """Whether the pool answers a status job, restarting exited processes first (on this, the main thread)."""
    stack.supervise()
    try:
        stack.client.status()
    except PoolUnavailable:
        return False
    return True


@pytest.mark.parametrize(
    ("which", "down_s"),
    [("backend", 2.0), ("broker", 2.0), ("backend", WAIT_S + 2)],
    ids=["backend-restart", "broker-restart", "backend-down-past-every-deadline"],
)
def test_async_calls_during_a_redis_crash_end_in_time_and_the_client_recovers(
    make_stack: Any, which: str, down_s: float
) -> None:
    # given a settled pool and one async client (a gateway's) that has served a call
    stack: FaultStack = make_stack(idle_target=4, refresh_s=1.0)
    server: RedisServer = getattr(stack.infra, which)
    client = AsyncPoolClient(app=stack.app, reply_timeout_s=REPLY_S)
    back = threading.Event()

    async def scenario() -> tuple[list[Ended], list[Ended]]:
        await client.status()
        ready.set()
        ended = await burst(client, calls=90, spread_s=3.0, prefix=which)
        # and, once Redis is back and the pool worker serves again, the caller simply goes on calling:
        # its listener reconnects on its own within seconds (calls meanwhile fail fast), then serves
        await asyncio.to_thread(back.wait, 60)
        deadline = time.monotonic() + 15.0
        while (first := await timed("status", REPLY_S, client.status())).outcome != "status":
            assert time.monotonic() < deadline, f"the client did not serve again within 15 s: {first}"
            await asyncio.sleep(0.2)
        after = [await timed("status", REPLY_S, client.status()) for _ in range(3)]
        await client.aclose()
        return ended, after

    # when 90 calls arrive over 3 s, and the Redis is killed after 0.75 s and back ``down_s`` later
    ready = threading.Event()
    running = Background(scenario())
    assert ready.wait(30)
    time.sleep(0.75)
    killed_at = time.monotonic()
    server.restart(kill=True, down_s=down_s)
    back_at = time.monotonic()
    # (under a supervisor, as deployed: Celery 5.7 sometimes exits a worker whose broker
    # connection was lost instead of reconnecting; the pool must serve before the client is judged)
    wait_for(lambda: serves_again(stack), timeout_s=60, what="the pool to serve again")
    back.set()
    ended, after = running.result(90)

    # expect every call to end within its budget plus the margin, with a result or PoolUnavailable
    assert_every_call_ended_in_time(ended)
    if which == "backend" and down_s < WAIT_S:
        # and, the broker untouched, every assign in flight when Redis died whose deadline lies
        # well after the restart to be answered (the worker stores its result once Redis is
        # back; the listener resubscribes and reads it): a machine handed out is never
        # reported as a failure. (Calls arriving while it is down fail at once, sending nothing.)
        in_flight = [e for e in ended if e.kind == "assign" and e.started < killed_at]
        late_enough = [e for e in in_flight if e.started + WAIT_S > back_at + 3.0]
        assert late_enough
        lost = [e for e in late_enough if e.outcome not in ("assigned", "no_capacity")]
        assert not lost, f"{len(lost)} assigns lost their answer, e.g. {lost[:3]}"
    # and the same client serving again without anyone restarting or reopening it
    assert [e.outcome for e in after] == ["status"] * 3, after


def test_sync_calls_against_a_dead_result_backend_end_in_time_with_pool_unavailable(make_stack: Any) -> None:
    # given a settled pool, and its result backend's Redis dead
    stack: FaultStack = make_stack(idle_target=2, refresh_s=1.0)
    client = PoolClient(app=stack.app, reply_timeout_s=REPLY_S)
    stack.infra.backend.stop(kill=True)
    try:
        # when the sync client calls
        for call, budget_s in [(lambda: client.assign("dead-backend", wait=3.0), 3.0), (client.status, REPLY_S)]:
            started = time.monotonic()
            # expect PoolUnavailable within its budget plus the margin
            with pytest.raises(PoolUnavailable):
                call()
            assert time.monotonic() - started <= budget_s + CLIENT_MARGIN_S
    finally:
        stack.infra.backend.start()
    # and the same client serving once it is back
    assert client.status()["counts"]


def test_gateway_answers_redis_failures_with_503_or_504_never_500(make_stack: Any) -> None:
    gateway = pytest.importorskip("producer.gateway")
    # given the gateway in front of the real async client, and a settled pool of 2 idle machines
    stack: FaultStack = make_stack(idle_target=2, refresh_s=1.0)
    pool = AsyncPoolClient(app=stack.app, reply_timeout_s=REPLY_S)
    app = gateway.create_app(pool)
    backend = stack.infra.backend
    started, in_flight_done, is_down, down_done, back = (threading.Event() for _ in range(5))

    async def requests(http: httpx.AsyncClient, prefix: str, *, wait_s: float) -> list[httpx.Response]:
        return list(
            await asyncio.gather(
                *(http.post(f"/v1/projects/{prefix}-{i}/machine", params={"wait": wait_s}) for i in range(10)),
                *(http.delete(f"/v1/projects/{prefix}-{i}/machine") for i in range(10)),
                *(http.get("/v1/pool") for _ in range(10)),
            )
        )

    async def scenario() -> tuple[int, list[httpx.Response], list[httpx.Response], int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test", timeout=30) as http:
            before = (await http.get("/v1/pool")).status_code
            started.set()
            # 10 assigns waiting 6 s for 2 idle machines: most are queued when Redis dies
            in_flight = await requests(http, "gw-a", wait_s=6)
            in_flight_done.set()
            await asyncio.to_thread(is_down.wait, 60)
            while_down = await requests(http, "gw-b", wait_s=2)
            down_done.set()
            await asyncio.to_thread(back.wait, 60)
            # (the pool worker may still be retrying to store the results of the jobs it ran
            # meanwhile, Celery's result_backend_always_retry: give it time to come round)
            deadline = time.monotonic() + 30
            while (after := (await http.get("/v1/pool")).status_code) != 200 and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
        await pool.aclose()
        return before, in_flight, while_down, after

    running = Background(scenario())
    assert started.wait(30)
    try:
        # when the result backend's Redis is killed under 30 requests in flight, and stays dead
        # past their deadlines (killed and started from this thread: a server dies with the
        # thread that started it)
        time.sleep(0.5)
        backend.stop(kill=True)
        assert in_flight_done.wait(60)
        # and 30 more arrive while it is dead (a dead broker: the async client test above)
        is_down.set()
        assert down_done.wait(60)
    finally:
        if backend.proc is None:
            backend.start()
        back.set()
    before, in_flight, while_down, after = running.result(60)

    # expect answers (a release of nothing is 404 not_assigned) or 503/504, never 500
    assert before == 200
    codes = {200: None, 404: ("not_assigned",), 503: ("no_capacity",), 504: ("pool_unavailable",)}
    for response in (*in_flight, *while_down):
        assert response.status_code in codes, (response.status_code, response.text[:300])
        if response.status_code != 200:
            assert response.json()["code"] in codes[response.status_code], response.text[:300]
    assert all(r.status_code in (503, 504) for r in while_down)
    # and the gateway serving again once Redis is back
    assert after == 200
