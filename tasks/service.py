"""Use cases of the pool worker: assign, release, apply a refresh, rebalance, status.

The service composes the pure model with two ports: the StateStore and the
SideEffects sink (AWS work deferred to the ``aws`` queue). It never calls AWS
itself, which keeps AWS off the assign path (DESIGN.md invariant 8).
Results are the JSON dicts of the external contract.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from tasks.contract import (
    CODE_NO_CAPACITY,
    STATUS_ASSIGNED,
    STATUS_NOT_ASSIGNED,
    STATUS_RELEASED,
    failure,
    validate_project_id,
)
from tasks.model import AddressKind, GroupSnapshot, Machine, MachineState
from tasks.planner import decrement_allowed, plan_capacity
from tasks.store import StateStore

log = logging.getLogger("warmpool.pool")

# How long an assignment may stay untagged/unprotected, or a released machine
# stay in the group, before rebalance asks AWS again (side effects are retried
# by the aws workers already; this covers jobs lost outright).
CONVERGE_AFTER_S = 15.0


class SideEffects(Protocol):
    """Deferred work. Implementations: tasks.effects.CelerySideEffects, RecordingSideEffects."""

    def tag_assigned(self, machine: Machine) -> None: ...

    def terminate(self, instance_id: str, *, decrement: bool) -> None: ...

    def set_desired(self, desired: int) -> None: ...

    def rebalance(self) -> None: ...


@dataclass(frozen=True)
class PoolConfig:
    asg_name: str
    idle_target: int
    address: AddressKind


def iso_utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def assigned_result(machine: Machine) -> dict[str, Any]:
    return {
        "status": STATUS_ASSIGNED,
        "project_id": machine.project_id,
        "instance_id": machine.instance_id,
        "ip": machine.ip,
        "private_ip": machine.private_ip,
        "assigned_at": machine.assigned_at,
    }


class PoolService:
    """The pool worker's logic, independent of Celery."""

    def __init__(
        self,
        store: StateStore,
        effects: SideEffects,
        *,
        config: PoolConfig,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.effects = effects
        self.config = config
        self._clock = clock

    # -- assign / release -------------------------------------------------
    def assign(self, project_id: str) -> dict[str, Any]:
        """Hand the project an idle machine (the one it holds, if any)."""
        validate_project_id(project_id)
        now = self._clock()
        outcome = self.store.assign(
            project_id,
            now=now,
            assigned_at=iso_utc(now),
            idle_target=self.config.idle_target,
        )
        if outcome.rebalance:
            self.effects.rebalance()
        if outcome.machine is None:
            group = self.store.group()
            capped = group.capped or (group.known and group.desired_capacity >= group.max_size)
            why = f"capped by MaxSize={group.max_size}" if capped else "scale-up requested"
            return failure(
                CODE_NO_CAPACITY,
                f"no idle machine in {self.config.asg_name} ({why})",
                project_id=project_id,
                capped=capped,
                max_size=group.max_size,
            )
        if outcome.new:
            self.effects.tag_assigned(outcome.machine)
        return assigned_result(outcome.machine)

    def release(self, project_id: str) -> dict[str, Any]:
        """Take the project's machine back: terminate it and let the buffer refill."""
        validate_project_id(project_id)
        outcome = self.store.release(project_id, now=self._clock())
        if outcome.machine is None:
            return {"status": STATUS_NOT_ASSIGNED, "project_id": project_id}
        self.effects.terminate(outcome.machine.instance_id, decrement=outcome.decrement)
        if outcome.rebalance:
            self.effects.rebalance()
        return {
            "status": STATUS_RELEASED,
            "project_id": project_id,
            "instance_id": outcome.machine.instance_id,
        }

    # -- refresh / rebalance ----------------------------------------------
    def apply_snapshot(self, snapshot: GroupSnapshot) -> dict[str, Any]:
        """Fold a refresh into the state, then rebalance and converge side effects."""
        now = self._clock()
        rec = self.store.apply_snapshot(snapshot, kind=self.config.address, now=now)
        if rec is None:
            return {"applied": False, "reason": "stale snapshot"}
        for lost in rec.lost:
            log.warning(
                "assigned machine lost",
                extra={
                    "project_id": lost.project_id,
                    "instance_id": lost.instance_id,
                    "reason": lost.reason,
                },
            )
        for m in rec.restored:
            log.info(
                "assignment restored from tags",
                extra={"project_id": m.project_id, "instance_id": m.instance_id},
            )
        for m in rec.duplicates:
            log.warning(
                "duplicate claim retired",
                extra={"instance_id": m.instance_id, "detail": m.detail},
            )
        summary = self.rebalance(converge=True)
        return {
            "applied": True,
            "instances": len(snapshot.instances),
            "lost": [x.to_json() for x in rec.lost],
            "restored": len(rec.restored),
            **summary,
        }

    def record_refresh_error(self, message: str) -> dict[str, Any]:
        log.error("refresh failed", extra={"error": message})
        self.store.record_refresh_error(message, now=self._clock())
        return {"applied": False, "reason": message}

    def rebalance(self, *, converge: bool = False) -> dict[str, Any]:
        """Resize toward assigned + idle target; terminate surplus idle machines by name."""
        self.store.rebalance_started()
        group = self.store.group()
        if not group.known:
            return {"rebalanced": False, "reason": "group not observed yet"}
        view = self.store.view()
        plan = plan_capacity(view, group.bounds, idle_target=self.config.idle_target)
        now = self._clock()
        if plan.set_desired is not None:
            self.effects.set_desired(plan.set_desired)
        claimed = self.store.claim_for_termination([m.instance_id for m in plan.terminate], now=now, detail="scale-in")
        for m in claimed:
            self.effects.terminate(m.instance_id, decrement=True)
        self.store.record_plan(wanted=plan.wanted, capped=plan.capped, desired_capacity=plan.set_desired)
        if plan.capped:
            log.warning(
                "pool capped by MaxSize",
                extra={"wanted": plan.wanted, "max_size": group.max_size},
            )
        converged = self._converge(view.machines.values(), now=now) if converge else 0
        return {
            "rebalanced": True,
            "target": plan.target,
            "wanted": plan.wanted,
            "capped": plan.capped,
            "set_desired": plan.set_desired,
            "terminated": [m.instance_id for m in claimed],
            "converged": converged,
        }

    def _converge(self, machines: Any, *, now: float) -> int:
        """Re-issue side effects AWS does not reflect yet (lost jobs, exhausted retries)."""
        bounds = self.store.group().bounds
        count = 0
        for m in machines:
            overdue = now - m.since >= CONVERGE_AFTER_S
            if m.state is MachineState.ASSIGNED and not (m.tagged and m.protected) and overdue:
                self.effects.tag_assigned(m)
                count += 1
            elif m.state is MachineState.RELEASING and (overdue or m.detail.startswith("duplicate")):
                self.effects.terminate(m.instance_id, decrement=decrement_allowed(bounds))
                count += 1
        return count

    # -- status -----------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """A pool snapshot: counts by state, machines, group bounds, lost machines."""
        view = self.store.view()
        group = self.store.group()
        now = self._clock()
        machines = sorted(view.machines.values(), key=lambda m: (m.state.value, m.instance_id))
        return {
            "asg_name": self.config.asg_name,
            "idle_target": self.config.idle_target,
            "address": self.config.address.value,
            "counts": view.counts(),
            "group": {
                "min_size": group.min_size,
                "max_size": group.max_size,
                "desired_capacity": group.desired_capacity,
                "wanted": group.wanted,
                "capped": group.capped,
            },
            "refreshed_at": iso_utc(group.refreshed_at) if group.refreshed_at else None,
            "refresh_age_s": round(now - group.refreshed_at, 3) if group.refreshed_at else None,
            "refresh_error": group.refresh_error or None,
            "lost_total": group.lost_total,
            "lost": [{**x.to_json(), "lost_at": iso_utc(x.lost_at)} for x in self.store.lost(limit=20)],
            "machines": [
                {
                    "instance_id": m.instance_id,
                    "state": m.state.value,
                    "project_id": m.project_id,
                    "ip": m.ip,
                    "private_ip": m.private_ip,
                    "assigned_at": m.assigned_at,
                    "since": iso_utc(m.since),
                    "detail": m.detail,
                    "tagged": m.tagged,
                    "protected": m.protected,
                }
                for m in machines
            ],
        }
