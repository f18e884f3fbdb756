"""The invariants every fault scenario asserts afterwards (docs/design.md, invariants 1, 3, 4, 7, 9).

``assert_invariants(stack, holders=...)`` checks, against the pool state in
Redis and against AWS (moto, read directly):

* no machine is held by two projects, no project holds two (store and tags);
* every machine a caller received (``holders``: project -> instance) is still
  assigned to that caller, alive in the group (never terminated by scale-in),
  and — eventually — tagged ``warmpool:project=<project>`` and protected;
* the group's desired capacity lies within [MinSize, MaxSize];
* with ``settle=True``, nothing leaks: the pool converges to
  held (assigned, quarantined, foreign) + idle target (clamped), with no machine stuck ``releasing``, every
  live instance known to the pool, and no assigned record without its instance.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from tasks.contract import TAG_PROJECT
from tasks.pool.model import HELD_STATES, MachineState, PoolView
from tests.faults.conftest import FaultStack, eventually

LIVE_LIFECYCLES = frozenset({"InService", "Pending", "Pending:Wait", "Pending:Proceed", "Standby"})


def store_violations(view: PoolView) -> list[str]:
    """Invariant 1 on the pool state: one holder per machine, one machine per project, a consistent index."""
    problems: list[str] = []
    assigned = [m for m in view.machines.values() if m.state is MachineState.ASSIGNED]
    for project, n in Counter(m.project_id for m in assigned).items():
        if n > 1:
            held = sorted(m.instance_id for m in assigned if m.project_id == project)
            problems.append(f"project {project} holds {n} machines: {held}")
    for m in assigned:
        if not m.project_id:
            problems.append(f"{m.instance_id} is assigned to nobody")
    for instance_id, n in Counter(view.projects.values()).items():
        if n > 1:
            owners = sorted(p for p, i in view.projects.items() if i == instance_id)
            problems.append(f"{instance_id} is held by {n} projects: {owners}")
    for project, instance_id in view.projects.items():
        record = view.machines.get(instance_id)
        if record is None or record.state is not MachineState.ASSIGNED or record.project_id != project:
            state = None if record is None else (record.state.value, record.project_id)
            problems.append(f"index says {project} holds {instance_id}, record says {state}")
    return problems


def aws_view(stack: FaultStack) -> dict[str, dict[str, Any]]:
    """Every instance of the group: ASG lifecycle and protection joined with EC2 state and tags."""
    group = stack.group()
    asg = {i["InstanceId"]: i for i in group["Instances"]}
    out: dict[str, dict[str, Any]] = {}
    for iid, inst in stack.ec2_instances().items():
        a = asg.get(iid, {})
        out[iid] = {
            "lifecycle": a.get("LifecycleState", "gone"),
            "protected": bool(a.get("ProtectedFromScaleIn")),
            "ec2": inst["State"]["Name"],
            "tags": {t["Key"]: t["Value"] for t in inst.get("Tags", [])},
        }
    return out


def is_live(inst: Mapping[str, Any]) -> bool:
    return inst["lifecycle"] in LIVE_LIFECYCLES and inst["ec2"] in ("pending", "running")


def aws_violations(aws: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Invariant 1 on the durable truth: no project tag on two live instances."""
    by_project: dict[str, list[str]] = {}
    for iid, inst in aws.items():
        project = inst["tags"].get(TAG_PROJECT)
        if project and is_live(inst):
            by_project.setdefault(project, []).append(iid)
    return [
        f"project {p} is tagged on {len(ids)} live instances: {sorted(ids)}"
        for p, ids in by_project.items()
        if len(ids) > 1
    ]


