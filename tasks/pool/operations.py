"""The operator's use cases on a pool: pause / resume, force-release, adopt (docs/operations.md).

They run on the pool worker like every job of the pool (one serialized worker per pool), so
their read-then-write of the group record cannot interleave with another job of the pool;
the machine transitions among them are Lua scripts (adopt.lua, release.lua) all the same.

- pause: no launch, termination or capacity change (and no tag) until resume; assigns from
  idle machines and releases keep working, released machines wait (releasing) for resume.
- resume: terminates what was released meanwhile and rebalances.
- force_release: an operator takes a project's machine back; audited (event + log).
- adopt: assignments made outside warmpool become warmpool's (tagged and protected);
  ``adopt_none``: the operator confirms that no machine found at the first start needs it.
- first start on a group (``hold_unadopted``): machines warmpool did not launch are never
  terminated until adopted or confirmed (``adopt --none``); status and logs say so.

Pure: standard library and the pool model only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tasks.contract import (
    CODE_BAD_REQUEST,
    PROJECT_ID_PATTERN,
    STATUS_NOT_ASSIGNED,
    STATUS_RELEASED,
    check_seconds,
    failure,
    is_instance_id,
)
from tasks.errors import InvalidRequest
from tasks.pool import events
from tasks.pool.model import Machine, MachineState, PoolView, iso_utc
from tasks.pool.planner import decrement_allowed
from tasks.pool.ports import GroupInfo
from tasks.pool.reconcile import Reconciliation

if TYPE_CHECKING:
    from tasks.pool.service import PoolService

log = logging.getLogger("warmpool.pool")
MAX_ADOPT = 10_000
MAX_RECYCLE_AGE_S = 366 * 86_400


def pause(svc: PoolService) -> dict[str, Any]:
    """Stop every AWS change of this pool until resume (idempotent)."""
    group = svc.store.group()
    if group.paused:
        return {"status": "paused", "paused": True, "since": iso_utc(group.paused_at), "changed": False}
    now = svc._clock()
    svc.store.update_group({"paused_at": repr(now)}, [events.Event(events.PAUSED, now, reason="operator")])
    log.warning("pool paused by an operator: no launch, termination or capacity change until resume")
    return {"status": "paused", "paused": True, "since": iso_utc(now), "changed": True}


def resume(svc: PoolService) -> dict[str, Any]:
    """Resume AWS changes: terminate the machines released while paused, then rebalance (idempotent)."""
    group = svc.store.group()
    if not group.paused:
        return {"status": "resumed", "paused": False, "changed": False, "terminated": []}
    now = svc._clock()
    paused_s = round(now - group.paused_at, 3)
    svc.store.update_group(
        {"paused_at": "0"}, [events.Event(events.RESUMED, now, reason="operator", extra={"paused_s": paused_s})]
    )
    # Released while paused (their termination was never sent); older ones are converge's (re-sent if due).
    deferred = [m for m in svc.store.view().by_state(MachineState.RELEASING) if m.since >= group.paused_at]
    bounds = svc.store.group().bounds
    for m in deferred:
        svc._terminate(m, decrement=decrement_allowed(bounds), reason=events.REASON_RELEASE, paused=False)
    log.warning("pool resumed by an operator", extra={"paused_s": paused_s, "terminating": len(deferred)})
    summary = svc.rebalance()
    return {
        "status": "resumed",
        "paused": False,
        "changed": True,
        "terminated": [m.instance_id for m in deferred],
        "rebalance": summary,
    }


def force_release(svc: PoolService, project_id: Any) -> dict[str, Any]:
    """An operator takes ``project_id``'s machine back (terminated as a release); recorded as such."""
    if not isinstance(project_id, str) or not PROJECT_ID_PATTERN.fullmatch(project_id):
        raise InvalidRequest(f"project id {str(project_id)[:60]!r} is not a project id")
    now = svc._clock()
    outcome = svc.store.release(project_id, now=now, reason=events.REASON_FORCE_RELEASE)
    if outcome.machine is None:
        return {"status": STATUS_NOT_ASSIGNED, "project_id": project_id}
    iid = outcome.machine.instance_id
    log.warning("machine force-released by an operator", extra={"project_id": project_id, "instance_id": iid})
    svc._terminate(
        outcome.machine, decrement=outcome.decrement, reason=events.REASON_FORCE_RELEASE, paused=outcome.paused
    )
    if outcome.top_up:
        svc.effects.top_up()
    return {"status": STATUS_RELEASED, "project_id": project_id, "instance_id": iid, "forced": True}


