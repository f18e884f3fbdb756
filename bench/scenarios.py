"""The benchmarks. Each takes the shared Infra, starts its own warmpool processes, and returns raw numbers.

Every assign measurement is paired with a floor measurement taken right
before it, with the same client code and the same processes running, so the
ratio compares like with like even when the machine's load drifts.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import time
from dataclasses import dataclass
from typing import Any

from bench.measure import (
    assign_drain_rate,
    burst,
    floor_burst,
    floor_drain,
    floor_sequential,
    sequential,
    sequential_async,
    warm_client,
)
from bench.noop import NOOP_TASK
from bench.stack import Infra, Warmpool, log_lines, log_offset, make_app, task_runtimes
from bench.stats import Progress, raw_ms, say, summary_ms, wait_until
from producer.client import PoolClient
from tasks.contract import POOL_QUEUE, TASK_APPLY_SNAPSHOT

SLOW_AWS_S = 0.100


@dataclass(frozen=True)
class Sizes:
    """How big each benchmark is. ``full()`` is what ``python -m bench all`` runs; ``smoke()`` takes seconds."""

    floor_n: int = 500
    drain_n: int = 2000
    seq_n: int = 500
    burst_n: int = 1000
    warmup: int = 20
    refresh_n: int = 5000
    refresh_steps: int = 5  # few large SetDesiredCapacity steps: few moto reservations
    many_reservations_n: int = 1500  # one instance per reservation (what real AWS pagination looks like)
    refresh_count: int = 2
    refresh_load_s: float = 30.0
    refresh_rate_per_s: float = 40.0
    refresh_interval_s: float = 10.0
    sustain_s: float = 60.0
    clients: int = 10
    original_seq_n: int = 200

    @classmethod
    def full(cls) -> Sizes:
        return cls()

    @classmethod
    def smoke(cls) -> Sizes:
        return cls(
            floor_n=50,
            drain_n=200,
            seq_n=30,
            burst_n=60,
            warmup=5,
            refresh_n=300,
            refresh_steps=3,
            many_reservations_n=0,
            refresh_count=1,
            refresh_load_s=2.0,
            refresh_rate_per_s=20.0,
            refresh_interval_s=2.0,
            sustain_s=0.0,
            clients=4,
            original_seq_n=0,
        )


def worker_runtimes(wp: Warmpool, task: str, offset: int) -> dict[str, Any]:
    return summary_ms(task_runtimes(wp.log("pool"), task, since_offset=offset))


def noop_runtimes(infra: Infra, offset: int) -> dict[str, Any]:
    return summary_ms(task_runtimes(infra.logs / "noop.log", "bench.noop", since_offset=offset))


# -- 1. floor --------------------------------------------------------------------------
def floor(infra: Infra, sizes: Sizes) -> dict[str, Any]:
    """No-op round trips (sync and async client), the solo worker's drain rate, a no-op burst."""
    say("[floor] no-op Celery task on the same broker and backend, its own solo worker")
    offset = log_offset(infra.logs / "noop.log")
    result = floor_sequential(infra, sizes.floor_n)
    result["drain"] = floor_drain(infra, sizes.drain_n)
    result["burst"] = floor_burst(infra, sizes.burst_n)
    result["worker_runtime"] = noop_runtimes(infra, offset)
    return result


# -- 2. sequential assign latency --------------------------------------------------------
def assign_sequential(infra: Infra, wp: Warmpool, n: int, label: str, *, warmup: int) -> dict[str, Any]:
    """Paired floor, then ``n`` sequential assigns with PoolClient and ``n`` with AsyncPoolClient."""
    assert infra.app is not None
    paired = floor_sequential(infra, n, label=f"{label} floor")
    client = PoolClient(app=infra.app, reply_timeout_s=30.0)
    machines: list[str] = []

    def assign_sync(i: int) -> None:
        machines.append(client.assign(f"{label}-s{i}").instance_id)

    offset = log_offset(wp.log("pool"))
    sync_lat = sequential(assign_sync, n, f"{label} assign sync", warmup=warmup)
    sync_runtime = worker_runtimes(wp, "warmpool.assign", offset)

    async def run_async() -> list[float]:
        async with warm_client(infra.app) as aclient:

            async def assign_async(i: int) -> None:
                machines.append((await aclient.assign(f"{label}-a{i}")).instance_id)

            return await sequential_async(assign_async, n, f"{label} assign async", warmup=warmup)

    async_lat = asyncio.run(run_async())
    rebalances = task_runtimes(wp.log("pool"), "warmpool.rebalance", since_offset=offset)
    return {
        "n": n,
        "group_size": len(wp.instance_ids),
        "floor": paired,
        "sync": summary_ms(sync_lat),
        "async": summary_ms(async_lat),
        "sync_raw_ms": raw_ms(sync_lat),
        "async_raw_ms": raw_ms(async_lat),
        "distinct_machines": len(set(machines)) == len(machines),
        "worker_runtime_assign": sync_runtime,
        "rebalance_jobs": {"count": len(rebalances), **summary_ms(rebalances)},
    }


