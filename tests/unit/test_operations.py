"""The operator's use cases (tasks.pool.operations) and the service's events, on InMemoryStore + FakeCloud.

The harness of tests/unit/test_service.py plays the aws workers; ``changes`` counts the AWS
calls that change something (reads excluded), so "nothing changed in AWS" is checked, not assumed.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import pytest

from tasks.cloud.fake_cloud import FakeCloud
from tasks.errors import InvalidRequest
from tasks.pool import operations
from tasks.pool.economics import override_text
from tasks.pool.service import CONVERGE_AFTER_S, PoolService
from tasks.state.memory_store import InMemoryStore
from tasks.worker.dry_run import DryRunEffects
from tasks.worker.side_effects import RecordingSideEffects
from tests.unit.test_service import ASG, Clock, Harness

pytestmark = pytest.mark.timeout(30)
READS = {"DescribeAutoScalingGroups", "DescribeInstances"}


def changes(h: Harness) -> dict[str, int]:
    return {k: v for k, v in h.cloud.api_calls().items() if k not in READS}


def kinds(h: Harness, after: str = "0-0") -> list[tuple[Any, ...]]:
    return [
        (e.event["type"], e.event["project_id"], e.event["instance_id"], e.event["reason"])
        for e in h.store.events(after=after, count=10_000)
    ]


def last_id(h: Harness) -> str:
    events = h.store.events(count=10_000)
    return events[-1].id if events else "0-0"


def settled(**options: Any) -> Harness:
    h = Harness(**options)
    h.settle()
    h.clock.advance(10)
    h.settle()
    return h


def reconfigure(h: Harness, **config: Any) -> None:
    h.service.config = replace(h.service.config, **config)


class TestPause:
    def test_while_paused_assigns_and_releases_work_and_nothing_changes_in_aws(self) -> None:
        # given a settled pool, paused
        h = settled(idle_target=2)
        result = operations.pause(h.service)
        assert result["paused"] and result["changed"]
        before = changes(h)
        # when a project takes a machine and another releases one, refreshes run and the buffer wants refilling
        taken = h.service.assign("p1")
        assert taken["status"] == "assigned"
        h.service.assign("p2")
        released = h.service.release("p2")
        assert released["status"] == "released"
        for _ in range(4):
            h.clock.advance(CONVERGE_AFTER_S)
            h.settle()
        # expect not one AWS change: no launch, no termination, no capacity change, no tag
        assert changes(h) == before
        assert h.cloud.describe_group().desired_capacity == 2
        status = h.service.status()
        assert status["paused"] is True and status["paused_since"]
        assert status["counts"]["releasing"] == 1  # recorded, terminated on resume
        # and when resumed, the released machine is terminated, the buffer refilled, the assignment tagged
        resumed = operations.resume(h.service)
        assert resumed["terminated"] == [released["instance_id"]]
        h.clock.advance(CONVERGE_AFTER_S)
        h.settle()
        assert released["instance_id"] in h.terminated
        assert h.counts()["idle"] == 2 and h.counts()["releasing"] == 0
        assert h.cloud.instances()[taken["instance_id"]].project_tag == "p1"
        assert h.service.status()["paused"] is False

    def test_pause_and_resume_are_recorded_once(self) -> None:
        h = settled()
        after = last_id(h)
        operations.pause(h.service)
        assert operations.pause(h.service)["changed"] is False
        operations.resume(h.service)
        assert operations.resume(h.service)["changed"] is False
        types = [k[0] for k in kinds(h, after)]
        assert types.count("paused") == 1 and types.count("resumed") == 1


class TestForceRelease:
    def test_is_a_release_recorded_as_forced(self) -> None:
        h = settled()
        iid = h.service.assign("p1")["instance_id"]
        after = last_id(h)
        result = operations.force_release(h.service, "p1")
        assert result["status"] == "released" and result["forced"]
        assert kinds(h, after)[:2] == [
            ("released", "p1", iid, "force_release"),
            ("terminated", "p1", iid, "force_release"),
        ]
        h.run_aws()
        assert iid in h.terminated
        assert operations.force_release(h.service, "p1")["status"] == "not_assigned"

    def test_a_bad_project_id_is_refused(self) -> None:
        h = settled()
        with pytest.raises(InvalidRequest):
            operations.force_release(h.service, "bad id")


class TestRecycle:
    def test_replaces_idle_machines_one_at_a_time_never_an_assigned_one(self) -> None:
        # given three idle machines and one assigned, all launched from template version 1
        h = settled(idle_target=3, desired=3)
        held = h.service.assign("p1")["instance_id"]
        h.settle()
        old = set(h.cloud.instances())
        # when the template moves to version 2 and an operator recycles
        h.cloud.template_version = "2"
        result = operations.recycle(h.service, template_version="2")
        assert sorted(result["idle_to_replace"]) == sorted(old - {held})
        assert result["assigned_after_release"] == [held]
        assert len(result["replacing_now"]) == 1
        # expect one termination per step (the next once the replacement is up), none with decrement
        for _ in range(8):
            h.clock.advance(10)
            h.settle()
        assert set(h.terminated) == old - {held}
        assert all(not decrement for _, decrement in h.effects.of("terminate"))
        assert held in h.cloud.instances()
        versions = {m.template_version for m in h.store.view().machines.values() if m.instance_id != held}
        assert versions == {"2"} and h.counts()["idle"] == 3
        assert [k for k in kinds(h) if k[3] == "recycle"] == [("terminated", None, i, "recycle") for i in h.terminated]
        # and the order is done
        assert h.store.group().recycle_version == ""

    def test_older_than(self) -> None:
        h = settled(idle_target=2, desired=2)
        first = set(h.cloud.instances())
        h.clock.advance(3_600)
        result = operations.recycle(h.service, older_than_s=1_800)
        assert sorted(result["idle_to_replace"]) == sorted(first)
        for _ in range(6):
            h.clock.advance(10)
            h.settle()
        assert set(h.terminated) == first
        assert not first & set(h.cloud.instances())

    @pytest.mark.parametrize(
        "options", [{}, {"older_than_s": -1}, {"older_than_s": "2h"}, {"older_than_s": 5, "template_version": "2"}]
    )
    def test_bad_orders_are_refused_and_change_nothing(self, options: dict[str, Any]) -> None:
        h = settled()
        with pytest.raises(InvalidRequest):
            operations.recycle(h.service, **options)
        assert h.store.group().recycle_before == 0 and h.store.group().recycle_version == ""


def first_start(**options: Any) -> Harness:
    """A group with machines before warmpool's first start (an older orchestrator's), the hold on."""
    h = Harness(**options)
    reconfigure(h, hold_unadopted=True)
    h.settle()
    return h


class TestAdopt:
    def test_first_start_never_terminates_machines_it_did_not_launch(self) -> None:
        # given three machines in the group before warmpool's first start, idle target 0
        h = first_start(desired=3, idle_target=0)
        found = set(h.cloud.instances())
        for _ in range(4):
            h.clock.advance(700)  # beyond the readiness timeout too
            h.settle()
        # expect all three alive and said so in status
        assert found <= set(h.cloud.instances()) and not h.terminated
        status = h.service.status()
        assert set(status["unadopted"]["instance_ids"]) == found and "adopt" in status["unadopted"]["note"]
        # and once an operator confirms that none needs adopting, the surplus goes
        operations.adopt_none(h.service)
        h.settle()
        assert set(h.terminated) == found
        assert h.service.status()["unadopted"]["count"] == 0

    def test_adopted_machines_become_assigned_tagged_and_protected(self) -> None:
        h = first_start(desired=3, idle_target=0)
        a, b, c = sorted(h.cloud.instances())
        # when a dry run, then the real adoption of two of them
        dry = operations.adopt(h.service, {"old-1": a, "old-2": b}, dry_run=True)
        assert dry["status"] == "would_adopt" and len(dry["adopted"]) == 2
        assert h.counts()["assigned"] == 0
        result = operations.adopt(h.service, {"old-1": a, "old-2": b})
        assert result["status"] == "adopted" and result["unadopted"] == [c]
        h.settle()
        # expect them assigned to their projects, tagged and protected in AWS, recorded
        view = h.store.view()
        assert view.projects == {"old-1": a, "old-2": b}
        assert h.cloud.instances()[a].project_tag == "old-1" and h.cloud.instances()[a].protected_from_scale_in
        assert ("adopted", "old-1", a, "adopt") in kinds(h)
        # and releasing one later terminates it like any assignment; the third is still held
        h.service.release("old-1")
        h.settle()
        assert a in h.terminated and c in h.cloud.instances()

    def test_one_bad_pair_refuses_them_all(self) -> None:
        h = first_start(desired=2, idle_target=0)
        taken = h.service.assign("someone")["instance_id"]
        free = next(i for i in h.cloud.instances() if i != taken)
        result = operations.adopt(h.service, {"old-1": free, "old-2": "i-0000000000000dead"})
        assert result["status"] == "failed" and "i-0000000000000dead" in result["message"]
        result = operations.adopt(h.service, {"old-1": free, "old-2": taken})
        assert result["status"] == "failed" and "assigned to another project" in result["message"]
        assert h.store.view().projects == {"someone": taken}
        with pytest.raises(InvalidRequest):
            operations.adopt(h.service, {"old-1": free, "old-2": free})  # one machine, two projects
        with pytest.raises(InvalidRequest):
            operations.adopt(h.service, {})

    def test_without_the_hold_nothing_is_held(self) -> None:
        h = Harness(desired=3, idle_target=0)
        h.settle()
        assert h.service.status()["unadopted"]["count"] == 0


class TestDryRun:
    def test_everything_planned_and_logged_nothing_sent(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.INFO, "warmpool.dry_run")
        clock = Clock()
        cloud = FakeCloud(ASG, max_size=10, desired=2, clock=clock)
        h = Harness(cloud=cloud, clock=clock, idle_target=2)
        h.settle()
        before = changes(h)
        inner = RecordingSideEffects()
        h.service = PoolService(
            h.store, DryRunEffects(inner), config=replace(h.service.config, dry_run=True), clock=clock
        )
        # when a project takes a machine and gives it back, and the buffer wants refilling
        taken = h.service.assign("p1")["instance_id"]
        h.service.release("p1")
        h.service.rebalance()
        # expect nothing sent to AWS, and the plan shown in status and the log
        assert [k for k, _ in inner.calls if k in ("terminate", "set_desired", "tag", "tag_group")] == []
        assert changes(h) == before
        status = h.service.status()
        assert status["dry_run"] is True
        assert status["would_terminate"] == [taken] and status["would_launch"] == 1
        assert "dry run: would terminate" in caplog.text and "dry run: would set desired capacity" in caplog.text


class TestServiceEvents:
    def test_capped_once_while_it_lasts(self) -> None:
        h = settled(max_size=3, idle_target=2)
        h.service.assign("p1")
        h.service.assign("p2")
        h.settle()
        h.service.assign("p3")
        h.settle()
        assert [k[0] for k in kinds(h)].count("capped") == 1

    def test_target_changed_when_the_idle_target_changes(self) -> None:
        h = settled(idle_target=2)
        after = last_id(h)
        reconfigure(h, idle_target=4)
        h.settle()
        changed = [e.event for e in h.store.events(after=after, count=100) if e.event["type"] == "target_changed"]
        assert len(changed) == 1 and changed[0]["from"] == 2 and changed[0]["to"] == 4

    def test_a_policy_target_apart_from_the_configured_one_is_recorded_once_not_at_every_rebalance(self) -> None:
        # given a pool configured for 2 idle machines, whose operator puts fixed:5 in force
        h = settled(idle_target=2)
        after = last_id(h)
        h.service.economics.ledger.set_override(override_text("fixed:5", now=h.clock.now))
        # when it rebalances again and again on that target
        for _ in range(5):
            h.clock.advance(10)
            h.settle()
            h.service.top_up()
        # expect one target_changed, 2 -> 5, saying why
        changed = [e.event for e in h.store.events(after=after, count=1000) if e.event["type"] == "target_changed"]
        assert [(c["from"], c["to"]) for c in changed] == [(2, 5)], changed
        assert changed[0]["reason"] == "fixed"

    def test_a_restarted_worker_whose_first_job_is_a_top_up_records_no_target_change(self) -> None:
        # given a pool that runs fixed:5 by an operator's override (configured: 2)
        h = settled(idle_target=2)
        ledger = h.service.economics.ledger
        ledger.set_override(override_text("fixed:5", now=h.clock.now))
        h.clock.advance(10)
        h.settle()
        after = last_id(h)
        # when the pool worker restarts and an assign's top-up runs before any rebalance
        h.service = PoolService(h.store, h.effects, config=h.service.config, clock=h.clock, ledger=ledger)
        h.service.top_up()
        h.clock.advance(10)
        h.settle()
        # expect no target_changed (the target never moved), and the recorded target still 5
        assert [k for k in kinds(h, after) if k[0] == "target_changed"] == []
        assert h.store.group().idle_target == 5

    def test_release_is_recorded_released_then_terminated(self) -> None:
        h = settled()
        iid = h.service.assign("p1")["instance_id"]
        after = last_id(h)
        h.service.release("p1")
        assert kinds(h, after)[:2] == [("released", "p1", iid, "release"), ("terminated", "p1", iid, "release")]

    def test_launch_failures_pause_scale_up_and_are_recorded(self) -> None:
        # given machines that never become ready
        clock = Clock()
        cloud = FakeCloud(ASG, max_size=10, desired=0, clock=clock, launch_delay_s=10**6)
        h = Harness(cloud=cloud, clock=clock, idle_target=3, store=InMemoryStore())
        reconfigure(h, ready_timeout_s=60)
        h.settle()
        for _ in range(3):
            h.clock.advance(61)
            h.settle()
        failed = [e.event for e in h.store.events(count=1000) if e.event["type"] == "launch_failed"]
        assert failed and "never became ready" in failed[0]["reason"] and failed[0]["backoff_s"] > 0
        assert ("terminated", None) in {(k[0], k[1]) for k in kinds(h) if k[3] == "unready"}
