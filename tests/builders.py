"""Small builders shared by the unit and contract tests: cloud instances, snapshots, machines, views."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from tasks.pool.model import (
    AddressKind,
    CloudInstance,
    GroupSnapshot,
    Machine,
    MachineState,
    PoolView,
)
from tasks.pool.ports import StateStore
from tasks.pool.reconcile import Reconciliation

ASG = "test-asg"


def iid(n: int) -> str:
    return f"i-{n:017x}"


def ready(n: int, **changes: object) -> CloudInstance:
    """An instance that classify() calls READY (both address kinds), with overrides."""
    inst = CloudInstance(
        instance_id=iid(n),
        lifecycle_state="InService",
        health_status="Healthy",
        ec2_state="running",
        private_ip=f"10.0.0.{n % 250 + 1}",
        public_ip=f"198.51.100.{n % 250 + 1}",
        availability_zone="ap-south-1a" if n % 2 else "ap-south-1b",
        launched_at=1_000.0 + n,
    )
    return replace(inst, **changes)  # type: ignore[arg-type]


# The warmpool:epoch tag of test groups: stores primed with prime() carry it as theirs.
TEST_EPOCH = "testepoch"


def snapshot(
    instances: Iterable[CloudInstance],
    *,
    observed_at: float = 1_000.0,
    min_size: int = 0,
    max_size: int = 10,
    desired: int | None = None,
    name: str = ASG,
    epoch_tag: str | None = TEST_EPOCH,
    seq: int = 0,
) -> GroupSnapshot:
    insts = tuple(instances)
    return GroupSnapshot(
        name=name,
        min_size=min_size,
        max_size=max_size,
        desired_capacity=len(insts) if desired is None else desired,
        instances=insts,
        observed_at=observed_at,
        epoch_tag=epoch_tag,
        seq=seq,
    )


def prime(store: StateStore) -> StateStore:
    """A store that started on its group (first start, epoch TEST_EPOCH): the next snapshot confirms it.

    Without this, a test's first snapshot (which carries TEST_EPOCH) would tell
    the store its state was lost.
    """
    empty = GroupSnapshot(name=ASG, min_size=0, max_size=10, desired_capacity=0, instances=(), observed_at=1.0)
    store.apply_snapshot(empty, kind=AddressKind.PUBLIC, now=1.0, new_epoch=TEST_EPOCH)
    return store


def machine(n: int, state: MachineState, **changes: object) -> Machine:
    m = Machine(
        instance_id=iid(n),
        state=state,
        since=100.0 + n,
        ip=f"198.51.100.{n % 250 + 1}",
        private_ip=f"10.0.0.{n % 250 + 1}",
        public_ip=f"198.51.100.{n % 250 + 1}",
        availability_zone="ap-south-1a" if n % 2 else "ap-south-1b",
        launched_at=1_000.0 + n,
    )
    return replace(m, **changes)  # type: ignore[arg-type]


def view_of(machines: Iterable[Machine]) -> PoolView:
    """A consistent view: the project index holds exactly the assigned machines."""
    ms = {m.instance_id: m for m in machines}
    projects = {m.project_id: m.instance_id for m in ms.values() if m.state is MachineState.ASSIGNED and m.project_id}
    return PoolView(machines=ms, projects=projects)


def apply(view: PoolView, rec: Reconciliation) -> PoolView:
    """What a store does with a Reconciliation (the InMemoryStore's order of writes)."""
    machines = dict(view.machines)
    projects = dict(view.projects)
    for m in rec.upserts:
        machines[m.instance_id] = m
    for i in rec.removals:
        machines.pop(i, None)
    for p in rec.project_dels:
        projects.pop(p, None)
    projects.update(rec.project_sets)
    return PoolView(machines=machines, projects=projects)