def sequential_scenario(
    infra: Infra, sizes: Sizes, *, label: str = "sequential", queued_too: bool = True
) -> dict[str, Any]:
    """Sequential assigns; with ``queued_too``, again with the aws side effects held in the broker."""
    size = (4 if queued_too else 2) * (sizes.seq_n + sizes.warmup) + 10
    with Warmpool(infra, label, idle_target=size) as wp:
        wp.start(group_steps=[size], max_size=size)
        result = assign_sequential(infra, wp, sizes.seq_n, label, warmup=sizes.warmup)
        if queued_too:
            with wp.side_effects_queued():
                say(f"[{label}] again with the aws worker paused: side effects wait in the broker")
                result["side_effects_queued"] = assign_sequential(
                    infra, wp, sizes.seq_n, f"{label}-q", warmup=sizes.warmup
                )
        return result


# -- 3. burst ----------------------------------------------------------------------------
def assign_burst(infra: Infra, wp: Warmpool, n: int, label: str) -> dict[str, Any]:
    """Paired floor drain, then ``n`` concurrent assigns (AsyncPoolClient + asyncio.gather)."""
    assert infra.app is not None
    paired = floor_drain(infra, n, label=f"{label} floor drain")
    prefix = f"{label}-b"

    async def run() -> dict[str, Any]:
        async with warm_client(infra.app, reply_timeout_s=60.0) as client:
            return await burst(lambda i: client.assign(f"{prefix}{i}"), n, f"{label} burst")

    offset = log_offset(wp.log("pool"))
    result = asyncio.run(run())
    machines = [m.instance_id for m in result.pop("results")]
    group = set(wp.instance_ids)
    result.update(
        {
            "floor_drain": paired,
            "distinct_machines": len(set(machines)) == len(machines) == n,
            "all_in_group": set(machines) <= group,
            "worker_drain": assign_drain_rate(infra, prefix),
            "worker_runtime_assign": worker_runtimes(wp, "warmpool.assign", offset),
        }
    )
    return result


def burst_scenario(infra: Infra, sizes: Sizes, *, label: str = "burst", queued_too: bool = True) -> dict[str, Any]:
    """A burst of assigns; with ``queued_too``, a second one with the aws side effects held in the broker."""
    n = sizes.burst_n
    size = 2 * n if queued_too else n
    with Warmpool(infra, label, idle_target=size) as wp:
        wp.start(group_steps=[size], max_size=size)
        result = assign_burst(infra, wp, n, label)
        if queued_too:
            wait_until(lambda: infra.queue_length("aws") == 0, timeout_s=120, what="the first burst's side effects")
            with wp.side_effects_queued():
                say(f"[{label}] again with the aws worker paused: side effects wait in the broker")
                result["side_effects_queued"] = assign_burst(infra, wp, n, f"{label}-q")
        return result


# -- 4. slow AWS -------------------------------------------------------------------------
def slow_aws_scenario(infra: Infra, sizes: Sizes) -> dict[str, Any]:
    """2 and 3 again with SLOW_AWS_S added to every AWS call (the fault proxy)."""
    assert infra.control is not None
    infra.control.configure(latency_s=SLOW_AWS_S)
    say(f"[slow-aws] +{SLOW_AWS_S * 1000:.0f} ms on every AWS call")
    try:
        infra.control.reset_counts()
        seq = sequential_scenario(infra, sizes, label="slow-seq", queued_too=False)
        seq["aws_calls"] = infra.control.counts()
        infra.control.reset_counts()
        bur = burst_scenario(infra, sizes, label="slow-burst", queued_too=False)
        bur["aws_calls"] = infra.control.counts()
    finally:
        infra.control.reset_faults()
    return {"latency_added_s": SLOW_AWS_S, "sequential": seq, "burst": bur}


# -- 5. refresh at scale -----------------------------------------------------------------
def _steps(n: int, count: int) -> list[int]:
    return sorted({max(1, round(n * (i + 1) / count)) for i in range(count)})


