"""Measurement loops shared by the scenarios: sequential round trips, bursts, the worker's drain rate."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

from celery import Celery

from bench.noop import NOOP_QUEUE, NOOP_TASK
from bench.stack import HOST, Infra
from bench.stats import Progress, raw_ms, summary_ms
from producer.aio import AsyncPoolClient
from producer.client import PoolClient

REPLY_TIMEOUT_S = 30.0


def sequential(call: Callable[[int], Any], n: int, label: str, *, warmup: int = 0) -> list[float]:
    """Latency (s) of ``n`` calls made one after another (after ``warmup`` unmeasured ones)."""
    for i in range(warmup):
        call(-1 - i)
    latencies = []
    with Progress(label, n) as progress:
        for i in range(n):
            started = time.perf_counter()
            call(i)
            latencies.append(time.perf_counter() - started)
            progress.advance()
    return latencies


async def sequential_async(
    call: Callable[[int], Awaitable[Any]], n: int, label: str, *, warmup: int = 0
) -> list[float]:
    for i in range(warmup):
        await call(-1 - i)
    latencies = []
    with Progress(label, n) as progress:
        for i in range(n):
            started = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - started)
            progress.advance()
    return latencies


FIRST_CALL_STALL_S = 0.5
client_stats = {"clients": 0, "first_call_stalled": 0}


async def warm_up(client: AsyncPoolClient) -> float:
    """One no-op round trip with a 1 s timeout; returns how long it took."""
    started = time.perf_counter()
    await client.call(NOOP_TASK, timeout_s=1.0)
    return time.perf_counter() - started


@contextlib.asynccontextmanager
async def warm_client(app: Celery, *, reply_timeout_s: float = REPLY_TIMEOUT_S) -> AsyncIterator[AsyncPoolClient]:
    """An AsyncPoolClient whose first call went through without stalling.

    Up to 0f9147d, AsyncPoolClient's first call raced its own reader to open
    the pub/sub connection: each opened one, the subscription made on the
    connection that was not read was lost, and that call waited for its whole
    timeout before finding its result by GET (and later calls could be lost
    too). Fixed since; the guard stays so a regression shows up as a count
    (``client_stats``, in the table) instead of as a 30 s outlier in a
    latency distribution.
    """
    for _attempt in range(20):
        client = AsyncPoolClient(app=app, reply_timeout_s=reply_timeout_s)
        client_stats["clients"] += 1
        if await warm_up(client) < FIRST_CALL_STALL_S:
            try:
                yield client
            finally:
                await client.aclose()
            return
        client_stats["first_call_stalled"] += 1
        await client.aclose()
    raise RuntimeError("20 fresh AsyncPoolClients in a row stalled on their first call")


async def burst(call: Callable[[int], Awaitable[Any]], n: int, label: str) -> dict[str, Any]:
    """``n`` concurrent calls (asyncio.gather): completion times, completed/s, results and errors."""
    progress = Progress(label, n)
    started = time.perf_counter()

    async def one(i: int) -> tuple[Any, float]:
        result = await call(i)
        progress.advance()
        return result, time.perf_counter() - started

    outcomes = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    progress.close()
    done = [o for o in outcomes if not isinstance(o, BaseException)]
    errors = [f"{type(o).__name__}: {o}" for o in outcomes if isinstance(o, BaseException)]
    completions = sorted(t for _, t in done)
    wall = completions[-1] if completions else float("nan")
    return {
        "n": n,
        "completed": len(done),
        "errors": len(errors),
        "error_samples": errors[:5],
        "wall_s": round(wall, 4),
        "completed_per_s": round(len(done) / wall, 1) if done else 0.0,
        "completion": summary_ms(completions),
        "completion_raw_ms": raw_ms(completions),
        "results": [r for r, _ in done],
    }


# -- the floor: the no-op task ---------------------------------------------------------
def noop_sync(client: PoolClient) -> Callable[[int], Any]:
    return lambda _i: client.call(NOOP_TASK, timeout_s=REPLY_TIMEOUT_S)


def noop_async(client: AsyncPoolClient) -> Callable[[int], Awaitable[Any]]:
    return lambda _i: client.call(NOOP_TASK, timeout_s=REPLY_TIMEOUT_S)


def floor_sequential(infra: Infra, n: int, *, label: str = "floor") -> dict[str, Any]:
    """Sequential no-op round trips through PoolClient and AsyncPoolClient (the same client code as assign)."""
    assert infra.app is not None
    sync_lat = sequential(noop_sync(PoolClient(app=infra.app)), n, f"{label} sync", warmup=min(50, n))

    async def run() -> list[float]:
        async with warm_client(infra.app) as client:
            return await sequential_async(noop_async(client), n, f"{label} async", warmup=min(50, n))

    async_lat = asyncio.run(run())
    return {
        "sync": summary_ms(sync_lat),
        "async": summary_ms(async_lat),
        "sync_raw_ms": raw_ms(sync_lat),
        "async_raw_ms": raw_ms(async_lat),
    }


def floor_burst(infra: Infra, n: int, *, label: str = "floor burst") -> dict[str, Any]:
    """``n`` concurrent no-op calls through AsyncPoolClient: the client-observed ceiling of a burst."""
    assert infra.app is not None

    async def run() -> dict[str, Any]:
        async with warm_client(infra.app) as client:
            return await burst(noop_async(client), n, label)

    result = asyncio.run(run())
    result.pop("results")
    return result


def _meta_times(infra: Infra, task_ids: list[str]) -> list[datetime] | None:
    r = infra.redis(1)
    metas = r.mget([f"celery-task-meta-{t}" for t in task_ids])
    if any(m is None for m in metas):
        return None
    return [datetime.fromisoformat(json.loads(m)["date_done"]) for m in metas]


def floor_drain(infra: Infra, n: int, *, label: str = "floor drain") -> dict[str, Any]:
    """The solo no-op worker's drain rate: ``n`` tasks queued while it does not consume, then released.

    Rate = tasks / (last result stored - first result stored), from the
    results' ``date_done``: what the worker sustains with results stored,
    independent of any client.
    """
    assert infra.app is not None
    app, dest = infra.app, [f"noop@{HOST}"]
    sender = Celery("bench-drain")  # no result backend: sending must not subscribe to n result channels
    sender.config_from_object("celeryconfig")
    sender.conf.update(broker_url=infra.broker_url, result_backend=None)
    app.control.cancel_consumer(NOOP_QUEUE, destination=dest, reply=True, timeout=5)
    try:
        with sender.producer_or_acquire() as producer:
            ids = [str(sender.send_task(NOOP_TASK, queue=NOOP_QUEUE, producer=producer).id) for _ in range(n)]
    finally:
        released = time.perf_counter()
        app.control.add_consumer(NOOP_QUEUE, destination=dest, reply=True, timeout=5)
    progress = Progress(label, n)
    times = None
    deadline = time.monotonic() + 120
    while times is None and time.monotonic() < deadline:
        time.sleep(0.02)
        times = _meta_times(infra, ids)
        progress.advance(0, note="waiting for the results")
    client_s = time.perf_counter() - released
    progress.close()
    if times is None:
        raise TimeoutError("the floor worker did not drain its queue within 120 s")
    span = (max(times) - min(times)).total_seconds()
    return {
        "n": n,
        "span_s": round(span, 4),
        "drain_per_s": round((n - 1) / span, 1) if span > 0 else float("nan"),
        "client_observed_per_s": round(n / client_s, 1),
    }


def assign_drain_rate(infra: Infra, project_prefix: str) -> dict[str, Any]:
    """The pool worker's drain rate during a burst, from the stored assign results' ``date_done``."""
    r = infra.redis(1)
    times = []
    for key in r.scan_iter(match="celery-task-meta-*", count=1000):
        raw = r.get(key)
        if not raw:
            continue
        meta = json.loads(raw)
        result = meta.get("result")
        if isinstance(result, dict) and str(result.get("project_id", "")).startswith(project_prefix):
            times.append(datetime.fromisoformat(meta["date_done"]))
    if len(times) < 2:
        return {"n": len(times), "drain_per_s": float("nan")}
    span = (max(times) - min(times)).total_seconds()
    return {"n": len(times), "span_s": round(span, 4), "drain_per_s": round((len(times) - 1) / span, 1)}
