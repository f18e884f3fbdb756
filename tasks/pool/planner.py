"""Capacity planning: how big the group should be, and which idle machines go.

Pure functions over counts and machine records (docs/design.md invariants 3 and 4).
"""

from __future__ import annotations

from dataclasses import dataclass

from tasks.pool.model import HELD_STATES, Machine, MachineState, PoolView, choose_for_termination


@dataclass(frozen=True)
class GroupBounds:
    """The group's size limits and current desired capacity, as last known."""

    min_size: int
    max_size: int
    desired_capacity: int


@dataclass(frozen=True)
class CapacityPlan:
    """What rebalance should do. ``set_desired`` is None when no change is needed."""

    wanted: int  # held (assigned, quarantined, foreign) + idle target + waiting, before clamping
    target: int  # wanted clamped to [MinSize, MaxSize]
    capped: bool  # MaxSize keeps the pool below what is wanted
    set_desired: int | None
    terminate: tuple[Machine, ...]  # idle machines to remove (with decrement)

    @property
    def changes(self) -> bool:
        return self.set_desired is not None or bool(self.terminate)


def clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def plan_capacity(view: PoolView, bounds: GroupBounds, *, idle_target: int, waiting: int = 0) -> CapacityPlan:
    """Desired = held + idle target + waiting, clamped; surplus idle is terminated.

    Held machines are the assigned ones and those warmpool may not hand out
    (quarantined after a state loss, foreign): they occupy the group, so the
    idle buffer comes on top of them.

    Capacity already launching counts: the group's desired capacity includes
    instances AWS has not started yet, so a scale-up is only asked for when the
    target exceeds it. Scale-in never lowers desired capacity blindly (AWS would
    pick the victims); it names idle machines, and never more than leaves the
    ready buffer at its target while pending machines boot.
    """
    assigned = view.count_of(*HELD_STATES)
    idle = view.by_state(MachineState.IDLE)
    pending = view.count_of(MachineState.PENDING)
    wanted = assigned + max(0, idle_target) + max(0, waiting)
    low, high = bounds.min_size, max(bounds.min_size, bounds.max_size)
    target = clamp(wanted, low, high)
    # What AWS will run once launches settle: at least what is already there.
    effective = max(bounds.desired_capacity, assigned + len(idle) + pending)
    set_desired = None
    terminate: tuple[Machine, ...] = ()
    if target > effective:
        set_desired = target
    elif target < effective:
        # Keep (target - assigned) idle machines ready, even while pending ones boot.
        removable = max(0, len(idle) - max(0, target - assigned))
        count = min(effective - target, removable)
        terminate = tuple(choose_for_termination(idle, count))
    return CapacityPlan(
        wanted=wanted,
        target=target,
        capped=wanted > high,
        set_desired=set_desired,
        terminate=terminate,
    )


def decrement_allowed(bounds: GroupBounds) -> bool:
    """Whether terminating one instance may also lower desired capacity (MinSize)."""
    return bounds.desired_capacity - 1 >= bounds.min_size
