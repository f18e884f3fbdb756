"""Use cases of the pool worker: assign (now or after waiting), release, touch, refresh, rebalance.

The service composes the pure model with two ports: the StateStore and the
SideEffects sink (AWS work deferred to the ``aws`` queue, results delivered to
waiting callers). It never calls AWS itself, which keeps AWS off the assign
path (docs/design.md invariant 8). Results are the JSON dicts of the contract.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tasks.contract import (
    CODE_BAD_REQUEST,
    CODE_NO_CAPACITY,
    MAX_LEASE_S,
    MAX_WAIT_S,
    STATUS_ASSIGNED,
    STATUS_NOT_ASSIGNED,
    STATUS_RELEASED,
    STATUS_WITHDRAWN,
    check_seconds,
    failure,
    validate_project_id,
)
from tasks.errors import InvalidRequest
from tasks.pool import events, refresh, upkeep
from tasks.pool.economics import Economics, EconomicsConfig, wants_fast_poll
from tasks.pool.ledger import OUTCOME_FAILED, OUTCOME_WAITING, OUTCOME_WARM, Ledger, MemoryLedger
from tasks.pool.model import (
    HELD_STATES,
    UNASSIGNABLE_HELD,
    AddressKind,
    GroupSnapshot,
    Machine,
    MachineState,
    PoolView,
    Waiter,
    iso_utc,
)
from tasks.pool.operations import operator_status, recycle_step
from tasks.pool.planner import clamp, plan_capacity
from tasks.pool.policy import Schedule
from tasks.pool.ports import RefreshStats, SideEffects, StateStore
from tasks.pool.refresh import MAX_SNAPSHOT_SKEW_S
from tasks.pool.status import build_status
from tasks.pool.upkeep import CONVERGE_AFTER_S

log = logging.getLogger("warmpool.pool")

__all__ = ["CONVERGE_AFTER_S", "MAX_SNAPSHOT_SKEW_S", "PoolConfig", "PoolService", "assigned_result"]

# A waiting caller is never served later than this before its own deadline,
# so the result reaches it before it gives up (covers delivery and clock skew).
DEADLINE_MARGIN_S = 0.5
MAX_REQUEST_ID_CHARS = 200  # request ids are Celery task ids (UUIDs)


@dataclass(frozen=True)
class PoolConfig:
    asg_name: str
    idle_target: int
    address: AddressKind
    lease_s: float = 0.0  # default lease of an assignment; 0 = none
    require_ready_check: bool = False  # WARMPOOL_READY_URL is set
    ready_timeout_s: float = 600.0
    pool: str = "default"  # the pool's name (tasks/pools.py): in every result and log line
    dry_run: bool = False  # WARMPOOL_DRY_RUN: AWS changes are planned and logged only (tasks.worker.dry_run)
    # WARMPOOL_ADOPT_HOLD: at the first start on a group, the machines found are never terminated
    # until adopted or confirmed (tasks.pool.operations.hold_unadopted)
    hold_unadopted: bool = False
    # Economics (tasks.pool.economics, docs/economics.md). These defaults are the behaviour
    # before policies existed; the settings (tasks.config) default to the delayed scale-in.
    policy: str = "fixed"  # fixed | fixed:N | adaptive[:goal=G,floor=N]
    warm_goal: float = 0.99
    idle_max: int = 0  # 0: no cap
    schedules: tuple[Schedule, ...] = ()
    scale_in_delay_s: float = 0.0
    scale_in_step: int = 0  # 0: no bound per rebalance
    pending_poll_s: float = 0.0  # while a machine launches, refresh this often (0: only the beat)

    def economics(self) -> EconomicsConfig:
        return EconomicsConfig(
            idle_target=self.idle_target,
            policy=self.policy,
            warm_goal=self.warm_goal,
            idle_max=self.idle_max,
            schedules=self.schedules,
            scale_in_delay_s=self.scale_in_delay_s,
            scale_in_step=self.scale_in_step,
            ready_timeout_s=self.ready_timeout_s,
        )


def assigned_result(machine: Machine, *, pool: str | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {
        "status": STATUS_ASSIGNED,
        "pool": pool,
        "project_id": machine.project_id,
        "instance_id": machine.instance_id,
        "ip": machine.ip,
        "private_ip": machine.private_ip,
        "assigned_at": machine.assigned_at,
        "health": machine.health or None,
    }
    if machine.lease_expires_at:
        result["lease_expires_at"] = iso_utc(machine.lease_expires_at)
    return result


class PoolService:
    """The pool worker's logic, independent of Celery."""

    def __init__(
        self,
        store: StateStore,
        effects: SideEffects,
        *,
        config: PoolConfig,
        clock: Callable[[], float] = time.time,
        ledger: Ledger | None = None,
    ) -> None:
        self.store = store
        self.effects = effects
        self._clock = clock
        self.economics = Economics(ledger or MemoryLedger(), config.economics(), started_at=clock())
        self._config = config

    @property
    def config(self) -> PoolConfig:
        return self._config

    @config.setter
    def config(self, config: PoolConfig) -> None:
        """A new configuration in force from now on (the economics follow it)."""
        self._config = config
        self.economics.reconfigure(config.economics())

    # -- assign / release / touch -----------------------------------------
    def assign(
        self,
        project_id: str,
        *,
        wait_s: Any = 0.0,
        lease_s: Any = None,
        request_id: str | None = None,
        deadline: Any = None,
    ) -> dict[str, Any]:
        """Hand the project an idle machine (the one it holds, if any), or queue it to wait.

        With ``wait_s`` > 0 and no idle machine, the caller is queued (FIFO) and
        a ``waiting`` result is returned; the real result is delivered to
        ``request_id`` later, never after the caller's deadline.
        """
        validate_project_id(project_id)
        wait = check_seconds(wait_s, "wait", high=MAX_WAIT_S)
        lease = self.config.lease_s if lease_s is None else check_seconds(lease_s, "lease", high=MAX_LEASE_S)
        now = self._clock()
        outcome = self.store.assign(
            project_id,
            now=now,
            assigned_at=iso_utc(now),
            idle_target=self.economics.target,
            lease_s=lease,
            request_id=request_id or "",
        )
        if outcome.withdrawn:  # its caller left before this job ran (a reordered or redelivered message)
            return {"status": STATUS_WITHDRAWN, "project_id": project_id, "request_id": request_id}
        if outcome.top_up:
            self.effects.top_up()
        if outcome.machine is not None:
            if outcome.new:
                self.economics.claimed(now=now, outcome=OUTCOME_WARM)
            self._tag_if_needed(outcome.machine, new=outcome.new, paused=outcome.paused)
            return assigned_result(outcome.machine, pool=self.config.pool)
        margin = min(DEADLINE_MARGIN_S, wait / 10)
        serve_by = now + wait - margin
        if deadline is not None:
            serve_by = min(serve_by, check_seconds(deadline, "deadline", high=math.inf) - margin)
        if request_id and serve_by > now:
            waiter = Waiter(request_id, project_id, deadline=serve_by, lease_s=lease, arrived=now)
            if self.store.add_waiter(waiter):
                self.economics.claimed(now=now, outcome=OUTCOME_WAITING)
            self._scale_for_waiters()
            # Why there is no machine now travels with the waiting state, so a
            # caller whose deadline passes can still be told (e.g. capped).
            return {
                "status": "waiting",
                "project_id": project_id,
                "deadline": iso_utc(serve_by),
                **self._capacity_note(),
            }
        self.economics.claimed(now=now, outcome=OUTCOME_FAILED)
        return self._no_capacity(project_id)

    def _tag_if_needed(self, machine: Machine, *, new: bool, paused: bool) -> None:
        # A project asking again for a machine AWS does not show as tagged yet
        # may be the redelivery of an assign whose worker died before sending
        # the tag: send it again (tagging is idempotent).
        if (new or not (machine.tagged and machine.protected)) and not paused:
            # Paused: no AWS change; the first converge after resume tags it (CONVERGE_AFTER_S).
            self.effects.tag_assignments([machine])

    def _capacity_note(self) -> dict[str, Any]:
        group = self.store.group()
        capped = group.capped or (group.known and group.desired_capacity >= group.max_size)
        if capped:
            why = f"capped by MaxSize={group.max_size}"
        elif group.backoff_until > self._clock():
            why = f"scale-up paused: {group.backoff_reason}"
        else:
            why = "scale-up requested"
        return {"capped": capped, "max_size": group.max_size, "reason": why}

    def _no_capacity(self, project_id: str) -> dict[str, Any]:
        note = self._capacity_note()
        message = f"no idle machine in {self.config.asg_name} ({note['reason']})"
        return failure(CODE_NO_CAPACITY, message, project_id=project_id, pool=self.config.pool, **note)

    def _scale_for_waiters(self) -> None:
        # Desired counts waiting callers: scale up now, not at the next beat
        # tick, and look at the group again soon instead of every interval.
        if self.store.request_top_up():
            self.effects.top_up()
        if self.store.request_refresh_soon():
            self.effects.refresh(delay_s=1.0)

    def release(self, project_id: str) -> dict[str, Any]:
        """Take the project's machine back: terminate it and let the buffer refill."""
        validate_project_id(project_id)
        outcome = self.store.release(project_id, now=self._clock())
        if outcome.machine is None:
            return {"status": STATUS_NOT_ASSIGNED, "project_id": project_id}
        self._terminate(
            outcome.machine, decrement=outcome.decrement, reason=events.REASON_RELEASE, paused=outcome.paused
        )
        self.economics.terminated("release")
        if outcome.top_up:
            self.effects.top_up()
        return {"status": STATUS_RELEASED, "project_id": project_id, "instance_id": outcome.machine.instance_id}

    def withdraw(self, request_id: Any, project_id: Any) -> dict[str, Any]:
        """Give back what the assign ``request_id`` got: its caller left (the gateway saw it disconnect).

        Removes its waiter if it is still queued, and releases the machine it was
        handed if that assign already completed: only a machine that request made
        the project hold, never one held before or told to another request too.
        Idempotent; the request is never served afterwards.
        """
        validate_project_id(project_id)
        if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_REQUEST_ID_CHARS:
            raise InvalidRequest(f"request id must be a string of 1-{MAX_REQUEST_ID_CHARS} characters")
        outcome = self.store.withdraw(request_id, project_id, now=self._clock())
        if outcome.foreign:
            return failure(CODE_BAD_REQUEST, f"request {request_id:.60} does not wait for project {project_id}")
        released = None
        if outcome.machine is not None:
            released = outcome.machine.instance_id
            log.info("withdrawn assign released", extra={"project_id": project_id, "instance_id": released})
            self._terminate(outcome.machine, decrement=outcome.decrement, reason=events.REASON_WITHDRAWN)
            self.economics.terminated("withdrawn")
            if outcome.top_up:
                self.effects.top_up()
        return {
            "status": STATUS_WITHDRAWN,
            "project_id": project_id,
            "request_id": request_id,
            "waiting": outcome.waiter_removed,
            "released": released,
        }

    def touch(self, project_id: str, *, lease_s: Any = None) -> dict[str, Any]:
        """Renew the lease of the project's machine (``lease_s`` overrides its length)."""
        validate_project_id(project_id)
        lease = 0.0 if lease_s is None else check_seconds(lease_s, "lease", high=MAX_LEASE_S)
        outcome, machine = self.store.touch(project_id, now=self._clock(), lease_s=lease)
        if machine is None:
            return {"status": STATUS_NOT_ASSIGNED, "project_id": project_id}
        result = {"status": outcome, "project_id": project_id, "instance_id": machine.instance_id}
        if machine.lease_expires_at:
            result["lease_expires_at"] = iso_utc(machine.lease_expires_at)
        return result

    # -- waiting callers --------------------------------------------------
    def serve_waiters(self) -> int:
        """Hand idle machines to waiting callers in arrival order; drop the expired ones."""
        served = 0
        left_waiting = False
        for waiter in self.store.waiters():
            now = self._clock()
            if waiter.deadline <= now:
                # Its caller has given up (or is about to): withdraw the place, never assign.
                self.store.remove_waiter(waiter.request_id)
                self.effects.deliver(waiter.request_id, self._no_capacity(waiter.project_id))
                self.economics.gave_up(wait_s=max(0.0, now - waiter.arrived))
                continue
            outcome = self.store.assign(
                waiter.project_id,
                now=now,
                assigned_at=iso_utc(now),
                idle_target=self.economics.target,
                lease_s=waiter.lease_s,
                request_id=waiter.request_id,
            )
            if outcome.withdrawn:  # its caller left after this loop read the waiters
                self.store.remove_waiter(waiter.request_id)
                continue
            if outcome.machine is None:
                left_waiting = True  # this caller and the ones behind it still wait
                break
            self._tag_if_needed(outcome.machine, new=outcome.new, paused=outcome.paused)
            self.effects.deliver(waiter.request_id, assigned_result(outcome.machine, pool=self.config.pool))
            self.store.remove_waiter(waiter.request_id)
            if outcome.new:
                self.economics.served(wait_s=max(0.0, now - waiter.arrived))
            served += 1
        if left_waiting:
            self._scale_for_waiters()
        return served

    def _waiting_count(self) -> int:
        now = self._clock()
        return len({w.project_id for w in self.store.waiters() if w.deadline > now})

    # -- refresh / readiness / rebalance ----------------------------------

    # -- refresh (tasks/pool/refresh.py) ----------------------------------
    def apply_snapshot(self, snapshot: GroupSnapshot, *, stats: RefreshStats | None = None) -> dict[str, Any]:
        """Fold a refresh into the state, serve waiters, rebalance and converge (refresh.apply_snapshot)."""
        return refresh.apply_snapshot(self, snapshot, stats=stats)

    def release_quarantined(self, instance_ids: Sequence[str] | None) -> dict[str, Any]:
        """An operator vouches that these quarantined machines (None: all of them) are in nobody's use."""
        return refresh.release_quarantined(self, instance_ids)

    def mark_ready(self, instance_ids: list[str]) -> dict[str, Any]:
        """Readiness checks passed for these machines: make them idle and serve waiters."""
        return refresh.mark_ready(self, instance_ids)

    def record_refresh_error(self, message: str, *, stats: RefreshStats | None = None) -> dict[str, Any]:
        return refresh.record_refresh_error(self, message, stats=stats)

    def top_up(self) -> dict[str, Any]:
        """The rebalance that assigns, releases and waiting callers ask for: raise capacity if needed.

        It reads counters, not the pool, so it costs the pool queue next to
        nothing when capacity suffices; only a needed scale-up runs the full
        rebalance. Scale-in, expired leases and unready machines are left to
        the full rebalance after every refresh.
        """
        self.store.clear_top_up_request()
        group = self.store.group()
        if not group.known:
            return {"rebalanced": False, "reason": "group not observed yet"}
        if group.paused:
            return {"rebalanced": False, "reason": "paused by an operator"}
        held = self.store.assigned_count() + group.held_other
        if not self.economics.decided:
            # A fresh process knows only the configured target: ask the policy in force (an
            # override, a schedule) once, or this plan would record a target it is not using.
            self.economics.decide(now=self._clock(), held=held, max_size=group.max_size)
        wanted = held + self.economics.target + self._waiting_count()
        target = clamp(wanted, group.min_size, max(group.min_size, group.max_size))
        if target > group.desired_capacity:
            return self.rebalance()
        capped = wanted > group.max_size
        upkeep.record_plan_events(
            self,
            group,
            wanted=wanted,
            capped=capped,
            target=self.economics.target,
            reason=self.economics.reason,
            now=self._clock(),
        )
        self.store.record_plan(
            wanted=wanted,
            capped=capped,
            desired_capacity=None,
            held_other=group.held_other,
            idle_target=self.economics.target,
        )
        return {"rebalanced": False, "reason": "capacity suffices", "target": target, "wanted": wanted}

    def rebalance(self, *, converge: bool = False) -> dict[str, Any]:
        """Resize toward assigned + idle target + waiting; terminate surplus idle machines by name."""
        self.store.clear_top_up_request()
        group = self.store.group()
        if not group.known:
            return {"rebalanced": False, "reason": "group not observed yet"}
        if group.paused:  # no launch, termination or capacity change until resume (tasks.pool.operations)
            return {"rebalanced": False, "reason": "paused by an operator"}
        now = self._clock()
        # One read of the pool serves every step; read again only if a step changed it.
        view = self.store.view()
        # Each step is handed the machines of the states it looks at (the view groups them once).
        expired = upkeep.expire_leases(self, now, view.by_state(MachineState.ASSIGNED))
        replaced = upkeep.replace_unready(self, now, view.by_state(MachineState.PENDING), group)
        recycled = recycle_step(self, view, group, now=now)
        if expired or replaced or recycled:
            view, group = self.store.view(), self.store.group()
        held = view.count_of(*HELD_STATES)
        decision, read = self.economics.decide(now=now, held=held, max_size=group.max_size)
        plan = plan_capacity(view, group.bounds, idle_target=decision.target, waiting=self._waiting_count())
        set_desired = plan.set_desired
        if set_desired is not None and group.backoff_until > now:
            log.warning("scale-up paused", extra={"wanted": set_desired, "reason": group.backoff_reason})
            set_desired = None
        if set_desired is not None:
            self.effects.set_desired(set_desired)
            self.economics.launched(set_desired - max(group.desired_capacity, self._occupying(view)))
        idle = view.by_state(MachineState.IDLE)
        # Surplus idle is kept for scale_in_delay_s, then retired longest-idle first, a bounded step at a time.
        surplus = [m for m in plan.terminate if m.instance_id not in group.unadopted]
        keepable = [m for m in idle if m.instance_id not in group.unadopted]
        chosen, surplus_since = self.economics.scale_in(surplus, keepable, now=now, surplus_since=read.surplus_since)
        claimed = self.store.claim_for_termination(
            [m.instance_id for m in chosen], now=now, detail="scale-in", reason=events.REASON_SURPLUS
        )
        for m in claimed:
            self.effects.terminate(m.instance_id, decrement=True)
        self.economics.terminated("scale_in", len(claimed))
        self.economics.after_rebalance(now=now, idle=len(idle) - len(claimed), surplus_since=surplus_since)
        if self.config.pending_poll_s > 0 and (
            set_desired is not None or wants_fast_poll(view.by_state(MachineState.PENDING))
        ):
            # A launch is noticed within a poll interval, not at the next beat (docs/economics.md).
            if self.store.request_refresh_soon():
                self.effects.refresh(delay_s=self.config.pending_poll_s)
        held_other = view.count_of(*UNASSIGNABLE_HELD)
        upkeep.record_plan_events(
            self, group, wanted=plan.wanted, capped=plan.capped, target=decision.target, reason=decision.reason, now=now
        )
        self.store.record_plan(
            wanted=plan.wanted,
            capped=plan.capped,
            desired_capacity=set_desired,
            held_other=held_other,
            idle_target=decision.target,
        )
        if plan.capped:
            log.warning("pool capped by MaxSize", extra={"wanted": plan.wanted, "max_size": group.max_size})
        converged = upkeep.converge(self, upkeep.converging(view), now=now) if converge else 0
        return {
            "rebalanced": True,
            "idle_target": decision.target,
            "policy_reason": decision.reason,
            "target": plan.target,
            "wanted": plan.wanted,
            "capped": plan.capped,
            "set_desired": set_desired,
            "terminated": [m.instance_id for m in claimed],
            "leases_expired": expired,
            "unready_replaced": replaced,
            "recycled": recycled,
            "converged": converged,
        }

    @staticmethod
    def _occupying(view: PoolView) -> int:
        """Machines in the group that are not on their way out (what a desired capacity covers)."""
        return len(view.machines) - view.count_of(MachineState.RELEASING)

    def _terminate(self, machine: Machine, *, decrement: bool, reason: str, paused: bool | None = None) -> None:
        """Ask AWS to terminate a released machine, and record it (``terminated``, with ``reason``).

        Paused: the machine stays releasing, and resume terminates it (tasks.pool.operations.resume).
        """
        if self.store.group().paused if paused is None else paused:
            log.info("paused: termination deferred until resume", extra={"instance_id": machine.instance_id})
            return
        self.effects.terminate(machine.instance_id, decrement=decrement)
        self.store.append_events([events.terminated(machine, now=self._clock(), reason=reason)])

    # -- status -----------------------------------------------------------
    def resend_side_effects(self) -> int:
        """A restarted pool worker's first step: re-send now what a killed predecessor may have lost."""
        return upkeep.resend_side_effects(self)

    def status(self) -> dict[str, Any]:
        """A pool snapshot: counts by state, machines, group bounds, waiting callers, lost machines."""
        status = build_status(
            self.store,
            asg_name=self.config.asg_name,
            idle_target=self.config.idle_target,
            address=self.config.address,
            now=self._clock(),
        )
        status["economics"] = self.economics.status()
        return {**status, **operator_status(self, status)}
