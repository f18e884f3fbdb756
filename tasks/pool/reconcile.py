"""Reconciliation: folding one refresh snapshot of the group into the pool state (pure).

Rules (docs/design.md invariants 1, 2 and 7): the store is the truth for
machines it holds as assigned or releasing; tags are the truth for instances it
does not hold (state lost: restore); everything else is classified afresh.

Continuity (``Recovery``): an empty state is either a first start or a loss.
AWS tells them apart: once warmpool has started on a group it tags the group
itself with ``warmpool:epoch`` (and hands nothing out before AWS shows that
tag). An empty state on a group that carries the tag was lost: every untagged
machine that existed then may be in use by a project whose assignment and tag
job were lost with it, so it is quarantined, never made idle, until its tag
lands or an operator releases it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from tasks.contract import PROJECT_ID_PATTERN
from tasks.pool.model import (
    AWAITING_EPOCH,
    AWAITING_READY,
    FOREIGN_DETAIL,
    QUARANTINE_DETAIL,
    UNHEALTHY,
    AddressKind,
    CloudInstance,
    GroupSnapshot,
    LostMachine,
    Machine,
    MachineState,
    PoolView,
    Readiness,
    classify,
    is_gone,
)


@dataclass(frozen=True)
class Recovery:
    """What the state can vouch for about the pool's past (kept in the group record)."""

    epoch: str = ""  # this state's identity, mirrored in the group's warmpool:epoch tag
    confirmed: bool = True  # AWS carries the tag: a later empty state is known to be a loss
    lost_at: float = 0.0  # when the state was last found lost (0: never)
    lost_now: bool = False  # this snapshot is the first one applied since the loss

    @property
    def holds_untagged(self) -> bool:
        # First start: nothing is handed out before AWS records that warmpool started.
        return not self.confirmed


def next_recovery(
    current: Recovery, *, known: bool, snapshot_epoch: str | None, new_epoch: str, now: float
) -> Recovery:
    """The continuity after applying a snapshot whose group carries ``snapshot_epoch``.

    ``known``: the state had applied a snapshot before. ``new_epoch`` names a
    state that starts now (first start).
    """
    if not known:
        if snapshot_epoch:  # the group was managed before: this state was lost
            return Recovery(epoch=snapshot_epoch, confirmed=True, lost_at=now, lost_now=True)
        return Recovery(epoch=new_epoch, confirmed=False, lost_at=current.lost_at)
    if not current.epoch:  # state written by a version without epochs: adopt one now
        return Recovery(epoch=new_epoch, confirmed=False, lost_at=current.lost_at)
    if not current.confirmed and snapshot_epoch == current.epoch:
        return replace(current, confirmed=True, lost_now=False)
    return replace(current, lost_now=False)


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
    recovery: Recovery = Recovery()  # the continuity this snapshot was applied under
    turned_unhealthy: tuple[Machine, ...] = ()  # assigned machines AWS's health check now fails

    @property
    def changed(self) -> bool:
        return bool(self.upserts or self.removals or self.project_sets or self.project_dels)


def _valid_tag(value: str | None) -> str | None:
    if value and PROJECT_ID_PATTERN.fullmatch(value):
        return value
    return None


def _observed(current: Machine, inst: CloudInstance, kind: AddressKind) -> Machine:
    """``current`` with the cloud-observed attributes of ``inst`` folded in."""
    # address_of, inline: this runs for every instance of every refresh.
    ip = (inst.public_ip if kind is AddressKind.PUBLIC else inst.private_ip) or current.ip
    private_ip = inst.private_ip or current.private_ip
    public_ip = inst.public_ip or current.public_ip
    zone = inst.availability_zone or current.availability_zone
    launched_at = inst.launched_at or current.launched_at
    version = inst.template_version or current.template_version
    tagged = current.project_id is not None and inst.project_tag == current.project_id
    protected = inst.protected_from_scale_in
    health = inst.health_status or current.health
    # Nearly every instance is unchanged between two refreshes: at 5,000 of
    # them, skipping dataclasses.replace is most of the time an apply takes.
    if (ip, private_ip, public_ip, zone, launched_at, tagged, protected, health, version) == (
        current.ip,
        current.private_ip,
        current.public_ip,
        current.availability_zone,
        current.launched_at,
        current.tagged,
        current.protected,
        current.health,
        current.template_version,
    ):
        return current
    return replace(
        current,
        ip=ip,
        private_ip=private_ip,
        public_ip=public_ip,
        availability_zone=zone,
        launched_at=launched_at,
        template_version=version,
        tagged=tagged,
        protected=protected,
        health=health,
    )


def _new_record(inst: CloudInstance, *, now: float, recovery: Recovery) -> Machine:
    # A machine that existed when the state was lost may have been handed out
    # in the lost state; one launched after the loss cannot have been.
    suspect = recovery.lost_now or (recovery.lost_at > 0 and inst.launched_at < recovery.lost_at)
    return Machine(instance_id=inst.instance_id, state=MachineState.PENDING, since=now, suspect=suspect)


def _restored(base: Machine, inst: CloudInstance, tag: str, projects: dict[str, str], *, now: float) -> Machine:
    """An instance tagged for ``tag``: the project's machine again, or a stale duplicate claim."""
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
            suspect=False,
            detail="restored from tags",
        )
    # The project already holds another machine: this one is a stale claim.
    return replace(base, state=MachineState.RELEASING, since=now, detail=f"duplicate of {tag}")


