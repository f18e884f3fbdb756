"""Every port the pool service uses, and the types that cross them.

The service (tasks.pool.service) talks to the outside world only through
these three interfaces; each has a real adapter and an in-memory one, and one
contract suite runs against both (tests/contract):

=============  ======================================  =====================================
port           real adapter                            in-memory adapter
=============  ======================================  =====================================
StateStore     tasks.state.redis_store.RedisStore      tasks.state.memory_store.InMemoryStore
Cloud          tasks.cloud.boto3_cloud.Boto3Cloud      tasks.cloud.fake_cloud.FakeCloud
SideEffects    tasks.worker.side_effects               tasks.worker.side_effects
               .CelerySideEffects                      .RecordingSideEffects
=============  ======================================  =====================================

Pure: standard library and the pool model only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

from tasks.pool.events import Event, StoredEvent
from tasks.pool.model import (
    AddressKind,
    GroupSnapshot,
    LostMachine,
    Machine,
    MachineState,
    PoolView,
    Waiter,
)
from tasks.pool.planner import GroupBounds
from tasks.pool.reconcile import Reconciliation, Recovery

PROTECT_BATCH = 50  # SetInstanceProtection takes at most 50 instance ids


# -- state store ----------------------------------------------------------------
@dataclass(frozen=True)
class AssignOutcome:
    machine: Machine | None  # None: no idle machine
    new: bool  # False when the project already held ``machine``
    top_up: bool  # this caller should enqueue a top-up (warmpool.rebalance)
    withdrawn: bool = False  # the request was withdrawn (its caller left): nothing was assigned
    paused: bool = False  # an operator paused the pool: tag the machine only after resume


@dataclass(frozen=True)
class ReleaseOutcome:
    machine: Machine | None  # None: the project held nothing
    decrement: bool  # terminate with ShouldDecrementDesiredCapacity
    top_up: bool  # this caller should enqueue a top-up
    paused: bool = False  # an operator paused the pool: terminate only after resume


@dataclass(frozen=True)
class WithdrawOutcome:
    waiter_removed: bool  # the request was still queued for a machine
    machine: Machine | None  # the machine the request was handed, now releasing; None: nothing to give back
    decrement: bool  # terminate ``machine`` with ShouldDecrementDesiredCapacity
    top_up: bool  # this caller should enqueue a top-up
    foreign: bool = False  # the request waits for another project: nothing was changed


@dataclass(frozen=True)
class RefreshStats:
    """What an aws worker reports with a refresh: its duration and AWS attempts since its last report."""

    duration_s: float = 0.0
    aws_calls: dict[str, int] = field(default_factory=dict)
    aws_errors: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> RefreshStats:
        if not isinstance(data, dict):
            return cls()

        def counts(raw: Any) -> dict[str, int]:
            if not isinstance(raw, dict):
                return {}
            return {str(k)[:64]: int(v) for k, v in raw.items() if isinstance(v, int) and v > 0}

        duration = data.get("duration_s")
        return cls(
            duration_s=float(duration) if isinstance(duration, int | float) else 0.0,
            aws_calls=counts(data.get("aws_calls")),
            aws_errors=counts(data.get("aws_errors")),
        )


@dataclass(frozen=True)
class SnapshotRefused:
    """Why the store did not apply a snapshot (StateStore.apply_snapshot returns it instead of a Reconciliation)."""

    reason: str
    seq: int
    applied_seq: int
    issued_seq: int


def snapshot_out_of_order(seq: int, *, applied: int, issued: int) -> SnapshotRefused | None:
    """Why a snapshot numbered ``seq`` is out of order, or None when it is not (the rule of both stores)."""
    if not seq:
        return None  # from an aws worker that numbers none: arrival order
    if seq <= applied:
        reason = f"stale: refresh #{seq} is not newer than #{applied}, applied already"
    elif seq > issued:
        reason = f"refresh #{seq} was never issued by this state (last issued #{issued}): the state was lost since"
    else:
        return None
    return SnapshotRefused(reason=reason, seq=seq, applied_seq=applied, issued_seq=issued)


@dataclass(frozen=True)
class DeadLetter:
    """A message a worker set aside instead of running (tasks.worker.screening): what it was and why.

    Only excerpts are kept (``headers`` and ``body`` are reprs of their first few hundred
    characters, tasks.worker.screening.EXCERPT_CHARS), so a huge message costs the store little.
    """

    at: float  # epoch seconds, on the worker that set it aside
    queue: str
    task: str
    task_id: str
    reason: str  # a stable code (tasks.contract REFUSED_*)
    detail: str
    content_type: str = ""
    size_bytes: int = 0
    headers: str = ""
    body: str = ""
    worker: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeadLetter:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass(frozen=True)
class GroupInfo:
    """Group bounds as last observed plus refresh bookkeeping."""

    min_size: int = 0
    max_size: int = 0
    desired_capacity: int = 0
    observed_at: float = 0.0
    refreshed_at: float = 0.0
    refresh_error: str = ""
    refresh_error_at: float = 0.0
    lost_total: int = 0
    wanted: int = 0
    capped: bool = False
    unready_total: int = 0
    backoff_until: float = 0.0
    backoff_reason: str = ""
    refresh_duration_s: float = 0.0
    held_other: int = 0  # quarantined + foreign machines at the last full rebalance
    epoch: str = ""
    epoch_confirmed: bool = False
    lost_at: float = 0.0  # when the state was last found lost (0: never)
    applied_seq: int = 0  # seq of the newest applied snapshot
    idle_target: int = -1  # the idle target the last plan was made with (-1: none yet)
    paused_at: float = 0.0  # an operator paused AWS changes (warmpool pause) at this time; 0: not paused
    unadopted: tuple[str, ...] = ()  # found at the first start, not launched by warmpool: never terminated
    recycle_before: float = 0.0  # warmpool recycle --older-than: idle machines launched before this go
    recycle_version: str = ""  # warmpool recycle --not-template-version: idle machines of another version go

    @property
    def paused(self) -> bool:
        return self.paused_at > 0

    @property
    def known(self) -> bool:
        return self.observed_at > 0

    @property
    def recovery(self) -> Recovery:
        return Recovery(epoch=self.epoch, confirmed=self.epoch_confirmed, lost_at=self.lost_at)

    @property
    def bounds(self) -> GroupBounds:
        return GroupBounds(self.min_size, self.max_size, self.desired_capacity)


class StateStore(Protocol):
    """Pool state. Implementations: RedisStore, tasks.state.memory_store.InMemoryStore."""

    def assign(
        self,
        project_id: str,
        *,
        now: float,
        assigned_at: str,
        idle_target: int,
        lease_s: float = 0.0,
        request_id: str = "",
    ) -> AssignOutcome: ...

    def release(
        self, project_id: str, *, now: float, lease_expired_before: float | None = None, reason: str = "release"
    ) -> ReleaseOutcome:
        """Release what ``project_id`` holds; records ``released`` with ``reason`` (or ``lease_expired``)."""
        ...

    def withdraw(self, request_id: str, project_id: str, *, now: float) -> WithdrawOutcome: ...

    def touch(self, project_id: str, *, now: float, lease_s: float = 0.0) -> tuple[str, Machine | None]: ...

    def add_waiter(self, waiter: Waiter) -> bool: ...

    def waiters(self) -> list[Waiter]: ...

    def remove_waiter(self, request_id: str) -> None: ...

    def mark_ready(self, instance_ids: list[str], *, now: float) -> list[Machine]: ...

    def release_quarantine(self, instance_ids: list[str] | None, *, now: float) -> list[Machine]: ...

    def record_unready(self, instance_ids: list[str], *, now: float) -> int: ...

    def record_backoff(self, *, until: float, reason: str) -> None: ...

    def request_refresh_soon(self) -> bool: ...

    def record_refresh_stats(self, stats: RefreshStats) -> None: ...

    def aws_stats(self) -> tuple[dict[str, int], dict[str, int]]: ...

    def view(self) -> PoolView: ...

    def group(self) -> GroupInfo: ...

    def next_refresh_seq(self) -> int: ...

    def apply_snapshot(
        self,
        snapshot: GroupSnapshot,
        *,
        kind: AddressKind,
        now: float,
        require_ready_check: bool = False,
        new_epoch: str | None = None,
    ) -> Reconciliation | SnapshotRefused:
        """Fold ``snapshot`` in, unless it is out of order: refused (and nothing changes) when its
        ``seq`` is not above the newest applied one, or above the last one ``next_refresh_seq``
        issued (it was issued before the state was lost). A snapshot without a ``seq`` (0) is
        applied in arrival order. ``new_epoch`` names the state if this is a first start."""
        ...

    def claim_for_termination(
        self,
        instance_ids: list[str],
        *,
        now: float,
        detail: str,
        expected: MachineState = MachineState.IDLE,
        decrement: bool = True,
        reason: str = "surplus",
    ) -> list[Machine]:
        """Claim machines still in ``expected`` for termination; records ``terminated`` with ``reason`` each."""
        ...

    def record_plan(
        self,
        *,
        wanted: int,
        capped: bool,
        desired_capacity: int | None,
        held_other: int,
        idle_target: int | None = None,
    ) -> None: ...

    def record_refresh_error(self, message: str, *, now: float) -> None: ...

    def lost(self, *, limit: int = 20) -> list[LostMachine]: ...

    def request_top_up(self) -> bool: ...

    def clear_top_up_request(self) -> None: ...

    def assigned_count(self) -> int: ...

    def record_dead_letter(self, letter: DeadLetter) -> None: ...

    def dead_letters(self, *, limit: int = 20) -> list[DeadLetter]: ...

    def dead_letter_counts(self) -> dict[str, int]: ...

    def reset(self) -> None: ...

    def append_events(self, events: Sequence[Event]) -> None:
        """Record events of changes that are not a store transition of their own (pause, capped, ...)."""
        ...

    def update_group(self, fields: Mapping[str, str], events: Sequence[Event] = ()) -> None:
        """Set operator fields of the group record (``paused_at``, ``unadopted`` as JSON) with their events."""
        ...

    def adopt(
        self, assignments: Mapping[str, str], *, now: float, assigned_at: str, dry_run: bool = False
    ) -> tuple[list[Machine], str | None]:
        """Make these machines the projects' (project -> instance), all or none: (records, None) or ([], why)."""
        ...

    def events(self, *, after: str = "0-0", count: int = 100) -> list[StoredEvent]:
        """Up to ``count`` events with ids above ``after``, oldest first ("0-0": from the oldest kept)."""
        ...


