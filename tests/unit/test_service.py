"""PoolService end to end on InMemoryStore + FakeCloud + RecordingSideEffects.

The harness plays the other processes: ``run_aws`` executes the recorded side effects against
the FakeCloud as the aws workers would (and runs requested rebalances as the pool worker
would), ``refresh`` feeds a snapshot of the FakeCloud back, ``settle`` repeats both until the
pool is quiet. The clock is fake; FakeCloud launches instances ready at once.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

import pytest

from tasks.cloud.fake_cloud import FakeCloud
from tasks.contract import CODE_WRONG_GROUP
from tasks.errors import CapacityRejected, InvalidProject
from tasks.pool import operations
from tasks.pool.model import AddressKind, GroupSnapshot
from tasks.pool.service import CONVERGE_AFTER_S, MAX_SNAPSHOT_SKEW_S, PoolConfig, PoolService
from tasks.state.memory_store import InMemoryStore
from tasks.worker.side_effects import RecordingSideEffects

ASG = "svc-asg"
T0 = 1_764_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Harness:
    def __init__(
        self,
        *,
        min_size: int = 0,
        max_size: int = 10,
        desired: int = 2,
        idle_target: int = 2,
        store: InMemoryStore | None = None,
        cloud: FakeCloud | None = None,
        clock: Clock | None = None,
        asg_name: str = ASG,
    ) -> None:
        self.clock = clock or Clock()
        self.cloud = cloud or FakeCloud(ASG, min_size=min_size, max_size=max_size, desired=desired, clock=self.clock)
        self.store = store or InMemoryStore()
        self.effects = RecordingSideEffects()
        self.service = PoolService(
            self.store,
            self.effects,
            config=PoolConfig(asg_name=asg_name, idle_target=idle_target, address=AddressKind.PUBLIC),
            clock=self.clock,
        )
        self.done = 0  # side effects already executed
        self.terminated: list[str] = []

    # -- the other processes --------------------------------------------------------------
    def read(self) -> GroupSnapshot:
        """What the refresh job reads: the group, numbered by the pool's state when the read starts."""
        return replace(self.cloud.describe_group(), seq=self.store.next_refresh_seq())

    def refresh(self) -> dict[str, Any]:
        self.clock.advance(1)
        return self.service.apply_snapshot(self.read())

    def run_aws(self) -> None:
        """Execute every pending side effect, as the aws workers (and the pool worker) would."""
        while self.done < len(self.effects.calls):
            kind, arg = self.effects.calls[self.done]
            self.done += 1
            if kind == "tag":
                instance_id, project, assigned_at = arg
                self.cloud.tag_and_protect(instance_id, project_id=project, assigned_at=assigned_at)
            elif kind == "terminate":
                instance_id, decrement = arg
                if self.cloud.terminate_instance(instance_id, decrement=decrement):
                    self.terminated.append(instance_id)
            elif kind == "set_desired":
                try:
                    self.cloud.set_desired_capacity(arg)
                except CapacityRejected:  # what tasks.worker.aws_jobs.set_desired does
                    pass
            elif kind == "tag_group":
                self.cloud.tag_group(arg)
            elif kind == "top_up":
                self.service.top_up()  # what tasks.worker.pool_jobs.top_up runs

    def settle(self, rounds: int = 4) -> None:
        for _ in range(rounds):
            self.run_aws()
            self.refresh()
        self.run_aws()

    # -- observations ---------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        return dict(self.service.status()["counts"])

    def pending_effects(self, kind: str) -> list[Any]:
        return [arg for k, arg in self.effects.calls[self.done :] if k == kind]

    def snapshot_state(self) -> tuple[Any, ...]:
        view = self.store.view()
        return (dict(view.machines), dict(view.projects), self.store.group(), list(self.effects.calls))


@pytest.fixture
def pool() -> Harness:
    """Two idle machines (idle target 2), MinSize 0, MaxSize 10, state known from one refresh."""
    h = Harness()
    h.settle()
    assert h.counts()["idle"] == 2
    return h


