"""The pools benchmark: 1, 2 and 4 pools, each its own group and its own solo worker, on one machine.

Per pool, sequential assigns are measured against the no-op floor measured
right before them (the latency goals: p50 <= 1.5x, p99 <= 2x). Then every pool
gets a burst at the same moment (one AsyncPoolClient per pool) and the
aggregate assign throughput is the total served over the wall time: it grows
with pools until the machine's CPUs are saturated.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.measure import burst, floor_sequential, sequential
from bench.noop import NOOP_TASK
from bench.stack import HOST, REGION, REPO, Infra
from bench.stats import ratio, say, summary_ms, wait_until
from producer.aio import AsyncPoolClient
from producer.client import PoolClient
from sandbox import LocalStack, create_simulated_group
from sandbox.processes import worker_argv
from tasks.contract import TASK_REFRESH
from tasks.pools import Deployment, load_deployment
from tasks.state.keys import PoolKeys

POOL_COUNTS = (1, 2, 4)


@dataclass(frozen=True)
class PoolSizes:
    seq_n: int = 200  # sequential assigns per pool (sync client)
    burst_n: int = 400  # concurrent assigns per pool in the aggregate burst
    warmup: int = 10

    @classmethod
    def smoke(cls) -> PoolSizes:
        return cls(seq_n=20, burst_n=40, warmup=3)


def write_config(path: Path, count: int, *, per_pool: int) -> Path:
    lines = ["[defaults]", f"idle_target = {per_pool}", "refresh_seconds = 0.5", ""]
    for i in range(count):
        lines += [f"[pools.p{i}]", f'asg = "bench-pool-{i}"', ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


class Pools:
    """``count`` pools on the run's Redis and moto: one aws worker, one solo pool worker per pool, no beat."""

    def __init__(self, infra: Infra, count: int, *, per_pool: int) -> None:
        assert infra.local is not None and infra.moto is not None
        self.infra = infra
        self.count = count
        self.per_pool = per_pool
        config = write_config(infra.logs / f"pools-{count}.toml", count, per_pool=per_pool)
        self.local = LocalStack(
            infra.logs,
            urls=infra.local.urls,
            moto=infra.moto,
            aws_endpoint_url=infra.proxy_url,
            region=REGION,
            extra_env={"PYTHONPATH": str(REPO), "WARMPOOL_CONFIG": str(config)},
            node=HOST,
            log_prefix=f"pools{count}-",
        ).start()
        self.deployment: Deployment = load_deployment(self.local.env)
        self.state = infra.redis(2)

    def start(self) -> None:
        infra = self.infra
        assert infra.moto is not None and infra.app is not None
        infra.purge_pool_queues()
        infra.redis(1).flushdb()
        self.state.flushdb()
        infra.moto.reset()
        started = time.monotonic()
        for pool in self.deployment:
            create_simulated_group(
                infra.moto.endpoint_url,
                name=pool.asg_name,
                region=REGION,
                min_size=0,
                max_size=self.per_pool,
                desired=self.per_pool,
            )
        say(f"[pools x{self.count}] {self.count} groups of {self.per_pool} in {time.monotonic() - started:.1f}s")
        self.local.start_aws_worker("aws", concurrency=4, wait=False)
        for pool in self.deployment:
            argv = worker_argv(pool.queue, hostname=self.local.worker_name(f"pool-{pool.name}"), solo=True)
            self.local.spawn(f"pool-{pool.name}", argv)
        self.local.wait_for_workers(["aws", *(f"pool-{p.name}" for p in self.deployment)], timeout_s=60)
        for pool in self.deployment:
            self.wait_all_idle(pool.name, timeout_s=240)
        say(f"[pools x{self.count}] every machine idle after {time.monotonic() - started:.1f}s")

    def idle(self, name: str) -> int:
        return int(self.state.zcard(PoolKeys.for_group(self.deployment.pool(name).namespace).idle))

    def wait_all_idle(self, name: str, *, timeout_s: float) -> None:
        assert self.infra.app is not None
        deadline = time.monotonic() + timeout_s
        while self.idle(name) < self.per_pool:
            self.infra.app.send_task(TASK_REFRESH, kwargs={"pool": name}, queue="aws", ignore_result=True)
            time.sleep(0.5)  # the refresh, its apply, and the state-loss grace of a fresh state
            if time.monotonic() > deadline:
                raise TimeoutError(f"pool {name}: {self.idle(name)}/{self.per_pool} idle")

    def stop(self) -> None:
        self.local.stop(timeout_s=10)
        self.state.close()


