"""InMemoryStore: the StateStore port (tasks.pool.ports) in a dict; same contract as RedisStore (tests/contract)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace

from tasks.pool.model import (
    AWAITING_READY,
    RELEASED_FROM_QUARANTINE,
    AddressKind,
    GroupSnapshot,
    LostMachine,
    Machine,
    MachineState,
    PoolView,
    Waiter,
    choose_for_assignment,
)
from tasks.pool.ports import (
    AssignOutcome,
    DeadLetter,
    GroupInfo,
    RefreshStats,
    ReleaseOutcome,
    SnapshotRefused,
    WithdrawOutcome,
    snapshot_out_of_order,
)
from tasks.pool.reconcile import Reconciliation, next_recovery, reconcile
from tasks.state.keys import DEAD_LETTER_KEEP, LOST_KEEP, TOP_UP_COALESCE_MS, UNREADY_WINDOW_S, WITHDRAWN_KEEP_S


class InMemoryStore:
    """A StateStore held in a dict, one lock standing in for Redis atomicity."""

    def __init__(self, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        # The coalescing flags' clock (Redis TTLs in RedisStore); the simulator passes its virtual one.
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self._machines: dict[str, Machine] = {}
        self._projects: dict[str, str] = {}
        self._group = GroupInfo()
        self._lost: list[LostMachine] = []
        self._flag_until = 0.0
        self._refresh_until = 0.0
        self._waiters: dict[str, Waiter] = {}  # insertion order = arrival order
        self._unready: dict[str, float] = {}
        self._aws_calls: dict[str, int] = {}
        self._aws_errors: dict[str, int] = {}
        self._withdrawn: dict[str, float] = {}  # request id -> remembered until
        self._refresh_seq = 0
        self._dead_letters: list[DeadLetter] = []  # newest first
        self._dead_reasons: dict[str, int] = {}

    def _flag(self) -> bool:
        now = self._monotonic()
        if now < self._flag_until:
            return False
        self._flag_until = now + TOP_UP_COALESCE_MS / 1000
        return True

    def _idle_count(self) -> int:
        return sum(1 for m in self._machines.values() if m.state is MachineState.IDLE)

    def _held(self, project_id: str) -> Machine | None:
        held = self._projects.get(project_id)
        current = self._machines.get(held) if held else None
        if current is None or current.state is not MachineState.ASSIGNED or current.project_id != project_id:
            return None
        return current

    def assign(
        self,
        project_id: str,
        *,
        now: float,
        assigned_at: str,
        idle_target: int,
        lease_s: float = 0.0,
        request_id: str = "",
    ) -> AssignOutcome:
        lease_fields = (lease_s, now + lease_s) if lease_s > 0 else (0.0, 0.0)
        with self._lock:
            if request_id and request_id in self._withdrawn:
                return AssignOutcome(machine=None, new=False, top_up=False, withdrawn=True)
            current = self._held(project_id)
            if current is not None:
                if lease_s > 0:
                    current = replace(current, lease_s=lease_fields[0], lease_expires_at=lease_fields[1])
                if request_id and current.request_id not in ("", request_id):
                    current = replace(current, request_id="")  # told to a second request: no one may withdraw it
                self._machines[current.instance_id] = current
                return AssignOutcome(machine=current, new=False, top_up=False)
            self._projects.pop(project_id, None)
            idle = [m for m in self._machines.values() if m.state is MachineState.IDLE]
            chosen = choose_for_assignment(idle)
            if chosen is None:
                return AssignOutcome(machine=None, new=False, top_up=self._flag())
            machine = replace(
                chosen,
                state=MachineState.ASSIGNED,
                project_id=project_id,
                assigned_at=assigned_at,
                since=now,
                tagged=False,
                protected=False,
                lease_s=lease_fields[0],
                lease_expires_at=lease_fields[1],
                request_id=request_id,
            )
            self._machines[machine.instance_id] = machine
            self._projects[project_id] = machine.instance_id
            top_up = self._idle_count() < idle_target and self._flag()
            return AssignOutcome(machine=machine, new=True, top_up=top_up)

    def release(self, project_id: str, *, now: float, lease_expired_before: float | None = None) -> ReleaseOutcome:
        with self._lock:
            return self._release(project_id, now=now, lease_expired_before=lease_expired_before, granted_to="")

    def _release(
        self, project_id: str, *, now: float, lease_expired_before: float | None, granted_to: str
    ) -> ReleaseOutcome:
        # The caller holds self._lock (release.lua's logic, withdraw mode included).
        nothing = ReleaseOutcome(machine=None, decrement=False, top_up=False)
        current = self._held(project_id)
        if current is None:
            self._projects.pop(project_id, None)
            return nothing
        if granted_to and current.request_id != granted_to:
            return nothing
        if lease_expired_before is not None and not 0 < current.lease_expires_at <= lease_expired_before:
            return nothing
        del self._projects[project_id]
        detail = "lease expired" if lease_expired_before is not None else current.detail
        machine = replace(current, state=MachineState.RELEASING, since=now, detail=detail)
        self._machines[machine.instance_id] = machine
        g = self._group
        decrement = g.known and g.desired_capacity - 1 >= g.min_size
        if decrement:
            self._group = replace(g, desired_capacity=g.desired_capacity - 1)
        return ReleaseOutcome(machine=machine, decrement=decrement, top_up=self._flag())

    def touch(self, project_id: str, *, now: float, lease_s: float = 0.0) -> tuple[str, Machine | None]:
        with self._lock:
            current = self._held(project_id)
            if current is None:
                return "not_assigned", None
            length = lease_s if lease_s > 0 else current.lease_s
            if length <= 0:
                return "no_lease", current
            machine = replace(current, lease_s=length, lease_expires_at=now + length)
            self._machines[machine.instance_id] = machine
            return "touched", machine

    def withdraw(self, request_id: str, project_id: str, *, now: float) -> WithdrawOutcome:
        with self._lock:
            waiting = self._waiters.get(request_id)
            if waiting is not None and waiting.project_id != project_id:
                return WithdrawOutcome(waiter_removed=False, machine=None, decrement=False, top_up=False, foreign=True)
            self._withdrawn = {r: until for r, until in self._withdrawn.items() if until > now}
            self._withdrawn[request_id] = now + WITHDRAWN_KEEP_S
            removed = self._waiters.pop(request_id, None) is not None
            released = self._release(project_id, now=now, lease_expired_before=None, granted_to=request_id)
            return WithdrawOutcome(
                waiter_removed=removed, machine=released.machine, decrement=released.decrement, top_up=released.top_up
            )

    def add_waiter(self, waiter: Waiter) -> bool:
        with self._lock:
            if waiter.request_id in self._waiters or waiter.request_id in self._withdrawn:
                return False
            self._waiters[waiter.request_id] = waiter
            return True

    def waiters(self) -> list[Waiter]:
        with self._lock:
            return list(self._waiters.values())

    def remove_waiter(self, request_id: str) -> None:
        with self._lock:
            self._waiters.pop(request_id, None)

    def mark_ready(self, instance_ids: list[str], *, now: float) -> list[Machine]:
        ready: list[Machine] = []
        with self._lock:
            for iid in instance_ids:
                m = self._machines.get(iid)
                if m is None or m.state is not MachineState.PENDING or m.detail != AWAITING_READY:
                    continue
                m = replace(m, state=MachineState.IDLE, since=now, detail="", ready_checked=True)
                self._machines[iid] = m
                ready.append(m)
        return ready

    def release_quarantine(self, instance_ids: list[str] | None, *, now: float) -> list[Machine]:
        released: list[Machine] = []
        with self._lock:
            for iid in list(self._machines) if instance_ids is None else instance_ids:
                m = self._machines.get(iid)
                if m is None or m.state is not MachineState.QUARANTINED:
                    continue
                m = replace(m, state=MachineState.PENDING, since=now, detail=RELEASED_FROM_QUARANTINE, suspect=False)
                self._machines[iid] = m
                released.append(m)
        return released

    def record_unready(self, instance_ids: list[str], *, now: float) -> int:
        with self._lock:
            for iid in instance_ids:
                self._unready[iid] = now
            self._unready = {i: t for i, t in self._unready.items() if t > now - UNREADY_WINDOW_S}
            self._group = replace(self._group, unready_total=self._group.unready_total + len(instance_ids))
            return len(self._unready)

    def record_backoff(self, *, until: float, reason: str) -> None:
        with self._lock:
            self._group = replace(self._group, backoff_until=until, backoff_reason=reason[:300])

    def record_refresh_stats(self, stats: RefreshStats) -> None:
        with self._lock:
            self._group = replace(self._group, refresh_duration_s=stats.duration_s)
            for target, delta in ((self._aws_calls, stats.aws_calls), (self._aws_errors, stats.aws_errors)):
                for action, n in delta.items():
                    target[action] = target.get(action, 0) + n

    def aws_stats(self) -> tuple[dict[str, int], dict[str, int]]:
        with self._lock:
            return dict(self._aws_calls), dict(self._aws_errors)

    def request_refresh_soon(self) -> bool:
        with self._lock:
            now = self._monotonic()
            if now < self._refresh_until:
                return False
            self._refresh_until = now + 1.0
            return True

    def view(self) -> PoolView:
        with self._lock:
            return PoolView(machines=dict(self._machines), projects=dict(self._projects))

    def group(self) -> GroupInfo:
        return self._group

    def apply_snapshot(
        self,
        snapshot: GroupSnapshot,
        *,
        kind: AddressKind,
        now: float,
        require_ready_check: bool = False,
        new_epoch: str | None = None,
    ) -> Reconciliation | SnapshotRefused:
        with self._lock:
            g = self._group
            applied = g.applied_seq
            refused = snapshot_out_of_order(snapshot.seq, applied=applied, issued=self._refresh_seq)
            if refused is not None:
                return refused
            recovery = next_recovery(
                g.recovery,
                known=g.known,
                snapshot_epoch=snapshot.epoch_tag,
                new_epoch=new_epoch or uuid.uuid4().hex,
                now=now,
            )
            view = PoolView(machines=dict(self._machines), projects=dict(self._projects))
            rec = reconcile(
                view, snapshot, kind=kind, now=now, require_ready_check=require_ready_check, recovery=recovery
            )
            for m in rec.upserts:
                self._machines[m.instance_id] = m
            for iid in rec.removals:
                self._machines.pop(iid, None)
            for p in rec.project_dels:
                self._projects.pop(p, None)
            self._projects.update(rec.project_sets)
            self._lost = (list(reversed(rec.lost)) + self._lost)[:LOST_KEEP]
            self._group = replace(
                self._group,
                min_size=snapshot.min_size,
                max_size=snapshot.max_size,
                desired_capacity=snapshot.desired_capacity,
                observed_at=snapshot.observed_at,
                refreshed_at=now,
                refresh_error="",
                lost_total=self._group.lost_total + len(rec.lost),
                epoch=recovery.epoch,
                epoch_confirmed=recovery.confirmed,
                lost_at=recovery.lost_at,
                applied_seq=snapshot.seq or applied,
            )
            return rec

    def next_refresh_seq(self) -> int:
        with self._lock:
            self._refresh_seq += 1
            return self._refresh_seq

    def claim_for_termination(
        self,
        instance_ids: list[str],
        *,
        now: float,
        detail: str,
        expected: MachineState = MachineState.IDLE,
        decrement: bool = True,
    ) -> list[Machine]:
        claimed: list[Machine] = []
        with self._lock:
            for iid in instance_ids:
                current = self._machines.get(iid)
                if current is None or current.state is not expected or expected is MachineState.ASSIGNED:
                    continue
                machine = replace(current, state=MachineState.RELEASING, since=now, detail=detail)
                self._machines[iid] = machine
                if decrement:
                    self._group = replace(self._group, desired_capacity=self._group.desired_capacity - 1)
                claimed.append(machine)
        return claimed

    def record_plan(self, *, wanted: int, capped: bool, desired_capacity: int | None, held_other: int) -> None:
        with self._lock:
            desired = self._group.desired_capacity if desired_capacity is None else desired_capacity
            self._group = replace(
                self._group, wanted=wanted, capped=capped, desired_capacity=desired, held_other=held_other
            )

    def record_refresh_error(self, message: str, *, now: float) -> None:
        with self._lock:
            self._group = replace(self._group, refresh_error=message[:500], refresh_error_at=now)

    def lost(self, *, limit: int = 20) -> list[LostMachine]:
        return self._lost[:limit]

    def request_top_up(self) -> bool:
        with self._lock:
            return self._flag()

    def clear_top_up_request(self) -> None:
        self._flag_until = 0.0

    def assigned_count(self) -> int:
        with self._lock:
            return len(self._projects)

    def record_dead_letter(self, letter: DeadLetter) -> None:
        with self._lock:
            self._dead_letters = [letter, *self._dead_letters][:DEAD_LETTER_KEEP]
            self._dead_reasons[letter.reason] = self._dead_reasons.get(letter.reason, 0) + 1

    def dead_letters(self, *, limit: int = 20) -> list[DeadLetter]:
        with self._lock:
            return self._dead_letters[: max(0, limit)]

    def dead_letter_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._dead_reasons)
