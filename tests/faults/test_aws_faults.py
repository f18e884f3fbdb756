"""Scenarios 5, 6 and 7: AWS throttles and fails, AWS is unreachable, AWS rejects capacity changes.

The workers reach moto through a fault-injecting proxy (sandbox.awsproxy, with
the capacity validation moto lacks: tests/faults/awsfaults.py). The test
process reads moto directly, so its checks never meet the faults.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest

from producer import cli
from producer.gateway.metrics import GatewayMetrics
from tasks.contract import TASK_AWS_SET_DESIRED
from tasks.errors import NoCapacity
from tests.faults.awsfaults import CapacityProxy
from tests.faults.conftest import ASG, FaultStack, Infra, wait_for
from tests.faults.invariants import assert_invariants

pytestmark = [pytest.mark.integration]


@pytest.fixture
def proxy(infra: Infra) -> Iterator[CapacityProxy]:
    p = CapacityProxy(infra.moto.endpoint_url, seed=20260101)
    p.start()
    try:
        yield p
    finally:
        p.stop()


def metric(status: dict[str, Any], name: str) -> float:
    data, _ = GatewayMetrics().render({"default": status})
    for line in data.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


# -- scenario 5 ------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_throttling_and_server_errors_assigns_succeed_and_side_effects_converge(
    proxy: CapacityProxy, make_stack: Any
) -> None:
    # given a pool whose AWS answers 20% of calls with Throttling/RequestLimitExceeded and 5% with a 500
    stack: FaultStack = make_stack(idle_target=6, max_size=40, refresh_s=1.0, endpoint_url=proxy.endpoint_url)
    proxy.configure(throttle_ratio=0.20, error_ratio=0.05)

    # when 30 projects are assigned (in waves larger than the buffer) and 10 of them released
    holders: dict[str, str] = {}
    for wave in range(5):
        for i in range(6):
            project = f"thr-{wave}-{i}"
            holders[project] = stack.client.assign(project, wait=30).instance_id
    for project in sorted(holders)[:10]:
        assert stack.client.release(project) is True
        del holders[project]

    # expect every assign served (they never wait on AWS), and the faults really injected
    stats = proxy.stats()
    assert sum(stats["throttled"].values()) > 10 and sum(stats["errors"].values()) > 0, stats
    # and the side effects converging through the faults: tags, protection, capacity, terminations
    assert_invariants(stack, holders=holders, settle=True, timeout_s=90)
    assert stack.status()["refresh_error"] is None or stack.refresh_now()["refresh_error"] is None


# -- scenario 6 ------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_aws_unreachable_assigns_keep_being_served_outage_reported_and_recovered(
    proxy: CapacityProxy, make_stack: Any
) -> None:
    outage_s = 15.0  # the 60 s, sized down: long enough for every retry layer to give up at least once
    # given a settled pool with an assignment
    stack: FaultStack = make_stack(idle_target=5, max_size=20, refresh_s=1.0, endpoint_url=proxy.endpoint_url)
    holders = {"pre": stack.client.assign("pre", wait=10).instance_id}
    assert_invariants(stack, holders=holders, settle=True)
    known = {m.instance_id: m.state for m in stack.store.view().machines.values()}

    # when AWS stops answering (connections refused)
    proxy.configure(refuse=True)
    down_at = time.monotonic()
    try:
        # expect assigns from idle machines still served, at once
        for i in range(4):
            started = time.monotonic()
            holders[f"out-{i}"] = stack.client.assign(f"out-{i}").instance_id
            assert time.monotonic() - started < 2.0
        # and the outage reported: status and metrics say the refresh fails
        status = wait_for(lambda: (s := stack.status())["refresh_error"] and s, timeout_s=outage_s, what="the report")
        assert metric(status, "warmpool_refresh_error") == 1.0
        # and no state thrown away because refreshes fail
        while time.monotonic() - down_at < outage_s:
            view = stack.store.view()
            assert set(known) <= set(view.machines), "machines dropped during the outage"
            assert {p: view.projects.get(p) for p in holders} == holders
            time.sleep(1.0)
        aged = stack.status()
        assert aged["refresh_age_s"] is not None and aged["refresh_age_s"] >= outage_s - 5
    finally:
        # when AWS comes back
        proxy.configure(refuse=False)

    # expect the refresh to recover, the report cleared, and the side effects made meanwhile to converge
    wait_for(lambda: stack.status()["refresh_error"] is None, timeout_s=30, what="the refresh to recover")
    assert metric(stack.status(), "warmpool_refresh_error") == 0.0
    assert_invariants(stack, holders=holders, settle=True, timeout_s=90)


# -- scenario 7 ------------------------------------------------------------------------
def cli_assign(stack: FaultStack, project: str, wait: float) -> tuple[int, dict[str, Any], str]:
    out, err = io.StringIO(), io.StringIO()
    with (
        mock.patch.object(cli, "_client", lambda _args=None: stack.client),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        code = cli.main(["assign", project, "--wait", str(wait), "--json"])
    return code, json.loads(out.getvalue()), err.getvalue()


@pytest.mark.timeout(150)
def test_aws_rejecting_capacity_is_clamped_and_reported_and_leaks_nothing(
    proxy: CapacityProxy, make_stack: Any
) -> None:
    # given a pool whose refreshes we control (no beat, no fast poll of pending launches),
    # AWS validating capacity like Auto Scaling
    stack: FaultStack = make_stack(
        idle_target=3,
        max_size=10,
        beats=(),
        endpoint_url=proxy.endpoint_url,
        extra_env={"WARMPOOL_PENDING_POLL_S": "0"},
    )
    holders = {"cap-0": stack.client.assign("cap-0", wait=10).instance_id}
    wait_for(lambda: stack.group()["DesiredCapacity"] == 4, what="desired = 1 assigned + 3 idle")
    stack.refresh_now()

    # when an operator lowers MaxSize to the current size behind the pool's back,
    # and more projects arrive before the next refresh (the pool asks for more than MaxSize)
    asg = stack.aws("autoscaling")
    asg.update_auto_scaling_group(AutoScalingGroupName=ASG, MaxSize=4)
    for project in ("cap-1", "cap-2", "cap-3"):
        holders[project] = stack.client.assign(project, wait=10).instance_id

    # expect AWS to have refused the increase, and nothing launched beyond MaxSize
    wait_for(lambda: proxy.rejected("SetDesiredCapacity"), what="AWS to reject the capacity increase")
    assert stack.group()["DesiredCapacity"] == 4
    # and once a refresh saw the new bound, the pool clamped and reporting it
    status = stack.refresh_now()
    status = wait_for(lambda: (s := stack.status())["group"]["capped"] and s, what="capped reported")
    assert status["group"]["max_size"] == 4 and status["group"]["wanted"] > 4
    # and a caller gets a clear error, never a stack trace: client ...
    with pytest.raises(NoCapacity) as refused:
        stack.client.assign("cap-4")
    assert refused.value.capped and "MaxSize" in str(refused.value)
    # ... and CLI (exit 3, the result object)
    code, body, err = cli_assign(stack, "cap-5", wait=0)
    assert code == 3 and body["code"] == "no_capacity" and body["capped"] is True, body
    assert "Traceback" not in err
    # and no further request above MaxSize once the pool knows it
    asked_before = len(proxy.rejected("SetDesiredCapacity"))
    stack.refresh_now()
    time.sleep(1)
    assert len(proxy.rejected("SetDesiredCapacity")) == asked_before

    # when an operator raises MinSize to the current size, and a project releases before a refresh
    asg.update_auto_scaling_group(AutoScalingGroupName=ASG, MinSize=4)
    released = holders.pop("cap-0")
    assert stack.client.release("cap-0") is True

    # expect the released machine terminated all the same (without the decrement AWS refused),
    # desired capacity kept within [MinSize, MaxSize], and nothing leaked
    def gone() -> bool:
        instances = {i["InstanceId"] for i in stack.group()["Instances"]}
        return released not in instances and len(instances) == 4

    wait_for(gone, timeout_s=30, what="the released machine terminated and replaced")
    stack.refresh_now()
    assert_invariants(stack, holders=holders, settle=True)


@pytest.mark.timeout(90)
def test_a_caller_that_waited_on_a_capped_pool_is_told_it_is_capped(make_stack: Any) -> None:
    # given a pool capped at one machine, held (no beat: nothing else happens while the callers wait)
    stack: FaultStack = make_stack(idle_target=1, desired=1, max_size=1, beats=())
    stack.client.assign("only", wait=10)
    wait_for(lambda: stack.status()["group"]["capped"], what="capped reported")

    # when another project waits for a machine, client and CLI
    with pytest.raises(NoCapacity) as refused:
        stack.client.assign("waiter", wait=2)
    code, body, _ = cli_assign(stack, "waiter-cli", wait=2)

    # expect to learn why: the pool is capped by MaxSize (waiting longer will not help)
    assert refused.value.capped and refused.value.max_size == 1, refused.value
    assert "MaxSize" in str(refused.value)
    assert code == 3 and body["capped"] is True and body["max_size"] == 1, body


@pytest.mark.timeout(120)
def test_a_stale_set_desired_never_lowers_capacity(make_stack: Any) -> None:
    # given a settled pool of 6 machines (2 assigned, 4 idle)
    stack: FaultStack = make_stack(idle_target=4, max_size=20, refresh_s=1.0)
    holders = {p: stack.client.assign(p, wait=10).instance_id for p in ("stale-a", "stale-b")}
    assert_invariants(stack, holders=holders, settle=True)
    before = {i["InstanceId"] for i in stack.group()["Instances"]}

    # when a set_desired computed from an older view of the group (a rebalance that ran before
    # the last scale-up landed; side effects run concurrently, in any order) reaches an aws worker
    stack.app.send_task(TASK_AWS_SET_DESIRED, args=[3], queue="aws")
    time.sleep(3)

    # expect it ignored: shrinking happens only by terminating chosen idle machines,
    # never by lowering desired capacity and letting AWS pick the victims
    assert stack.group()["DesiredCapacity"] == 6
    assert {i["InstanceId"] for i in stack.group()["Instances"]} == before
    assert_invariants(stack, holders=holders, settle=True)
