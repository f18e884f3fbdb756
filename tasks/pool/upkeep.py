"""What every rebalance keeps up beside sizing the group: expired leases, machines that never became
ready (and the launch back-off), side effects AWS does not reflect yet, and the plan's events.

Functions of the PoolService they work for (tasks/pool/service.py): pure, on its ports.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from tasks.pool import events
from tasks.pool.model import AWAITING_READY, Machine, MachineState, PoolView, leases_expired, unready_overdue
from tasks.pool.planner import decrement_allowed
from tasks.pool.ports import GroupInfo

if TYPE_CHECKING:
    from tasks.pool.service import PoolService

log = logging.getLogger("warmpool.pool")

# How long an assignment may stay untagged/unprotected, or a released machine
# stay in the group, before rebalance asks AWS again (side effects are retried
# by the aws workers already; this covers jobs lost outright).
CONVERGE_AFTER_S = 15.0
# Launch back-off: after this many machines never became ready within the
# window, scale-up pauses, doubling from BACKOFF_BASE_S up to BACKOFF_MAX_S.
BACKOFF_AFTER = 3
BACKOFF_BASE_S = 60.0
BACKOFF_MAX_S = 900.0


def expire_leases(svc: PoolService, now: float, machines: Iterable[Machine]) -> list[str]:
    """Release machines whose lease ran out, exactly like ``release``."""
    released = []
    for m in leases_expired(machines, now=now):
        assert m.project_id is not None
        outcome = svc.store.release(m.project_id, now=now, lease_expired_before=now)
        if outcome.machine is None:
            continue  # touched or released in between
        log.warning("lease expired: machine released", extra={"project_id": m.project_id, "instance_id": m.instance_id})
        svc._terminate(
            outcome.machine, decrement=outcome.decrement, reason=events.REASON_LEASE_EXPIRED, paused=False
        )  # rebalance, which expires leases, does not run while paused
        svc.economics.terminated("lease_expired")
        released.append(m.project_id)
    return released


def replace_unready(svc: PoolService, now: float, machines: Iterable[Machine], group: GroupInfo) -> list[str]:
    """Terminate machines that never became ready; pause scale-up when launches keep failing."""
    overdue = unready_overdue(machines, now=now, timeout_s=svc.config.ready_timeout_s)
    overdue = [m for m in overdue if m.instance_id not in group.unadopted]  # not launched by warmpool
    if not overdue:
        return []
    backing_off = group.backoff_until > now
    # While backing off, do not let AWS replace them: that is the churn we stop.
    decrement = backing_off and decrement_allowed(group.bounds)
    detail = f"unready for {svc.config.ready_timeout_s:.0f}s"
    claimed = svc.store.claim_for_termination(
        [m.instance_id for m in overdue],
        now=now,
        detail=detail,
        expected=MachineState.PENDING,
        decrement=decrement,
        reason=events.REASON_UNREADY,
    )
    for m in claimed:
        log.warning("machine never became ready: replaced", extra={"instance_id": m.instance_id, "detail": m.detail})
        svc.effects.terminate(m.instance_id, decrement=decrement)
    svc.economics.terminated("unready", len(claimed))
    recent = svc.store.record_unready([m.instance_id for m in claimed], now=now)
    if claimed and recent >= BACKOFF_AFTER:
        pause = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (recent - BACKOFF_AFTER))
        reason = f"{recent} machines never became ready within {svc.config.ready_timeout_s:.0f}s in the last hour"
        svc.store.record_backoff(until=now + pause, reason=reason)
        log.error("launches keep failing: scale-up paused", extra={"pause_s": pause, "reason": reason})
        backoff = events.Event(events.LAUNCH_FAILED, now, reason=reason, extra={"backoff_s": pause})
        svc.store.append_events([backoff])
    return [m.instance_id for m in claimed]


def record_plan_events(
    svc: PoolService, group: GroupInfo, *, wanted: int, capped: bool, target: int, reason: str, now: float
) -> None:
    """``capped`` when MaxSize starts holding the pool below what is wanted; ``target_changed`` when the
    idle target differs from the one the last plan recorded (``group.idle_target``), with the policy's reason.
    """
    found: list[events.Event] = []
    if capped and not group.capped:
        extra = {"wanted": wanted, "max_size": group.max_size}
        found.append(events.Event(events.CAPPED, now, reason=f"capped by MaxSize={group.max_size}", extra=extra))
    if group.idle_target >= 0 and group.idle_target != target:
        extra = {"from": group.idle_target, "to": target, "wanted": wanted}
        found.append(events.Event(events.TARGET_CHANGED, now, reason=reason or "idle target", extra=extra))
    if found:
        svc.store.append_events(found)


def converge(
    svc: PoolService, machines: Iterable[Machine], *, now: float, overdue_after_s: float = CONVERGE_AFTER_S
) -> int:
    """Re-issue side effects AWS does not reflect yet (lost jobs, exhausted retries); probe readiness.

    Only what has waited ``overdue_after_s`` (a side effect in flight is not sent twice), except
    when a restarted pool worker asks with 0: its predecessor may have lost any of them.
    """
    bounds = svc.store.group().bounds
    count = 0
    candidates: list[tuple[str, str]] = []
    untagged: list[Machine] = []
    for m in machines:
        if m.state is MachineState.ASSIGNED:
            if not (m.tagged and m.protected) and now - m.since >= overdue_after_s:
                untagged.append(m)
                count += 1
        elif m.state is MachineState.RELEASING and (
            now - m.since >= overdue_after_s or m.detail.startswith("duplicate")
        ):
            svc.effects.terminate(m.instance_id, decrement=decrement_allowed(bounds))
            count += 1
        elif m.state is MachineState.PENDING and m.detail == AWAITING_READY and m.ip:
            candidates.append((m.instance_id, m.ip))
    if untagged:
        svc.effects.tag_assignments(untagged)
    if candidates:
        svc.effects.probe(candidates)
    return count


def converging(view: PoolView) -> list[Machine]:
    """The machines converge looks at: assigned (tags), releasing (terminations), pending (probes)."""
    states = (MachineState.ASSIGNED, MachineState.RELEASING, MachineState.PENDING)
    return [m for state in states for m in view.by_state(state)]


def resend_side_effects(svc: PoolService) -> int:
    """Re-send now the terminations of releasing machines and the tags of untagged assignments.

    A pool worker killed after its Lua transition, before its messages left, lost them;
    its redelivered job finds the transition done and sends nothing, and converge would
    wait CONVERGE_AFTER_S. Both are idempotent in AWS. Nothing while paused (resume sends
    them). Returns how many were re-sent.
    """
    group = svc.store.group()
    if not group.known or group.paused:
        return 0
    return converge(svc, converging(svc.store.view()), now=svc._clock(), overdue_after_s=0.0)
