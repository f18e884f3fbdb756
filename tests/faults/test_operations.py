"""Operator commands against real workers, moto behind a fault proxy: pause during an AWS incident, adopt.

- paused during an outage, warmpool changes nothing in AWS (after the outage either) while assigns
  from idle machines and releases keep working; resume terminates what was released;
- on its first start on a group with an older orchestrator's machines, warmpool kills none of them:
  the adopted ones become assignments (tagged, protected), the rest wait for ``adopt --none``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.faults.awsfaults import CapacityProxy
from tests.faults.conftest import FaultStack, Infra, wait_for

# AWS calls that change something (everything else warmpool calls reads)
CHANGES = (
    "SetDesiredCapacity",
    "TerminateInstanceInAutoScalingGroup",
    "CreateTags",
    "SetInstanceProtection",
    "CreateOrUpdateTags",
    "UpdateAutoScalingGroup",
)


@pytest.fixture
def proxy(infra: Infra) -> Iterator[CapacityProxy]:
    p = CapacityProxy(infra.moto.endpoint_url, seed=20261201)
    p.start()
    try:
        yield p
    finally:
        p.stop()


def aws_changes(proxy: CapacityProxy) -> dict[str, int]:
    forwarded = proxy.stats()["forwarded"]
    return {action: forwarded.get(action, 0) for action in CHANGES}


def tagged_and_protected(stack: FaultStack, instance_id: str, project: str) -> bool:
    """Whether AWS shows ``instance_id`` tagged for ``project`` and protected from scale-in."""
    protected = any(
        i["InstanceId"] == instance_id and i.get("ProtectedFromScaleIn") for i in stack.group()["Instances"]
    )
    return protected and stack.tags_of(instance_id).get("warmpool:project") == project


def running(stack: FaultStack) -> set[str]:
    """The group's instances that EC2 shows running (terminated ones stay listed in moto)."""
    members = {i["InstanceId"] for i in stack.group()["Instances"]}
    return {i for i, inst in stack.ec2_instances().items() if i in members and inst["State"]["Name"] == "running"}


def refreshes_applied(stack: FaultStack, count: int) -> None:
    """Wait until ``count`` more refreshes were applied (the pool saw AWS that often)."""
    for _ in range(count):
        stack.refresh_now()


@pytest.mark.timeout(150)
def test_paused_during_an_aws_outage_nothing_changes_in_aws(proxy: CapacityProxy, make_stack: Any) -> None:
    # given a settled pool (idle target 3) with one assignment
    stack: FaultStack = make_stack(idle_target=3, max_size=10, refresh_s=0.5, endpoint_url=proxy.endpoint_url)
    kept = stack.client.assign("kept", wait=10).instance_id
    # Settled: the assign's side effects have all landed (tag, then protection in a call of its
    # own, and the refill), so none of them is still in flight, or retried by botocore, when
    # the outage and the pause begin.
    wait_for(lambda: tagged_and_protected(stack, kept, "kept"), timeout_s=30, what="the tag and the protection")
    stack.wait_until_idle(3)
    # when AWS stops answering and the operator pauses the pool
    proxy.configure(refuse=True)
    try:
        assert stack.client.pause()["paused"] is True
        before = aws_changes(proxy)
        instances_before = running(stack)
        # expect assigns from idle machines and releases to keep working meanwhile
        during = stack.client.assign("during").instance_id
        assert stack.client.release("kept") is True
        time.sleep(2.0)  # refreshes fail meanwhile
    finally:
        proxy.configure(refuse=False)
    # and, AWS back, still nothing changed in AWS while paused, though the pool is one short of its target
    refreshes_applied(stack, 4)
    assert aws_changes(proxy) == before
    assert running(stack) == instances_before
    assert kept in stack.ec2_instances() and stack.ec2_instances()[kept]["State"]["Name"] == "running"
    assert "warmpool:project" not in stack.tags_of(during)
    status = stack.status()
    assert status["paused"] is True and status["paused_since"]
    assert {m["instance_id"]: m["state"] for m in status["machines"]}[kept] == "releasing"
    # when resumed, expect the released machine terminated, the new assignment tagged, the buffer refilled
    assert stack.client.resume()["terminated"] == [kept]
    wait_for(lambda: stack.tags_of(during).get("warmpool:project") == "during", timeout_s=60, what="the tag")
    wait_for(lambda: kept not in running(stack), timeout_s=60, what="the released machine to go")
    wait_for(lambda: stack.idle_count() == 3, timeout_s=60, what="the buffer refilled")
    types = [e.event["type"] for e in stack.store.events(count=10_000)]
    assert types.count("paused") == 1 and types.count("resumed") == 1


@pytest.mark.timeout(150)
def test_adopting_an_older_orchestrators_machines_kills_none_of_them(make_stack: Any) -> None:
    # given a group of 4 machines an older orchestrator handed out (2 of them), and warmpool's first start on it
    # with an idle target of 1, so that without the hold it would terminate the surplus
    stack: FaultStack = make_stack(
        idle_target=1, desired=4, max_size=10, refresh_s=0.5, wait_idle=False, extra_env={"WARMPOOL_ADOPT_HOLD": "1"}
    )
    found = running(stack)
    assert len(found) == 4
    wait_for(lambda: stack.status()["unadopted"]["count"] == 4, timeout_s=60, what="the machines held")
    refreshes_applied(stack, 4)
    # expect none terminated, and status saying why
    assert running(stack) == found
    assert "adopt" in stack.status()["unadopted"]["note"]
    # when the operator adopts the two assignments (a dry run first)
    a, b, c, d = sorted(found)
    dry = stack.client.adopt({"old-a": a, "old-b": b}, dry_run=True)
    assert dry["status"] == "would_adopt" and stack.store.view().projects == {}
    result = stack.client.adopt({"old-a": a, "old-b": b})
    assert result["status"] == "adopted" and sorted(result["unadopted"]) == [c, d]
    # expect them tagged and protected, and still nobody killed
    wait_for(lambda: stack.tags_of(a).get("warmpool:project") == "old-a", timeout_s=60, what="the adoption tag")
    refreshes_applied(stack, 3)
    assert running(stack) == found
    group = stack.group()
    protected = {i["InstanceId"] for i in group["Instances"] if i.get("ProtectedFromScaleIn")}
    assert {a, b} <= protected
    assert stack.store.view().projects == {"old-a": a, "old-b": b}
    # and once the operator confirms nothing else needs adopting, only an unadopted surplus machine goes
    stack.client.adopt(None)
    wait_for(lambda: len(running(stack) & {c, d}) == 1, timeout_s=60, what="the surplus terminated")
    assert {a, b} <= running(stack)
