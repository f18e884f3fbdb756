"""Two pools on two groups, each with its own solo worker, from one TOML file: real workers, moto, a proxy.

The gpu pool reaches AWS through a fault proxy (its own ``endpoint_url``), so
its AWS can go down while the small pool's stays up.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from producer import PoolClient, UnknownPool
from sandbox import LocalStack, create_simulated_group
from sandbox.awsproxy import AwsFaultProxy
from tasks.pools import Deployment, load_deployment, pool_queue
from tasks.state.redis_store import RedisStore
from tests.stacks import REGION, require_redis_server, wait_for

SMALL, GPU = "ide-small", "ide-gpu"
REFRESH_S = 0.5


class TwoPools:
    def __init__(self, local: LocalStack, proxy: AwsFaultProxy, deployment: Deployment) -> None:
        self.local = local
        self.proxy = proxy
        self.deployment = deployment
        self.client = PoolClient(app=local.app, deployment=deployment)

    def status(self, pool: str) -> dict[str, Any]:
        return self.client.status(pool=pool)

    def idle(self, pool: str) -> int:
        return int(self.status(pool)["counts"]["idle"])

    def group_instances(self, asg: str) -> set[str]:
        groups = self.local.aws("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[asg])
        return {i["InstanceId"] for i in groups["AutoScalingGroups"][0]["Instances"]}


def write_config(path: Path, gpu_endpoint: str) -> Path:
    path.write_text(
        f"""
default_pool = "small"
[defaults]
idle_target = 2
refresh_seconds = {REFRESH_S}
[pools.small]
asg = "{SMALL}"
[pools.gpu]
asg = "{GPU}"
idle_target = 1
region = "{REGION}"
endpoint_url = "{gpu_endpoint}"
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def pools(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoPools]:
    require_redis_server()
    logs = tmp_path_factory.mktemp("two-pools")
    local = LocalStack(logs, asg_name=SMALL, region=REGION, refresh_s=REFRESH_S, node="pools", app_name="two-pools")
    try:
        local.start()
        proxy = AwsFaultProxy(local.moto.endpoint_url).start()
        config = write_config(logs / "warmpool.toml", proxy.endpoint_url)
        local.extra_env["WARMPOOL_CONFIG"] = str(config)
        local._env = local.process_env()  # the stack's environment, with the file
        for name, desired in ((SMALL, 2), (GPU, 1)):
            create_simulated_group(
                local.moto.endpoint_url, name=name, region=REGION, min_size=0, max_size=10, desired=desired
            )
        local.start_aws_worker("aws", wait=False)
        # one solo owner per pool, as `warmpool worker --pool NAME` starts it
        for pool in ("small", "gpu"):
            local.start_pool_worker(f"pool-{pool}", queue=pool_queue(pool), wait=False)
        local.start_beat()
        local.wait_for_workers(["aws", "pool-small", "pool-gpu"])
        env = {**local.env}
        stack = TwoPools(local, proxy, load_deployment(env))
        wait_for(lambda: stack.idle("small") >= 2 and stack.idle("gpu") >= 1, timeout_s=60, what="both buffers")
        yield stack
    finally:
        local.stop(timeout_s=5)
        if "proxy" in locals():
            proxy.stop()


def test_each_pool_hands_out_machines_of_its_own_group_and_a_project_holds_one_in_each(pools: TwoPools) -> None:
    # when one project asks each pool for a machine
    small = pools.client.assign("proj-both", wait=20, pool="small")
    gpu = pools.client.assign("proj-both", wait=20, pool="gpu")
    # expect one machine from each group, each result naming its pool
    assert small.pool == "small" and gpu.pool == "gpu"
    assert small.instance_id in pools.group_instances(SMALL)
    assert gpu.instance_id in pools.group_instances(GPU)
    assert small.instance_id != gpu.instance_id
    # and each pool's status shows only its own assignment
    assigned = {p: [m for m in pools.status(p)["machines"] if m["state"] == "assigned"] for p in ("small", "gpu")}
    assert [m["instance_id"] for m in assigned["small"]] == [small.instance_id]
    assert [m["instance_id"] for m in assigned["gpu"]] == [gpu.instance_id]
    assert pools.status("gpu")["pool"] == "gpu"
    # a release in one pool leaves the other's machine alone
    assert pools.client.release("proj-both", pool="gpu") is True
    assert pools.client.release("proj-both", pool="gpu") is False
    assert pools.client.release("proj-both", pool="small") is True


