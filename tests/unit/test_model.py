"""The pure pool model: classify, reconcile, choose_for_assignment/termination, JSON round trips.

Every test reads as given / when / expect. Property tests generate consistent
pool views (what a store can hold: the project index names exactly the
assigned machines) and arbitrary snapshots of the group.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.pool.model import (
    ALLOWED_TRANSITIONS,
    AddressKind,
    CloudInstance,
    GroupSnapshot,
    Machine,
    MachineState,
    PoolView,
    Readiness,
    address_of,
    choose_for_assignment,
    choose_for_termination,
    classify,
    snapshot_from_json,
    snapshot_to_json,
)
from tasks.pool.reconcile import reconcile
from tests.builders import apply, iid, machine, ready, snapshot, view_of

PROPS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

LIFECYCLES = [
    "Pending",
    "Pending:Wait",
    "Pending:Proceed",
    "Quarantined",
    "InService",
    "EnteringStandby",
    "Standby",
    "Terminating",
    "Terminating:Wait",
    "Terminating:Proceed",
    "Terminated",
    "Detaching",
    "Detached",
    "Warmed:Pending",
    "Warmed:Running",
    "",
]
EC2_STATES = ["", "pending", "running", "stopping", "stopped", "shutting-down", "terminated"]
HEALTH = ["Healthy", "Unhealthy", ""]
PROJECTS = [f"proj-{n}" for n in range(5)]
INVALID_TAGS = ["", "../x", "a b", "-leading-dash", "x" * 129, "ünï"]
UNIVERSE = 10  # instance numbers 0..9
KINDS = st.sampled_from(list(AddressKind))

ips = st.one_of(st.none(), st.just(""), st.integers(1, 250).map(lambda n: f"10.9.0.{n}"))


@st.composite
def cloud_instances(
    draw: st.DrawFn, n: int | None = None, tag: st.SearchStrategy[str | None] | None = None
) -> CloudInstance:
    number = draw(st.integers(0, UNIVERSE - 1)) if n is None else n
    return CloudInstance(
        instance_id=iid(number),
        lifecycle_state=draw(st.sampled_from(LIFECYCLES)),
        health_status=draw(st.sampled_from(HEALTH)),
        ec2_state=draw(st.sampled_from(EC2_STATES)),
        private_ip=draw(ips),
        public_ip=draw(ips),
        availability_zone=draw(st.sampled_from(["ap-south-1a", "ap-south-1b", ""])),
        protected_from_scale_in=draw(st.booleans()),
        project_tag=draw(tag if tag is not None else st.none()),
        assigned_at_tag=draw(st.none() | st.just("2026-01-01T00:00:00.000Z")),
        launched_at=draw(st.floats(0, 2_000, allow_nan=False)),
    )


def mostly_ready(n: int) -> st.SearchStrategy[CloudInstance]:
    """Half of the time a READY instance, else anything (keeps idle machines common)."""
    return st.one_of(st.just(ready(n)), cloud_instances(n=n))


@st.composite
def pool_views(draw: st.DrawFn) -> PoolView:
    """A consistent store state: assigned machines have distinct projects and are indexed."""
    numbers = draw(st.lists(st.integers(0, UNIVERSE - 1), unique=True, max_size=UNIVERSE))
    states = [draw(st.sampled_from(list(MachineState))) for _ in numbers]
    assigned = [n for n, s in zip(numbers, states, strict=True) if s is MachineState.ASSIGNED]
    # At most one machine per project: surplus "assigned" draws become idle.
    for n in assigned[len(PROJECTS) :]:
        states[numbers.index(n)] = MachineState.IDLE
    assigned = assigned[: len(PROJECTS)]
    owners = draw(st.lists(st.sampled_from(PROJECTS), unique=True, min_size=len(assigned), max_size=len(assigned)))
    owner_of = dict(zip(assigned, owners, strict=True))
    machines = []
    for n, state in zip(numbers, states, strict=True):
        if state is MachineState.ASSIGNED:
            m = machine(n, state, project_id=owner_of[n], assigned_at="2026-01-01T00:01:00.000Z")
        elif state is MachineState.RELEASING:
            # A released machine keeps the project it had; that project may hold another one now.
            m = machine(n, state, project_id=draw(st.sampled_from([None, *PROJECTS])))
        else:
            m = machine(n, state)
        machines.append(m)
    return view_of(machines)


@st.composite
def views_and_snapshots(draw: st.DrawFn) -> tuple[PoolView, GroupSnapshot]:
    view = draw(pool_views())
    numbers = draw(st.lists(st.integers(0, UNIVERSE - 1), unique=True, max_size=UNIVERSE))
    instances = []
    for n in numbers:
        current = view.machines.get(iid(n))
        own = [current.project_id] if current is not None and current.project_id else []
        tags = st.sampled_from([None, *own, *own, *PROJECTS, *INVALID_TAGS])
        inst = draw(st.one_of(st.just(ready(n)), cloud_instances(n=n)))
        instances.append(replace(inst, project_tag=draw(tags)))
    return view, snapshot(instances, observed_at=2_000.0)


def present_ids(snap: GroupSnapshot, kind: AddressKind) -> set[str]:
    return {i.instance_id for i in snap.instances if classify(i, kind)[0] is not Readiness.GONE}


def assert_consistent(view: PoolView) -> None:
    """Invariant 1 on a store state: one machine per project, one project per machine."""
    holders = list(view.projects.values())
    assert len(holders) == len(set(holders)), f"a machine is held by two projects: {view.projects}"
    for project, instance_id in view.projects.items():
        m = view.machines.get(instance_id)
        assert m is not None, f"{project} points at a machine that does not exist"
        assert m.state is MachineState.ASSIGNED and m.project_id == project
    per_project = Counter(m.project_id for m in view.by_state(MachineState.ASSIGNED))
    assert all(c == 1 for c in per_project.values()), f"a project holds two machines: {per_project}"
    for m in view.by_state(MachineState.ASSIGNED):
        assert view.projects.get(m.project_id or "") == m.instance_id, f"{m.instance_id} assigned but not indexed"


# -- classify -------------------------------------------------------------------------------


class TestClassify:
    @PROPS
    @given(inst=cloud_instances(tag=st.none()), kind=KINDS)
    def test_only_in_service_healthy_running_with_address_is_ready(
        self, inst: CloudInstance, kind: AddressKind
    ) -> None:
        # given any instance / when classified / expect READY exactly for the four conditions together
        readiness, why = classify(inst, kind)
        expected = (
            inst.lifecycle_state == "InService"
            and inst.health_status == "Healthy"
            and inst.ec2_state == "running"
            and bool(address_of(inst, kind))
        )
        assert (readiness is Readiness.READY) == expected
        assert (why == "") == (readiness is Readiness.READY)

    @PROPS
    @given(inst=cloud_instances(tag=st.none()), kind=KINDS)
    def test_terminating_and_terminated_are_gone(self, inst: CloudInstance, kind: AddressKind) -> None:
        # given an instance leaving the group (ASG or EC2 says so) / expect GONE, never anything else
        leaving = inst.lifecycle_state.startswith("Terminat") or inst.ec2_state in ("shutting-down", "terminated")
        if leaving:
            assert classify(inst, kind)[0] is Readiness.GONE

    @pytest.mark.parametrize(
        "changes",
        [
            {"lifecycle_state": "Pending"},
            {"lifecycle_state": "Pending:Wait"},
            {"lifecycle_state": "Pending:Proceed"},
            {"lifecycle_state": "Standby"},
            {"lifecycle_state": "EnteringStandby"},
            {"lifecycle_state": "Terminating"},
            {"lifecycle_state": "Terminating:Wait"},
            {"lifecycle_state": "Terminating:Proceed"},
            {"lifecycle_state": "Detaching"},
            {"lifecycle_state": "Warmed:Running"},
            {"health_status": "Unhealthy"},
            {"ec2_state": "stopped"},
            {"ec2_state": "stopping"},
            {"ec2_state": "pending"},
            {"ec2_state": ""},
            {"public_ip": None},
            {"public_ip": ""},
        ],
    )
    def test_not_ready_examples(self, changes: dict[str, object]) -> None:
        # given a ready instance with one thing wrong / expect never READY (public address configured)
        inst = replace(ready(1), **changes)  # type: ignore[arg-type]
        readiness, why = classify(inst, AddressKind.PUBLIC)
        assert readiness is not Readiness.READY
        assert why

    @pytest.mark.parametrize(
        "changes",
        [
            {"lifecycle_state": "Terminating"},
            {"lifecycle_state": "Terminating:Wait"},
            {"lifecycle_state": "Terminated"},
            {"ec2_state": "shutting-down"},
            {"ec2_state": "terminated"},
        ],
    )
    def test_gone_examples(self, changes: dict[str, object]) -> None:
        inst = replace(ready(1), **changes)  # type: ignore[arg-type]
        assert classify(inst, AddressKind.PUBLIC)[0] is Readiness.GONE

    def test_address_kind_decides_which_address_counts(self) -> None:
        # given an instance with only a private address
        inst = ready(1, public_ip=None)
        # expect ready when private addresses are handed out, not when public ones are
        assert classify(inst, AddressKind.PRIVATE)[0] is Readiness.READY
        assert classify(inst, AddressKind.PUBLIC)[0] is Readiness.NOT_READY
        assert address_of(inst, AddressKind.PRIVATE) == inst.private_ip


# -- reconcile: properties -------------------------------------------------------------------


class TestReconcileProperties:
    @PROPS
    @given(data=views_and_snapshots(), kind=KINDS)
    def test_no_double_holding_after_any_snapshot(
        self, data: tuple[PoolView, GroupSnapshot], kind: AddressKind
    ) -> None:
        # given a consistent store and any snapshot / when reconciled / expect still one-to-one
        view, snap = data
        after = apply(view, reconcile(view, snap, kind=kind, now=3_000.0))
        assert_consistent(after)

    @PROPS
    @given(data=views_and_snapshots(), kind=KINDS)
    def test_assigned_machines_never_change_owner(
        self, data: tuple[PoolView, GroupSnapshot], kind: AddressKind
    ) -> None:
        # given assigned machines still in the group (whatever their tags say)
        view, snap = data
        present = present_ids(snap, kind)
        after = apply(view, reconcile(view, snap, kind=kind, now=3_000.0))
        # expect each still assigned to the same project, and indexed
        for m in view.by_state(MachineState.ASSIGNED):
            if m.instance_id in present:
                now_m = after.machines[m.instance_id]
                assert now_m.state is MachineState.ASSIGNED
                assert now_m.project_id == m.project_id
                assert after.projects[m.project_id or ""] == m.instance_id

    @PROPS
    @given(data=views_and_snapshots(), kind=KINDS)
    def test_only_ready_instances_are_idle(self, data: tuple[PoolView, GroupSnapshot], kind: AddressKind) -> None:
        view, snap = data
        by_id = {i.instance_id: i for i in snap.instances}
        after = apply(view, reconcile(view, snap, kind=kind, now=3_000.0))
        for m in after.by_state(MachineState.IDLE):
            assert classify(by_id[m.instance_id], kind)[0] is Readiness.READY
            assert m.ip == address_of(by_id[m.instance_id], kind)

    @PROPS
    @given(data=views_and_snapshots(), kind=KINDS)
    def test_machines_not_in_the_group_are_dropped(
        self, data: tuple[PoolView, GroupSnapshot], kind: AddressKind
    ) -> None:
        view, snap = data
        after = apply(view, reconcile(view, snap, kind=kind, now=3_000.0))
        assert set(after.machines) <= present_ids(snap, kind)

    @PROPS
    @given(data=views_and_snapshots(), kind=KINDS)
    def test_vanished_assigned_machines_are_lost_and_free_their_project(
        self, data: tuple[PoolView, GroupSnapshot], kind: AddressKind
    ) -> None:
        view, snap = data
        present = present_ids(snap, kind)
        rec = reconcile(view, snap, kind=kind, now=3_000.0)
        after = apply(view, rec)
        expected = {
            (m.instance_id, m.project_id) for m in view.by_state(MachineState.ASSIGNED) if m.instance_id not in present
        }
        # expect exactly the vanished assigned machines reported, each once
        assert sorted((x.instance_id, x.project_id) for x in rec.lost) == sorted(expected)
        for instance_id, project in expected:
            assert after.projects.get(project or "") != instance_id
            assert instance_id not in after.machines

    @PROPS
    @given(data=views_and_snapshots(), kind=KINDS)
    def test_redelivered_snapshot_changes_nothing_and_loses_nothing_twice(
        self, data: tuple[PoolView, GroupSnapshot], kind: AddressKind
    ) -> None:
        # given a snapshot already applied / when the same snapshot is applied again, later
        view, snap = data
        after = apply(view, reconcile(view, snap, kind=kind, now=3_000.0))
        again = reconcile(after, snap, kind=kind, now=4_000.0)
        # expect no change at all (invariant 5) and no second loss report
        assert not again.changed
        assert again.lost == ()
        assert again.restored == ()

    @PROPS
    @given(data=views_and_snapshots(), kind=KINDS)
    def test_every_state_change_is_an_allowed_transition(
        self, data: tuple[PoolView, GroupSnapshot], kind: AddressKind
    ) -> None:
        view, snap = data
        rec = reconcile(view, snap, kind=kind, now=3_000.0)
        for m in rec.upserts:
            old = view.machines.get(m.instance_id)
            if old is not None and old.state is not m.state:
                assert (old.state, m.state) in ALLOWED_TRANSITIONS

    @PROPS
    @given(data=views_and_snapshots(), kind=KINDS)
    def test_releasing_machines_never_come_back(self, data: tuple[PoolView, GroupSnapshot], kind: AddressKind) -> None:
        view, snap = data
        after = apply(view, reconcile(view, snap, kind=kind, now=3_000.0))
        for m in view.by_state(MachineState.RELEASING):
            if m.instance_id in after.machines:
                assert after.machines[m.instance_id].state is MachineState.RELEASING

    @PROPS
    @given(
        instances=st.lists(
            st.integers(0, UNIVERSE - 1).flatmap(
                lambda n: cloud_instances(n=n, tag=st.sampled_from([None, *PROJECTS, *INVALID_TAGS]))
            ),
            unique_by=lambda i: i.instance_id,
            max_size=UNIVERSE,
        ),
        kind=KINDS,
    )
    def test_empty_store_restores_one_holding_per_tagged_project(
        self, instances: list[CloudInstance], kind: AddressKind
    ) -> None:
        # given Redis flushed (empty store) and tagged instances in the group
        snap = snapshot(instances)
        rec = reconcile(PoolView({}, {}), snap, kind=kind, now=3_000.0)
        after = apply(PoolView({}, {}), rec)
        # expect every valid tag of a present instance to give its project exactly one machine
        present = present_ids(snap, kind)
        tagged = {i.project_tag for i in instances if i.instance_id in present and i.project_tag in PROJECTS}
        assert set(after.projects) == tagged
        assert_consistent(after)
        for project, instance_id in after.projects.items():
            assert next(i for i in instances if i.instance_id == instance_id).project_tag == project
        # and the extra claims retired (releasing), never handed out
        for inst in instances:
            if inst.instance_id in present and inst.project_tag in PROJECTS:
                state = after.machines[inst.instance_id].state
                assert state in (MachineState.ASSIGNED, MachineState.RELEASING)

    @PROPS
    @given(view=pool_views(), kind=KINDS, order=st.randoms(use_true_random=False))
    def test_redis_flushed_loses_no_assignment(self, view: PoolView, kind: AddressKind, order: object) -> None:
        """Invariant 7: every assignment is rebuilt from tags, whatever order AWS lists instances in.

        The group as AWS shows it once side effects have run: assigned instances carry their
        project and assigned-at; a released instance still being terminated keeps the (older)
        tags of the project it had, and that project may hold a newer machine already.
        """
        instances = []
        for m in view.machines.values():
            n = int(m.instance_id[2:], 16)
            if m.state is MachineState.ASSIGNED:
                instances.append(ready(n, project_tag=m.project_id, assigned_at_tag=m.assigned_at))
            elif m.state is MachineState.RELEASING and m.project_id:
                instances.append(ready(n, project_tag=m.project_id, assigned_at_tag="2026-01-01T00:00:00.000Z"))
            else:
                instances.append(ready(n))
        order.shuffle(instances)  # type: ignore[attr-defined]
        # when the store is empty and this snapshot is applied
        after = apply(PoolView({}, {}), reconcile(PoolView({}, {}), snapshot(instances), kind=kind, now=3_000.0))
        # expect every project to hold the machine it held before
        for m in view.by_state(MachineState.ASSIGNED):
            assert after.projects.get(m.project_id or "") == m.instance_id, (
                f"{m.project_id} lost {m.instance_id}; restored {after.projects}"
            )
        assert_consistent(after)


# -- reconcile: examples ---------------------------------------------------------------------


class TestReconcileExamples:
    def test_ready_instance_becomes_idle_and_pending_one_stays_pending(self) -> None:
        # given an empty store and a group with one ready and one booting instance
        snap = snapshot([ready(1), ready(2, lifecycle_state="Pending", ec2_state="pending")])
        # when reconciled
        rec = reconcile(PoolView({}, {}), snap, kind=AddressKind.PUBLIC, now=50.0)
        after = apply(PoolView({}, {}), rec)
        # expect one idle (since now) and one pending with a reason
        assert after.machines[iid(1)].state is MachineState.IDLE
        assert after.machines[iid(1)].since == 50.0
        assert after.machines[iid(1)].ip == ready(1).public_ip
        assert after.machines[iid(2)].state is MachineState.PENDING
        assert "Pending" in after.machines[iid(2)].detail

    def test_idle_machine_that_turns_unhealthy_goes_back_to_pending(self) -> None:
        view = view_of([machine(1, MachineState.IDLE)])
        after = apply(
            view, reconcile(view, snapshot([ready(1, health_status="Unhealthy")]), kind=AddressKind.PUBLIC, now=9.0)
        )
        assert after.machines[iid(1)].state is MachineState.PENDING
        assert after.machines[iid(1)].detail == "health Unhealthy"

    def test_idle_machine_keeps_its_idle_since_while_ready(self) -> None:
        view = view_of([machine(1, MachineState.IDLE, since=5.0)])
        rec = reconcile(view, snapshot([ready(1)]), kind=AddressKind.PUBLIC, now=9.0)
        assert apply(view, rec).machines[iid(1)].since == 5.0

    def test_assigned_machine_that_turns_unhealthy_stays_assigned(self) -> None:
        view = view_of([machine(1, MachineState.ASSIGNED, project_id="p1")])
        after = apply(
            view, reconcile(view, snapshot([ready(1, health_status="Unhealthy")]), kind=AddressKind.PUBLIC, now=9.0)
        )
        assert after.machines[iid(1)].state is MachineState.ASSIGNED
        assert after.projects == {"p1": iid(1)}

    def test_assigned_machine_with_lagging_tag_stays_assigned_then_is_marked_tagged(self) -> None:
        # given an assignment whose tag side effect has not run yet
        view = view_of([machine(1, MachineState.ASSIGNED, project_id="p1")])
        rec = reconcile(view, snapshot([ready(1)]), kind=AddressKind.PUBLIC, now=9.0)
        after = apply(view, rec)
        assert after.machines[iid(1)].state is MachineState.ASSIGNED
        assert not after.machines[iid(1)].tagged
        # when the tag and protection show up in AWS / expect the record to say so
        snap = snapshot([ready(1, project_tag="p1", protected_from_scale_in=True)], observed_at=2_000.0)
        after2 = apply(after, reconcile(after, snap, kind=AddressKind.PUBLIC, now=10.0))
        assert after2.machines[iid(1)].tagged and after2.machines[iid(1)].protected

    @pytest.mark.parametrize(
        ("gone", "reason"),
        [
            (None, "left the group"),
            (ready(1, lifecycle_state="Terminating"), "Terminating"),
            (ready(1, ec2_state="terminated"), "terminated"),
        ],
    )
    def test_vanished_assigned_machine_is_lost_once(self, gone: CloudInstance | None, reason: str) -> None:
        # given p1 holds machine 1 / when machine 1 leaves the group
        view = view_of([machine(1, MachineState.ASSIGNED, project_id="p1"), machine(2, MachineState.IDLE)])
        snap = snapshot([ready(2), *([gone] if gone else [])])
        rec = reconcile(view, snap, kind=AddressKind.PUBLIC, now=77.0)
        after = apply(view, rec)
        # expect one loss, with the project and the reason, and p1 free again
        assert len(rec.lost) == 1
        assert rec.lost[0].instance_id == iid(1) and rec.lost[0].project_id == "p1"
        assert rec.lost[0].lost_at == 77.0 and reason in rec.lost[0].reason
        assert "p1" not in after.projects and iid(1) not in after.machines
        # and applying the next refresh does not report it again
        assert reconcile(after, snap, kind=AddressKind.PUBLIC, now=78.0).lost == ()

    def test_vanished_releasing_machine_is_dropped_not_lost(self) -> None:
        view = view_of([machine(1, MachineState.RELEASING, project_id="p1")])
        rec = reconcile(view, snapshot([]), kind=AddressKind.PUBLIC, now=9.0)
        assert rec.lost == () and rec.removals == (iid(1),)

    def test_tags_restore_assignments_when_store_is_empty(self) -> None:
        # given Redis flushed / when the group shows tagged instances
        snap = snapshot(
            [
                ready(1, project_tag="p1", assigned_at_tag="2026-01-01T00:00:01.000Z"),
                ready(2, project_tag="p2", assigned_at_tag="2026-01-01T00:00:02.000Z", health_status="Unhealthy"),
                ready(3),
            ]
        )
        rec = reconcile(PoolView({}, {}), snap, kind=AddressKind.PUBLIC, now=9.0)
        after = apply(PoolView({}, {}), rec)
        # expect both assignments back (even the unhealthy machine), the rest idle
        assert after.projects == {"p1": iid(1), "p2": iid(2)}
        assert after.machines[iid(1)].assigned_at == "2026-01-01T00:00:01.000Z"
        assert after.machines[iid(1)].tagged
        assert after.machines[iid(3)].state is MachineState.IDLE
        assert {m.instance_id for m in rec.restored} == {iid(1), iid(2)}

    def test_tag_for_a_project_already_holding_another_machine_is_retired(self) -> None:
        # given p1 holds machine 1 in the store, and machine 2 (unknown to the store) is tagged p1
        view = view_of([machine(1, MachineState.ASSIGNED, project_id="p1")])
        snap = snapshot([ready(1, project_tag="p1"), ready(2, project_tag="p1")])
        rec = reconcile(view, snap, kind=AddressKind.PUBLIC, now=9.0)
        after = apply(view, rec)
        # expect p1 to keep machine 1 only; machine 2 retired, never idle
        assert after.projects == {"p1": iid(1)}
        assert after.machines[iid(2)].state is MachineState.RELEASING
        assert [m.instance_id for m in rec.duplicates] == [iid(2)]

    def test_two_tags_for_one_project_in_an_empty_store_give_one_holding(self) -> None:
        snap = snapshot([ready(1, project_tag="p1"), ready(2, project_tag="p1")])
        after = apply(PoolView({}, {}), reconcile(PoolView({}, {}), snap, kind=AddressKind.PUBLIC, now=9.0))
        assert len(after.projects) == 1
        assert_consistent(after)

    def test_flushed_store_keeps_the_newest_assignment_of_a_project(self) -> None:
        """p1 released machine 1 (termination still pending) and was given machine 2; then Redis was flushed.

        Both instances carry warmpool:project=p1. The assignment that is still live is the newest
        one (machine 2); machine 1 must be retired. Restoring machine 1 instead hands p1 a machine
        that is being terminated and retires (terminates) the one p1 really holds.
        """
        snap = snapshot(
            [
                ready(1, project_tag="p1", assigned_at_tag="2026-01-01T00:00:00.000Z"),
                ready(2, project_tag="p1", assigned_at_tag="2026-01-01T00:05:00.000Z"),
            ]
        )
        after = apply(PoolView({}, {}), reconcile(PoolView({}, {}), snap, kind=AddressKind.PUBLIC, now=9.0))
        assert after.projects == {"p1": iid(2)}
        assert after.machines[iid(1)].state is MachineState.RELEASING

    @pytest.mark.parametrize("tag", INVALID_TAGS)
    def test_invalid_project_tag_is_ignored(self, tag: str) -> None:
        after = apply(
            PoolView({}, {}),
            reconcile(PoolView({}, {}), snapshot([ready(1, project_tag=tag)]), kind=AddressKind.PUBLIC, now=9.0),
        )
        assert after.projects == {}
        assert after.machines[iid(1)].state is MachineState.IDLE

    def test_gone_instance_is_not_restored_from_its_tag(self) -> None:
        snap = snapshot([ready(1, project_tag="p1", lifecycle_state="Terminating")])
        after = apply(PoolView({}, {}), reconcile(PoolView({}, {}), snap, kind=AddressKind.PUBLIC, now=9.0))
        assert after.projects == {} and after.machines == {}


# -- choose_for_assignment / choose_for_termination -----------------------------------------


@st.composite
def machine_lists(draw: st.DrawFn) -> list[Machine]:
    numbers = draw(st.lists(st.integers(0, 30), unique=True, max_size=15))
    return [
        machine(
            n,
            draw(st.sampled_from(list(MachineState))),
            since=draw(st.sampled_from([1.0, 2.0, 3.0])),
            launched_at=draw(st.sampled_from([10.0, 20.0, 30.0])),
            availability_zone=draw(st.sampled_from(["ap-south-1a", "ap-south-1b", "ap-south-1c"])),
        )
        for n in numbers
    ]


class TestChoose:
    @PROPS
    @given(machines=machine_lists())
    def test_assignment_picks_the_machine_idle_longest(self, machines: list[Machine]) -> None:
        idle = [m for m in machines if m.state is MachineState.IDLE]
        chosen = choose_for_assignment(idle)
        if not idle:
            assert chosen is None
        else:
            assert chosen is not None
            assert (chosen.since, chosen.instance_id) == min((m.since, m.instance_id) for m in idle)

    @PROPS
    @given(machines=machine_lists())
    def test_assignment_never_picks_a_non_idle_machine(self, machines: list[Machine]) -> None:
        # given a mix of states / expect an idle machine or nothing (invariant 2)
        chosen = choose_for_assignment(machines)
        if any(m.state is MachineState.IDLE for m in machines):
            assert chosen is not None and chosen.state is MachineState.IDLE
        else:
            assert chosen is None

    @PROPS
    @given(machines=machine_lists(), count=st.integers(-2, 20))
    def test_termination_picks_min_count_idle_distinct(self, machines: list[Machine], count: int) -> None:
        chosen = choose_for_termination(machines, count)
        idle = [m for m in machines if m.state is MachineState.IDLE]
        assert len(chosen) == max(0, min(count, len(idle)))
        assert len({m.instance_id for m in chosen}) == len(chosen)
        assert all(m.state is MachineState.IDLE for m in chosen)
        assert all(m in machines for m in chosen)

    @PROPS
    @given(machines=machine_lists(), count=st.integers(0, 20))
    def test_termination_balances_zones(self, machines: list[Machine], count: int) -> None:
        # given idle machines spread over zones / when some are chosen for scale-in
        idle = [m for m in machines if m.state is MachineState.IDLE]
        chosen = choose_for_termination(idle, count)
        taken = Counter(m.availability_zone for m in chosen)
        left = Counter(m.availability_zone for m in idle) - taken
        zones = {m.availability_zone for m in idle}
        # expect a zone to lose machines only while it is at least as full as any other (minus one)
        for z in taken:
            for w in zones:
                assert left[z] >= left[w] - 1, (dict(taken), dict(left))
        # and within a zone the oldest launches go first
        for z in taken:
            in_zone = sorted(
                (m for m in idle if m.availability_zone == z), key=lambda m: (m.launched_at, m.instance_id)
            )
            assert {m.instance_id for m in in_zone[: taken[z]]} == {
                m.instance_id for m in chosen if m.availability_zone == z
            }

    def test_termination_example_takes_from_the_fuller_zone(self) -> None:
        idle = [
            machine(1, MachineState.IDLE, availability_zone="a", launched_at=5.0),
            machine(2, MachineState.IDLE, availability_zone="a", launched_at=1.0),
            machine(3, MachineState.IDLE, availability_zone="a", launched_at=3.0),
            machine(4, MachineState.IDLE, availability_zone="b", launched_at=0.0),
        ]
        chosen = choose_for_termination(idle, 2)
        assert [m.instance_id for m in chosen] == [iid(2), iid(3)]


# -- JSON round trips (snapshots cross the aws -> pool queue, machines live in Redis) -------


class TestJson:
    @PROPS
    @given(
        instances=st.lists(cloud_instances(tag=st.sampled_from([None, *PROJECTS])), unique_by=lambda i: i.instance_id),
        observed=st.floats(0, 2e9, allow_nan=False),
    )
    def test_snapshot_round_trip(self, instances: list[CloudInstance], observed: float) -> None:
        snap = snapshot(instances, observed_at=observed, min_size=1, max_size=9, desired=3)
        assert snapshot_from_json(snapshot_to_json(snap)) == snap

    @PROPS
    @given(machines=machine_lists())
    def test_machine_round_trip(self, machines: list[Machine]) -> None:
        for m in machines:
            m2 = replace(m, project_id="p1", assigned_at="2026-01-01T00:00:00.000Z", tagged=True, detail="x")
            assert Machine.from_json(m2.to_json()) == m2
            assert Machine.from_json(m.to_json()) == m

    @pytest.mark.parametrize(
        "bad",
        [
            {},
            {"name": "g"},
            snapshot_to_json(snapshot([ready(1, instance_id="")])),
            {**snapshot_to_json(snapshot([])), "instances": [{"instance_id": "i-1"}]},
        ],
    )
    def test_malformed_snapshot_is_rejected(self, bad: dict[str, object]) -> None:
        with pytest.raises((KeyError, TypeError, ValueError)):
            snapshot_from_json(bad)
