"""InMemoryStore: the StateStore port (tasks.pool.ports) in a dict; same contract as RedisStore (tests/contract)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from tasks.pool.events import (
    ADOPTED,
    ASSIGNED,
    LEASE_EXPIRED,
    READY,
    REASON_LEASE_EXPIRED,
    REASON_RELEASE,
    REASON_SURPLUS,
    REASON_WITHDRAWN,
    RELEASED,
    TERMINATED,
    Event,
    StoredEvent,
    check_event_id,
    decode,
    snapshot_events,
)
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
from tasks.state.keys import (
    DEAD_LETTER_KEEP,
    EVENTS_KEEP,
    LOST_KEEP,
    TOP_UP_COALESCE_MS,
    UNREADY_WINDOW_S,
    WITHDRAWN_KEEP_S,
)

_ADOPTABLE = frozenset({MachineState.PENDING, MachineState.IDLE, MachineState.FOREIGN, MachineState.QUARANTINED})


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
        self._events: list[tuple[str, str]] = []  # (entry id, event json), oldest first
        self._event_clock = (0, 0)  # (ms, seq) of the newest entry id

    def _emit(self, event: Event) -> None:
        # The caller holds self._lock: the event is part of the transition, as XADD in the Lua scripts.
        # Entry ids are shaped as Redis makes them: "<ms>-<seq>", strictly increasing.
        ms, seq = self._event_clock
        now_ms = int(time.time() * 1000)
        self._event_clock = (now_ms, 0) if now_ms > ms else (ms, seq + 1)
        self._events.append((f"{self._event_clock[0]}-{self._event_clock[1]}", event.encode()))
        if len(self._events) > EVENTS_KEEP:
            del self._events[: len(self._events) - EVENTS_KEEP]

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
                return AssignOutcome(machine=current, new=False, top_up=False, paused=self._group.paused)
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
            self._emit(Event(ASSIGNED, now, project_id=project_id, instance_id=machine.instance_id))
            top_up = self._idle_count() < idle_target and self._flag()
            return AssignOutcome(machine=machine, new=True, top_up=top_up, paused=self._group.paused)

    def release(
        self,
        project_id: str,
        *,
        now: float,
        lease_expired_before: float | None = None,
        reason: str = REASON_RELEASE,
    ) -> ReleaseOutcome:
        with self._lock:
            return self._release(
                project_id, now=now, lease_expired_before=lease_expired_before, granted_to="", reason=reason
            )

    def _release(
        self, project_id: str, *, now: float, lease_expired_before: float | None, granted_to: str, reason: str
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
        if lease_expired_before is not None:
            self._emit(Event(LEASE_EXPIRED, now, project_id, machine.instance_id, REASON_LEASE_EXPIRED))
        else:
            self._emit(Event(RELEASED, now, project_id, machine.instance_id, reason))
        g = self._group
        decrement = g.known and g.desired_capacity - 1 >= g.min_size
        if decrement:
            self._group = replace(g, desired_capacity=g.desired_capacity - 1)
        return ReleaseOutcome(machine=machine, decrement=decrement, top_up=self._flag(), paused=self._group.paused)

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
            released = self._release(
                project_id, now=now, lease_expired_before=None, granted_to=request_id, reason=REASON_WITHDRAWN
            )
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
                self._emit(Event(READY, now, instance_id=iid))
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
            for event in snapshot_events(view, rec, now=now):
                self._emit(event)
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
        reason: str = REASON_SURPLUS,
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
                self._emit(Event(TERMINATED, now, machine.project_id, iid, reason))
                claimed.append(machine)
        return claimed

    def record_plan(
        self,
        *,
        wanted: int,
        capped: bool,
        desired_capacity: int | None,
        held_other: int,
        idle_target: int | None = None,
    ) -> None:
        with self._lock:
            desired = self._group.desired_capacity if desired_capacity is None else desired_capacity
            target = self._group.idle_target if idle_target is None else idle_target
            g = self._group
            if (g.wanted, g.capped, g.desired_capacity, g.held_other, g.idle_target) == (
                wanted,
                capped,
                desired,
                held_other,
                target,
            ):
                return  # every rebalance records its plan; most change nothing
            self._group = replace(
                g, wanted=wanted, capped=capped, desired_capacity=desired, held_other=held_other, idle_target=target
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

    # -- events (tasks.pool.events) ----------------------------------------
    def append_events(self, events: Sequence[Event]) -> None:
        with self._lock:
            for event in events:
                self._emit(event)

    def update_group(self, fields: Mapping[str, str], events: Sequence[Event] = ()) -> None:
        with self._lock:
            changes: dict[str, Any] = {}
            if "paused_at" in fields:
                changes["paused_at"] = float(fields["paused_at"])
            if "unadopted" in fields:
                changes["unadopted"] = tuple(json.loads(fields["unadopted"]))
            if "recycle_before" in fields:
                changes["recycle_before"] = float(fields["recycle_before"])
            if "recycle_version" in fields:
                changes["recycle_version"] = fields["recycle_version"]
            self._group = replace(self._group, **changes)
            for event in events:
                self._emit(event)

    def adopt(
        self, assignments: Mapping[str, str], *, now: float, assigned_at: str, dry_run: bool = False
    ) -> tuple[list[Machine], str | None]:
        with self._lock:  # adopt.lua's logic: check every pair, then apply all or none
            chosen: list[tuple[str, Machine]] = []
            for project, iid in assignments.items():
                m = self._machines.get(iid)
                held = self._projects.get(project)
                if m is None:
                    return [], f"{iid} is not in the group (as of the last refresh)"
                if m.state is MachineState.ASSIGNED:
                    if m.project_id != project:
                        return [], f"{iid} is assigned to another project"
                elif m.state not in _ADOPTABLE:
                    return [], f"{iid} is {m.state.value}: it cannot be adopted"
                elif held and held != iid:
                    return [], f"project {project} already holds {held}"
                chosen.append((project, m))
            if dry_run:
                return [m for _, m in chosen], None
            out: list[Machine] = []
            for project, m in chosen:
                if m.state is not MachineState.ASSIGNED:
                    m = replace(
                        m,
                        state=MachineState.ASSIGNED,
                        project_id=project,
                        assigned_at=assigned_at,
                        since=now,
                        tagged=False,
                        protected=False,
                        detail="adopted",
                        suspect=False,
                        request_id="",
                        lease_s=0.0,
                        lease_expires_at=0.0,
                    )
                    self._machines[m.instance_id] = m
                    self._projects[project] = m.instance_id
                    self._emit(Event(ADOPTED, now, project, m.instance_id, "adopt"))
                out.append(m)
            return out, None

    def events(self, *, after: str = "0-0", count: int = 100) -> list[StoredEvent]:
        """Up to ``count`` events with ids above ``after`` (oldest first), as RedisStore.events."""
        floor = _entry_id(check_event_id(after))
        with self._lock:
            newer = [(eid, raw) for eid, raw in self._events if _entry_id(eid) > floor]
        return [decode(eid, raw) for eid, raw in newer[: max(0, count)]]


def _entry_id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)
