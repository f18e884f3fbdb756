"""Scenario 9: two beat processes started at once.

Both schedule every refresh, so every refresh (and the rebalance that follows
it) runs twice. That must never turn into conflicting actions: the surplus is
scaled in exactly once (no replacement launched for a machine terminated
twice over), no assigned machine is touched, desired capacity stays in bounds.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.faults.conftest import FaultStack, wait_for
from tests.faults.invariants import assert_invariants, aws_view, is_live

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(150)]


def sent_refreshes(stack: FaultStack, beat: str) -> int:
    return stack.log_text(beat).count("Sending due task refresh")


def test_two_beats_never_double_schedule_into_conflicting_actions(make_stack: Any) -> None:
    # given two beats started at once, refreshing every half second, on a settled pool
    target = 3
    stack: FaultStack = make_stack(idle_target=target, refresh_s=0.5, beats=("beat", "beat2"))
    wait_for(lambda: sent_refreshes(stack, "beat") >= 2 and sent_refreshes(stack, "beat2") >= 2, what="both beats")
    before = stack.all_instance_ids()

    # when the group grows behind the pool's back (someone raised desired capacity by 6)
    surplus = 6
    stack.aws("autoscaling").set_desired_capacity(
        AutoScalingGroupName="faults-asg", DesiredCapacity=target + surplus, HonorCooldown=False
    )
    assert len(stack.all_instance_ids() - before) == surplus

    # expect the surplus scaled in exactly once, by name, back to the target,
    # over several refresh periods of both beats
    wait_for(lambda: stack.idle_count() == target and stack.group()["DesiredCapacity"] == target, what="scale-in")
    time.sleep(3)  # several more double refreshes and rebalances
    live = {i for i, inst in aws_view(stack).items() if is_live(inst)}
    assert len(live) == target
    launched = len(stack.all_instance_ids())
    assert launched == target + surplus, f"{launched - target - surplus} replacement(s) launched: double scale-in"
    assert stack.group()["DesiredCapacity"] == target

    # and with projects coming and going under both beats, every invariant holds
    holders = {p: stack.client.assign(p, wait=15).instance_id for p in ("twice-a", "twice-b", "twice-c", "twice-d")}
    assert stack.client.release("twice-a") is True
    del holders["twice-a"]
    time.sleep(3)
    assert_invariants(stack, holders=holders, settle=True)
    assert sent_refreshes(stack, "beat") > 5 and sent_refreshes(stack, "beat2") > 5