def recycle(svc: PoolService, *, older_than_s: Any = None, template_version: Any = None) -> dict[str, Any]:
    """Replace idle machines launched more than ``older_than_s`` ago, or not from ``template_version``.

    Gradual (``recycle_step``): one idle machine at a time, the next once no machine is pending;
    never an assigned one (those are replaced after their release, as every released machine).
    """
    if (older_than_s is None) == (template_version is None):
        raise InvalidRequest("recycle takes one of older_than_s and template_version")
    now = svc._clock()
    if older_than_s is not None:
        age_s = check_seconds(older_than_s, "older_than", high=MAX_RECYCLE_AGE_S)
        fields = {"recycle_before": repr(now - age_s), "recycle_version": ""}
    else:
        if not isinstance(template_version, str) or not 0 < len(template_version) <= 64:
            raise InvalidRequest("template_version must be a launch template version of 1-64 characters")
        fields = {"recycle_before": "0", "recycle_version": template_version}
    svc.store.update_group(fields)
    group = svc.store.group()
    view = svc.store.view()
    idle = [m.instance_id for m in view.by_state(MachineState.IDLE) if _stale(m, group)]
    assigned = [m.instance_id for m in view.by_state(MachineState.ASSIGNED) if _stale(m, group)]
    log.warning("recycle ordered by an operator", extra={**fields, "idle": len(idle), "assigned": len(assigned)})
    summary = [] if group.paused else recycle_step(svc, view, group, now=now)  # paused: after resume
    return {
        "status": "recycling" if idle else "nothing_to_recycle",
        "older_than_s": older_than_s,
        "template_version": template_version,
        "idle_to_replace": idle,
        "assigned_after_release": assigned,
        "replacing_now": summary,
    }


def _stale(m: Machine, group: GroupInfo) -> bool:
    if group.recycle_before > 0:
        return 0 < m.launched_at < group.recycle_before
    if group.recycle_version:
        return bool(m.template_version) and m.template_version != group.recycle_version
    return False


def recycle_step(svc: PoolService, view: PoolView, group: GroupInfo, *, now: float) -> list[str]:
    """One step of an ordered recycle (run by rebalance): replace one stale idle machine, if none is pending.

    Its termination keeps desired capacity (no decrement), so AWS launches the replacement;
    the next machine goes once that one is no longer pending. An order with no stale idle
    machine left is done (the assigned ones go when released, like every released machine).
    """
    if group.recycle_before <= 0 and not group.recycle_version:
        return []
    stale = [m for m in view.by_state(MachineState.IDLE) if _stale(m, group) and m.instance_id not in group.unadopted]
    if not stale:
        svc.store.update_group({"recycle_before": "0", "recycle_version": ""})
        log.warning("recycle done: no idle machine left to replace")
        return []
    if view.by_state(MachineState.PENDING):
        return []  # the last replacement is still coming up
    oldest = min(stale, key=lambda m: (m.launched_at, m.instance_id))
    claimed = svc.store.claim_for_termination(
        [oldest.instance_id], now=now, detail="recycle", decrement=False, reason=events.REASON_RECYCLE
    )
    for m in claimed:
        log.info("recycling an idle machine", extra={"instance_id": m.instance_id})
        svc.effects.terminate(m.instance_id, decrement=False)
    return [m.instance_id for m in claimed]


def check_assignments(assignments: Any) -> dict[str, str]:
    """A validated project -> instance mapping (one instance per project, one project per instance)."""
    if not isinstance(assignments, dict) or not assignments:
        raise InvalidRequest("adopt takes a non-empty mapping of project id -> instance id")
    if len(assignments) > MAX_ADOPT:
        raise InvalidRequest(f"adopt takes at most {MAX_ADOPT} assignments, got {len(assignments)}")
    seen: dict[str, str] = {}
    for project, iid in assignments.items():
        if not isinstance(project, str) or not PROJECT_ID_PATTERN.fullmatch(project):
            raise InvalidRequest(f"project id {str(project)[:60]!r} is not a project id")
        if not isinstance(iid, str) or not is_instance_id(iid):
            raise InvalidRequest(f"instance id {str(iid)[:60]!r} of project {project} is not an instance id (i-...)")
        if iid in seen:
            raise InvalidRequest(f"instance {iid} is given to both {seen[iid]} and {project}")
        seen[iid] = project
    return dict(assignments)