def measure_refreshes(infra: Infra, wp: Warmpool, count: int, label: str) -> dict[str, Any]:
    """``count`` refreshes one after another: AWS calls by action (at the proxy) and wall time of each."""
    assert infra.control is not None
    per_refresh: list[dict[str, Any]] = []
    aws_offset, pool_offset = log_offset(wp.log("aws")), log_offset(wp.log("pool"))
    with Progress(f"{label} refreshes", count) as progress:
        for _ in range(count):
            infra.control.reset_counts()
            before = wp.refreshed_at()
            started = time.perf_counter()
            wp.refresh_now()
            wait_until(lambda b=before: wp.refreshed_at() > b, timeout_s=300, what="a refresh to be applied")
            wall = time.perf_counter() - started
            time.sleep(0.3)  # let the rebalance that follows finish before counting
            counts = infra.control.counts()
            # The refresh reads (Describe*); anything else is other work the window overlapped
            # (tags and protection left over from earlier assigns).
            calls = {k: v for k, v in counts.items() if k.startswith("Describe")}
            other = {k: v for k, v in counts.items() if not k.startswith("Describe")}
            per_refresh.append(
                {"wall_s": round(wall, 3), "calls": calls, "total_calls": sum(calls.values()), "other_calls": other}
            )
            progress.advance()
    describe = task_runtimes(wp.log("aws"), "warmpool.refresh", since_offset=aws_offset)
    apply = task_runtimes(wp.log("pool"), "warmpool.apply_snapshot", since_offset=pool_offset)
    return {
        "instances": len(wp.instance_ids),
        "refreshes": per_refresh,
        "max_calls": max(r["total_calls"] for r in per_refresh),
        "wall_s": summary_ms([r["wall_s"] for r in per_refresh]),
        "aws_side_s": [round(x, 3) for x in describe],
        "pool_apply_s": [round(x, 3) for x in apply],
    }


def paced_assigns(
    infra: Infra,
    duration_s: float,
    rate: float,
    prefix: str,
    label: str,
    *,
    wp: Warmpool | None = None,
    min_refreshes: int = 0,
    max_duration_s: float = 0.0,
    noop: bool = False,
) -> dict[str, Any]:
    """Sequential assigns (or, with ``noop``, no-op floor calls) scheduled at ``rate``/s for ``duration_s`` seconds.

    One assign at a time; a late one is sent as soon as the previous answered
    (the schedule does not wait for it), and nothing is sent after
    ``duration_s``: the phase ends on time even when assigns are slow. With
    ``min_refreshes``, it goes on (up to ``max_duration_s``) until that many
    refreshes were applied while it ran.
    """
    assert infra.app is not None
    client = PoolClient(app=infra.app, reply_timeout_s=60.0)
    latencies, sent_at, refreshes = [], [], []
    last_refresh = wp.refreshed_at() if wp is not None else 0.0
    start = time.perf_counter()
    i = 0
    with Progress(label, int(duration_s * rate)) as progress:
        while True:
            due = start + i / rate
            now = time.perf_counter()
            if wp is not None and i % 10 == 0 and wp.refreshed_at() > last_refresh:
                last_refresh = wp.refreshed_at()
                refreshes.append(round(now - start, 2))
                progress.note = f"{len(refreshes)} refreshes applied"
            enough = len(refreshes) >= min_refreshes or now - start >= max(duration_s, max_duration_s)
            if now - start >= duration_s and enough:
                break
            if due > now:
                time.sleep(due - now)
            t = time.perf_counter()
            if noop:
                client.call(NOOP_TASK, timeout_s=60.0)
            else:
                client.assign(f"{prefix}{i}")
            latencies.append(time.perf_counter() - t)
            sent_at.append(t - start)
            i += 1
            progress.advance()
    elapsed = time.perf_counter() - start
    return {
        **summary_ms(latencies),
        "rate_per_s": rate,
        "duration_s": round(elapsed, 1),
        "achieved_per_s": round(len(latencies) / elapsed, 1),
        "refreshes_applied_at_s": refreshes,
        "raw_ms": raw_ms(latencies),
        "sent_at_s": [round(x, 4) for x in sent_at],
    }


def paced_floor(infra: Infra, sizes: Sizes) -> dict[str, Any]:
    """No-op calls paced like the refresh benchmark's assigns (same rate, a quarter of the time)."""
    duration = max(2.0, sizes.refresh_load_s / 4)
    return paced_assigns(infra, duration, sizes.refresh_rate_per_s, "", "floor, paced", noop=True)


