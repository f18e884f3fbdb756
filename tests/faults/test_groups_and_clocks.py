"""Refreshes ordered by no clock, and two groups on one broker that never mix their machines.

Issue 13, items 3 and 4, against real workers:

* an aws worker whose clock is 60 s fast, replaced by one with a correct clock,
  made the pool ignore every refresh for 58 s (snapshots were ordered by the
  reading worker's clock): now they are ordered by a number the pool's state
  issues when the read starts;
* two groups sharing one Redis (broker, results and state) consumed each other's
  jobs and snapshots: team A's assigns got team B's machines. Now every job and
  snapshot names its group and a worker refuses another group's.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import pytest

from producer.client import PoolClient
from sandbox import beat_argv, create_simulated_group, wait_for_workers, worker_argv
from tasks.errors import JobFailed, NoCapacity
from tasks.state.redis_store import RedisStore
from tests.faults.conftest import ASG, REGION, FaultStack, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CLOCK_AHEAD_S = 60.0

# A worker whose wall clock (time.time, which stamps every snapshot) runs ahead.
FAST_CLOCK = """
import runpy, sys, time
_real = time.time
time.time = lambda: _real() + {ahead_s!r}
sys.argv = ["celery", *sys.argv[1:]]
runpy.run_module("celery", run_name="__main__", alter_sys=True)
"""


def fast_clock_argv(argv: list[str], *, ahead_s: float) -> list[str]:
    """``python -m celery ARGS`` as a process whose clock is ``ahead_s`` fast."""
    assert argv[1:3] == ["-m", "celery"], argv
    return [sys.executable, "-c", FAST_CLOCK.format(ahead_s=ahead_s), *argv[3:]]


def group_instances(stack: FaultStack, name: str) -> set[str]:
    groups = stack.aws("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[name])
    return {i["InstanceId"] for i in groups["AutoScalingGroups"][0]["Instances"]}


def test_refreshes_follow_the_refresh_order_not_the_aws_workers_clocks(make_stack: Any) -> None:
    # given a pool whose refreshes were read by an aws worker 60 s fast
    stack: FaultStack = make_stack(idle_target=2, refresh_s=1.0)
    stack.procs.stop("aws")
    fast = stack.worker_name("aws-fast")
    argv = fast_clock_argv(worker_argv("aws", hostname=fast, concurrency=2, solo=False), ahead_s=CLOCK_AHEAD_S)
    stack.spawn("aws-fast", argv)
    wait_for_workers(stack.app, [fast], timeout_s=40)

    def fast_snapshot_applied() -> bool:
        stack.app.send_task("warmpool.refresh", queue="aws")  # beat's expire at once on a clock 60 s ahead
        return stack.store.group().observed_at > time.time() + CLOCK_AHEAD_S / 2

    wait_for(fast_snapshot_applied, timeout_s=30, what="a snapshot from the fast aws worker", every_s=0.5)

    # when it is replaced by a worker with a correct clock
    stack.procs.stop("aws-fast")
    stack.start_aws_worker("aws")

    # and callers take every idle machine and ask for more (only refreshes make new machines idle)
    holders = {p: stack.client.assign(p, wait=10).instance_id for p in ("a-1", "a-2")}
    try:
        holders["a-3"] = stack.client.assign("a-3", wait=25).instance_id
    except NoCapacity:
        pytest.fail("a new machine never became idle: refreshes were ignored after the clock change")

    # expect each served, the new machine seen by a refresh well before the fast clock's lead ran out
    assert len(set(holders.values())) == 3
    assert stack.store.group().observed_at < time.time() + 5
    logs = stack.log_text("pool")
    assert "snapshot refused" not in logs


def test_a_snapshot_dated_far_ahead_is_refused_and_blocks_no_later_refresh(make_stack: Any) -> None:
    # given a settled pool, and a refresh read by an aws worker whose clock is a day fast
    stack: FaultStack = make_stack(idle_target=2, refresh_s=1.0)
    idle_before = stack.idle_count()
    stack.procs.stop("aws")
    far = stack.worker_name("aws-far")
    stack.spawn("aws-far", fast_clock_argv(worker_argv("aws", hostname=far, concurrency=2, solo=False), ahead_s=86_400))
    wait_for_workers(stack.app, [far], timeout_s=40)
    stack.app.send_task("warmpool.refresh", queue="aws")

    # expect it refused, loudly: in the pool worker's log and in status
    wait_for(lambda: "snapshot refused: absurd date" in stack.log_text("pool"), timeout_s=30, what="the refusal")
    assert "ahead of the pool worker's clock" in (stack.status()["refresh_error"] or "")
    assert stack.idle_count() == idle_before

    # and when a correct aws worker takes over, its refreshes apply again
    stack.procs.stop("aws-far")
    stack.start_aws_worker("aws")
    status = stack.refresh_now(timeout_s=30)
    assert status["refresh_error"] is None and status["counts"]["idle"] == idle_before


B_ASG = ASG + "-b"


def start_group_b(stack: FaultStack) -> RedisStore:
    """A second group on the very same broker, result backend and state Redis (its own workers and beat)."""
    create_simulated_group(stack.infra.moto.endpoint_url, name=B_ASG, region=REGION, max_size=30, desired=2)
    env = {**stack.env, "WARMPOOL_ASG_NAME": B_ASG, "WARMPOOL_IDLE_TARGET": "2"}
    names = [stack.worker_name("pool-b"), stack.worker_name("aws-b")]
    logs = stack.logs
    stack.procs.spawn(
        "pool-b", worker_argv("pool", hostname=names[0], solo=True), env=env, log_path=logs / "pool-b.log"
    )
    aws_b = worker_argv("aws", hostname=names[1], concurrency=2, solo=False)
    stack.procs.spawn("aws-b", aws_b, env=env, log_path=logs / "aws-b.log")
    stack.procs.spawn(
        "beat-b", beat_argv(schedule_path=logs / "beat-b-schedule"), env=env, log_path=logs / "beat-b.log"
    )
    wait_for_workers(stack.app, names, timeout_s=60)
    store_b = RedisStore.from_url(stack.infra.state.url(0), B_ASG)
    wait_for(lambda: store_b.view().counts()["idle"] >= 2, timeout_s=60, what="group B settled", every_s=0.5)
    return store_b


def test_two_groups_on_one_broker_never_hand_out_each_others_machines(make_stack: Any) -> None:
    # given team A's group and team B's group, sharing one Redis for broker, results and state
    stack: FaultStack = make_stack(idle_target=4, refresh_s=1.0)
    # (B settles while A's workers are away: on shared queues each worker also takes the
    # other group's refreshes and refuses them, so neither group is sure to settle quickly)
    stack.procs.stop("pool")
    stack.procs.stop("aws")
    store_b = start_group_b(stack)
    stack.start_aws_worker()
    stack.start_pool_worker()
    team_a = PoolClient(app=stack.app, group=ASG, reply_timeout_s=15)
    team_b = PoolClient(app=stack.app, group=B_ASG, reply_timeout_s=15)

    # when team A asks for six machines and team B for two
    got: dict[str, str] = {}
    for client, project in [(team_a, f"a-{i}") for i in range(6)] + [(team_b, "b-0"), (team_b, "b-1")]:
        try:
            got[project] = client.assign(project, wait=15).instance_id
        except NoCapacity:
            continue  # its group's refreshes, half refused by the other group's workers, came too late
        except JobFailed as exc:
            # expect a job the other group's worker took refused, naming both groups
            assert "wrong_group" in str(exc) and ASG in str(exc) and B_ASG in str(exc), exc
            assert "broker" in str(exc)

    # expect every machine handed out from its own team's group, never the other's
    a_instances, b_instances = group_instances(stack, ASG), group_instances(stack, B_ASG)
    for project, instance in got.items():
        own, other = (a_instances, b_instances) if project.startswith("a-") else (b_instances, a_instances)
        assert instance in own and instance not in other, (project, instance)
    assert got, "no assign was served at all"

    # and each group's state holding its own machines and projects only, refresh after refresh
    time.sleep(3)
    view_a, view_b = stack.store.view(), store_b.view()
    assert set(view_a.machines) <= group_instances(stack, ASG)
    assert set(view_b.machines) <= group_instances(stack, B_ASG)
    assert all(p.startswith("a-") for p in view_a.projects) and all(p.startswith("b-") for p in view_b.projects)
    assert set(view_a.projects) == {p for p in got if p.startswith("a-")}
    assert set(view_b.projects) == {p for p in got if p.startswith("b-")}
    # and the refusals in the workers' logs
    logs = stack.log_text("pool") + stack.log_text("pool-b")
    assert "another group" in logs
    store_b._r.close()
