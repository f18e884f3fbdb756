"""Pool economics on a real stack: a group of many ready machines is not scaled in at once; the worker counts."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.conftest import ASG, Stack, running_stack, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def delayed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # A delay far longer than this module runs: no surplus may be terminated while it does.
    with running_stack(
        tmp_path_factory.mktemp("econ-logs"),
        extra_env={"WARMPOOL_SCALE_IN_DELAY_S": "3600", "WARMPOOL_SCALE_IN_STEP": "5"},
    ) as stack:
        yield stack


def test_many_ready_machines_are_kept_and_the_worker_counts_assigns(delayed: Stack) -> None:
    # given warmpool on a group of 12 ready machines, idle target 2
    delayed.fresh_group(max_size=20, desired=12)
    delayed.aws("autoscaling").set_desired_capacity(AutoScalingGroupName=ASG, DesiredCapacity=12, HonorCooldown=False)
    before = delayed.client.status()["aws_calls"].get("DescribeAutoScalingGroups", 0)

    def twelve_idle_after_refreshes() -> dict[str, Any] | None:
        status = delayed.client.status()
        refreshes = status["aws_calls"].get("DescribeAutoScalingGroups", 0) - before
        return status if refreshes >= 3 and status["counts"]["idle"] == 12 else None

    # expect all 12 idle after several refreshes and rebalances: none terminated as surplus
    status = wait_for(twelve_idle_after_refreshes, timeout_s=30, what="12 idle machines after 3 refreshes")
    assert len(delayed.all_instance_ids()) == 12
    econ = status["economics"]
    assert "scale_in" not in econ["terminations"]
    assert econ["policy"]["spec"] == "fixed" and econ["policy"]["reason"] == "fixed"
    # when a project takes one through the Python client and releases it,
    # expect the pool worker (not the gateway) to count both
    assert delayed.client.assign("econ-1").instance_id
    delayed.client.release("econ-1")

    def measured() -> dict[str, Any] | None:
        econ = delayed.client.status()["economics"]
        return econ if econ["assigns_warm"] >= 1 and econ["terminations"].get("release") == 1 else None

    econ = wait_for(measured, timeout_s=30, what="the assign and the release counted by the worker")
    assert econ["assigns_warm"] == 1