def test_each_worker_writes_only_its_own_pools_state(pools: TwoPools) -> None:
    small_store = RedisStore.from_url(pools.local.urls.redis_url, SMALL)
    gpu_store = RedisStore.from_url(pools.local.urls.redis_url, GPU)
    try:
        small_ids = set(small_store.view().machines)
        gpu_ids = set(gpu_store.view().machines)
    finally:
        small_store._r.close()
        gpu_store._r.close()
    # expect each pool's state to hold machines of its own group only
    assert small_ids and gpu_ids and not small_ids & gpu_ids
    assert not small_ids & pools.group_instances(GPU)
    assert not gpu_ids & pools.group_instances(SMALL)


def test_unknown_and_malformed_pools_are_refused_before_anything_is_sent(pools: TwoPools) -> None:
    with pytest.raises(UnknownPool, match="unknown pool 'nope'"):
        PoolClient(app=pools.local.app, deployment=pools.deployment, pool="nope")
    with pytest.raises(UnknownPool):
        pools.client.assign("proj-x", pool="nope")
    with pytest.raises(Exception, match="malformed pool name"):
        pools.client.status(pool="Bad_Pool")


def test_a_pool_whose_aws_is_down_does_not_slow_the_other(pools: TwoPools) -> None:
    # given the gpu pool with a machine idle, then its AWS refusing every connection
    wait_for(lambda: pools.idle("gpu") >= 1, timeout_s=60, what="an idle gpu machine")
    pools.proxy.configure(refuse=True)
    try:
        wait_for(lambda: pools.status("gpu")["refresh_error"], timeout_s=30, what="the gpu pool to see AWS down")
        # when the small pool serves assigns and releases meanwhile (its buffer refilling from its AWS)
        for i in range(4):
            machine = pools.client.assign(f"proj-s{i}", wait=20, pool="small")
            assert machine.pool == "small" and machine.instance_id in pools.group_instances(SMALL)
            assert pools.client.release(f"proj-s{i}", pool="small")
        # expect every one served and small's refreshes unaffected
        assert not pools.status("small")["refresh_error"]
        # and the gpu pool still hands out the machine it has idle, AWS down or not
        gpu = pools.client.assign("proj-g", pool="gpu")
        assert gpu.pool == "gpu" and gpu.instance_id in pools.group_instances(GPU)
    finally:
        pools.proxy.configure(refuse=False)
    pools.client.release("proj-g", pool="gpu")


def test_the_gateway_serves_every_pool_with_its_status_metrics_and_routes(pools: TwoPools) -> None:
    import asyncio

    import httpx

    from producer.aio import AsyncPoolClient
    from producer.gateway import create_app

    app = create_app(AsyncPoolClient(app=pools.local.app, deployment=pools.deployment))

    gpu_group: set[str] = set()

    async def session() -> dict[str, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        got: dict[str, httpx.Response] = {}
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as http:
                got["pools"] = await http.get("/v1/pools")
                got["assign"] = await http.post("/v1/pools/gpu/projects/proj-http/machine", params={"wait": 20})
                gpu_group.update(pools.group_instances(GPU))  # before the release below terminates it
                got["status"] = await http.get("/v1/pools/gpu")
                got["default"] = await http.get("/v1/pool")
                got["metrics"] = await http.get("/metrics")
                got["unknown"] = await http.post("/v1/pools/nope/projects/proj-http/machine")
                got["release"] = await http.delete("/v1/pools/gpu/projects/proj-http/machine")
        return got

    got = asyncio.run(session())
    # expect the pools listed, a gpu machine handed out through the pool's route, and each status its pool's
    assert [p["name"] for p in got["pools"].json()["pools"]] == ["small", "gpu"]
    assigned = got["assign"].json()
    assert got["assign"].status_code == 200 and assigned["pool"] == "gpu"
    assert assigned["instance_id"] in gpu_group
    assert got["status"].json()["pool"] == "gpu" and got["status"].json()["asg_name"] == GPU
    assert got["default"].json()["pool"] == "small"
    # metrics of both pools, from their own workers
    text = got["metrics"].text
    assert 'warmpool_pool_status_up{pool="small"} 1.0' in text and 'warmpool_pool_status_up{pool="gpu"} 1.0' in text
    assert 'warmpool_assigns_total{outcome="assigned",pool="gpu"} 1.0' in text
    assert got["unknown"].status_code == 404 and got["unknown"].json()["code"] == "unknown_pool"
    assert got["release"].status_code == 200 and got["release"].json()["instance_id"] == assigned["instance_id"]
