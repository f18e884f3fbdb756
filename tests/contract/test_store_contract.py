"""The StateStore contract, run against InMemoryStore and RedisStore alike (fixture ``store``).

Plus concurrency tests against RedisStore only: several stores on their own connections (as
two pool workers started by mistake would have) must never hand one machine out twice
(docs/design.md invariants 1, 5 and 6).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

import pytest

from tasks.pool.model import AddressKind, GroupSnapshot, MachineState, Waiter
from tasks.pool.ports import AssignOutcome, DeadLetter, SnapshotRefused, StateStore
from tasks.pool.reconcile import Reconciliation
from tasks.state.keys import DEAD_LETTER_KEEP, WITHDRAWN_KEEP_S
from tasks.state.redis_store import RedisStore
from tests.builders import iid, ready, snapshot

T0 = 1_764_000_000.0  # realistic epoch seconds: records must survive JSON/Lua round trips
PUBLIC = AddressKind.PUBLIC


def load(store: StateStore, snap: GroupSnapshot, *, now: float | None = None) -> None:
    """Apply ``snap`` as the next refresh (numbered by the store, like the refresh job does)."""
    numbered = snap if snap.seq else replace(snap, seq=store.next_refresh_seq())
    rec = store.apply_snapshot(numbered, kind=PUBLIC, now=snap.observed_at if now is None else now)
    assert isinstance(rec, Reconciliation), rec


def assign(store: StateStore, project: str, *, now: float = T0 + 10, idle_target: int = 0) -> AssignOutcome:
    return store.assign(project, now=now, assigned_at=f"at-{project}", idle_target=idle_target)


def ready_pool(store: StateStore, count: int, *, min_size: int = 0, desired: int | None = None) -> list[str]:
    load(store, snapshot([ready(n) for n in range(count)], observed_at=T0, min_size=min_size, desired=desired))
    return [iid(n) for n in range(count)]


def assert_one_to_one(store: StateStore) -> None:
    view = store.view()
    holders = list(view.projects.values())
    assert len(holders) == len(set(holders))
    for project, instance_id in view.projects.items():
        m = view.machines[instance_id]
        assert m.state is MachineState.ASSIGNED and m.project_id == project
    per_project = Counter(m.project_id for m in view.by_state(MachineState.ASSIGNED))
    assert all(c == 1 for c in per_project.values())
    assert len(per_project) == len(view.projects)


class TestAssign:
    def test_hands_out_idle_machines_only(self, store: StateStore) -> None:
        # given one ready instance and three that are not ready
        load(
            store,
            snapshot(
                [
                    ready(1, lifecycle_state="Pending", ec2_state="pending"),
                    ready(2),
                    ready(3, health_status="Unhealthy"),
                    ready(4, public_ip=None),
                ],
                observed_at=T0,
            ),
        )
        # when two projects ask
        first = assign(store, "p1")
        second = assign(store, "p2")
        # expect the ready one for the first, nothing for the second
        assert first.machine is not None and first.machine.instance_id == iid(2) and first.new
        assert second.machine is None and not second.new
        counts = store.view().counts()
        assert counts == {"pending": 3, "idle": 0, "assigned": 1, "releasing": 0, "quarantined": 0, "foreign": 0}

    def test_assigned_record(self, store: StateStore) -> None:
        ready_pool(store, 1)
        out = assign(store, "p1", now=T0 + 42.125)
        m = out.machine
        assert m is not None
        assert m.state is MachineState.ASSIGNED
        assert m.project_id == "p1" and m.assigned_at == "at-p1"
        assert m.ip == ready(0).public_ip and m.private_ip == ready(0).private_ip
        assert m.since == pytest.approx(T0 + 42.125, abs=1e-3)
        assert not m.tagged and not m.protected
        assert store.view().machines[iid(0)] == m
        assert store.view().projects == {"p1": iid(0)}

    def test_same_project_gets_the_same_machine(self, store: StateStore) -> None:
        ready_pool(store, 3)
        first = assign(store, "p1")
        again = assign(store, "p1", now=T0 + 20)
        assert first.machine is not None and again.machine is not None
        assert again.machine.instance_id == first.machine.instance_id
        assert first.new and not again.new
        assert not again.top_up
        # and a redelivered assign took nothing else from the pool
        assert store.view().counts()["idle"] == 2

    def test_no_project_gets_two_and_no_machine_two_projects(self, store: StateStore) -> None:
        ready_pool(store, 4)
        got = {p: assign(store, p).machine for p in ["a", "b", "a", "c", "b", "a"]}
        ids = [m.instance_id for m in got.values() if m]
        assert len(ids) == len(set(ids)) == 3
        assert_one_to_one(store)

    def test_idle_longest_goes_first(self, store: StateStore) -> None:
        # given machine 1 idle since T0 and machine 0 idle only since T0+5
        load(store, snapshot([ready(1)], observed_at=T0))
        load(store, snapshot([ready(0), ready(1)], observed_at=T0 + 5))
        out = assign(store, "p1", now=T0 + 6)
        assert out.machine is not None and out.machine.instance_id == iid(1)

    def test_empty_pool_asks_for_one_top_up(self, store: StateStore) -> None:
        ready_pool(store, 0)
        first = assign(store, "p1")
        second = assign(store, "p2")
        assert first.machine is None and first.top_up
        assert second.machine is None and not second.top_up  # coalesced

    def test_assign_below_idle_target_asks_for_a_top_up(self, store: StateStore) -> None:
        ready_pool(store, 3)
        out = assign(store, "p1", idle_target=5)
        assert out.machine is not None and out.top_up
        out2 = assign(store, "p2", idle_target=5)
        assert out2.machine is not None and not out2.top_up  # coalesced

    def test_assign_above_idle_target_does_not_ask(self, store: StateStore) -> None:
        ready_pool(store, 5)
        assert not assign(store, "p1", idle_target=2).top_up


class TestRelease:
    def test_release_makes_machine_releasing_and_frees_the_project(self, store: StateStore) -> None:
        ready_pool(store, 3)
        held = assign(store, "p1").machine
        assert held is not None
        out = store.release("p1", now=T0 + 30)
        assert out.machine is not None and out.machine.instance_id == held.instance_id
        assert out.machine.state is MachineState.RELEASING
        view = store.view()
        assert "p1" not in view.projects
        assert view.machines[held.instance_id].state is MachineState.RELEASING
        # the project may ask again and gets another (idle) machine; the released one is never reused
        again = assign(store, "p1", now=T0 + 31)
        assert again.machine is not None and again.new
        assert again.machine.instance_id != held.instance_id

    def test_release_of_an_unheld_project_is_not_assigned(self, store: StateStore) -> None:
        ready_pool(store, 2)
        out = store.release("nobody", now=T0)
        assert out.machine is None and not out.decrement and not out.top_up
        assert store.view().counts()["idle"] == 2

    def test_redelivered_release_is_not_assigned(self, store: StateStore) -> None:
        ready_pool(store, 2, desired=2)
        assign(store, "p1")
        first = store.release("p1", now=T0 + 1)
        second = store.release("p1", now=T0 + 2)
        assert first.machine is not None
        assert second.machine is None and not second.decrement
        assert store.group().desired_capacity == 1  # decremented once

    def test_decrement_decided_against_min_size(self, store: StateStore) -> None:
        # given MinSize 2 and desired 4, three projects holding machines
        ready_pool(store, 4, min_size=2, desired=4)
        for p in ("p1", "p2", "p3"):
            assign(store, p)
        # when they release one by one
        decisions = [store.release(p, now=T0 + 20).decrement for p in ("p1", "p2", "p3")]
        # expect decrements while desired - 1 >= MinSize, recorded until the next refresh
        assert decisions == [True, True, False]
        assert store.group().desired_capacity == 2

    def test_release_asks_for_a_top_up_once(self, store: StateStore) -> None:
        ready_pool(store, 3)
        assign(store, "p1")
        assign(store, "p2")
        store.clear_top_up_request()
        assert store.release("p1", now=T0).top_up
        assert not store.release("p2", now=T0).top_up


class TestClaimForTermination:
    def test_claims_only_idle_machines(self, store: StateStore) -> None:
        # given 3 idle, 1 pending, 1 assigned (desired 5)
        load(
            store,
            snapshot([ready(n) for n in range(4)] + [ready(9, lifecycle_state="Pending")], observed_at=T0),
        )
        held = assign(store, "p1").machine
        assert held is not None
        ids = [iid(n) for n in range(4)] + [iid(9), "i-unknown"]
        # when all of them (and an unknown id) are claimed for scale-in
        claimed = store.claim_for_termination(ids, now=T0 + 50, detail="scale-in")
        # expect only the idle ones, now releasing, each lowering desired capacity by one
        idle_ids = sorted(set(ids[:4]) - {held.instance_id})
        assert sorted(m.instance_id for m in claimed) == idle_ids
        assert all(m.state is MachineState.RELEASING and m.detail == "scale-in" for m in claimed)
        view = store.view()
        assert view.machines[held.instance_id].state is MachineState.ASSIGNED
        assert view.machines[iid(9)].state is MachineState.PENDING
        assert store.group().desired_capacity == 5 - 3
        # and they are never handed out afterwards
        assert assign(store, "p2").machine is None

    def test_claiming_twice_claims_nothing_more(self, store: StateStore) -> None:
        ready_pool(store, 2)
        assert len(store.claim_for_termination([iid(0)], now=T0, detail="scale-in")) == 1
        assert store.claim_for_termination([iid(0)], now=T0, detail="scale-in") == []
        assert store.claim_for_termination([], now=T0, detail="scale-in") == []
        assert store.group().desired_capacity == 1


class TestApplySnapshot:
    def test_group_bounds_recorded(self, store: StateStore) -> None:
        store.reset()  # a store that never saw its group
        assert not store.group().known
        load(store, snapshot([ready(1)], observed_at=T0, min_size=1, max_size=7, desired=3, epoch_tag=None), now=T0 + 1)
        g = store.group()
        assert g.known
        assert (g.min_size, g.max_size, g.desired_capacity) == (1, 7, 3)
        assert g.observed_at == pytest.approx(T0) and g.refreshed_at == pytest.approx(T0 + 1)

    def test_refreshes_are_numbered_in_the_order_they_start(self, store: StateStore) -> None:
        assert [store.next_refresh_seq() for _ in range(3)] == [1, 2, 3]

    def test_a_later_refresh_applies_even_when_its_clock_says_earlier(self, store: StateStore) -> None:
        # given refresh #1 read by an aws worker whose clock is 60 s fast, applied
        first, second = store.next_refresh_seq(), store.next_refresh_seq()
        load(store, snapshot([ready(1)], observed_at=T0 + 60, seq=first), now=T0)
        # when refresh #2, read later by a worker with a correct clock, arrives
        rec = store.apply_snapshot(
            snapshot([ready(1), ready(2)], observed_at=T0 + 1, seq=second), kind=PUBLIC, now=T0 + 1
        )
        # expect it applied: order is the refresh's number, not any clock
        assert isinstance(rec, Reconciliation)
        assert set(store.view().machines) == {iid(1), iid(2)}
        assert store.group().applied_seq == second

    def test_an_older_refresh_arriving_late_is_refused_and_changes_nothing(self, store: StateStore) -> None:
        # given refresh #2 applied (and an assignment since)
        first, second = store.next_refresh_seq(), store.next_refresh_seq()
        load(store, snapshot([ready(1), ready(2)], observed_at=T0, seq=second))
        assign(store, "p1")
        before = store.view()
        # when refresh #1 arrives late, dated later by its clock (it says the machines are gone)
        rec = store.apply_snapshot(snapshot([], observed_at=T0 + 30, seq=first), kind=PUBLIC, now=T0 + 11)
        # expect it refused, saying why, with nothing changed and nothing lost
        assert isinstance(rec, SnapshotRefused) and "stale" in rec.reason
        assert (rec.seq, rec.applied_seq, rec.issued_seq) == (first, second, second)
        assert store.view() == before
        assert store.lost() == [] and store.group().lost_total == 0
        assert store.group().applied_seq == second and store.group().observed_at == pytest.approx(T0)
        # and the same refresh delivered twice is refused the second time
        again = store.apply_snapshot(snapshot([], observed_at=T0, seq=second), kind=PUBLIC, now=T0 + 12)
        assert isinstance(again, SnapshotRefused) and store.view() == before

    def test_a_refresh_numbered_before_the_state_was_lost_is_refused(self, store: StateStore) -> None:
        # given refreshes numbered up to #3, then the state lost
        issued = [store.next_refresh_seq() for _ in range(3)]
        store.reset()
        # when the last one (in flight meanwhile) arrives
        rec = store.apply_snapshot(snapshot([ready(1)], seq=issued[-1]), kind=PUBLIC, now=T0)
        # expect it refused (applying it would block every refresh numbered anew), state untouched
        assert isinstance(rec, SnapshotRefused) and "never issued" in rec.reason
        assert store.view().machines == {} and not store.group().known
        # and the next refresh, numbered anew, applied
        load(store, snapshot([ready(1)], observed_at=T0))
        assert store.group().applied_seq == 1 and set(store.view().machines) == {iid(1)}

    def test_a_refresh_without_a_number_applies_in_arrival_order(self, store: StateStore) -> None:
        # given refresh #1 applied; when an unnumbered one (from an older aws worker) arrives, dated earlier
        load(store, snapshot([ready(1)], observed_at=T0 + 100))
        rec = store.apply_snapshot(snapshot([ready(1), ready(2)], observed_at=T0), kind=PUBLIC, now=T0 + 1)
        # expect it applied, and the numbering left as it was
        assert isinstance(rec, Reconciliation) and set(store.view().machines) == {iid(1), iid(2)}
        assert store.group().applied_seq == 1

    def test_same_snapshot_twice_changes_nothing(self, store: StateStore) -> None:
        snap = snapshot([ready(1), ready(2, health_status="Unhealthy")], observed_at=T0)
        load(store, snap)
        before = store.view()
        rec = store.apply_snapshot(snap, kind=PUBLIC, now=T0 + 1)
        assert isinstance(rec, Reconciliation) and not rec.changed
        assert store.view() == before

    def test_refresh_keeps_assignments_made_since(self, store: StateStore) -> None:
        ready_pool(store, 2)
        held = assign(store, "p1").machine
        assert held is not None
        load(store, snapshot([ready(0), ready(1)], observed_at=T0 + 60))
        assert store.view().projects == {"p1": held.instance_id}
        assert store.view().machines[held.instance_id].state is MachineState.ASSIGNED

    def test_lost_machines_recorded_newest_first(self, store: StateStore) -> None:
        # given p1 and p2 holding machines 0 and 1
        ready_pool(store, 3)
        assert assign(store, "p1").machine.instance_id == iid(0)  # type: ignore[union-attr]
        assert assign(store, "p2").machine.instance_id == iid(1)  # type: ignore[union-attr]
        # when machine 0 vanishes, then machine 1 is terminated behind warmpool's back
        load(store, snapshot([ready(1), ready(2)], observed_at=T0 + 100))
        load(store, snapshot([ready(1, lifecycle_state="Terminating"), ready(2)], observed_at=T0 + 200))
        # expect both losses recorded, newest first, counted, projects freed
        lost = store.lost()
        assert [(x.instance_id, x.project_id) for x in lost] == [(iid(1), "p2"), (iid(0), "p1")]
        assert lost[0].lost_at == pytest.approx(T0 + 200)
        assert "Terminating" in lost[0].reason
        assert store.group().lost_total == 2
        assert store.view().projects == {}
        assert store.lost(limit=1) == lost[:1]
        # and applying the next refresh does not count them again
        load(store, snapshot([ready(2)], observed_at=T0 + 300))
        assert store.group().lost_total == 2 and len(store.lost()) == 2

    def test_tags_restore_assignments_after_reset(self, store: StateStore) -> None:
        ready_pool(store, 3)
        store.reset()
        assert store.view().machines == {} and not store.group().known
        load(
            store,
            snapshot(
                [ready(0, project_tag="p1", assigned_at_tag="2026-01-01T00:00:00.000Z"), ready(1)], observed_at=T0
            ),
        )
        view = store.view()
        assert view.projects == {"p1": iid(0)}
        assert view.machines[iid(0)].state is MachineState.ASSIGNED
        assert view.machines[iid(0)].assigned_at == "2026-01-01T00:00:00.000Z"
        again = assign(store, "p1")
        assert again.machine is not None and again.machine.instance_id == iid(0) and not again.new
        # and the untagged machine, which may have been handed out in the lost state, is quarantined
        assert view.machines[iid(1)].state is MachineState.QUARANTINED
        assert assign(store, "p2").machine is None

    def test_machine_that_stops_being_ready_is_not_handed_out(self, store: StateStore) -> None:
        ready_pool(store, 1)
        load(store, snapshot([ready(0, lifecycle_state="Standby")], observed_at=T0 + 10))
        assert assign(store, "p1").machine is None
        load(store, snapshot([ready(0)], observed_at=T0 + 20))
        out = assign(store, "p1")
        assert out.machine is not None and out.machine.instance_id == iid(0)


class TestContinuity:
    """First start, state loss and quarantine (docs/design.md, "When the state is lost")."""

    def states(self, store: StateStore) -> dict[str, MachineState]:
        return {i: m.state for i, m in store.view().machines.items()}

    def test_a_first_start_hands_nothing_out_until_aws_carries_the_epoch(self, store: StateStore) -> None:
        # given a store that never saw its group, and a group without a warmpool:epoch tag
        store.reset()
        load(store, snapshot([ready(1)], observed_at=T0, epoch_tag=None))
        # expect the ready machine held back, and an epoch chosen for the group
        epoch = store.group().epoch
        assert epoch and not store.group().epoch_confirmed
        assert self.states(store) == {iid(1): MachineState.PENDING}
        assert assign(store, "p1").machine is None
        # when AWS shows the group tagged with that epoch
        load(store, snapshot([ready(1)], observed_at=T0 + 1, epoch_tag=epoch))
        # expect the state confirmed and the machine handed out
        assert store.group().epoch_confirmed
        out = assign(store, "p1")
        assert out.machine is not None and out.machine.instance_id == iid(1)

    def test_a_lost_state_quarantines_what_existed_and_trusts_what_came_after(self, store: StateStore) -> None:
        # given a pool whose state is lost
        ready_pool(store, 2)
        store.reset()
        # when the next snapshot shows two ready machines and one still booting (all older than the loss)
        load(store, snapshot([ready(0), ready(1), ready(2, lifecycle_state="Pending")], observed_at=T0 + 10))
        # expect the ready ones quarantined, the loss recorded
        assert self.states(store) == {
            iid(0): MachineState.QUARANTINED,
            iid(1): MachineState.QUARANTINED,
            iid(2): MachineState.PENDING,
        }
        assert store.group().lost_at == pytest.approx(T0 + 10)
        # and when the booting one is ready, and one launched after the loss appears
        after = ready(3, launched_at=T0 + 20)
        load(store, snapshot([ready(0), ready(1), ready(2), after], observed_at=T0 + 30))
        # expect the older one quarantined too, the newer one idle and handed out
        assert self.states(store)[iid(2)] is MachineState.QUARANTINED
        assert self.states(store)[iid(3)] is MachineState.IDLE
        out = assign(store, "newcomer")
        assert out.machine is not None and out.machine.instance_id == iid(3)

    def test_a_quarantine_ends_with_the_machines_tag_only(self, store: StateStore) -> None:
        # given a quarantined machine
        ready_pool(store, 1)
        store.reset()
        load(store, snapshot([ready(0)], observed_at=T0 + 10))
        # when refreshes come and go without its tag
        for k in range(3):
            load(store, snapshot([ready(0)], observed_at=T0 + 20 + k))
        # expect it still quarantined
        assert self.states(store) == {iid(0): MachineState.QUARANTINED}
        # and when its tag lands, it is the tagged project's again
        load(store, snapshot([ready(0, project_tag="p1", protected_from_scale_in=True)], observed_at=T0 + 40))
        assert store.view().projects == {"p1": iid(0)}
        assert self.states(store) == {iid(0): MachineState.ASSIGNED}

    def test_an_operator_releases_quarantined_machines_and_nothing_else(self, store: StateStore) -> None:
        # given two quarantined machines and one restored assignment
        ready_pool(store, 3)
        store.reset()
        load(store, snapshot([ready(0), ready(1), ready(2, project_tag="p2")], observed_at=T0 + 10))
        # when one is released by id (with an id that is not quarantined)
        released = store.release_quarantine([iid(0), iid(2), iid(9)], now=T0 + 11)
        # expect only that one back to pending, no longer suspect, then idle at the next refresh
        assert [m.instance_id for m in released] == [iid(0)]
        assert self.states(store)[iid(0)] is MachineState.PENDING and not store.view().machines[iid(0)].suspect
        load(store, snapshot([ready(0), ready(1), ready(2, project_tag="p2")], observed_at=T0 + 12))
        assert self.states(store)[iid(0)] is MachineState.IDLE
        # and the rest with None; the assignment untouched
        assert [m.instance_id for m in store.release_quarantine(None, now=T0 + 13)] == [iid(1)]
        assert store.view().projects == {"p2": iid(2)}
        assert store.release_quarantine([], now=T0 + 14) == []

    def test_a_machine_someone_else_protects_is_foreign_until_they_let_go(self, store: StateStore) -> None:
        # given an idle machine that someone else protects from scale-in (no warmpool tag)
        ready_pool(store, 2)
        load(store, snapshot([ready(0, protected_from_scale_in=True), ready(1)], observed_at=T0 + 10))
        # expect it foreign, never handed out
        assert self.states(store) == {iid(0): MachineState.FOREIGN, iid(1): MachineState.IDLE}
        assert assign(store, "p1").machine.instance_id == iid(1)  # type: ignore[union-attr]
        assert assign(store, "p2").machine is None
        # and once they let go, it is idle again
        load(store, snapshot([ready(0), ready(1)], observed_at=T0 + 20))
        assert self.states(store)[iid(0)] is MachineState.IDLE


class TestBookkeeping:
    def test_top_up_flag_coalesces(self, store: StateStore) -> None:
        assert store.request_top_up() is True
        assert store.request_top_up() is False
        assert store.request_top_up() is False
        store.clear_top_up_request()
        assert store.request_top_up() is True

    def test_record_plan_and_refresh_error(self, store: StateStore) -> None:
        ready_pool(store, 1, desired=1)
        store.record_plan(wanted=12, capped=True, desired_capacity=None, held_other=2)
        g = store.group()
        assert (g.wanted, g.capped, g.desired_capacity, g.held_other) == (12, True, 1, 2)
        store.record_plan(wanted=3, capped=False, desired_capacity=3, held_other=0)
        g = store.group()
        assert (g.wanted, g.capped, g.desired_capacity, g.held_other) == (3, False, 3, 0)
        store.record_refresh_error("boom " * 200, now=T0 + 5)
        g = store.group()
        assert g.refresh_error.startswith("boom") and len(g.refresh_error) == 500
        assert g.refresh_error_at == pytest.approx(T0 + 5)
        load(store, snapshot([ready(0)], observed_at=T0 + 6))
        assert store.group().refresh_error == ""

    def test_reset_forgets_everything(self, store: StateStore) -> None:
        ready_pool(store, 2)
        assign(store, "p1")
        store.request_top_up()
        store.reset()
        assert store.view().machines == {} and store.view().projects == {}
        assert not store.group().known and store.lost() == []
        assert store.request_top_up() is True


class TestWithdraw:
    """A caller who left (warmpool.withdraw): its waiter goes, its own new machine is released, nothing else."""

    def waiter(self, request_id: str, project: str) -> Waiter:
        return Waiter(request_id, project, deadline=T0 + 100, arrived=T0)

    def test_assign_records_the_request_that_made_it(self, store: StateStore) -> None:
        ready_pool(store, 1)
        got = store.assign("p1", now=T0 + 10, assigned_at="at", idle_target=0, request_id="req-1")
        assert got.machine is not None and got.machine.request_id == "req-1"
        # the same request again keeps it; another request of the project makes it no one's
        again = store.assign("p1", now=T0 + 11, assigned_at="at", idle_target=0, request_id="req-1")
        assert again.machine is not None and again.machine.request_id == "req-1"
        other = store.assign("p1", now=T0 + 12, assigned_at="at", idle_target=0, request_id="req-2")
        assert other.machine is not None and other.machine.request_id == ""
        assert store.view().machines[got.machine.instance_id].request_id == ""

    def test_withdrawing_a_waiter_removes_it_and_it_is_never_queued_or_served_again(self, store: StateStore) -> None:
        assert store.add_waiter(self.waiter("req-1", "p1"))
        out = store.withdraw("req-1", "p1", now=T0 + 1)
        assert out.waiter_removed and out.machine is None and not out.foreign
        assert store.waiters() == []
        assert store.add_waiter(self.waiter("req-1", "p1")) is False and store.waiters() == []
        ready_pool(store, 1)
        late = store.assign("p1", now=T0 + 10, assigned_at="at", idle_target=0, request_id="req-1")
        assert late.withdrawn and late.machine is None
        assert store.view().projects == {}

    def test_withdrawing_a_served_request_releases_its_machine_once(self, store: StateStore) -> None:
        ids = ready_pool(store, 2, desired=2)
        got = store.assign("p1", now=T0 + 10, assigned_at="at", idle_target=0, request_id="req-1")
        assert got.machine is not None
        out = store.withdraw("req-1", "p1", now=T0 + 20)
        assert out.machine is not None and out.machine.instance_id == got.machine.instance_id
        assert out.machine.state is MachineState.RELEASING and out.decrement
        assert store.view().projects == {}
        assert store.view().machines[got.machine.instance_id].state is MachineState.RELEASING
        again = store.withdraw("req-1", "p1", now=T0 + 21)
        assert again.machine is None and not again.waiter_removed
        assert len(ids) == 2 and store.group().desired_capacity == 1  # decremented once

    def test_a_served_waiter_not_yet_removed_is_withdrawn_and_released(self, store: StateStore) -> None:
        # a serve assigns first and removes the waiter after: a withdraw in between does both
        ready_pool(store, 1)
        store.add_waiter(self.waiter("req-1", "p1"))
        got = store.assign("p1", now=T0 + 10, assigned_at="at", idle_target=0, request_id="req-1")
        out = store.withdraw("req-1", "p1", now=T0 + 11)
        assert out.waiter_removed and out.machine is not None and got.machine is not None
        assert out.machine.instance_id == got.machine.instance_id
        assert store.waiters() == [] and store.view().projects == {}

    def test_withdraw_never_releases_what_another_request_made(self, store: StateStore) -> None:
        ready_pool(store, 2)
        store.assign("p1", now=T0 + 10, assigned_at="at", idle_target=0, request_id="req-1")
        before = store.view()
        out = store.withdraw("req-2", "p1", now=T0 + 11)  # p1's machine came from req-1
        assert out.machine is None and not out.waiter_removed
        assert store.view() == before

    def test_another_projects_waiter_is_left_alone(self, store: StateStore) -> None:
        store.add_waiter(self.waiter("req-1", "p1"))
        out = store.withdraw("req-1", "p2", now=T0 + 1)
        assert out.foreign and not out.waiter_removed
        assert [w.request_id for w in store.waiters()] == ["req-1"]
        # and the request was not marked withdrawn: it is still served
        ready_pool(store, 1)
        got = store.assign("p1", now=T0 + 10, assigned_at="at", idle_target=0, request_id="req-1")
        assert got.machine is not None and not got.withdrawn

    def test_withdrawals_are_forgotten_after_they_can_matter(self, store: StateStore) -> None:
        store.withdraw("req-old", "p1", now=T0)
        store.withdraw("req-new", "p1", now=T0 + WITHDRAWN_KEEP_S + 1)  # trims the old one
        assert store.add_waiter(self.waiter("req-old", "p1")) is True
        assert store.add_waiter(self.waiter("req-new", "p1")) is False


# -- concurrency (RedisStore only) -----------------------------------------------------------


def run_threads(count: int, target: Callable[[int], None]) -> None:
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            target(i)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors


@pytest.mark.parametrize(("projects", "machines"), [(24, 10), (8, 8), (5, 12)])
def test_concurrent_assigns_never_double_assign(
    redis_store_factory: Callable[[str | None], RedisStore], projects: int, machines: int
) -> None:
    # given M idle machines and N workers, each with its own connection to the same pool
    seed = redis_store_factory(None)
    ready_pool(seed, machines)
    name = seed.keys.machines.split("{")[1].split("}")[0]
    stores = [redis_store_factory(name) for _ in range(projects)]
    results: dict[int, AssignOutcome] = {}

    # when every worker assigns a distinct project at the same moment
    def work(i: int) -> None:
        results[i] = stores[i].assign(f"p{i}", now=T0 + 1, assigned_at="x", idle_target=0)

    run_threads(projects, work)
    # expect exactly min(N, M) distinct machines handed out, none twice
    handed = [r.machine.instance_id for r in results.values() if r.machine]
    assert len(handed) == min(projects, machines)
    assert len(set(handed)) == len(handed)
    assert_one_to_one(seed)
    assert seed.view().counts()["idle"] == machines - len(handed)


def test_same_project_from_many_workers_gets_one_machine(
    redis_store_factory: Callable[[str | None], RedisStore],
) -> None:
    seed = redis_store_factory(None)
    ready_pool(seed, 6)
    name = seed.keys.machines.split("{")[1].split("}")[0]
    stores = [redis_store_factory(name) for _ in range(16)]
    results: dict[int, AssignOutcome] = {}

    def work(i: int) -> None:
        results[i] = stores[i].assign("same-project", now=T0 + 1, assigned_at="x", idle_target=0)

    run_threads(len(stores), work)
    ids = {r.machine.instance_id for r in results.values() if r.machine}
    assert len(ids) == 1
    assert sum(r.new for r in results.values()) == 1
    assert seed.view().counts() == {
        "pending": 0,
        "idle": 5,
        "assigned": 1,
        "releasing": 0,
        "quarantined": 0,
        "foreign": 0,
    }


def test_refresh_racing_assigns_never_overwrites_an_assignment(
    redis_store_factory: Callable[[str | None], RedisStore],
) -> None:
    # given an idle pool, one worker applying refreshes in a loop, others assigning
    seed = redis_store_factory(None)
    instances = [ready(n) for n in range(12)]
    ready_pool(seed, 12)
    name = seed.keys.machines.split("{")[1].split("}")[0]
    stores = [redis_store_factory(name) for _ in range(7)]
    got: dict[str, str] = {}

    def work(i: int) -> None:
        if i == 0:
            for k in range(30):
                stores[0].apply_snapshot(snapshot(instances, observed_at=T0 + 1 + k), kind=PUBLIC, now=T0 + 1 + k)
            return
        for j in range(2):
            out = stores[i].assign(f"p{i}-{j}", now=T0 + 2, assigned_at="x", idle_target=0)
            if out.machine:
                got[f"p{i}-{j}"] = out.machine.instance_id

    run_threads(len(stores), work)
    # expect every assignment still in place (a refresh never reverted one to idle)
    view = seed.view()
    assert view.projects == got
    assert len(set(got.values())) == len(got) == 12
    assert_one_to_one(seed)


class TestDeadLetters:
    def letter(self, n: int, reason: str = "bad_headers") -> DeadLetter:
        return DeadLetter(
            at=T0 + n, queue="pool", task="warmpool.assign", task_id=f"id-{n}", reason=reason, detail=f"why {n}"
        )

    def test_none_at_first(self, store: StateStore) -> None:
        assert store.dead_letters() == [] and store.dead_letter_counts() == {}

    def test_kept_newest_first_and_counted_by_reason(self, store: StateStore) -> None:
        # when three messages are set aside, for two reasons
        store.record_dead_letter(self.letter(1))
        store.record_dead_letter(self.letter(2, "unknown_task"))
        store.record_dead_letter(self.letter(3))
        # expect them listed newest first, whole, and counted per reason
        assert [d.task_id for d in store.dead_letters()] == ["id-3", "id-2", "id-1"]
        assert store.dead_letters(limit=1) == [self.letter(3)]
        assert store.dead_letters(limit=0) == []
        assert store.dead_letter_counts() == {"bad_headers": 2, "unknown_task": 1}

    def test_the_list_is_bounded_but_the_count_is_not(self, store: StateStore) -> None:
        for n in range(DEAD_LETTER_KEEP + 5):
            store.record_dead_letter(self.letter(n))
        kept = store.dead_letters(limit=DEAD_LETTER_KEEP + 5)
        assert len(kept) == DEAD_LETTER_KEEP and kept[0].task_id == f"id-{DEAD_LETTER_KEEP + 4}"
        assert store.dead_letter_counts() == {"bad_headers": DEAD_LETTER_KEEP + 5}
