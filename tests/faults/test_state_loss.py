"""Scenario 3: the pool state in Redis is lost (FLUSHDB, or its Redis restarted without persistence).

Durable truth lives in AWS tags (docs/design.md invariant 7): after the next
refresh every assignment is back, the same projects get the same machines, and
no machine that may be in use is handed to another project: untagged machines
that existed at the loss are quarantined until their tags land.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

import pytest

from tasks.cloud.boto3_cloud import Boto3Cloud
from tasks.contract import TASK_APPLY_SNAPSHOT
from tasks.errors import NoCapacity, PoolUnavailable
from tasks.pool.model import snapshot_to_json
from tests.faults.conftest import ASG, REGION, FaultStack, wait_for
from tests.faults.invariants import assert_invariants

T = TypeVar("T")

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]


def assign_tagged(stack: FaultStack, projects: list[str]) -> dict[str, str]:
    """Assign each project a machine and wait until AWS carries the assignment (tag + protection)."""
    holders = {p: stack.client.assign(p, wait=15).instance_id for p in projects}
    assert_invariants(stack, holders=holders, settle=False)
    return holders


def restored(stack: FaultStack, holders: dict[str, str]) -> bool:
    held = {m["project_id"]: m["instance_id"] for m in stack.status()["machines"] if m["state"] == "assigned"}
    return all(held.get(p) == i for p, i in holders.items())


def check_rebuilt(stack: FaultStack, holders: dict[str, str], newcomer: str) -> None:
    # expect every assignment back after the next refresh
    wait_for(lambda: restored(stack, holders), timeout_s=30, what="assignments restored from tags")
    # and the same projects get the same machines
    for project, instance_id in holders.items():
        assert stack.client.assign(project).instance_id == instance_id
    # and a newcomer never gets a machine tagged for someone else
    other = stack.client.assign(newcomer, wait=20).instance_id
    assert other not in holders.values()
    assert_invariants(stack, holders={**holders, newcomer: other}, settle=True)


def test_flushed_state_is_rebuilt_from_tags(make_stack: Any) -> None:
    # given assignments whose tags reached AWS
    stack: FaultStack = make_stack(idle_target=3, refresh_s=1.0)
    holders = assign_tagged(stack, ["keep-a", "keep-b", "keep-c"])

    # when the state database is flushed between assigns
    with contextlib.closing(stack.infra.state.client()) as r:
        r.flushdb()

    # expect a newcomer asking right away to wait for the rebuild, never to get a tagged machine
    check_rebuilt(stack, holders, "newcomer")

    # and when an operator vouches for the quarantined machines (warmpool release-quarantined --all)
    quarantined = {m["instance_id"] for m in stack.status()["machines"] if m["state"] == "quarantined"}
    assert quarantined, "the untagged machines that existed at the loss are quarantined"
    run = subprocess.run(
        [sys.executable, "-m", "producer.cli", "release-quarantined", "--all", "--json"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert set(json.loads(run.stdout)["instance_ids"]) == quarantined
    # expect them idle again (or retired as surplus), none quarantined
    wait_for(lambda: stack.status()["counts"]["quarantined"] == 0, timeout_s=30, what="the quarantine ended")


@pytest.mark.slow
def test_restarted_state_redis_is_rebuilt_and_callers_get_a_clear_error_meanwhile(make_stack: Any) -> None:
    # given assignments whose tags reached AWS
    stack: FaultStack = make_stack(idle_target=3, refresh_s=1.0)
    holders = assign_tagged(stack, ["stay-a", "stay-b"])

    # when the state Redis crashes (no persistence: it comes back empty)
    stack.infra.state.stop(kill=True)
    try:
        # expect callers meanwhile told the pool is unavailable, in time, not left hanging
        started = time.monotonic()
        with pytest.raises(PoolUnavailable):
            stack.client.assign("during-outage", wait=3)
        assert time.monotonic() - started < stack.client.reply_timeout_s + 2
    finally:
        stack.infra.state.start()

    # expect the pool rebuilt from the tags once Redis is back, and the worker reconnected
    check_rebuilt(stack, holders, "after-outage")


def test_state_lost_while_a_tag_is_in_flight_never_hands_that_machine_to_another_project(make_stack: Any) -> None:
    # given a pool of one machine, and aws workers that are behind (the tag job is still queued)
    stack: FaultStack = make_stack(idle_target=1, desired=1, max_size=1, refresh_s=1.0)
    stack.procs.stop("aws")
    first = stack.client.assign("first", wait=10).instance_id

    # when the state is flushed, and a refresh from another (faster) aws worker lands
    # before the tag job: AWS does not carry the assignment yet
    with contextlib.closing(stack.infra.state.client()) as r:
        r.flushdb()
    cloud = Boto3Cloud(ASG, region=REGION, autoscaling=stack.aws("autoscaling"), ec2=stack.aws("ec2"))
    snapshot = cloud.describe_group()
    stack.app.send_task(TASK_APPLY_SNAPSHOT, args=[snapshot_to_json(snapshot)], queue="pool")

    # and another project asks
    holders = {"first": first}
    try:
        holders["second"] = stack.client.assign("second", wait=3).instance_id
    except NoCapacity:
        pass
    stack.start_aws_worker()

    # expect the first caller's machine still its own (and nobody else's), once the tag lands
    # (the pool learns it from the next refresh after the tag job: the worker answering a ping
    # says nothing about that, so wait for it before checking)
    wait_for(lambda: stack.store.view().projects.get("first") == first, what="the assignment restored from its tag")
    assert holders.get("second") != first, "the machine of 'first' was handed to 'second'"
    assert_invariants(stack, holders=holders, settle=False)


def test_state_lost_while_a_tag_job_is_stuck_in_retries_never_hands_that_machine_out(make_stack: Any) -> None:
    # given a pool of one machine whose tag job is stuck (aws workers backing off on throttling)
    stack: FaultStack = make_stack(idle_target=1, desired=1, max_size=1, refresh_s=1.0)
    stack.procs.stop("aws")
    first = stack.client.assign("first", wait=10).instance_id

    # when the state is flushed, and refreshes keep landing (from other aws workers) for a while
    with contextlib.closing(stack.infra.state.client()) as r:
        r.flushdb()
    cloud = Boto3Cloud(ASG, region=REGION, autoscaling=stack.aws("autoscaling"), ec2=stack.aws("ec2"))
    for _ in range(4):  # over three refresh intervals
        stack.app.send_task(TASK_APPLY_SNAPSHOT, args=[snapshot_to_json(cloud.describe_group())], queue="pool")
        time.sleep(0.8)

    # and another project asks before the tag job finally lands
    holders = {"first": first}
    try:
        holders["second"] = stack.client.assign("second", wait=3).instance_id
    except NoCapacity:
        pass
    stack.start_aws_worker()

    # expect the first caller's machine never handed to anyone else, and its own again once the tag lands
    assert holders.get("second") != first, "the machine of 'first' was handed to 'second'"
    wait_for(lambda: restored(stack, holders), timeout_s=60, what="the assignment restored from its tag")
    assert_invariants(stack, holders=holders, settle=False)


def supervised(stack: FaultStack, work: Callable[[], T], *, every_s: float = 0.5) -> T:
    """Run ``work`` while restarting the stack's exited processes, as a deployment's supervisor does.

    The restarts happen on this (the main) thread: children die with the thread that started them.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(work)
        while True:
            try:
                return future.result(timeout=every_s)
            except FutureTimeout:
                stack.supervise()