# -- cloud ------------------------------------------------------------------------
class Cloud(Protocol):
    """What warmpool needs from AWS. Implementations: Boto3Cloud, tasks.cloud.fake_cloud.FakeCloud."""

    def describe_group(self) -> GroupSnapshot: ...

    def set_desired_capacity(self, desired: int) -> None: ...

    def raise_desired_capacity(self, desired: int) -> bool: ...

    def terminate_instance(self, instance_id: str, *, decrement: bool) -> bool: ...

    def tag_and_protect(self, instance_id: str, *, project_id: str, assigned_at: str) -> bool: ...

    def tag_project(self, instance_id: str, *, project_id: str, assigned_at: str) -> bool: ...

    def tag_group(self, epoch: str) -> None: ...

    def protect(self, instance_ids: Sequence[str]) -> list[str]: ...

    def api_calls(self) -> dict[str, int]: ...

    def api_errors(self) -> dict[str, int]: ...


# -- side effects -----------------------------------------------------------------
class SideEffects(Protocol):
    """Deferred work. Implementations: tasks.worker.side_effects.CelerySideEffects, RecordingSideEffects."""

    def tag_assignments(self, machines: Sequence[Machine]) -> None: ...

    def terminate(self, instance_id: str, *, decrement: bool) -> None: ...

    def set_desired(self, desired: int) -> None: ...

    def tag_group(self, epoch: str) -> None: ...

    def top_up(self) -> None: ...

    def refresh(self, *, delay_s: float) -> None: ...

    def probe(self, candidates: list[tuple[str, str]]) -> None: ...

    def deliver(self, request_id: str, result: dict[str, Any]) -> None: ...
