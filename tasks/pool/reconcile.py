"""Reconciliation: folding one refresh snapshot of the group into the pool state (pure).

Rules (DESIGN.md invariants 1, 2 and 7): the store is the truth for machines
it holds as assigned or releasing; tags are the truth for instances it does
not hold (state lost: restore); everything else is classified afresh.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from tasks.contract import PROJECT_ID_PATTERN
from tasks.pool.model import (
    AWAITING_READY,
    RECOVERING,
    AddressKind,
    CloudInstance,
    GroupSnapshot,
    LostMachine,
    Machine,
    MachineState,
    PoolView,
    Readiness,
    address_of,
    classify,
)


@dataclass(frozen=True)
class Reconciliation:
    """What applying a snapshot changes; a store writes it atomically."""

    upserts: tuple[Machine, ...] = ()
    removals: tuple[str, ...] = ()
    project_sets: Mapping[str, str] = field(default_factory=dict)
    project_dels: tuple[str, ...] = ()
    lost: tuple[LostMachine, ...] = ()
    restored: tuple[Machine, ...] = ()
    duplicates: tuple[Machine, ...] = ()  # tagged for a project that holds another machine

    @property
    def changed(self) -> bool:
        return bool(self.upserts or self.removals or self.project_sets or self.project_dels)


def _valid_tag(value: str | None) -> str | None:
    if value and PROJECT_ID_PATTERN.fullmatch(value):
        return value
    return None


def _observed(current: Machine, inst: CloudInstance, kind: AddressKind) -> Machine:
    """``current`` with the cloud-observed attributes of ``inst`` folded in."""
    ip = address_of(inst, kind) or current.ip
    private_ip = inst.private_ip or current.private_ip
    public_ip = inst.public_ip or current.public_ip
    zone = inst.availability_zone or current.availability_zone
    launched_at = inst.launched_at or current.launched_at
    tagged = current.project_id is not None and inst.project_tag == current.project_id
    protected = inst.protected_from_scale_in
    # Nearly every instance is unchanged between two refreshes: at 5,000 of
    # them, skipping dataclasses.replace is most of the time an apply takes.
    if (ip, private_ip, public_ip, zone, launched_at, tagged, protected) == (
        current.ip,
        current.private_ip,
        current.public_ip,
        current.availability_zone,
        current.launched_at,
        current.tagged,
        current.protected,
    ):
        return current
    return replace(
        current,
        ip=ip,
        private_ip=private_ip,
        public_ip=public_ip,
        availability_zone=zone,
        launched_at=launched_at,
        tagged=tagged,
        protected=protected,
    )


def _unheld_machine(
    current: Machine | None,
    inst: CloudInstance,
    *,
    kind: AddressKind,
    projects: dict[str, str],
    now: float,
    require_ready_check: bool,
    hold_untagged: bool,
) -> Machine:
    """The new record for an instance no project holds in the store."""
    base = current or Machine(instance_id=inst.instance_id, state=MachineState.PENDING, since=now)
    base = _observed(base, inst, kind)
    tag = _valid_tag(inst.project_tag)
    if tag is not None:
        holder = projects.get(tag)
        if holder is None or holder == inst.instance_id:
            projects[tag] = inst.instance_id
            return replace(
                base,
                state=MachineState.ASSIGNED,
                since=now,
                project_id=tag,
                assigned_at=inst.assigned_at_tag or base.assigned_at,
                tagged=True,
                detail="restored from tags",
            )
        # The project already holds another machine: this one is a stale claim.
        return replace(base, state=MachineState.RELEASING, since=now, detail=f"duplicate of {tag}")
    readiness, why = classify(inst, kind)
    if readiness is Readiness.READY and require_ready_check and not base.ready_checked:
        readiness, why = Readiness.NOT_READY, AWAITING_READY
    if readiness is Readiness.READY and hold_untagged and base.state is not MachineState.IDLE:
        # Right after the state was lost, an untagged machine may be one whose
        # tag job is still queued: handing it out could give it to two projects.
        readiness, why = Readiness.NOT_READY, RECOVERING
    if readiness is Readiness.READY:
        if base.state is MachineState.IDLE:
            return base if base.detail == "" else replace(base, detail="")
        return replace(base, state=MachineState.IDLE, since=now, detail="")
    if base.state is MachineState.PENDING:
        return base if base.detail == why else replace(base, detail=why)
    return replace(base, state=MachineState.PENDING, since=now, detail=why)


def reconcile(
    view: PoolView,
    snapshot: GroupSnapshot,
    *,
    kind: AddressKind,
    now: float,
    require_ready_check: bool = False,
    hold_untagged: bool = False,
) -> Reconciliation:
    """Fold one complete snapshot of the group into the pool state.

    Rules: the store is the truth for machines it knows as assigned or releasing
    (their tags may lag behind a side effect); tags are the truth for instances
    the store does not hold (state lost: restore); everything else is classified
    afresh. Instances that left the group are dropped, and assigned ones are
    reported lost. With ``require_ready_check`` an instance AWS calls ready
    stays pending until a readiness probe passed (``ready_checked``). With
    ``hold_untagged`` (the state was just lost) untagged instances stay pending
    until the tag jobs still in flight had time to land.
    """
    projects = dict(view.projects)
    present: dict[str, CloudInstance] = {}
    for inst in snapshot.instances:
        if classify(inst, kind)[0] is not Readiness.GONE:
            present[inst.instance_id] = inst

    removals, lost, project_dels = _departures(view, snapshot, present, projects, kind=kind, now=now)
    upserts: list[Machine] = []
    restored: list[Machine] = []
    duplicates: list[Machine] = []
    # Held machines first, so a tag on an unheld instance sees every current holder;
    # then the newest tag first, so when two instances carry the same project
    # (a release's termination still queued when state was lost) the project
    # gets back the machine it was given last, and the older one is retired.
    ordered = sorted(present.values(), key=lambda i: i.instance_id)
    ordered.sort(key=lambda i: i.assigned_at_tag or "", reverse=True)
    ordered.sort(key=lambda i: _held_first(view.machines.get(i.instance_id)))
    for inst in ordered:
        current = view.machines.get(inst.instance_id)
        if current is not None and current.state in (
            MachineState.ASSIGNED,
            MachineState.RELEASING,
        ):
            new = _observed(current, inst, kind)
        else:
            new = _unheld_machine(
                current,
                inst,
                kind=kind,
                projects=projects,
                now=now,
                require_ready_check=require_ready_check,
                hold_untagged=hold_untagged,
            )
            if new.state is MachineState.ASSIGNED:
                restored.append(new)
            elif new.state is MachineState.RELEASING:
                duplicates.append(new)
        if new is not current and new != current:
            upserts.append(new)

    project_sets = {p: i for p, i in projects.items() if view.projects.get(p) != i}
    return Reconciliation(
        upserts=tuple(upserts),
        removals=tuple(removals),
        project_sets=project_sets,
        project_dels=tuple(project_dels),
        lost=tuple(lost),
        restored=tuple(restored),
        duplicates=tuple(duplicates),
    )


def _departures(
    view: PoolView,
    snapshot: GroupSnapshot,
    present: Mapping[str, CloudInstance],
    projects: dict[str, str],
    *,
    kind: AddressKind,
    now: float,
) -> tuple[list[str], list[LostMachine], list[str]]:
    """Machines the store knows that left the group; assigned ones are lost (``projects`` updated)."""
    removals: list[str] = []
    lost: list[LostMachine] = []
    project_dels: list[str] = []
    for iid, machine in view.machines.items():
        if iid in present:
            continue
        removals.append(iid)
        if machine.state is MachineState.ASSIGNED and machine.project_id:
            gone = next((i for i in snapshot.instances if i.instance_id == iid), None)
            reason = classify(gone, kind)[1] if gone else "left the group"
            lost.append(LostMachine(iid, machine.project_id, now, reason))
            if projects.get(machine.project_id) == iid:
                del projects[machine.project_id]
                project_dels.append(machine.project_id)
    return removals, lost, project_dels


def _held_first(machine: Machine | None) -> int:
    held = machine is not None and machine.state in (
        MachineState.ASSIGNED,
        MachineState.RELEASING,
    )
    return 0 if held else 1
