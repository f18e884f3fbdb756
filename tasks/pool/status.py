"""The pool status snapshot (the ``status`` job's result and ``GET /v1/pool``)."""

from __future__ import annotations

from typing import Any

from tasks.pool.model import AddressKind, Machine, iso_utc
from tasks.pool.ports import StateStore


def _machine_json(m: Machine) -> dict[str, Any]:
    return {
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
        "lease_expires_at": iso_utc(m.lease_expires_at) if m.lease_expires_at else None,
        "health": m.health or None,
    }


def build_status(
    store: StateStore, *, asg_name: str, idle_target: int, address: AddressKind, now: float
) -> dict[str, Any]:
    """Counts by state, every machine, group bounds, waiting callers, refresh health, lost machines."""
    view = store.view()
    group = store.group()
    waiters = [w for w in store.waiters() if w.deadline > now]
    machines = sorted(view.machines.values(), key=lambda m: (m.state.value, m.instance_id))
    backoff = group.backoff_until > now
    aws_calls, aws_errors = store.aws_stats()
    dead_reasons = store.dead_letter_counts()
    return {
        "asg_name": asg_name,
        "idle_target": idle_target,
        "address": address.value,
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
        "refresh_duration_s": round(group.refresh_duration_s, 4),
        "aws_calls": aws_calls,
        "aws_errors": aws_errors,
        "lost_total": group.lost_total,
        "lost": [{**x.to_json(), "lost_at": iso_utc(x.lost_at)} for x in store.lost(limit=20)],
        "unready_total": group.unready_total,
        "recovery": {
            "epoch": group.epoch or None,
            "epoch_confirmed": group.epoch_confirmed,
            "state_lost_at": iso_utc(group.lost_at) if group.lost_at else None,
        },
        # Messages the workers set aside instead of running (tasks.worker.screening); the
        # records themselves are in the store's dead-letter list (one read fewer per status).
        "dead_letters_total": sum(dead_reasons.values()),
        "dead_letters_by_reason": dead_reasons,
        "scale_up_paused_until": iso_utc(group.backoff_until) if backoff else None,
        "scale_up_paused_reason": group.backoff_reason if backoff else None,
        "waiting": [
            {"project_id": w.project_id, "since": iso_utc(w.arrived), "deadline": iso_utc(w.deadline)} for w in waiters
        ],
        "machines": [_machine_json(m) for m in machines],
    }