class TestAssign:
    def test_assign_hands_out_an_idle_machine_without_calling_aws(self, pool: Harness) -> None:
        # given an idle machine / when a project asks
        calls_before = pool.cloud.api_calls()
        result = pool.service.assign("proj-1")
        # expect it assigned, with its public and private address, and no AWS call on the path
        assert pool.cloud.api_calls() == calls_before
        assert result["status"] == "assigned" and result["project_id"] == "proj-1"
        inst = pool.cloud.instances()[result["instance_id"]]
        assert result["ip"] == inst.public_ip and result["private_ip"] == inst.private_ip
        assert result["assigned_at"].endswith("Z")
        # and the tag + protection queued as a side effect
        assert pool.pending_effects("tag") == [(result["instance_id"], "proj-1", result["assigned_at"])]

    def test_asking_again_before_aws_shows_the_tag_sends_it_again(self, pool: Harness) -> None:
        # given an assign whose worker died after answering, before its tag was sent
        first = pool.service.assign("proj-1")
        pool.effects.calls.clear()
        # when the job is delivered again (or the project asks again) before a refresh shows the tag
        again = pool.service.assign("proj-1")
        # expect the same machine, and the tag sent again
        assert again == first
        assert pool.pending_effects("tag") == [(first["instance_id"], "proj-1", first["assigned_at"])]

    def test_tag_and_protection_land_after_the_side_effect_runs(self, pool: Harness) -> None:
        result = pool.service.assign("proj-1")
        pool.settle()
        inst = pool.cloud.instances()[result["instance_id"]]
        assert inst.project_tag == "proj-1" and inst.assigned_at_tag == result["assigned_at"]
        assert inst.protected_from_scale_in
        machine = next(m for m in pool.service.status()["machines"] if m["instance_id"] == result["instance_id"])
        assert machine["tagged"] and machine["protected"] and machine["state"] == "assigned"

    def test_same_project_twice_gets_the_same_machine(self, pool: Harness) -> None:
        first = pool.service.assign("proj-1")
        pool.settle()
        again = pool.service.assign("proj-1")
        assert again == first
        assert pool.pending_effects("tag") == []  # not tagged a second time
        assert pool.counts()["assigned"] == 1

    def test_no_idle_machine_is_no_capacity_and_asks_for_a_scale_up(self) -> None:
        # given a pool with no machine at all (idle target 0, nothing running)
        h = Harness(desired=0, idle_target=0)
        h.settle()
        # when a project asks
        result = h.service.assign("proj-1")
        # expect a clear no_capacity outcome right away and a rebalance requested
        assert result["status"] == "failed" and result["code"] == "no_capacity"
        assert result["project_id"] == "proj-1" and result["capped"] is False
        assert h.pending_effects("top_up") == [None]
        assert h.counts()["assigned"] == 0

    def test_assign_below_idle_target_triggers_a_refill(self, pool: Harness) -> None:
        pool.service.assign("proj-1")
        assert pool.pending_effects("top_up") == [None]
        pool.settle()
        assert pool.counts() == {"pending": 0, "idle": 2, "assigned": 1, "releasing": 0, "quarantined": 0, "foreign": 0}
        assert pool.cloud.describe_group().desired_capacity == 3

    def test_many_projects_get_distinct_machines(self) -> None:
        h = Harness(desired=6, idle_target=6, max_size=20)
        h.settle()
        results = [h.service.assign(f"proj-{n}") for n in range(6)]
        ids = [r["instance_id"] for r in results]
        assert len(set(ids)) == 6
        assert h.service.assign("proj-6")["code"] == "no_capacity"


