"""The pool service end to end: real pool worker, aws worker and beat against a moto server."""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

import pytest

from producer.aio import AsyncPoolClient
from tasks.contract import TAG_ASSIGNED_AT, TAG_PROJECT, TASK_ASSIGN, TASK_RELEASE
from tasks.errors import InvalidProject, NoCapacity
from tests.integration.conftest import ASG, IDLE_TARGET, Stack, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def assign_many(stack: Stack, projects: list[str]) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        async with AsyncPoolClient(app=stack.app) as client:
            return list(await asyncio.gather(*(client.assign_result(p) for p in projects)))

    return asyncio.run(run())


def in_service_ids(stack: Stack) -> set[str]:
    return {i["InstanceId"] for i in stack.group()["Instances"] if i["LifecycleState"] == "InService"}


def tagged_and_protected(stack: Stack, instance_id: str, project: str) -> bool:
    protected = {i["InstanceId"]: i["ProtectedFromScaleIn"] for i in stack.group()["Instances"]}
    tags = stack.tags_of(instance_id)
    return bool(protected.get(instance_id)) and tags.get(TAG_PROJECT) == project and TAG_ASSIGNED_AT in tags


def test_concurrent_assigns_get_distinct_ready_machines_that_get_tagged_and_protected(pool: Stack) -> None:
    # given a pool with IDLE_TARGET idle machines of the configured group
    group_ids = in_service_ids(pool)
    projects = [f"proj-{i}" for i in range(IDLE_TARGET)]

    # when every project asks at once
    results = assign_many(pool, projects)

    # expect distinct machines of this group, with the address AWS reports
    assert all(r["status"] == "assigned" for r in results), results
    ids = [r["instance_id"] for r in results]
    assert len(set(ids)) == len(ids)
    assert set(ids) <= group_ids
    ec2 = pool.aws("ec2")
    for r in results:
        inst = ec2.describe_instances(InstanceIds=[r["instance_id"]])["Reservations"][0]["Instances"][0]
        assert r["ip"] == inst["PublicIpAddress"]
        assert r["private_ip"] == inst["PrivateIpAddress"]
    # and the same project asking again gets the same machine
    for r in results:
        assert pool.client.assign(r["project_id"]).instance_id == r["instance_id"]
    # and shortly after, AWS carries the durable truth: tags and scale-in protection
    for r in results:
        wait_for(lambda r=r: tagged_and_protected(pool, r["instance_id"], r["project_id"]), what="tags")
    # and the idle buffer comes back to target
    wait_for(lambda: pool.idle_count() == IDLE_TARGET, what="the buffer to refill")
    assert pool.group()["DesiredCapacity"] == 2 * IDLE_TARGET


def test_a_burst_larger_than_the_buffer_scales_up_at_once(pool: Stack) -> None:
    # given IDLE_TARGET idle machines and a burst of twice as many projects
    projects = [f"burst-{i}" for i in range(2 * IDLE_TARGET)]

    # when they all ask at once
    results = assign_many(pool, projects)

    # expect the buffer handed out, the rest told no_capacity, and a scale-up asked for
    assigned = [r for r in results if r["status"] == "assigned"]
    refused = [r for r in results if r["status"] == "failed"]
    assert len(assigned) == IDLE_TARGET
    assert {r["code"] for r in refused} == {"no_capacity"}
    wait_for(lambda: pool.group()["DesiredCapacity"] >= 2 * IDLE_TARGET, timeout_s=10, what="scale-up")
    # and once the new machines are ready, the refused projects are served
    wait_for(lambda: pool.idle_count() >= IDLE_TARGET, what="new machines")
    late = [pool.client.assign(r["project_id"]) for r in refused]
    all_ids = [r["instance_id"] for r in assigned] + [m.instance_id for m in late]
    assert len(set(all_ids)) == len(all_ids)


def test_release_terminates_exactly_the_released_machines(pool: Stack) -> None:
    # given three assigned projects
    machines = {p: pool.client.assign(p, wait=10) for p in ("rel-a", "rel-b", "rel-c")}
    wait_for(lambda: pool.idle_count() == IDLE_TARGET, what="the buffer to refill")

    # when two of them release
    assert pool.client.release("rel-a") is True
    assert pool.client.release("rel-b") is True

    # expect exactly those two terminated; the third untouched and still tagged
    gone = {machines["rel-a"].instance_id, machines["rel-b"].instance_id}
    wait_for(lambda: not (gone & in_service_ids(pool)), what="termination")
    kept = machines["rel-c"].instance_id
    assert kept in in_service_ids(pool)
    wait_for(lambda: tagged_and_protected(pool, kept, "rel-c"), what="tags on the kept machine")
    assert pool.client.assign("rel-c").instance_id == kept
    # and releasing again is a harmless not_assigned
    assert pool.client.release("rel-a") is False
    # and the group settles at assigned + idle target, the buffer full
    wait_for(lambda: pool.idle_count() == IDLE_TARGET, what="the buffer to refill")
    wait_for(lambda: pool.group()["DesiredCapacity"] == 1 + IDLE_TARGET, what="desired = assigned + idle target")