def adopt(svc: PoolService, assignments: Any, *, dry_run: bool = False) -> dict[str, Any]:
    """Make machines assigned outside warmpool the projects' here: all or none, tagged and protected."""
    pairs = check_assignments(assignments)
    now = svc._clock()
    machines, refused = svc.store.adopt(pairs, now=now, assigned_at=iso_utc(now), dry_run=dry_run)
    if refused is not None:
        return failure(CODE_BAD_REQUEST, f"nothing adopted: {refused}", adopted=[])
    adopted = [{"project_id": m.project_id, "instance_id": m.instance_id, "was": m.state.value} for m in machines]
    if dry_run:
        return {"status": "would_adopt", "dry_run": True, "adopted": adopted}
    held = svc.store.group().unadopted
    remaining = [i for i in held if i not in pairs.values()]
    if len(remaining) != len(held):
        svc.store.update_group({"unadopted": json.dumps(remaining)})
    if not svc.store.group().paused:  # paused: the first converge after resume tags them
        svc.effects.tag_assignments([m for m in machines if not (m.tagged and m.protected)])
    log.warning("assignments adopted", extra={"count": len(machines), "still_unadopted": len(remaining)})
    return {"status": "adopted", "dry_run": False, "adopted": adopted, "unadopted": remaining}


def adopt_none(svc: PoolService) -> dict[str, Any]:
    """The operator confirms that no machine found at the first start needs adopting: the hold ends."""
    held = svc.store.group().unadopted
    now = svc._clock()
    confirm = events.Event(events.ADOPTED, now, reason="none", extra={"released_from_hold": len(held)})
    svc.store.update_group({"unadopted": "[]"}, [confirm])
    log.warning("adoption confirmed: no machine needs adopting", extra={"released_from_hold": len(held)})
    return {"status": "adopted", "dry_run": False, "adopted": [], "unadopted": [], "released_from_hold": list(held)}


def hold_unadopted(svc: PoolService, rec: Reconciliation) -> None:
    """First start on a group: hold every machine found (warmpool did not launch it) from termination."""
    found = sorted(m.instance_id for m in rec.upserts if m.state is not MachineState.ASSIGNED)
    if not found:
        return
    svc.store.update_group({"unadopted": json.dumps(found)})
    log.warning(
        "first start on this group: machines warmpool did not launch are never terminated until adopted "
        "(warmpool adopt FILE) or confirmed (warmpool adopt --none)",
        extra={"count": len(found), "instance_ids": found[:50]},
    )


def operator_status(svc: PoolService, status: Mapping[str, Any]) -> dict[str, Any]:
    """What status adds for operators: paused (since), unadopted machines, dry run plans."""
    group = svc.store.group()
    present = {m["instance_id"] for m in status.get("machines", [])}
    unadopted = [i for i in group.unadopted if i in present]
    extra: dict[str, Any] = {
        "paused": group.paused,
        "paused_since": iso_utc(group.paused_at) if group.paused else None,
        "unadopted": {
            "count": len(unadopted),
            "instance_ids": unadopted[:100],
            "note": "not terminated until adopted (warmpool adopt FILE) or confirmed (warmpool adopt --none)"
            if unadopted
            else None,
        },
        "dry_run": svc.config.dry_run,
    }
    if svc.config.dry_run:
        counts = status.get("counts", {})
        running = sum(counts.get(s, 0) for s in ("assigned", "idle", "pending", "quarantined", "foreign"))
        target = max(group.min_size, min(group.max_size, group.wanted))
        extra["would_launch"] = max(0, target - running)
        extra["would_terminate"] = [m["instance_id"] for m in status.get("machines", []) if m["state"] == "releasing"]
    return extra