class TestRelease:
    def test_release_terminates_with_decrement(self, pool: Harness) -> None:
        assigned = pool.service.assign("proj-1")
        pool.settle()
        result = pool.service.release("proj-1")
        assert result == {"status": "released", "project_id": "proj-1", "instance_id": assigned["instance_id"]}
        assert pool.pending_effects("terminate") == [(assigned["instance_id"], True)]

    def test_release_at_min_size_terminates_without_decrement(self) -> None:
        # given MinSize 3 and exactly 3 machines, one assigned
        h = Harness(min_size=3, desired=3, idle_target=2)
        h.settle()
        assigned = h.service.assign("proj-1")
        h.run_aws()
        assert h.store.group().desired_capacity == h.store.group().min_size == 3
        # when released / expect a termination AWS will replace (desired must not go below MinSize)
        h.service.release("proj-1")
        assert h.pending_effects("terminate") == [(assigned["instance_id"], False)]

    def test_release_of_nothing_is_not_assigned(self, pool: Harness) -> None:
        before = pool.snapshot_state()
        assert pool.service.release("proj-9") == {"status": "not_assigned", "project_id": "proj-9"}
        assert pool.snapshot_state() == before

    def test_redelivered_release_terminates_once(self, pool: Harness) -> None:
        pool.service.assign("proj-1")
        pool.service.release("proj-1")
        assert pool.service.release("proj-1")["status"] == "not_assigned"
        assert len(pool.pending_effects("terminate")) == 1

    def test_buffer_refills_to_idle_target_after_release(self, pool: Harness) -> None:
        # given a project holding a machine, the buffer back at 2 idle
        assigned = pool.service.assign("proj-1")
        pool.settle()
        assert pool.counts()["idle"] == 2
        # when it releases and the workers run
        pool.service.release("proj-1")
        pool.settle()
        # expect exactly the released machine terminated, the buffer at its target, the group at 2
        assert pool.terminated == [assigned["instance_id"]]
        assert assigned["instance_id"] not in pool.cloud.instances()
        assert pool.counts() == {"pending": 0, "idle": 2, "assigned": 0, "releasing": 0, "quarantined": 0, "foreign": 0}
        assert pool.cloud.describe_group().desired_capacity == 2

    def test_release_then_assign_again_gives_a_fresh_machine(self, pool: Harness) -> None:
        first = pool.service.assign("proj-1")
        pool.service.release("proj-1")
        second = pool.service.assign("proj-1")
        assert second["status"] == "assigned" and second["instance_id"] != first["instance_id"]