def _moved_to(base: Machine, state: MachineState, detail: str, *, now: float) -> Machine:
    if base.state is state:
        return base if base.detail == detail else replace(base, detail=detail)
    return replace(base, state=state, since=now, detail=detail)


def _readiness(
    base: Machine, inst: CloudInstance, kind: AddressKind, *, require_ready_check: bool
) -> tuple[Readiness, str]:
    readiness, why = classify(inst, kind)
    if readiness is Readiness.READY and require_ready_check and not base.ready_checked:
        return Readiness.NOT_READY, AWAITING_READY
    return readiness, why


def _unheld_machine(
    current: Machine | None,
    inst: CloudInstance,
    *,
    kind: AddressKind,
    projects: dict[str, str],
    now: float,
    require_ready_check: bool,
    recovery: Recovery,
) -> Machine:
    """The new record for an instance no project holds in the store."""
    base = _observed(current or _new_record(inst, now=now, recovery=recovery), inst, kind)
    tag = _valid_tag(inst.project_tag)
    if tag is not None:
        return _restored(base, inst, tag, projects, now=now)
    if inst.protected_from_scale_in:
        # Someone else protects it from scale-in: theirs, not ours to give or kill.
        return _moved_to(base, MachineState.FOREIGN, FOREIGN_DETAIL, now=now)
    if base.state is MachineState.QUARANTINED:
        return base  # only its tag or an operator ends a quarantine
    readiness, why = _readiness(base, inst, kind, require_ready_check=require_ready_check)
    if readiness is Readiness.READY and base.suspect and base.state is not MachineState.IDLE:
        return _moved_to(base, MachineState.QUARANTINED, QUARANTINE_DETAIL, now=now)
    if readiness is Readiness.READY and recovery.holds_untagged and base.state is not MachineState.IDLE:
        readiness, why = Readiness.NOT_READY, AWAITING_EPOCH
    if readiness is Readiness.READY:
        return _moved_to(base, MachineState.IDLE, "", now=now)
    return _moved_to(base, MachineState.PENDING, why, now=now)


def reconcile(
    view: PoolView,
    snapshot: GroupSnapshot,
    *,
    kind: AddressKind,
    now: float,
    require_ready_check: bool = False,
    recovery: Recovery = Recovery(),
) -> Reconciliation:
    """Fold one complete snapshot of the group into the pool state.

    Rules: the store is the truth for machines it knows as assigned or releasing
    (their tags may lag behind a side effect); tags are the truth for instances
    the store does not hold (state lost: restore); everything else is classified
    afresh. Instances that left the group are dropped, and assigned ones are
    reported lost. With ``require_ready_check`` an instance AWS calls ready
    stays pending until a readiness probe passed (``ready_checked``).
    ``recovery`` says whether the state is whole (see the module docstring).
    """
    projects = dict(view.projects)
    present: dict[str, CloudInstance] = {}
    for inst in snapshot.instances:
        if not is_gone(inst):
            present[inst.instance_id] = inst

    removals, lost, project_dels = _departures(view, snapshot, present, projects, kind=kind, now=now)
    upserts: list[Machine] = []
    restored: list[Machine] = []
    duplicates: list[Machine] = []
    turned_unhealthy: list[Machine] = []
    # Held machines first, so a tag on an unheld instance sees every current holder;
    # then the newest tag first, so when two instances carry the same project
    # (a release's termination still queued when state was lost) the project
    # gets back the machine it was given last, and the older one is retired.
    ordered = _in_fold_order(present.values(), view)
    for inst in ordered:
        current = view.machines.get(inst.instance_id)
        if current is not None and current.state in (
            MachineState.ASSIGNED,
            MachineState.RELEASING,
        ):
            new = _observed(current, inst, kind)
            if new.state is MachineState.ASSIGNED and new.health == UNHEALTHY != current.health:
                turned_unhealthy.append(new)
        else:
            new = _unheld_machine(
                current,
                inst,
                kind=kind,
                projects=projects,
                now=now,
                require_ready_check=require_ready_check,
                recovery=recovery,
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
        recovery=recovery,
        turned_unhealthy=tuple(turned_unhealthy),
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


def _in_fold_order(instances: Iterable[CloudInstance], view: PoolView) -> list[CloudInstance]:
    """Held first, then by newest project tag, then by id (stable sorts: as three sorts would order them)."""
    held: list[CloudInstance] = []
    unheld: list[CloudInstance] = []
    machines = view.machines
    for inst in sorted(instances, key=_instance_id):
        m = machines.get(inst.instance_id)
        (held if m is not None and m.state in _HELD_BY_STORE else unheld).append(inst)
    for part in (held, unheld):
        if any(i.assigned_at_tag for i in part):
            part.sort(key=_tag_time, reverse=True)
    return held + unheld


_HELD_BY_STORE = (MachineState.ASSIGNED, MachineState.RELEASING)  # the store, not tags, is their truth


def _instance_id(inst: CloudInstance) -> str:
    return inst.instance_id


def _tag_time(inst: CloudInstance) -> str:
    return inst.assigned_at_tag or ""