def _sequential(infra: Infra, pools: Pools, name: str, sizes: PoolSizes) -> dict[str, Any]:
    assert infra.app is not None
    floor = floor_sequential(infra, sizes.seq_n, label=f"pools x{pools.count} {name} floor")
    client = PoolClient(app=infra.app, reply_timeout_s=30.0, deployment=pools.deployment, pool=name)
    machines: list[str] = []

    def assign(i: int) -> None:
        machines.append(client.assign(f"s{pools.count}-{name}-{i}").instance_id)

    latencies = sequential(assign, sizes.seq_n, f"pools x{pools.count} {name} assign", warmup=sizes.warmup)
    assign_ms, floor_ms = summary_ms(latencies), floor["sync"]
    return {
        "floor": floor_ms,
        "assign": assign_ms,
        "p50_ratio": ratio(assign_ms["p50_ms"], floor_ms["p50_ms"]),
        "p99_ratio": ratio(assign_ms["p99_ms"], floor_ms["p99_ms"]),
        "distinct_machines": len(set(machines)) == len(machines),
    }


def _aggregate_burst(infra: Infra, pools: Pools, sizes: PoolSizes) -> dict[str, Any]:
    """Every pool's burst at once: total assigns served per second of wall time."""
    assert infra.app is not None
    app = infra.app

    async def run() -> tuple[list[dict[str, Any]], float]:
        clients = [
            AsyncPoolClient(app=app, reply_timeout_s=60.0, deployment=pools.deployment, pool=p.name)
            for p in pools.deployment
        ]
        try:
            for c in clients:  # each client's result listener is up before the clock starts
                await c.call(NOOP_TASK, timeout_s=10.0)
            started = time.perf_counter()
            bursts = await asyncio.gather(
                *(
                    burst(
                        lambda i, c=c: c.assign(f"b{pools.count}-{c.pool}-{i}"),
                        sizes.burst_n,
                        f"pools x{pools.count} {c.pool} burst",
                    )
                    for c in clients
                )
            )
            return list(bursts), time.perf_counter() - started
        finally:
            for c in clients:
                await c.aclose()

    bursts, wall = asyncio.run(run())
    served = sum(b["completed"] for b in bursts)
    machines = [m.instance_id for b in bursts for m in b.pop("results")]
    for b in bursts:
        b.pop("completion_raw_ms", None)
    return {
        "per_pool": bursts,
        "served": served,
        "wanted": sizes.burst_n * pools.count,
        "wall_s": round(wall, 3),
        "aggregate_per_s": round(served / wall, 1) if wall > 0 else 0.0,
        "distinct_machines": len(set(machines)) == len(machines),
    }


def pools_scenario(infra: Infra, sizes: PoolSizes | None = None) -> dict[str, Any]:
    """1, 2 and 4 pools: per-pool sequential latency (vs the floor) and the aggregate burst throughput."""
    sizes = sizes or PoolSizes()
    per_pool = sizes.seq_n + sizes.warmup + sizes.burst_n + 10
    results: dict[str, Any] = {"sizes": sizes.__dict__, "runs": {}}
    for count in POOL_COUNTS:
        pools = Pools(infra, count, per_pool=per_pool)
        try:
            pools.start()
            run = {name: _sequential(infra, pools, name, sizes) for name in pools.deployment.names()}
            aggregate = _aggregate_burst(infra, pools, sizes)
            wait_until(lambda: infra.queue_length("aws") == 0, timeout_s=120, what="the bursts' side effects")
            results["runs"][str(count)] = {"sequential": run, "aggregate": aggregate}
            say(
                f"[pools x{count}] aggregate {aggregate['aggregate_per_s']}/s "
                f"({aggregate['served']}/{aggregate['wanted']} served in {aggregate['wall_s']}s)"
            )
        finally:
            pools.stop()
    return results


def pools_rows(results: dict[str, Any]) -> list[tuple[str, str, Any, Any, Any, str, bool | None]]:
    """Table rows (bench/report.py's shape): per pool count, the worst pool's ratios and the aggregate."""
    rows: list[tuple[str, str, Any, Any, Any, str, bool | None]] = []
    base = None
    for count, run in results.get("runs", {}).items():
        name = f"8 pools x{count}"
        worst = max(run["sequential"].values(), key=lambda s: s["p99_ratio"])
        got, floor = worst["assign"], worst["floor"]
        rows.append(
            (
                name,
                "worst pool p50 ms",
                got["p50_ms"],
                floor["p50_ms"],
                worst["p50_ratio"],
                "<= 1.5x floor",
                worst["p50_ratio"] <= 1.5,
            )
        )
        rows.append(
            (
                name,
                "worst pool p99 ms",
                got["p99_ms"],
                floor["p99_ms"],
                worst["p99_ratio"],
                "<= 2x floor",
                worst["p99_ratio"] <= 2.0,
            )
        )
        agg = run["aggregate"]["aggregate_per_s"]
        base = base or agg
        grows = None if count == "1" else agg > base
        rows.append((name, "aggregate assigns/s", agg, base, ratio(agg, base), "grows with pools", grows))
    return rows