class TestRefresh:
    def test_lost_machine_is_reported_and_frees_its_project(self, pool: Harness) -> None:
        # given proj-1 holding a machine
        assigned = pool.service.assign("proj-1")
        pool.settle()
        # when the instance disappears from AWS (spot interruption, someone's console click)
        pool.cloud.vanish(assigned["instance_id"])
        outcome = pool.refresh()
        # expect the loss reported in the refresh and in status, once
        assert [x["instance_id"] for x in outcome["lost"]] == [assigned["instance_id"]]
        status = pool.service.status()
        assert status["lost_total"] == 1
        assert status["lost"][0]["instance_id"] == assigned["instance_id"]
        assert status["lost"][0]["project_id"] == "proj-1"
        assert status["lost"][0]["lost_at"].endswith("Z")
        assert status["counts"]["assigned"] == 0
        pool.settle()
        assert pool.service.status()["lost_total"] == 1
        # and the project no longer holds it: a release finds nothing, a new assign a new machine
        assert pool.service.release("proj-1")["status"] == "not_assigned"
        again = pool.service.assign("proj-1")
        assert again["status"] == "assigned" and again["instance_id"] != assigned["instance_id"]

    def test_wiped_state_is_rebuilt_from_tags(self) -> None:
        # given five projects holding tagged machines
        h = Harness(desired=6, idle_target=6, max_size=20)
        h.settle()
        held = {f"proj-{n}": h.service.assign(f"proj-{n}")["instance_id"] for n in range(5)}
        h.settle()
        # when Redis is flushed and the next refresh arrives
        h.store.reset()
        outcome = h.refresh()
        # expect every assignment back, and the same machine for each project on its next assign
        assert outcome["restored"] == 5
        assert {m["project_id"]: m["instance_id"] for m in h.service.status()["machines"] if m["project_id"]} == held
        for project, instance_id in held.items():
            result = h.service.assign(project)
            assert result["instance_id"] == instance_id
        h.settle()
        assert all(i in h.cloud.instances() for i in held.values())
        assert h.counts()["assigned"] == 5 and h.counts()["idle"] == 6

    def test_wiped_state_keeps_a_reassigned_project_on_its_live_machine(self, pool: Harness) -> None:
        """proj-1 released machine A and got machine B; Redis is flushed before A's termination runs.

        A and B both carry warmpool:project=proj-1 (B's assigned-at is newer). The next refresh
        must give proj-1 back B, its live machine, and retire A; never the reverse.
        """
        first = pool.service.assign("proj-1")
        pool.settle()
        pool.service.release("proj-1")
        second = pool.service.assign("proj-1")
        assert second["instance_id"] != first["instance_id"]
        # the tag of B lands; the termination of A is still queued when Redis is flushed
        pool.clock.advance(1)
        pool.cloud.tag_and_protect(second["instance_id"], project_id="proj-1", assigned_at=second["assigned_at"])
        queued = [c for c in pool.effects.calls[pool.done :] if c[0] == "terminate"]
        pool.done = len(pool.effects.calls)
        pool.store.reset()
        pool.refresh()
        pool.effects.calls.extend(queued)
        pool.settle()
        # expect proj-1 still on B, B alive, nothing reported lost
        assert second["instance_id"] in pool.cloud.instances()
        assert pool.service.assign("proj-1")["instance_id"] == second["instance_id"]
        assert pool.service.status()["lost_total"] == 0

    def test_stale_refresh_is_ignored_and_logged(self, pool: Harness, caplog: pytest.LogCaptureFixture) -> None:
        old = pool.read()
        pool.refresh()
        result = pool.service.apply_snapshot(old)
        assert result["applied"] is False and "stale" in result["reason"]
        assert "snapshot discarded" in caplog.text

    def test_order_follows_the_refresh_number_not_the_aws_workers_clocks(self, pool: Harness) -> None:
        # given a refresh read by an aws worker 60 s fast, applied
        fast = replace(pool.read(), observed_at=pool.clock() + 60)
        assert pool.service.apply_snapshot(fast)["applied"] is True
        # when that worker is replaced by one with a correct clock, and a machine launches
        pool.cloud.set_desired_capacity(3)
        pool.clock.advance(1)
        # expect its refreshes applied at once (not ignored until its clock passes the other's)
        assert pool.refresh()["applied"] is True
        assert set(pool.store.view().machines) == set(pool.cloud.instances()) and len(pool.cloud.instances()) == 3

    def test_a_snapshot_dated_far_ahead_is_refused_loudly_and_blocks_nothing(
        self, pool: Harness, caplog: pytest.LogCaptureFixture
    ) -> None:
        # given a settled pool; when a snapshot dated a day ahead says every machine is gone
        before, effects_before = pool.store.view(), list(pool.effects.calls)
        future = replace(pool.read(), instances=(), observed_at=pool.clock() + 86_400)
        result = pool.service.apply_snapshot(future)
        # expect it refused, the pool untouched (no side effect either), the reason logged and shown in status
        assert result["applied"] is False and "ahead" in result["reason"]
        assert pool.store.view() == before and pool.effects.calls == effects_before
        assert "snapshot refused: absurd date" in caplog.text
        assert "ahead of the pool worker's clock" in pool.service.status()["refresh_error"]
        # and the next refresh applied as usual
        assert pool.refresh()["applied"] is True and pool.service.status()["refresh_error"] is None

    @pytest.mark.parametrize("observed_at", [float("nan"), float("inf"), 0.0, -5.0])
    def test_a_snapshot_with_no_real_date_is_refused(self, pool: Harness, observed_at: float) -> None:
        before = pool.store.view()
        assert pool.service.apply_snapshot(replace(pool.read(), observed_at=observed_at))["applied"] is False
        assert pool.store.view() == before

    def test_a_snapshot_read_long_ago_is_refused(self, pool: Harness) -> None:
        old = pool.read()
        pool.clock.advance(MAX_SNAPSHOT_SKEW_S + 1)
        result = pool.service.apply_snapshot(old)
        assert result["applied"] is False and "before the pool worker's clock" in result["reason"]

    def test_a_snapshot_of_another_group_is_refused_and_changes_nothing(
        self, pool: Harness, caplog: pytest.LogCaptureFixture
    ) -> None:
        # given a settled pool; when another group's refresh lands on this pool worker
        before = pool.snapshot_state()
        other = replace(pool.read(), name="team-b-asg", instances=())
        result = pool.service.apply_snapshot(other)
        # expect a wrong_group failure naming both groups, and nothing changed
        assert result["status"] == "failed" and result["code"] == CODE_WRONG_GROUP
        assert "team-b-asg" in result["message"] and ASG in result["message"] and "broker" in result["message"]
        assert pool.snapshot_state() == before
        assert "snapshot refused: another group" in caplog.text

    def test_redelivered_refresh_has_no_new_effect(self, pool: Harness) -> None:
        snap = pool.read()
        pool.service.apply_snapshot(snap)
        pool.run_aws()
        before = pool.snapshot_state()
        pool.service.apply_snapshot(snap)
        assert pool.pending_effects("terminate") == [] and pool.pending_effects("set_desired") == []
        assert pool.store.view().machines == before[0]

    def test_refresh_error_is_recorded_and_shown(self, pool: Harness) -> None:
        pool.service.record_refresh_error("DescribeAutoScalingGroups: throttled (Throttling)")
        assert pool.service.status()["refresh_error"] == "DescribeAutoScalingGroups: throttled (Throttling)"
        pool.refresh()
        assert pool.service.status()["refresh_error"] is None

    def test_lost_tag_side_effect_is_reissued(self, pool: Harness) -> None:
        # given an assignment whose tag job was lost
        assigned = pool.service.assign("proj-1")
        # the tag side effect never reaches a worker
        pool.effects.calls = [c for c in pool.effects.calls if c[0] != "tag"]
        pool.settle()
        assert pool.cloud.instances()[assigned["instance_id"]].project_tag is None
        # when refreshes keep seeing it untagged for longer than CONVERGE_AFTER_S
        pool.clock.advance(CONVERGE_AFTER_S + 1)
        pool.settle()
        # expect it tagged and protected after all
        inst = pool.cloud.instances()[assigned["instance_id"]]
        assert inst.project_tag == "proj-1" and inst.protected_from_scale_in

    def test_a_restarted_pool_worker_resends_at_once_what_its_killed_predecessor_lost(self, pool: Harness) -> None:
        # given a release and an assign whose Lua transitions ran but whose messages
        # were lost with the worker that ran them (killed before the job ended)
        pool.settle()
        released = pool.service.assign("proj-1")["instance_id"]
        pool.run_aws()
        pool.effects.calls.clear()
        pool.service.release("proj-1")
        kept = pool.service.assign("proj-2")["instance_id"]
        pool.effects.calls.clear()
        # (the redelivered release finds the transition done and sends nothing)
        assert pool.service.release("proj-1")["status"] == "not_assigned" and pool.effects.calls == []

        # when the restarted worker starts, well before CONVERGE_AFTER_S
        resent = pool.service.resend_side_effects()

        # expect the termination and the tag sent again at once
        assert resent == 2
        assert [iid for iid, _decrement in pool.effects.of("terminate")] == [released]
        assert [(iid, project) for iid, project, _at in pool.effects.of("tag")] == [(kept, "proj-2")]

    def test_a_restarted_pool_worker_resends_nothing_while_paused(self, pool: Harness) -> None:
        # given a released machine whose termination waits for resume
        pool.settle()
        pool.service.assign("proj-1")
        pool.run_aws()
        operations.pause(pool.service)
        pool.service.release("proj-1")
        pool.effects.calls.clear()
        # when a pool worker starts, expect no AWS change
        assert pool.service.resend_side_effects() == 0 and pool.effects.calls == []