def test_flushing_the_state_loses_no_assignment(pool: Stack) -> None:
    # given assignments whose tags have reached AWS
    machines = {p: pool.client.assign(p, wait=10) for p in ("keep-1", "keep-2", "keep-3")}
    for p, m in machines.items():
        wait_for(lambda p=p, m=m: tagged_and_protected(pool, m.instance_id, p), what="tags")

    # when Redis loses the pool state
    pool.store.reset()

    # expect the next refresh to rebuild every assignment from the tags
    def restored() -> bool:
        status = pool.client.status()
        held = {m["project_id"]: m["instance_id"] for m in status["machines"] if m["state"] == "assigned"}
        return held == {p: m.instance_id for p, m in machines.items()}

    wait_for(restored, what="assignments restored from tags")
    # and the same projects get the same machines, and nobody else gets theirs
    for p, m in machines.items():
        assert pool.client.assign(p).instance_id == m.instance_id
    other = pool.client.assign("newcomer", wait=10)
    assert other.instance_id not in {m.instance_id for m in machines.values()}


def test_unready_instances_and_other_groups_are_never_handed_out(pool: Stack) -> None:
    # given a second group in the same region, and instances of ours that are not ready
    asg, ec2 = pool.aws("autoscaling"), pool.aws("ec2")
    template = {"LaunchTemplateName": f"{ASG}-lt", "Version": "$Latest"}  # made by create_simulated_group
    asg.create_auto_scaling_group(
        AutoScalingGroupName="other-team-asg",
        LaunchTemplate=template,
        MinSize=0,
        MaxSize=5,
        DesiredCapacity=3,
        VPCZoneIdentifier=pool.group()["VPCZoneIdentifier"],
    )
    other_ids = {
        i["InstanceId"]
        for i in asg.describe_auto_scaling_groups(AutoScalingGroupNames=["other-team-asg"])["AutoScalingGroups"][0][
            "Instances"
        ]
    }
    bad = sorted(in_service_ids(pool))[:3]
    asg.set_instance_health(InstanceId=bad[0], HealthStatus="Unhealthy")
    asg.enter_standby(InstanceIds=[bad[1]], AutoScalingGroupName=ASG, ShouldDecrementDesiredCapacity=False)
    ec2.stop_instances(InstanceIds=[bad[2]])

    # when the pool has refreshed and many projects ask
    def unready_seen() -> bool:
        states = {m["instance_id"]: m["state"] for m in pool.client.status()["machines"]}
        return all(states.get(b) == "pending" for b in bad)

    wait_for(unready_seen, what="unready instances classified pending")
    handed = set()
    for i in range(IDLE_TARGET + 2):
        try:
            handed.add(pool.client.assign(f"ready-{i}", wait=5).instance_id)
        except NoCapacity:
            pass

    # expect none of the unready machines, and nothing of the other group, ever handed out or listed
    assert handed and not (handed & set(bad))
    listed = {m["instance_id"] for m in pool.client.status()["machines"]}
    assert not (listed & other_ids)
    assert not (handed & other_ids)


def test_a_pool_capped_by_max_size_says_so_and_never_asks_for_more(stack: Stack) -> None:
    # given a group whose MaxSize is below assigned + idle target
    stack.fresh_group(min_size=0, max_size=3, desired=3)
    wait_for(lambda: stack.idle_count() >= 1, what="idle machines")

    # when more projects ask than the group may hold
    got, refused = [], []
    for i in range(4):
        try:
            got.append(stack.client.assign(f"cap-{i}", wait=3))
        except NoCapacity as exc:
            refused.append(exc)

    # expect three machines, a clear capped error, and never a desired capacity above MaxSize
    assert len(got) == 3
    assert refused and refused[0].capped and "MaxSize" in str(refused[0])
    status = wait_for(lambda: (s := stack.client.status())["group"]["capped"] and s, what="capped status")
    assert status["group"]["wanted"] > status["group"]["max_size"]
    assert stack.group()["DesiredCapacity"] <= 3


