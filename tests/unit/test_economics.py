"""PoolService with policies: delayed bounded scale-in, figures, launch times, fast poll, overrides, lost history."""

from __future__ import annotations

import json
from dataclasses import replace

from tasks.cloud.fake_cloud import FakeCloud
from tasks.pool.economics import override_text
from tasks.pool.ledger import MemoryLedger
from tasks.pool.model import MachineState
from tasks.pool.policy import base_stock
from tests.unit.test_service import ASG, Clock, Harness


def harness(
    *, ready: int = 2, idle_target: int = 2, launch_s: float = 0.0, max_size: int = 100, **config: object
) -> Harness:
    clock = Clock()
    cloud = FakeCloud(ASG, max_size=max_size, desired=ready, launch_delay_s=launch_s, clock=clock)
    h = Harness(cloud=cloud, clock=clock, idle_target=idle_target, max_size=max_size)
    h.service.config = replace(h.service.config, **config)  # type: ignore[arg-type]
    return h


def idle_ids(h: Harness) -> list[str]:
    return [m["instance_id"] for m in h.service.status()["machines"] if m["state"] == "idle"]


class TestDelayedScaleIn:
    def test_starting_on_many_ready_machines_terminates_none_at_once(self) -> None:
        # given warmpool started on a group of 30 ready machines, idle target 2, delay 180 s, step 5
        h = harness(ready=30, scale_in_delay_s=180.0, scale_in_step=5)
        h.settle()
        # expect nothing terminated while the surplus is younger than the delay
        for _ in range(10):
            h.clock.advance(15)
            h.settle(rounds=1)
        assert h.terminated == [] and len(idle_ids(h)) == 30
        # when the delay has passed, expect at most 5 per rebalance, longest idle first
        h.clock.advance(30)
        idle_before = sorted(h.store.view().by_state(MachineState.IDLE), key=lambda m: (m.since, m.instance_id))
        out = h.service.rebalance()
        assert len(out["terminated"]) == 5
        assert out["terminated"] == [m.instance_id for m in idle_before[:5]]
        # and the pool ends at its target after enough rebalances
        for _ in range(10):
            h.clock.advance(10)
            h.settle(rounds=1)
        assert len(idle_ids(h)) == 2
        assert h.service.status()["economics"]["terminations"]["scale_in"] == 28

    def test_demand_that_uses_the_surplus_restarts_the_delay(self) -> None:
        # given 6 ready machines, idle target 2, and a surplus 170 s old
        h = harness(ready=6, scale_in_delay_s=180.0)
        h.settle()
        h.clock.advance(170)
        h.settle(rounds=1)
        # when four projects take machines (no surplus left), then release... the surplus is new again
        for n in range(4):
            h.service.assign(f"p-{n}")
        h.service.rebalance()
        for n in range(4):
            h.service.release(f"p-{n}")
        h.run_aws()
        h.clock.advance(20)
        h.settle(rounds=1)
        # expect none of the idle terminated for scale-in: the 180 s started again
        assert "scale_in" not in h.service.status()["economics"]["terminations"]

    def test_without_a_delay_surplus_goes_at_once_as_before(self) -> None:
        h = harness(ready=8)
        h.settle()
        assert len(idle_ids(h)) == 2


class TestFigures:
    def test_warm_waited_failed_and_terminations_are_counted_by_the_service(self) -> None:
        # given a pool of two idle machines that launches in 30 s
        h = harness(launch_s=30.0, pending_poll_s=1.0)
        h.clock.advance(31)
        h.settle()
        # when three projects ask: two served warm, one waits 30 s for a launch, one gives up
        h.service.assign("p-1")
        h.service.assign("p-2")
        waiting = h.service.assign("p-3", wait_s=120, request_id="r-3")
        assert waiting["status"] == "waiting"
        assert h.service.assign("p-4")["status"] == "failed"
        h.run_aws()
        h.clock.advance(31)
        h.refresh()
        h.run_aws()
        h.service.release("p-1")
        econ = h.service.status()["economics"]
        # expect the figures
        assert (econ["assigns_warm"], econ["assigns_waited"], econ["assigns_failed"]) == (2, 1, 1)
        assert econ["wait_seconds"]["sum"] >= 30
        assert sum(econ["wait_seconds"]["counts"]) == 3
        assert econ["terminations"] == {"release": 1}
        assert econ["launches"] >= 1
        # and launch-to-ready learned from the machine launched for the waiting caller
        launch = econ["launch_ready_seconds"]
        assert launch["count"] >= 1 and 30 <= launch["max"] <= 33
        assert econ["policy"] == {"spec": "fixed", "source": "config", "schedules": [], "target": 2, "reason": "fixed"}

    def test_idle_machine_seconds_integrate_the_buffer(self) -> None:
        h = harness(ready=2)
        h.settle()
        start = h.service.status()["economics"]["idle_machine_seconds"]
        h.clock.advance(100)
        h.service.rebalance()
        assert h.service.status()["economics"]["idle_machine_seconds"] - start == 200


class TestFastPoll:
    def test_a_launch_is_polled_every_second_and_nothing_when_none_is_pending(self) -> None:
        h = harness(launch_s=30.0, pending_poll_s=1.0)
        h.clock.advance(31)
        h.settle()
        # given a quiet pool: expect no early refresh asked for
        before = len(h.effects.of("refresh"))
        h.service.rebalance()
        assert len(h.effects.of("refresh")) == before
        # when a machine launches (a project took one), expect an early refresh 1 s out
        h.service.assign("p-1")
        h.run_aws()
        h.store.clear_top_up_request()
        h.refresh()
        assert h.effects.of("refresh")[-1] == 1.0


class TestRuntimePolicy:
    def test_an_override_is_in_force_at_the_next_rebalance_and_a_bad_one_keeps_the_last_good(self) -> None:
        h = harness(ready=2)
        h.settle()
        ledger = h.service.economics.ledger
        # when an operator sets fixed:5
        ledger.set_override(override_text("fixed:5", now=h.clock.now))
        h.clock.advance(1)
        assert h.service.rebalance()["idle_target"] == 5
        assert h.service.status()["economics"]["policy"]["source"] == "override"
        # when something writes a broken override, expect the pool to keep fixed:5
        ledger.set_override(json.dumps({"policy": "fixd"}))
        h.clock.advance(1)
        assert h.service.rebalance()["idle_target"] == 5
        # and removing the override brings the configured policy back
        ledger.set_override(None)
        assert h.service.rebalance()["idle_target"] == 2


class TestAdaptive:
    def test_history_feeds_adaptive_and_its_loss_falls_back_to_the_floor(self) -> None:
        # given an adaptive pool whose demand a week ago, right now, was 20 assigns
        h = harness(ready=2, policy="adaptive", max_size=200)
        ledger = h.service.economics.ledger
        assert isinstance(ledger, MemoryLedger)
        week_ago = h.clock.now - 7 * 86_400
        ledger.record_assign(now=week_ago - 3600, outcome="warm")  # history begins before
        for n in range(20):
            ledger.record_assign(now=week_ago + 10 + n, outcome="warm")
        h.settle()
        out = h.service.rebalance()
        # expect the buffer sized for them (recent claims none), by Palm
        assert out["idle_target"] >= base_stock(20.0, 0.99) and "history" in out["policy_reason"]
        # when the history is lost, expect the fixed floor, never below
        ledger.forget_history()
        out = h.service.rebalance()
        assert out["idle_target"] == 2 and "no history" in out["policy_reason"]