class TestRebalance:
    def test_scale_in_terminates_only_idle_machines(self) -> None:
        # given 17 machines, 5 of them assigned (idle target was 12, e.g. before a config change)
        clock = Clock()
        cloud = FakeCloud(ASG, max_size=20, desired=12, clock=clock)
        store = InMemoryStore()
        big = Harness(idle_target=12, store=store, cloud=cloud, clock=clock)
        big.settle()
        held = {big.service.assign(f"proj-{n}")["instance_id"] for n in range(5)}
        big.settle()
        assert big.counts() == {"pending": 0, "idle": 12, "assigned": 5, "releasing": 0, "quarantined": 0, "foreign": 0}
        # when the pool worker restarts with idle target 1 and refreshes
        small = Harness(idle_target=1, store=store, cloud=cloud, clock=clock)
        small.settle(rounds=6)
        # expect only idle machines terminated, every assigned one alive and assigned
        assert set(small.terminated).isdisjoint(held)
        assert len(small.terminated) == 11
        assert held <= set(cloud.instances())
        assert small.counts() == {
            "pending": 0,
            "idle": 1,
            "assigned": 5,
            "releasing": 0,
            "quarantined": 0,
            "foreign": 0,
        }
        assert cloud.describe_group().desired_capacity == 6
        assert all(decrement for _, decrement in small.effects.of("terminate"))

    def test_big_shrink_never_touches_assigned_machines(self) -> None:
        # given 20 machines and 2 assigned, idle target 0
        clock = Clock()
        cloud = FakeCloud(ASG, max_size=30, desired=20, clock=clock)
        store = InMemoryStore()
        big = Harness(idle_target=20, store=store, cloud=cloud, clock=clock)
        big.settle()
        held = {big.service.assign(f"proj-{n}")["instance_id"] for n in range(2)}
        small = Harness(idle_target=0, store=store, cloud=cloud, clock=clock)
        # when rebalanced before the tags even landed (no scale-in protection yet)
        small.settle(rounds=6)
        # expect the 18 idle machines gone and the 2 assigned ones untouched
        assert set(small.terminated).isdisjoint(held)
        assert set(cloud.instances()) == held
        assert small.counts()["assigned"] == 2 and small.counts()["idle"] == 0

    def test_capped_pool_is_reported_and_never_asks_above_max(self) -> None:
        # given MaxSize 3, idle target 2
        h = Harness(desired=2, max_size=3, idle_target=2)
        h.settle()
        # when two projects take machines
        h.service.assign("proj-1")
        h.service.assign("proj-2")
        h.settle()
        # expect the pool at MaxSize, reported capped (wanted 4 > 3), no request above 3
        status = h.service.status()
        assert status["group"]["capped"] is True and status["group"]["wanted"] == 4
        assert status["group"]["desired_capacity"] == 3
        assert all(d <= 3 for d in h.effects.of("set_desired"))
        assert h.cloud.api_calls().get("SetDesiredCapacity", 0) == len(h.effects.of("set_desired"))
        # and when the last idle machine is taken, the next project hears it is capped
        assert h.service.assign("proj-3")["status"] == "assigned"
        result = h.service.assign("proj-4")
        assert result["code"] == "no_capacity" and result["capped"] is True and result["max_size"] == 3

    def test_scale_up_counts_launching_capacity(self) -> None:
        # given instances that take a while to boot
        clock = Clock()
        cloud = FakeCloud(ASG, max_size=10, desired=0, launch_delay_s=60, clock=clock)
        h = Harness(idle_target=3, cloud=cloud, clock=clock)
        # when refreshes come in while they launch
        h.settle(rounds=5)
        # expect one scale-up request to 3, not one per refresh
        assert h.effects.of("set_desired") == [3]
        assert h.counts()["pending"] == 3
        clock.advance(61)
        h.settle()
        assert h.counts()["idle"] == 3 and h.effects.of("set_desired") == [3]

    def test_rebalance_before_first_refresh_does_nothing(self) -> None:
        h = Harness()
        assert h.service.rebalance() == {"rebalanced": False, "reason": "group not observed yet"}
        assert h.effects.calls == []


