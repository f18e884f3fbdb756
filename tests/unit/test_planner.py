"""Capacity planning (docs/design.md invariants 3 and 4): plan_capacity and decrement_allowed."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.pool.model import HELD_STATES, MachineState, PoolView
from tasks.pool.planner import CapacityPlan, GroupBounds, clamp, decrement_allowed, plan_capacity
from tests.builders import machine, view_of

PROPS = settings(max_examples=150, deadline=None)


@st.composite
def pools(draw: st.DrawFn) -> PoolView:
    """Any mix of machines; assigned ones get distinct projects, idle ones spread over zones."""
    counts = {s: draw(st.integers(0, 8)) for s in MachineState}
    machines = []
    n = 0
    for state, count in counts.items():
        for _ in range(count):
            zone = draw(st.sampled_from(["ap-south-1a", "ap-south-1b", "ap-south-1c"]))
            project = f"p{n}" if state in (MachineState.ASSIGNED, MachineState.RELEASING) else None
            machines.append(machine(n, state, project_id=project, availability_zone=zone))
            n += 1
    return view_of(machines)


@st.composite
def bounds(draw: st.DrawFn) -> GroupBounds:
    low = draw(st.integers(0, 10))
    high = draw(st.integers(low, 30))
    desired = draw(st.integers(0, high + 5))  # AWS may report more than MaxSize after a bounds change
    return GroupBounds(min_size=low, max_size=high, desired_capacity=desired)


def counts(view: PoolView) -> tuple[int, int, int]:
    """(held: assigned, quarantined or foreign; idle; pending)."""
    return (
        sum(1 for m in view.machines.values() if m.state in HELD_STATES),
        len(view.by_state(MachineState.IDLE)),
        len(view.by_state(MachineState.PENDING)),
    )


plan_inputs = {
    "view": pools(),
    "b": bounds(),
    "idle_target": st.integers(0, 12),
    "waiting": st.integers(0, 6),
}


class TestPlanCapacity:
    @PROPS
    @given(**plan_inputs)
    def test_target_is_assigned_plus_idle_target_plus_waiting_clamped(
        self, view: PoolView, b: GroupBounds, idle_target: int, waiting: int
    ) -> None:
        # given any pool / when planned / expect target = clamp(assigned + idle target + waiting)
        plan = plan_capacity(view, b, idle_target=idle_target, waiting=waiting)
        assigned, _, _ = counts(view)
        assert plan.wanted == assigned + idle_target + waiting
        assert plan.target == clamp(plan.wanted, b.min_size, b.max_size)
        assert b.min_size <= plan.target <= b.max_size
        assert plan.capped == (plan.wanted > b.max_size)

    @PROPS
    @given(**plan_inputs)
    def test_desired_never_leaves_bounds_and_is_never_lowered(
        self, view: PoolView, b: GroupBounds, idle_target: int, waiting: int
    ) -> None:
        plan = plan_capacity(view, b, idle_target=idle_target, waiting=waiting)
        if plan.set_desired is not None:
            assert b.min_size <= plan.set_desired <= b.max_size
            assert plan.set_desired == plan.target
            # scale-in goes through named idle machines, never by lowering desired blindly
            assert plan.set_desired > b.desired_capacity
            assert plan.terminate == ()

    @PROPS
    @given(**plan_inputs)
    def test_only_idle_machines_are_terminated(
        self, view: PoolView, b: GroupBounds, idle_target: int, waiting: int
    ) -> None:
        plan = plan_capacity(view, b, idle_target=idle_target, waiting=waiting)
        ids = [m.instance_id for m in plan.terminate]
        assert len(ids) == len(set(ids))
        for m in plan.terminate:
            assert view.machines[m.instance_id].state is MachineState.IDLE

    @PROPS
    @given(**plan_inputs)
    def test_idle_buffer_survives_scale_in(
        self, view: PoolView, b: GroupBounds, idle_target: int, waiting: int
    ) -> None:
        # given any pool / when the plan's terminations are applied
        plan = plan_capacity(view, b, idle_target=idle_target, waiting=waiting)
        assigned, idle, pending = counts(view)
        left = idle - len(plan.terminate)
        # expect at least min(idle, target - assigned) idle machines left, and the group not below target
        assert left >= min(idle, plan.target - assigned)
        if plan.terminate:
            assert max(b.desired_capacity, assigned + idle + pending) - len(plan.terminate) >= plan.target

    @PROPS
    @given(**plan_inputs)
    def test_launching_capacity_counts(self, view: PoolView, b: GroupBounds, idle_target: int, waiting: int) -> None:
        # given a desired capacity that already covers the target (instances still launching)
        plan = plan_capacity(view, b, idle_target=idle_target, waiting=waiting)
        assigned, idle, pending = counts(view)
        if b.desired_capacity >= plan.target or assigned + idle + pending >= plan.target:
            # expect no scale-up
            assert plan.set_desired is None
        else:
            # otherwise a scale-up to the target
            assert plan.set_desired == plan.target

    @PROPS
    @given(**plan_inputs)
    def test_surplus_idle_is_removed_when_nothing_is_launching(
        self, view: PoolView, b: GroupBounds, idle_target: int, waiting: int
    ) -> None:
        plan = plan_capacity(view, b, idle_target=idle_target, waiting=waiting)
        assigned, idle, pending = counts(view)
        effective = max(b.desired_capacity, assigned + idle + pending)
        surplus = min(effective - plan.target, idle - max(0, plan.target - assigned))
        assert len(plan.terminate) == max(0, surplus)
        assert plan.changes == (plan.set_desired is not None or bool(plan.terminate))

    def test_capped_example(self) -> None:
        # given 4 assigned machines, idle target 2, MaxSize 5, already 5 machines
        view = view_of(
            [machine(n, MachineState.ASSIGNED, project_id=f"p{n}") for n in range(4)] + [machine(9, MachineState.IDLE)]
        )
        plan = plan_capacity(view, GroupBounds(min_size=0, max_size=5, desired_capacity=5), idle_target=2)
        # expect wanted 6 reported as capped, target 5, no API call asking for more
        assert plan == CapacityPlan(wanted=6, target=5, capped=True, set_desired=None, terminate=())

    def test_scale_up_capped_at_max(self) -> None:
        view = view_of([machine(n, MachineState.ASSIGNED, project_id=f"p{n}") for n in range(4)])
        plan = plan_capacity(view, GroupBounds(min_size=0, max_size=5, desired_capacity=4), idle_target=3, waiting=2)
        assert plan.set_desired == 5 and plan.capped and plan.wanted == 9

    def test_no_scale_up_while_instances_launch(self) -> None:
        # given desired 4 already asked for, nothing visible yet / expect no new request
        plan = plan_capacity(view_of([]), GroupBounds(min_size=0, max_size=10, desired_capacity=4), idle_target=4)
        assert plan.set_desired is None and plan.terminate == ()

    def test_pending_machines_do_not_count_as_idle_buffer(self) -> None:
        # given 3 idle and 3 pending with target 2 / expect only one idle removed: 2 stay ready
        view = view_of(
            [machine(n, MachineState.IDLE) for n in range(3)] + [machine(n, MachineState.PENDING) for n in range(3, 6)]
        )
        plan = plan_capacity(view, GroupBounds(min_size=0, max_size=10, desired_capacity=6), idle_target=2)
        assert len(plan.terminate) == 1

    def test_min_size_holds_idle_machines(self) -> None:
        view = view_of([machine(n, MachineState.IDLE) for n in range(4)])
        plan = plan_capacity(view, GroupBounds(min_size=3, max_size=10, desired_capacity=4), idle_target=0)
        assert plan.target == 3 and len(plan.terminate) == 1

    def test_assigned_machines_survive_a_big_shrink(self) -> None:
        view = view_of(
            [machine(n, MachineState.ASSIGNED, project_id=f"p{n}") for n in range(5)]
            + [machine(n, MachineState.IDLE) for n in range(5, 25)]
        )
        plan = plan_capacity(view, GroupBounds(min_size=0, max_size=30, desired_capacity=25), idle_target=0)
        assert len(plan.terminate) == 20
        assert all(m.state is MachineState.IDLE for m in plan.terminate)


class TestDecrementAllowed:
    @given(low=st.integers(0, 10), desired=st.integers(0, 12))
    def test_decrement_never_goes_below_min_size(self, low: int, desired: int) -> None:
        assert decrement_allowed(GroupBounds(low, 20, desired)) == (desired - 1 >= low)