def test_every_page_of_a_large_group_is_read(stack: Stack) -> None:
    # given a group launched in more reservations than one DescribeInstances page (moto: 100)
    stack.fresh_group(min_size=0, max_size=200, desired=0)
    asg = stack.aws("autoscaling")
    for n in range(1, 106):
        asg.set_desired_capacity(AutoScalingGroupName=ASG, DesiredCapacity=n)
    # (refreshes while the group grew saw fewer instances: count from here on)
    before = stack.client.status()["aws_calls"]

    def since_then(status: dict[str, Any]) -> dict[str, int]:
        return {a: n - before.get(a, 0) for a, n in status["aws_calls"].items()}

    def settled() -> dict[str, Any] | None:
        status = stack.client.status()
        refreshed = since_then(status).get("DescribeAutoScalingGroups", 0) > 0
        return status if refreshed and status["counts"]["idle"] == IDLE_TARGET else None

    # expect every instance seen as ready (none stuck pending for lack of EC2 data),
    # and the surplus removed by terminating idle machines down to the target
    status = wait_for(settled, timeout_s=30, what="scale-in, and a refresh reported since")
    assert status["counts"]["pending"] == 0
    assert status["refresh_duration_s"] > 0
    wait_for(lambda: stack.group()["DesiredCapacity"] == IDLE_TARGET, what="desired shrunk by named terminations")
    # and the aws workers report their calls: each refresh reads the group and its instances
    # (one DescribeAutoScalingGroups and at least one DescribeInstances page). Counted once the
    # group settled: before, a top-up's capacity read (DescribeAutoScalingGroups too) may land.
    before = stack.client.status()["aws_calls"]

    def refreshed_twice() -> dict[str, Any] | None:
        status = stack.client.status()
        return status if since_then(status).get("DescribeAutoScalingGroups", 0) >= 2 else None

    status = wait_for(refreshed_twice, timeout_s=30, what="two refreshes reported since the group settled")
    calls = since_then(status)
    assert calls["DescribeInstances"] >= calls["DescribeAutoScalingGroups"] > 0


def test_bad_input_and_poisoned_messages_change_nothing(pool: Stack) -> None:
    # given a settled pool
    before = pool.store.view()

    # when callers send bad project ids through the client
    for bad in ["", "a" * 129, "../etc", "a b", "proj\x00", "é", "-lead", "x;rm -rf /"]:
        with pytest.raises(InvalidProject):
            pool.client.assign(bad)
        with pytest.raises(InvalidProject):
            pool.client.release(bad)
    # and raw jobs that bypass the client's validation
    for payload in [["../x"], [123], [None], [["list"]], [{"d": 1}]]:
        result = pool.app.send_task(TASK_ASSIGN, args=payload, queue="pool").get(timeout=10, propagate=False)
        assert result["code"] == "invalid_project"
        result = pool.app.send_task(TASK_RELEASE, args=payload, queue="pool").get(timeout=10, propagate=False)
        assert result["code"] == "invalid_project"
    # and poisoned messages: absurd waits, wrong arity, unknown task names
    for wait in ["b", -1, 1e9, float("nan"), [1]]:
        result = pool.app.send_task(TASK_ASSIGN, args=["fine", wait], queue="pool").get(timeout=10, propagate=False)
        assert result["code"] == "bad_request", result
    wrong = pool.app.send_task(TASK_ASSIGN, args=["a", 1, 2, 3, 4, 5], queue="pool")
    assert isinstance(wrong.get(timeout=10, propagate=False), Exception)
    pool.app.send_task("warmpool.no_such_task", args=[1], queue="pool")

    # expect the state unchanged and the worker still serving
    after = pool.store.view()
    assert after.projects == before.projects
    assert {i: m.state for i, m in after.machines.items()} == {i: m.state for i, m in before.machines.items()}
    assert pool.procs.alive("pool")
    assert pool.client.assign("still-works").instance_id


def thread_nice_values(pid: int) -> set[int]:
    values = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            values.add(os.getpriority(os.PRIO_PROCESS, int(tid)))
    return values


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="per-thread priorities are read from /proc")
def test_the_aws_worker_yields_the_cpu_to_the_pool_worker(stack: Stack) -> None:
    # given the stack's workers (WARMPOOL_AWS_WORKER_NICE defaults to 10)
    own = os.getpriority(os.PRIO_PROCESS, 0)
    # expect every thread of the aws worker 10 below the pool worker, which keeps its priority
    assert thread_nice_values(stack.procs.get("aws").pid) == {min(19, own + 10)}
    assert thread_nice_values(stack.procs.get("pool").pid) == {own}