BAD_IDS: list[Any] = [
    "",
    "x" * 129,
    "ünïcode",
    "../x",
    "a b",
    "a\x00b",
    "-leading",
    ".hidden",
    "a/b",
    "proj\n",
    None,
    42,
    b"proj-1",
    ["proj-1"],
]


class TestProjectIds:
    @pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
    def test_bad_project_id_is_rejected_and_changes_nothing(self, pool: Harness, bad: Any) -> None:
        assigned = pool.service.assign("proj-1")
        before = pool.snapshot_state()
        calls = pool.cloud.api_calls()
        with pytest.raises(InvalidProject):
            pool.service.assign(bad)
        with pytest.raises(InvalidProject):
            pool.service.release(bad)
        assert pool.snapshot_state() == before
        assert pool.cloud.api_calls() == calls
        assert pool.service.assign("proj-1") == assigned

    @pytest.mark.parametrize("good", ["a", "A" * 128, "proj-42", "0.1_x-Y", "9"])
    def test_valid_ids_are_accepted(self, pool: Harness, good: str) -> None:
        assert pool.service.assign(good)["status"] == "assigned"
        assert pool.service.release(good)["status"] == "released"


def test_status_shape(pool: Harness) -> None:
    pool.service.assign("proj-1")
    status = pool.service.status()
    assert status["asg_name"] == ASG and status["idle_target"] == 2 and status["address"] == "public"
    assert status["counts"] == {"pending": 0, "idle": 1, "assigned": 1, "releasing": 0, "quarantined": 0, "foreign": 0}
    assert set(status["group"]) == {"min_size", "max_size", "desired_capacity", "wanted", "capped"}
    assert status["refreshed_at"].endswith("Z") and status["refresh_age_s"] >= 0
    assert Counter(m["state"] for m in status["machines"]) == Counter({"idle": 1, "assigned": 1})


