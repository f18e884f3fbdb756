"""Folding a refresh into the pool: snapshots (checked, ordered, reconciled), readiness, refresh errors,
and an operator's release of quarantined machines.

Functions of the PoolService they work for (tasks/pool/service.py): pure, on its ports.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tasks.contract import CODE_WRONG_GROUP, failure, group_mismatch
from tasks.pool.model import GroupSnapshot, MachineState
from tasks.pool.operations import hold_unadopted
from tasks.pool.ports import RefreshStats, SnapshotRefused
from tasks.pool.reconcile import Reconciliation

if TYPE_CHECKING:
    from tasks.pool.service import PoolService

log = logging.getLogger("warmpool.pool")

# A snapshot dated further than this from the pool worker's clock is refused
# (a broken clock, or a snapshot that waited in the queue that long). Within
# it, clocks play no part: snapshots are ordered by their sequence number.
MAX_SNAPSHOT_SKEW_S = 300.0


def _absurd_date(observed_at: float, *, now: float) -> str | None:
    """Why a snapshot read at ``observed_at`` (its aws worker's clock) cannot be right at ``now``, or None."""
    if not math.isfinite(observed_at) or observed_at <= 0:
        return f"snapshot dated {observed_at!r}: not a time"
    skew = observed_at - now
    if skew > MAX_SNAPSHOT_SKEW_S:
        return (
            f"snapshot dated {skew:.0f}s ahead of the pool worker's clock (more than {MAX_SNAPSHOT_SKEW_S:.0f}s): "
            "the clock of the aws worker that read it is wrong; check its NTP"
        )
    if -skew > MAX_SNAPSHOT_SKEW_S:
        return (
            f"snapshot dated {-skew:.0f}s before the pool worker's clock (more than {MAX_SNAPSHOT_SKEW_S:.0f}s): "
            "too old to trust, or a clock is wrong; check NTP on the aws and pool workers"
        )
    return None


def apply_snapshot(svc: PoolService, snapshot: GroupSnapshot, *, stats: RefreshStats | None = None) -> dict[str, Any]:
    """Fold a refresh into the state, serve waiters, rebalance and converge side effects.

    Refused, changing nothing and saying why in the log: a snapshot of another
    group (``wrong_group``), one dated absurdly far from this worker's clock, and
    one out of order (the store's rule: ordered by ``seq``, never by a clock).
    """
    if (mismatch := group_mismatch(snapshot.name, own=svc.config.asg_name)) is not None:
        log.error("snapshot refused: another group", extra={"group": snapshot.name[:255], "error": mismatch})
        return failure(CODE_WRONG_GROUP, mismatch, applied=False)
    now = svc._clock()
    if (absurd := _absurd_date(snapshot.observed_at, now=now)) is not None:
        log.error("snapshot refused: absurd date", extra={"seq": snapshot.seq, "error": absurd})
        svc.store.record_refresh_error(f"snapshot refused: {absurd}", now=now)
        return {"applied": False, "reason": absurd}
    if stats is not None:
        svc.store.record_refresh_stats(stats)
    before = svc.store.group()
    rec = svc.store.apply_snapshot(
        snapshot,
        kind=svc.config.address,
        now=now,
        require_ready_check=svc.config.require_ready_check,
        new_epoch=uuid.uuid4().hex,
    )
    if isinstance(rec, SnapshotRefused):
        log.warning(
            "snapshot discarded",
            extra={"seq": rec.seq, "applied_seq": rec.applied_seq, "issued_seq": rec.issued_seq, "why": rec.reason},
        )
        return {"applied": False, "reason": rec.reason}
    if not snapshot.seq:
        log.warning("snapshot without a sequence number applied in arrival order (an aws worker older than this)")
    log_changes(svc, rec)
    svc.economics.became_ready(rec.upserts, now=now)
    if svc.config.hold_unadopted and not before.known and not snapshot.epoch_tag:
        hold_unadopted(svc, rec)  # first start on this group (tasks.pool.operations)
    keep_continuity(svc, rec, snapshot)
    served = svc.serve_waiters()
    summary = svc.rebalance(converge=True)
    return {
        "applied": True,
        "instances": len(snapshot.instances),
        "lost": [x.to_json() for x in rec.lost],
        "restored": len(rec.restored),
        "served_waiters": served,
        **summary,
    }


def keep_continuity(svc: PoolService, rec: Reconciliation, snapshot: GroupSnapshot) -> None:
    recovery = rec.recovery
    if not recovery.confirmed and not svc.store.group().paused:
        # Until AWS carries the epoch, a loss of this state could not be told
        # from a first start: nothing untagged is handed out meanwhile.
        svc.effects.tag_group(recovery.epoch)
    elif snapshot.epoch_tag and snapshot.epoch_tag != recovery.epoch:
        log.warning(
            "the group's warmpool:epoch tag is not this state's: does another warmpool manage it?",
            extra={"tag": snapshot.epoch_tag, "epoch": recovery.epoch},
        )
    if recovery.lost_now:
        held = [m.instance_id for m in rec.upserts if m.state is MachineState.QUARANTINED]
        log.error(
            "pool state was lost: untagged machines quarantined until their tags land or an operator "
            "releases them (warmpool release-quarantined)",
            extra={"quarantined": len(held), "instance_ids": held[:50]},
        )


def log_changes(svc: PoolService, rec: Reconciliation) -> None:
    for lost in rec.lost:
        log.warning(
            "assigned machine lost",
            extra={"project_id": lost.project_id, "instance_id": lost.instance_id, "reason": lost.reason},
        )
    for m in rec.restored:
        log.info("assignment restored from tags", extra={"project_id": m.project_id, "instance_id": m.instance_id})
    for m in rec.duplicates:
        log.warning("duplicate claim retired", extra={"instance_id": m.instance_id, "detail": m.detail})
    for m in rec.turned_unhealthy:
        # The group replaces unhealthy instances (scale-in protection does not
        # stop that): the project will lose this machine and it is then
        # reported lost. The project keeps it until then; its callers see
        # the health in assign results and status.
        log.warning(
            "assigned machine unhealthy: AWS will replace it",
            extra={"project_id": m.project_id, "instance_id": m.instance_id},
        )


def release_quarantined(svc: PoolService, instance_ids: Sequence[str] | None) -> dict[str, Any]:
    """An operator vouches that these quarantined machines (None: all of them) are in nobody's use.

    They go back to pending and the next refresh makes them idle if ready;
    a machine that is not quarantined is left as it is.
    """
    ids = None if instance_ids is None else list(instance_ids)
    released = svc.store.release_quarantine(ids, now=svc._clock())
    for m in released:
        log.warning("released from quarantine by an operator", extra={"instance_id": m.instance_id})
    if released and svc.store.request_refresh_soon():
        svc.effects.refresh(delay_s=0.0)
    return {"status": "released_from_quarantine", "instance_ids": [m.instance_id for m in released]}


def mark_ready(svc: PoolService, instance_ids: list[str]) -> dict[str, Any]:
    """Readiness checks passed for these machines: make them idle and serve waiters."""
    now = svc._clock()
    ready = svc.store.mark_ready(instance_ids, now=now)
    svc.economics.became_ready(ready, now=now)
    served = svc.serve_waiters() if ready else 0
    return {"ready": [m.instance_id for m in ready], "served_waiters": served}


def record_refresh_error(svc: PoolService, message: str, *, stats: RefreshStats | None = None) -> dict[str, Any]:
    log.error("refresh failed", extra={"error": message})
    if stats is not None:
        svc.store.record_refresh_stats(stats)
    svc.store.record_refresh_error(message, now=svc._clock())
    return {"applied": False, "reason": message}