def assigns_over_refreshes(infra: Infra, wp: Warmpool, sizes: Sizes, prefix: str, label: str) -> dict[str, Any]:
    """Paced assigns for the load period, and on until at least 2 refreshes were applied.

    Never longer than the idle machines left allow (each assign takes one).
    """
    budget_s = max(0.0, (wp.idle_count() - 20) / sizes.refresh_rate_per_s)
    return paced_assigns(
        infra,
        min(sizes.refresh_load_s, budget_s),
        sizes.refresh_rate_per_s,
        prefix,
        label,
        wp=wp,
        min_refreshes=2,
        max_duration_s=min(3 * sizes.refresh_load_s, budget_s),
    )


def refresh_scenario(infra: Infra, sizes: Sizes) -> dict[str, Any]:
    """A large group: AWS calls and wall time per refresh; assign latency with and without refreshes running."""
    n = sizes.refresh_n
    result: dict[str, Any] = {"n": n, "goal_calls": math.ceil(n / 1000) + 2}
    with Warmpool(infra, "refresh", idle_target=n, refresh_s=sizes.refresh_interval_s) as wp:
        wp.start(group_steps=_steps(n, sizes.refresh_steps), max_size=n, beat=False, timeout_s=600)
        result["few_reservations"] = {
            "reservations": len(_steps(n, sizes.refresh_steps)),
            **measure_refreshes(infra, wp, sizes.refresh_count, "refresh"),
        }
        pool_offset = log_offset(wp.log("pool"))
        result["floor"] = floor_sequential(infra, sizes.floor_n, label="refresh floor")
        # Paced assigns idle between calls (wake-ups cost): their baseline is a no-op paced alike.
        result["floor_paced"] = paced_floor(infra, sizes)
        quiet_s = max(2.0, sizes.refresh_load_s / 4)
        result["assign_quiet"] = paced_assigns(
            infra, quiet_s, sizes.refresh_rate_per_s, "rq-", "assigns, no refresh running"
        )
        wp.start_beat()
        say(f"[refresh] beat on: a refresh every {sizes.refresh_interval_s:.0f}s while assigns run")
        before = wp.refreshed_at()
        result["assign_during_refresh"] = during = assigns_over_refreshes(
            infra, wp, sizes, "rr-", "assigns while refreshes run"
        )
        applied = [
            e
            for e in log_lines(wp.log("pool"), since_offset=pool_offset)
            if e.get("task") == "warmpool.apply_snapshot" and e.get("msg") == "job done"
        ]
        during["refreshes_applied"] = len(during["refreshes_applied_at_s"])
        during["apply_ms"] = [e.get("duration_ms") for e in applied]
        during["refreshed"] = wp.refreshed_at() > before
        rebalances = task_runtimes(wp.log("pool"), "warmpool.rebalance", since_offset=pool_offset)
        result["rebalance_jobs"] = {"count": len(rebalances), **summary_ms(rebalances)}
        result["pool_side_only"] = refresh_pool_side_only(infra, wp, sizes)
    if sizes.many_reservations_n:
        m = sizes.many_reservations_n
        with Warmpool(infra, "refresh-many", idle_target=m, refresh_s=sizes.refresh_interval_s) as wp:
            wp.start(group_steps=list(range(1, m + 1)), max_size=m, beat=False, timeout_s=600)
            result["many_reservations"] = {
                "reservations": m,
                "goal_calls": math.ceil(m / 1000) + 2,
                **measure_refreshes(infra, wp, sizes.refresh_count, "refresh (1 instance per reservation)"),
            }
    return result


def _send_snapshots(broker_url: str, backend_url: str, payload: dict[str, Any], interval_s: float, stop: Any) -> None:
    """Send ``payload`` to the pool worker as a refresh would, every ``interval_s``, until ``stop`` is set."""
    app = make_app(broker_url, backend_url)
    while not stop.wait(interval_s):
        payload["observed_at"] = time.time()
        app.send_task(TASK_APPLY_SNAPSHOT, args=[payload], queue=POOL_QUEUE, ignore_result=True)