class TestStateLossRecovery:
    def loaded_pool(self) -> tuple[Harness, str]:
        """A settled pool and one assignment whose tag job has not reached AWS yet."""
        h = Harness()
        h.settle()
        h.clock.advance(10)
        h.settle()
        taken = h.service.assign("early-bird")["instance_id"]
        h.done = len(h.effects.calls)  # the tag job is still queued: AWS knows nothing yet
        return h, taken

    def states(self, h: Harness) -> dict[str, tuple[str, str]]:
        return {m["instance_id"]: (m["state"], m["detail"]) for m in h.service.status()["machines"]}

    def test_first_start_hands_nothing_out_before_aws_records_it(self) -> None:
        # given a group warmpool never managed (no warmpool:epoch tag), with ready machines
        h = Harness()
        # when the first refresh is applied
        h.refresh()
        # expect the ready machines held back until AWS carries the group's epoch tag
        assert {state for state, _ in self.states(h).values()} == {"pending"}
        assert h.service.assign("too-early")["status"] == "failed"
        assert h.effects.of("tag_group") == [h.store.group().epoch]
        # and once the tag is there, the next refresh makes them idle
        h.run_aws()
        h.refresh()
        assert h.store.group().epoch_confirmed
        assert h.service.assign("on-time")["status"] == "assigned"

    def test_lost_state_quarantines_every_untagged_machine_until_its_tag_lands(self) -> None:
        # given an assignment whose tag job is still queued
        h, taken = self.loaded_pool()
        before = set(self.states(h))

        # when the state is lost and the next refresh comes in
        h.store.reset()
        h.refresh()

        # expect every untagged machine that existed then quarantined, so nobody else can get it
        states = self.states(h)
        assert {states[i][0] for i in before} == {"quarantined"}
        assert h.service.assign("intruder")["status"] == "failed"
        assert h.service.status()["recovery"]["state_lost_at"] is not None
        # and once the tag lands, the assignment is restored from it
        h.cloud.tag_and_protect(taken, project_id="early-bird", assigned_at="2026-01-01T00:00:00.000Z")
        h.refresh()
        held = {m["project_id"]: m["instance_id"] for m in h.service.status()["machines"] if m["state"] == "assigned"}
        assert held == {"early-bird": taken}
        # and however long it takes, the other machines stay quarantined: new ones serve newcomers
        h.clock.advance(3_600)
        h.settle()
        later = h.service.assign("later")["instance_id"]
        assert later not in before
        assert {self.states(h)[i][0] for i in before - {taken}} == {"quarantined"}

    def test_quarantined_machines_count_as_held_so_the_buffer_is_refilled(self) -> None:
        # given a lost state with the old machines quarantined
        h, _ = self.loaded_pool()
        existing = len(h.cloud.instances())
        h.store.reset()
        h.settle()
        # expect idle target new machines on top of the quarantined ones
        counts = h.service.status()["counts"]
        assert counts["quarantined"] == existing and counts["idle"] == 2
        assert h.cloud.desired == existing + 2

    def test_an_operator_releases_quarantined_machines(self) -> None:
        # given a lost state with the old machines quarantined
        h, taken = self.loaded_pool()
        h.store.reset()
        h.refresh()
        others = sorted(i for i, (state, _) in self.states(h).items() if state == "quarantined" and i != taken)
        # when an operator vouches for one of them, and for a machine that is not quarantined
        out = h.service.release_quarantined([others[0], "i-00000000000000fff"])
        # expect only the quarantined one released, and idle after the next refresh
        assert out["instance_ids"] == [others[0]]
        h.refresh()
        assert self.states(h)[others[0]][0] == "idle"
        # and all the rest at once with None
        assert set(h.service.release_quarantined(None)["instance_ids"]) == set(others[1:]) | {taken}


class TestForeignMachines:
    def test_a_machine_protected_by_someone_else_is_never_handed_out_or_terminated(self) -> None:
        # given a settled pool, and an idle target lowered so that it has surplus machines
        h = Harness()
        h.settle()
        h.clock.advance(10)
        h.settle()
        ids = sorted(h.cloud.instances())
        # when another orchestrator protects two of them from scale-in (without a warmpool tag)
        h.cloud.protect(ids[:2])
        h.service.config = replace(h.service.config, idle_target=0)
        h.clock.advance(10)
        h.settle()
        # expect them reported foreign, never terminated, never handed out
        states = {m["instance_id"]: m["state"] for m in h.service.status()["machines"]}
        assert states[ids[0]] == states[ids[1]] == "foreign"
        assert set(ids[:2]) <= set(h.cloud.instances())
        assert not set(ids[:2]) & set(h.terminated)
        assert h.service.assign("anyone")["status"] == "failed"