def holder_violations(
    view: PoolView, aws: Mapping[str, Mapping[str, Any]], holders: Mapping[str, str], *, tagged: bool
) -> list[str]:
    """Every machine a caller received is still its own, alive, and (``tagged``) carries its tag and protection."""
    problems: list[str] = []
    for project, iid in holders.items():
        if view.projects.get(project) != iid:
            problems.append(f"{project} received {iid} but the pool says it holds {view.projects.get(project)}")
        m = view.machines.get(iid)
        if m is None or m.state is not MachineState.ASSIGNED or m.project_id != project:
            problems.append(f"{iid} (received by {project}) is {None if m is None else (m.state.value, m.project_id)}")
        inst = aws.get(iid)
        if inst is None or not is_live(inst):
            problems.append(
                f"{iid} (received by {project}) was terminated: {inst and (inst['lifecycle'], inst['ec2'])}"
            )
            continue
        if tagged and inst["tags"].get(TAG_PROJECT) != project:
            problems.append(f"{iid} (received by {project}) is tagged {inst['tags'].get(TAG_PROJECT)!r}")
        if tagged and not inst["protected"]:
            problems.append(f"{iid} (received by {project}) is not protected from scale-in")
    return problems


def bounds_violations(group: Mapping[str, Any]) -> list[str]:
    low, high, desired = group["MinSize"], group["MaxSize"], group["DesiredCapacity"]
    return [] if low <= desired <= high else [f"desired capacity {desired} outside [{low}, {high}]"]


def settle_violations(stack: FaultStack, view: PoolView, aws: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Nothing leaked: the pool is back at assigned + idle target and knows every live instance."""
    problems: list[str] = []
    group = stack.group()
    counts = Counter(m.state for m in view.machines.values())
    # Held: assigned, and what warmpool may not hand out (quarantined after a state loss, foreign).
    assigned = sum(n for state, n in counts.items() if state in HELD_STATES)
    target = max(group["MinSize"], min(group["MaxSize"], assigned + stack.config.idle_target))
    if counts[MachineState.RELEASING]:
        stuck = sorted(m.instance_id for m in view.machines.values() if m.state is MachineState.RELEASING)
        problems.append(f"machines stuck releasing: {stuck}")
    if group["DesiredCapacity"] != target:
        problems.append(f"desired capacity {group['DesiredCapacity']} != clamp(held {assigned} + idle target)")
    if counts[MachineState.IDLE] != target - assigned:
        problems.append(f"{counts[MachineState.IDLE]} idle machines, want {target - assigned}")
    live = {iid for iid, inst in aws.items() if is_live(inst)}
    unknown = live - set(view.machines)
    if unknown:
        problems.append(f"live instances the pool does not know: {sorted(unknown)}")
    dead = {m.instance_id for m in view.machines.values() if m.state is MachineState.ASSIGNED} - live
    if dead:
        problems.append(f"assigned records whose instance is gone: {sorted(dead)}")
    return problems


def assert_invariants(
    stack: FaultStack,
    *,
    holders: Mapping[str, str] | None = None,
    settle: bool = True,
    timeout_s: float = 40.0,
) -> None:
    """Assert every invariant; the eventual ones (tags, convergence) are retried for ``timeout_s``."""
    holders = dict(holders or {})

    # Safety properties hold at every moment: check them once right away.
    view, aws = stack.store.view(), aws_view(stack)
    immediate = store_violations(view) + aws_violations(aws) + bounds_violations(stack.group())
    immediate += holder_violations(view, aws, holders, tagged=False)
    assert not immediate, "invariants violated:\n  " + "\n  ".join(immediate)

    def converged() -> None:
        view, aws = stack.store.view(), aws_view(stack)
        problems = store_violations(view) + aws_violations(aws) + bounds_violations(stack.group())
        problems += holder_violations(view, aws, holders, tagged=True)
        if settle:
            problems += settle_violations(stack, view, aws)
        assert not problems, "not converged:\n  " + "\n  ".join(problems)

    eventually(converged, timeout_s=timeout_s, every_s=0.5)


def distinct(ids: Iterable[str]) -> bool:
    ids = list(ids)
    return len(set(ids)) == len(ids)