def burst(stack: FaultStack, projects: list[str], *, wait_s: float) -> dict[str, str]:
    """Assign every project at once; the machines received (failures are not counted)."""

    def one(project: str) -> tuple[str, str | None]:
        try:
            return project, stack.client.assign(project, wait=wait_s).instance_id
        except (NoCapacity, PoolUnavailable):
            return project, None

    with ThreadPoolExecutor(max_workers=20) as pool:
        return {p: i for p, i in pool.map(one, projects) if i is not None}


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_redis_holding_broker_and_state_restarted_empty_never_hands_a_machine_out_twice(make_stack: Any) -> None:
    # given broker and state on one Redis that keeps nothing on disk, and a burst just served:
    # most tag jobs are still queued in that Redis
    # (MaxSize leaves room for new machines however many the loss quarantines: at most the 30
    # assigned, the refills and the launches for the first burst's waiters, well under 150)
    stack: FaultStack = make_stack(idle_target=30, max_size=150, refresh_s=1.0, broker_on_state=True)
    first = burst(stack, [f"before-{n}" for n in range(30)], wait_s=20)
    assert len(first) >= 20, f"only {len(first)} of 30 served before the crash"

    # when that Redis crashes and comes back empty: the queued jobs and the pool state are gone
    stack.infra.state.restart(kill=True)

    # and a second burst of new projects asks once the workers are back (under a supervisor that
    # restarts exited processes, as a deployment's restart policy does: Celery 5.7 sometimes exits a
    # worker on a lost broker connection instead of reconnecting)
    def noticed() -> Any:
        stack.supervise()
        try:
            return stack.status()["recovery"]["state_lost_at"]
        except PoolUnavailable:
            return None  # the workers are still reconnecting

    wait_for(noticed, timeout_s=60, what="the loss noticed")
    second = supervised(stack, lambda: burst(stack, [f"after-{n}" for n in range(30)], wait_s=45))

    # expect no machine handed to a second project, whatever its tag job's fate
    handed_twice = set(first.values()) & set(second.values())
    assert not handed_twice, f"{len(handed_twice)} machines handed out twice: {sorted(handed_twice)}"
    assert len(set(second.values())) == len(second)
    # and the callers after the crash served by machines launched after it
    assert second, "nobody was served after the crash"
    # and, in the store and in AWS, no machine held by two projects
    assert_invariants(stack, holders=second, settle=False)