def refresh_pool_side_only(infra: Infra, wp: Warmpool, sizes: Sizes) -> dict[str, Any]:
    """Assigns while the pool worker applies full snapshots, with no AWS work on this machine.

    The snapshot is read from moto once, beforehand; while the aws worker is
    paused it is sent to the pool worker (a fresh ``observed_at`` each time)
    every refresh interval, as the refresh job would. What remains is the pool
    side of a refresh: decoding, reconciling and writing N instances.
    """
    assert infra.app is not None
    if wp.idle_count() < sizes.refresh_load_s * sizes.refresh_rate_per_s:
        say("[refresh] pool side only: skipped, too few idle machines left")
        return {"skipped": f"{wp.idle_count()} idle machines left"}
    say(f"[refresh] pool side only: reading the group once, then applying it every {sizes.refresh_interval_s:.0f}s")
    payload = infra.snapshot_payload()
    # Sent from another process: encoding 5,000 instances (~1.6 MB of JSON) in
    # this one would stall the measured client, not the pool worker.
    spawn = multiprocessing.get_context("spawn")
    stop = spawn.Event()
    sender = spawn.Process(
        target=_send_snapshots,
        args=(infra.broker_url, infra.backend_url, payload, sizes.refresh_interval_s, stop),
        daemon=True,
    )
    with wp.side_effects_queued():
        floor = floor_sequential(infra, sizes.floor_n, label="refresh floor (pool side only)")
        floor_paced = paced_floor(infra, sizes)
        sender.start()
        try:
            during = assigns_over_refreshes(infra, wp, sizes, "rp-", "assigns while snapshots are applied")
        finally:
            stop.set()
            sender.join(15)
    during["refreshes_applied"] = len(during["refreshes_applied_at_s"])
    return {"floor": floor, "floor_paced": floor_paced, "assign_during_apply": during}


# -- profile -----------------------------------------------------------------------------
def profile_scenario(infra: Infra, sizes: Sizes, out_dir: Any) -> dict[str, Any]:
    """py-spy on the pool worker during sequential assigns; where the worker's time goes."""
    from bench.profile import record, summarize

    n = sizes.seq_n
    size = n + sizes.warmup + 10
    with Warmpool(infra, "profile", idle_target=size) as wp:
        wp.start(group_steps=[size], max_size=size)
        assert infra.app is not None
        client = PoolClient(app=infra.app, reply_timeout_s=30.0)
        for i in range(sizes.warmup):
            client.assign(f"pw-{i}")
        raw_path = out_dir / "profile-pool-worker.txt"
        with record(wp.pid("pool"), raw_path):
            lat = sequential(lambda i: client.assign(f"prof-{i}"), n, "profile assign sync")
        summary = summarize(raw_path)
        summary["assign_under_profiler"] = summary_ms(lat)
        summary["raw_path"] = str(raw_path)
        return summary


# -- smoke: everything small, on one stack -----------------------------------------------------
def smoke_scenario(infra: Infra, sizes: Sizes) -> dict[str, Any]:
    """Sequential, burst, one refresh, then sequential and burst with slow AWS, all on one warmpool stack."""
    assert infra.control is not None
    seq = sizes.seq_n + sizes.warmup
    paced = int(sizes.refresh_load_s * sizes.refresh_rate_per_s)
    size = 2 * (2 * seq + sizes.burst_n) + paced + 20
    results: dict[str, Any] = {}
    with Warmpool(infra, "smoke", idle_target=size) as wp:
        wp.start(group_steps=_steps(size, sizes.refresh_steps), max_size=size)
        results["sequential"] = assign_sequential(infra, wp, sizes.seq_n, "sequential", warmup=sizes.warmup)
        results["burst"] = assign_burst(infra, wp, sizes.burst_n, "burst")
        refreshes = measure_refreshes(infra, wp, sizes.refresh_count, "refresh")
        floor_seq = floor_sequential(infra, sizes.seq_n, label="refresh floor")
        quiet = paced_assigns(infra, sizes.refresh_load_s, sizes.refresh_rate_per_s, "rq-", "assigns")
        results["refresh"] = {
            "n": size,
            "goal_calls": math.ceil(size / 1000) + 2,
            "few_reservations": {"reservations": sizes.refresh_steps, **refreshes},
            "floor": floor_seq,
            "assign_quiet": quiet,
        }
        infra.control.configure(latency_s=SLOW_AWS_S)
        try:
            seq_slow = assign_sequential(infra, wp, sizes.seq_n, "slow-seq", warmup=sizes.warmup)
            burst_slow = assign_burst(infra, wp, sizes.burst_n, "slow-burst")
        finally:
            infra.control.reset_faults()
        results["slow_aws"] = {"latency_added_s": SLOW_AWS_S, "sequential": seq_slow, "burst": burst_slow}
    return results
