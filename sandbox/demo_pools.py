"""The demo's pools: the one pool of the environment, or every pool of a ``WARMPOOL_CONFIG`` file.

With a pools file (``warmpool demo --config deploy/compose/pools.toml``) the demo
simulates each pool's group in its moto server and starts one solo pool
worker per pool (``-Q pool.<name>``), one aws worker for every pool's AWS queue,
and beat for all; the scripted assigns run on the default pool, and the same
project then takes a machine in each other pool (one machine per pool).
"""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console, Group, RenderableType
from rich.markup import escape

from producer.client import PoolClient
from producer.render import compact_status_table
from sandbox.aws_group import create_simulated_group
from sandbox.demo_redis import DemoError
from sandbox.stack import LocalStack
from tasks.contract import TASK_REFRESH
from tasks.errors import WarmpoolError
from tasks.pools import Deployment, pool_queue

GROUP_MIN, GROUP_MAX = 0, 10
POOL_WORKER = "pool-worker"  # the single pool's process name (logs: .demo/logs/pool-worker.log)


def several(deployment: Deployment) -> bool:
    """Whether the demo runs a pools file (one worker per pool) rather than the environment's one pool."""
    return deployment.from_file


def check_simulable(deployment: Deployment, *, explicit_redis: bool) -> None:
    """DemoError unless every pool can run on the demo's simulation.

    No role to assume, no AWS endpoint or readiness URL of its own (the simulated
    machines serve none), and, with a pools file, the demo's private Redis: on a
    shared one only the environment's single pool is checked for someone's state.
    """
    shared_endpoint = deployment.settings.aws_endpoint_url
    for pool in deployment:
        if pool.role_arn:
            raise DemoError(f"pool {pool.name} assumes role {pool.role_arn}: the demo simulates AWS, remove role_arn")
        if pool.settings.aws_endpoint_url != shared_endpoint:
            raise DemoError(
                f"pool {pool.name} names endpoint_url {pool.settings.aws_endpoint_url}: the demo simulates every"
                " group in its moto server, remove endpoint_url from the demo's pools file"
            )
        if pool.settings.ready_url:
            raise DemoError(f"pool {pool.name} sets ready_url: simulated machines serve none, remove it for the demo")
    if several(deployment) and explicit_redis:
        raise DemoError(
            "a demo of a pools file runs on a private Redis only: unset WARMPOOL_BROKER_URL,"
            " WARMPOOL_RESULT_BACKEND and WARMPOOL_REDIS_URL"
        )


def create_groups(
    local: LocalStack, deployment: Deployment, say: Callable[[str], None], *, desired: int | None = None
) -> None:
    """Each pool's group in moto with ``desired`` machines running (None: as many as its idle target)."""
    for pool in deployment:
        start = max(0, min(GROUP_MAX, pool.settings.idle_target if desired is None else desired))
        group = create_simulated_group(
            local.moto.endpoint_url,
            name=pool.asg_name,
            region=pool.settings.region,
            min_size=GROUP_MIN,
            max_size=GROUP_MAX,
            desired=start,
        )
        label = f"pool {pool.name}: " if several(deployment) else ""
        say(
            f"{label}simulated group {group['asg_name']}: {len(group['instance_ids'])} instances,"
            f" min {GROUP_MIN}, max {GROUP_MAX}"
        )


def spawn_workers(local: LocalStack, deployment: Deployment, *, aws_threads: int) -> list[str]:
    """A solo pool worker per pool (one for the environment's pool) and an aws worker; their names."""
    names: list[str] = []
    if several(deployment):
        for pool in deployment:
            name = f"{POOL_WORKER}-{pool.name}"
            local.start_pool_worker(name, queue=pool_queue(pool.name), wait=False)
            names.append(name)
    else:
        local.start_pool_worker(POOL_WORKER, wait=False)
        names.append(POOL_WORKER)
    local.start_aws_worker("aws-worker", concurrency=aws_threads, queues=deployment.aws_queues(), wait=False)
    return [*names, "aws-worker"]


def refresh_now(client: PoolClient, deployment: Deployment) -> None:
    """Ask every pool's first refresh at once instead of waiting for beat's first interval."""
    for pool in deployment:
        client.app.send_task(TASK_REFRESH, kwargs={"pool": pool.name}, queue=pool.aws_queue)


def assign_in_other_pools(client: PoolClient, console: Console, deployment: Deployment, project: str) -> None:
    """The same project takes a machine in every other pool: one machine per pool, one in each."""
    for pool in deployment:
        if pool.name == deployment.default_pool:
            continue
        machine = client.assign(project, wait=20.0, pool=pool.name)
        console.print(f"  assign {project:<8} -> {machine.instance_id}  in pool {pool.name} (group {pool.asg_name})")


def pool_tables(client: PoolClient, deployment: Deployment) -> RenderableType:
    """Every pool's table (the stay view)."""
    parts: list[RenderableType] = []
    for pool in deployment:
        try:
            parts.append(compact_status_table(client.status(pool=pool.name)))
        except WarmpoolError as exc:
            parts.append(f"[yellow]pool {pool.name}: status unavailable: {escape(str(exc))}[/]")
    return Group(*parts)
