"""The pure pool model: machine states, what AWS tells us, and how the two reconcile.

No I/O lives here: no Redis, no boto3, no clock. Every function takes what it
needs (including ``now``) and returns plain values, so the rules can be tested
exhaustively (see tests/unit/test_model*.py).

Lifecycle (docs/design.md)::

    pending ──► idle ──► assigned ──► releasing ──► (gone)
       ▲          │                       ▲
       └──────────┘ (stops being ready)   └── scale-in claims an idle machine

Two states hold machines warmpool may not hand out or terminate:

- ``quarantined``: after the pool state was lost, an untagged machine that
  existed before the loss may be in use by a project whose assignment (and
  tag job) was lost with it. It stays out of reach until its tag lands
  (-> assigned) or an operator releases it (-> idle).
- ``foreign``: protected from scale-in by someone else and not held by
  warmpool (another orchestrator's machine). Never handed out or terminated.

A machine that vanishes from AWS is dropped; an assigned one is reported lost.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any


class MachineState(enum.StrEnum):
    PENDING = "pending"
    IDLE = "idle"
    ASSIGNED = "assigned"
    RELEASING = "releasing"
    QUARANTINED = "quarantined"
    FOREIGN = "foreign"


# States whose machines count as taken: capacity is planned around them, and
# they are never handed out or chosen for scale-in.
HELD_STATES = frozenset({MachineState.ASSIGNED, MachineState.QUARANTINED, MachineState.FOREIGN})
UNASSIGNABLE_HELD = HELD_STATES - {MachineState.ASSIGNED}


class AddressKind(enum.StrEnum):
    PUBLIC = "public"
    PRIVATE = "private"


class Readiness(enum.StrEnum):
    READY = "ready"  # may be handed out
    NOT_READY = "not_ready"  # in the group, but not usable (yet)
    GONE = "gone"  # leaving or left the group


# Which transitions the state machine allows; stores assert against this table.
ALLOWED_TRANSITIONS: frozenset[tuple[MachineState, MachineState]] = frozenset(
    {
        (MachineState.PENDING, MachineState.IDLE),
        (MachineState.IDLE, MachineState.PENDING),
        (MachineState.IDLE, MachineState.ASSIGNED),
        (MachineState.IDLE, MachineState.RELEASING),
        (MachineState.ASSIGNED, MachineState.RELEASING),
        # Restoring an assignment from tags after state was lost:
        (MachineState.PENDING, MachineState.ASSIGNED),
        # A duplicate claim found in tags is retired:
        (MachineState.PENDING, MachineState.RELEASING),
        # State lost: a machine that may be in use is held out of reach ...
        (MachineState.PENDING, MachineState.QUARANTINED),
        (MachineState.IDLE, MachineState.QUARANTINED),
        # ... until its tag proves the assignment (or a stale claim: retired),
        # or an operator releases it (back to pending, then idle).
        (MachineState.QUARANTINED, MachineState.ASSIGNED),
        (MachineState.QUARANTINED, MachineState.RELEASING),
        (MachineState.QUARANTINED, MachineState.PENDING),
        # Protected from scale-in by someone else (and back when they let go);
        # a warmpool tag on it makes it warmpool's again.
        (MachineState.PENDING, MachineState.FOREIGN),
        (MachineState.IDLE, MachineState.FOREIGN),
        (MachineState.QUARANTINED, MachineState.FOREIGN),
        (MachineState.FOREIGN, MachineState.PENDING),
        (MachineState.FOREIGN, MachineState.IDLE),
        (MachineState.FOREIGN, MachineState.QUARANTINED),
        (MachineState.FOREIGN, MachineState.ASSIGNED),
        (MachineState.FOREIGN, MachineState.RELEASING),
    }
)

_GONE_LIFECYCLES = frozenset(
    {
        "Terminating",
        "Terminating:Wait",
        "Terminating:Proceed",
        "Terminated",
        "Detaching",
        "Detached",
    }
)
_GONE_EC2_STATES = frozenset({"shutting-down", "terminated"})
# Operators park instances in Standby on purpose: never time those out.
_PARKED_DETAILS = ("lifecycle Standby", "lifecycle EnteringStandby")
AWAITING_READY = "awaiting readiness check"
RELEASED_FROM_QUARANTINE = "released from quarantine by an operator"
AWAITING_EPOCH = "first start: waiting until AWS carries the group's warmpool:epoch tag"
QUARANTINE_DETAIL = "state lost: may be in use by a project whose assignment was lost"
UNHEALTHY = "Unhealthy"  # the group's health check (AWS HealthStatus)
FOREIGN_DETAIL = "protected from scale-in, not held by warmpool"


@dataclass(frozen=True)
class CloudInstance:
    """One instance of the group as AWS reports it (ASG view joined with EC2 view)."""

    instance_id: str
    lifecycle_state: str
    health_status: str
    ec2_state: str = ""  # "" when EC2 did not (yet) list the instance
    private_ip: str | None = None
    public_ip: str | None = None
    availability_zone: str = ""
    protected_from_scale_in: bool = False
    project_tag: str | None = None
    assigned_at_tag: str | None = None
    launched_at: float = 0.0
    template_version: str = ""  # the launch template version it was launched from ("" unknown)


@dataclass(frozen=True)
class GroupSnapshot:
    """Everything one refresh read about the configured Auto Scaling Group."""

    name: str
    min_size: int
    max_size: int
    desired_capacity: int
    instances: tuple[CloudInstance, ...]
    observed_at: float  # the reading aws worker's clock: shown and sanity-checked, never used to order
    epoch_tag: str | None = None  # the group's warmpool:epoch tag (tasks.contract.TAG_EPOCH)
    # The refresh's place in the pool's own sequence (the state store's refresh_seq,
    # taken when its AWS read started); 0 for a snapshot that has none (an older aws worker).
    seq: int = 0


def iso_utc(ts: float) -> str:
    """Epoch seconds as ISO 8601 UTC with milliseconds (the format of tags and results)."""
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def address_of(instance: CloudInstance, kind: AddressKind) -> str | None:
    """The address clients connect to, per WARMPOOL_ADDRESS."""
    return instance.public_ip if kind is AddressKind.PUBLIC else instance.private_ip


def is_gone(instance: CloudInstance) -> bool:
    """Whether ``instance`` has left or is leaving the group (classify's GONE, without its reason)."""
    return instance.lifecycle_state in _GONE_LIFECYCLES or instance.ec2_state in _GONE_EC2_STATES


def classify(instance: CloudInstance, kind: AddressKind) -> tuple[Readiness, str]:
    """Decide whether ``instance`` may be handed out; the string says why not."""
    if is_gone(instance):
        return Readiness.GONE, f"{instance.lifecycle_state}/{instance.ec2_state or '?'}"
    if instance.lifecycle_state != "InService":
        return Readiness.NOT_READY, f"lifecycle {instance.lifecycle_state}"
    if instance.health_status != "Healthy":
        return Readiness.NOT_READY, f"health {instance.health_status}"
    if instance.ec2_state != "running":
        return Readiness.NOT_READY, f"ec2 {instance.ec2_state or 'not listed'}"
    if not address_of(instance, kind):
        return Readiness.NOT_READY, f"no {kind.value} address"
    return Readiness.READY, ""


@dataclass(frozen=True)
class Machine:
    """warmpool's record of one instance (what the state store holds)."""

    instance_id: str
    state: MachineState
    since: float  # when the machine entered ``state`` (epoch seconds)
    ip: str | None = None  # the configured address (public or private)
    private_ip: str | None = None
    public_ip: str | None = None
    project_id: str | None = None
    assigned_at: str | None = None  # ISO 8601, as tagged
    detail: str = ""  # why a pending machine is not ready
    availability_zone: str = ""
    launched_at: float = 0.0
    template_version: str = ""  # launch template version, as the group reports it ("" unknown)
    tagged: bool = False  # AWS carries warmpool:project == project_id
    protected: bool = False  # AWS protects it from scale-in
    ready_checked: bool = False  # passed the WARMPOOL_READY_URL check (when one is configured)
    lease_s: float = 0.0  # lease length of the assignment; 0 = no lease
    lease_expires_at: float = 0.0  # epoch seconds; 0 = never
    health: str = ""  # the group's health check: Healthy / Unhealthy ("" before the first refresh)
    suspect: bool = False  # existed when the state was lost: quarantined rather than made idle
    # The request (assign job id) that made this assignment, so a caller who left
    # can give back exactly what it was handed; "" once another request was told
    # about the same assignment (the project asked again), or when restored from tags.
    request_id: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "instance_id": self.instance_id,
            "state": self.state.value,
            "since": self.since,
            "ip": self.ip,
            "private_ip": self.private_ip,
            "public_ip": self.public_ip,
            "project_id": self.project_id,
            "assigned_at": self.assigned_at,
            "detail": self.detail,
            "availability_zone": self.availability_zone,
            "launched_at": self.launched_at,
            "template_version": self.template_version,
            "tagged": self.tagged,
            "protected": self.protected,
            "ready_checked": self.ready_checked,
            "lease_s": self.lease_s,
            "lease_expires_at": self.lease_expires_at,
            "health": self.health,
            "suspect": self.suspect,
            "request_id": self.request_id,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Machine:
        return cls(
            instance_id=str(data["instance_id"]),
            state=MachineState(data["state"]),
            since=float(data.get("since") or 0.0),
            ip=data.get("ip") or None,
            private_ip=data.get("private_ip") or None,
            public_ip=data.get("public_ip") or None,
            project_id=data.get("project_id") or None,
            assigned_at=data.get("assigned_at") or None,
            detail=str(data.get("detail") or ""),
            availability_zone=str(data.get("availability_zone") or ""),
            launched_at=float(data.get("launched_at") or 0.0),
            template_version=str(data.get("template_version") or ""),
            tagged=bool(data.get("tagged")),
            protected=bool(data.get("protected")),
            ready_checked=bool(data.get("ready_checked")),
            lease_s=float(data.get("lease_s") or 0.0),
            lease_expires_at=float(data.get("lease_expires_at") or 0.0),
            health=str(data.get("health") or ""),
            suspect=bool(data.get("suspect")),
            request_id=str(data.get("request_id") or ""),
        )


@dataclass(frozen=True)
class LostMachine:
    """An assigned machine that vanished from AWS without being released."""

    instance_id: str
    project_id: str
    lost_at: float
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "instance_id": self.instance_id,
            "project_id": self.project_id,
            "lost_at": self.lost_at,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class PoolView:
    """A consistent read of the pool state: machines and the project index."""

    machines: Mapping[str, Machine]
    projects: Mapping[str, str]  # project id -> instance id

    @functools.cached_property
    def _grouped(self) -> dict[MachineState, list[Machine]]:
        # One pass per view (a view is a read: its mappings never change), shared by every
        # step of a rebalance that asks for machines of a state.
        grouped: dict[MachineState, list[Machine]] = {s: [] for s in MachineState}
        for m in self.machines.values():
            grouped[m.state].append(m)
        return grouped

    def by_state(self, state: MachineState) -> list[Machine]:
        """The machines in ``state``, in the view's order (a new list)."""
        return list(self._grouped[state])

    def count_of(self, *states: MachineState) -> int:
        """How many machines are in any of ``states``."""
        grouped = self._grouped
        return sum(len(grouped[s]) for s in states)

    def counts(self) -> dict[str, int]:
        return {s.value: len(ms) for s, ms in self._grouped.items()}


def choose_for_assignment(idle: Iterable[Machine]) -> Machine | None:
    """The idle machine to hand out next: the one idle longest (ties: instance id)."""
    candidates = (m for m in idle if m.state is MachineState.IDLE)
    return min(candidates, key=lambda m: (m.since, m.instance_id), default=None)


def choose_for_termination(idle: Iterable[Machine], count: int) -> list[Machine]:
    """Pick ``count`` idle machines to terminate on scale-in.

    Keeps zones balanced (take from the zone holding the most idle machines),
    and within a zone terminates the oldest launch first, like AWS's default
    policy, so rolling a launch template forward retires old machines first.
    """
    remaining = [m for m in idle if m.state is MachineState.IDLE]
    chosen: list[Machine] = []
    while len(chosen) < count and remaining:
        per_zone: dict[str, list[Machine]] = {}
        for m in remaining:
            per_zone.setdefault(m.availability_zone, []).append(m)
        zone = max(per_zone, key=lambda z: (len(per_zone[z]), z))
        victim = min(per_zone[zone], key=lambda m: (m.launched_at, m.instance_id))
        chosen.append(victim)
        remaining.remove(victim)
    return chosen


def snapshot_to_json(snapshot: GroupSnapshot) -> dict[str, Any]:
    """A GroupSnapshot as a JSON-safe dict (it crosses the aws -> pool queue)."""
    return {
        "name": snapshot.name,
        "min_size": snapshot.min_size,
        "max_size": snapshot.max_size,
        "desired_capacity": snapshot.desired_capacity,
        "observed_at": snapshot.observed_at,
        "epoch_tag": snapshot.epoch_tag,
        "seq": snapshot.seq,
        "instances": [asdict(i) for i in snapshot.instances],
    }


def snapshot_from_json(data: Mapping[str, Any]) -> GroupSnapshot:
    """Inverse of snapshot_to_json; raises KeyError/TypeError/ValueError on bad input."""
    instances = tuple(CloudInstance(**dict(i)) for i in data["instances"])
    for inst in instances:
        if not isinstance(inst.instance_id, str) or not inst.instance_id:
            raise ValueError("instance without an id")
    epoch_tag = data.get("epoch_tag")
    if epoch_tag is not None and (not isinstance(epoch_tag, str) or len(epoch_tag) > 64):
        raise ValueError("epoch_tag must be a string of at most 64 characters")
    return GroupSnapshot(
        name=str(data["name"]),
        min_size=int(data["min_size"]),
        max_size=int(data["max_size"]),
        desired_capacity=int(data["desired_capacity"]),
        instances=instances,
        observed_at=float(data["observed_at"]),
        epoch_tag=epoch_tag or None,
        seq=_sequence_number(data.get("seq", 0)),
    )


def _sequence_number(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"seq must be a non-negative integer, got {value!r:.40}")
    return value


@dataclass(frozen=True)
class Waiter:
    """A caller waiting for a machine (assign with ``wait``), served in arrival order."""

    request_id: str  # the Celery task id its result is delivered to
    project_id: str
    deadline: float  # epoch seconds; never served after it
    lease_s: float = 0.0
    arrived: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Waiter:
        return cls(
            request_id=str(data["request_id"]),
            project_id=str(data["project_id"]),
            deadline=float(data["deadline"]),
            lease_s=float(data.get("lease_s") or 0.0),
            arrived=float(data.get("arrived") or 0.0),
        )


def unready_overdue(machines: Iterable[Machine], *, now: float, timeout_s: float) -> list[Machine]:
    """Pending machines that stayed unready longer than ``timeout_s`` (parked Standby excluded)."""
    if timeout_s <= 0:
        return []
    return [
        m
        for m in machines
        if m.state is MachineState.PENDING and now - m.since >= timeout_s and not m.detail.startswith(_PARKED_DETAILS)
    ]


def leases_expired(machines: Iterable[Machine], *, now: float) -> list[Machine]:
    """Assigned machines whose lease ran out."""
    return [m for m in machines if m.state is MachineState.ASSIGNED and 0 < m.lease_expires_at <= now and m.project_id]
