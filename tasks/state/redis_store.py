"""RedisStore: the StateStore port (tasks.pool.ports) on Redis.

The store is the only place pool state lives between jobs. Every transition
that touches more than one key is atomic: the hot ones (assign, release,
scale-in claim, touch, readiness, waiters) are Lua scripts in
``tasks/state/lua``; applying a refresh snapshot runs the pure
``tasks.pool.reconcile.reconcile`` under WATCH/MULTI. Key names and the schema:
``tasks.state.keys``.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

import redis

from tasks.errors import StoreUnavailable
from tasks.pool.events import (
    EVENT_FIELD,
    REASON_RELEASE,
    REASON_SURPLUS,
    REASON_WITHDRAWN,
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
    iso_utc,
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
from tasks.state.connect import state_client
from tasks.state.keys import (
    DEAD_LETTER_KEEP,
    EVENTS_KEEP,
    LOST_KEEP,
    REFRESH_SOON_MS,
    TOP_UP_COALESCE_MS,
    UNREADY_WINDOW_S,
    WITHDRAWN_KEEP_S,
    PoolKeys,
)


def _load_script(name: str) -> str:
    return resources.files("tasks.state").joinpath("lua", name).read_text(encoding="utf-8")


def _group_from_hash(raw: dict[str, str]) -> GroupInfo:
    def num(key: str) -> float:
        try:
            return float(raw.get(key) or 0)
        except ValueError:
            return 0.0

    return GroupInfo(
        min_size=int(num("min_size")),
        max_size=int(num("max_size")),
        desired_capacity=int(num("desired_capacity")),
        observed_at=num("observed_at"),
        refreshed_at=num("refreshed_at"),
        refresh_error=raw.get("refresh_error", ""),
        refresh_error_at=num("refresh_error_at"),
        lost_total=int(num("lost_total")),
        wanted=int(num("wanted")),
        capped=raw.get("capped") == "1",
        unready_total=int(num("unready_total")),
        backoff_until=num("backoff_until"),
        backoff_reason=raw.get("backoff_reason", ""),
        refresh_duration_s=num("refresh_duration_s"),
        held_other=int(num("held_other")),
        epoch=raw.get("epoch", ""),
        epoch_confirmed=raw.get("epoch_confirmed") == "1",
        lost_at=num("lost_at"),
        applied_seq=int(num("applied_seq")),
        idle_target=int(num("idle_target")) if "idle_target" in raw else -1,
        paused_at=num("paused_at"),
        unadopted=tuple(json.loads(raw.get("unadopted") or "[]")),
        recycle_before=num("recycle_before"),
        recycle_version=raw.get("recycle_version", ""),
    )


class RedisStore:
    """StateStore on Redis (``WARMPOOL_REDIS_URL``)."""

    def __init__(self, client: redis.Redis, asg_name: str) -> None:
        self._r = client
        self.keys = PoolKeys.for_group(asg_name)
        self._assign = client.register_script(_load_script("assign.lua"))
        self._release = client.register_script(_load_script("release.lua"))
        self._claim = client.register_script(_load_script("claim.lua"))
        self._touch = client.register_script(_load_script("touch.lua"))
        self._mark_ready = client.register_script(_load_script("mark_ready.lua"))
        self._add_waiter = client.register_script(_load_script("add_waiter.lua"))
        self._release_quarantine = client.register_script(_load_script("release_quarantine.lua"))
        self._withdraw = client.register_script(_load_script("withdraw.lua"))
        self._adopt = client.register_script(_load_script("adopt.lua"))

    @classmethod
    def from_url(cls, url: str, asg_name: str, *, sentinel_master: str = "mymaster") -> RedisStore:
        """The store of pool ``asg_name`` (its namespace) at ``url`` (tasks/state/connect.py: Sentinel too)."""
        client = state_client(
            url,
            master_name=sentinel_master,
            decode_responses=True,
            socket_timeout=5,
            socket_connect_timeout=5,
            health_check_interval=30,
        )
        return cls(client, asg_name)

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailable(f"state store unreachable: {exc}") from exc

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
        k = self.keys
        kind, raw, flag, *rest = self._call(
            self._assign,
            keys=[k.machines, k.idle, k.projects, k.top_up, k.leases, k.withdrawn, k.events, k.group],
            args=[
                project_id,
                repr(now),
                assigned_at,
                idle_target,
                TOP_UP_COALESCE_MS,
                repr(float(lease_s)),
                request_id,
                iso_utc(now),
                EVENTS_KEEP,
            ],
        )
        machine = Machine.from_json(json.loads(raw)) if raw else None
        return AssignOutcome(
            machine=machine,
            new=kind == "new",
            top_up=bool(flag),
            withdrawn=kind == "withdrawn",
            paused=bool(rest and rest[0]),
        )

    def release(
        self,
        project_id: str,
        *,
        now: float,
        lease_expired_before: float | None = None,
        reason: str = REASON_RELEASE,
    ) -> ReleaseOutcome:
        return self._release_once(
            project_id, now=now, lease_expired_before=lease_expired_before, granted_to="", reason=reason
        )

    def _release_once(
        self, project_id: str, *, now: float, lease_expired_before: float | None, granted_to: str, reason: str
    ) -> ReleaseOutcome:
        k = self.keys
        expired = "" if lease_expired_before is None else repr(lease_expired_before)
        reply = self._call(
            self._release,
            keys=[k.machines, k.idle, k.projects, k.group, k.top_up, k.leases, k.events],
            args=[project_id, repr(now), TOP_UP_COALESCE_MS, expired, granted_to, iso_utc(now), EVENTS_KEEP, reason],
        )
        if reply[0] != "released":
            return ReleaseOutcome(machine=None, decrement=False, top_up=False)
        machine = Machine.from_json(json.loads(reply[1]))
        return ReleaseOutcome(
            machine=machine, decrement=bool(reply[2]), top_up=bool(reply[3]), paused=len(reply) > 4 and bool(reply[4])
        )

    def withdraw(self, request_id: str, project_id: str, *, now: float) -> WithdrawOutcome:
        k = self.keys
        # Two scripts, safe in this order: withdraw.lua marks the request withdrawn
        # (no assign may grant it a machine after that), then release.lua gives back
        # the machine it was granted before, if any. The release runs even when the
        # waiter was found: a serve assigns before it removes the waiter it served.
        removed = int(
            self._call(
                self._withdraw,
                keys=[k.waiters, k.waiter_data, k.withdrawn],
                args=[request_id, project_id, repr(now), repr(now + WITHDRAWN_KEEP_S)],
            )
        )
        if removed < 0:
            return WithdrawOutcome(waiter_removed=False, machine=None, decrement=False, top_up=False, foreign=True)
        released = self._release_once(
            project_id, now=now, lease_expired_before=None, granted_to=request_id, reason=REASON_WITHDRAWN
        )
        return WithdrawOutcome(
            waiter_removed=removed == 1,
            machine=released.machine,
            decrement=released.decrement,
            top_up=released.top_up,
        )

    def touch(self, project_id: str, *, now: float, lease_s: float = 0.0) -> tuple[str, Machine | None]:
        k = self.keys
        reply = self._call(
            self._touch, keys=[k.machines, k.projects, k.leases], args=[project_id, repr(now), repr(float(lease_s))]
        )
        machine = Machine.from_json(json.loads(reply[1])) if len(reply) > 1 else None
        return str(reply[0]), machine

    def add_waiter(self, waiter: Waiter) -> bool:
        k = self.keys
        added = self._call(
            self._add_waiter,
            keys=[k.waiters, k.waiter_data, k.waiter_seq, k.withdrawn],
            args=[waiter.request_id, json.dumps(waiter.to_json())],
        )
        return bool(added)

    def waiters(self) -> list[Waiter]:
        k = self.keys
        ids = self._call(self._r.zrange, k.waiters, 0, -1)
        if not ids:
            return []
        raws = self._call(self._r.hmget, k.waiter_data, ids)
        return [Waiter.from_json(json.loads(raw)) for raw in raws if raw]

    def remove_waiter(self, request_id: str) -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.zrem(self.keys.waiters, request_id)
        pipe.hdel(self.keys.waiter_data, request_id)
        self._call(pipe.execute)

    def mark_ready(self, instance_ids: list[str], *, now: float) -> list[Machine]:
        if not instance_ids:
            return []
        k = self.keys
        raws = self._call(
            self._mark_ready,
            keys=[k.machines, k.idle, k.events],
            args=[repr(now), AWAITING_READY, iso_utc(now), EVENTS_KEEP, *instance_ids],
        )
        return [Machine.from_json(json.loads(r)) for r in raws]

    def release_quarantine(self, instance_ids: list[str] | None, *, now: float) -> list[Machine]:
        if instance_ids is not None and not instance_ids:
            return []
        ids = ["*"] if instance_ids is None else instance_ids
        raws = self._call(
            self._release_quarantine, keys=[self.keys.machines], args=[repr(now), RELEASED_FROM_QUARANTINE, *ids]
        )
        return [Machine.from_json(json.loads(r)) for r in raws]

    def record_unready(self, instance_ids: list[str], *, now: float) -> int:
        k = self.keys
        pipe = self._r.pipeline(transaction=True)
        if instance_ids:
            pipe.zadd(k.unready, {iid: now for iid in instance_ids})
            pipe.hincrby(k.group, "unready_total", len(instance_ids))
        pipe.zremrangebyscore(k.unready, "-inf", now - UNREADY_WINDOW_S)
        pipe.zcard(k.unready)
        recent: int = self._call(pipe.execute)[-1]
        return recent

    def record_backoff(self, *, until: float, reason: str) -> None:
        mapping = {"backoff_until": repr(until), "backoff_reason": reason[:300]}
        self._call(self._r.hset, self.keys.group, mapping=mapping)

    def record_refresh_stats(self, stats: RefreshStats) -> None:
        k = self.keys
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(k.group, "refresh_duration_s", repr(stats.duration_s))
        for action, n in stats.aws_calls.items():
            pipe.hincrby(k.aws_calls, action, n)
        for action, n in stats.aws_errors.items():
            pipe.hincrby(k.aws_errors, action, n)
        self._call(pipe.execute)

    def aws_stats(self) -> tuple[dict[str, int], dict[str, int]]:
        pipe = self._r.pipeline(transaction=False)
        pipe.hgetall(self.keys.aws_calls)
        pipe.hgetall(self.keys.aws_errors)
        calls, errors = self._call(pipe.execute)
        return {k: int(v) for k, v in calls.items()}, {k: int(v) for k, v in errors.items()}

    def request_refresh_soon(self) -> bool:
        return bool(self._call(self._r.set, self.keys.refresh_soon, "1", nx=True, px=REFRESH_SOON_MS))

    def view(self) -> PoolView:
        pipe = self._r.pipeline(transaction=True)
        pipe.hgetall(self.keys.machines)
        pipe.hgetall(self.keys.projects)
        machines_raw, projects = self._call(pipe.execute)
        return _view_from(machines_raw, projects)

    def group(self) -> GroupInfo:
        return _group_from_hash(self._call(self._r.hgetall, self.keys.group))

    def next_refresh_seq(self) -> int:
        seq: int = self._call(self._r.incr, self.keys.refresh_seq)
        return seq

    def apply_snapshot(
        self,
        snapshot: GroupSnapshot,
        *,
        kind: AddressKind,
        now: float,
        require_ready_check: bool = False,
        new_epoch: str | None = None,
    ) -> Reconciliation | SnapshotRefused:
        options = {"kind": kind, "now": now, "require_ready_check": require_ready_check}
        for _attempt in range(20):
            try:
                rec: Reconciliation | SnapshotRefused = self._call(
                    self._apply_once, snapshot, new_epoch=new_epoch, **options
                )
                return rec
            except redis.WatchError:
                continue  # an assign/release landed between our read and write: redo
        raise StoreUnavailable("state kept changing while applying a snapshot (20 attempts)")

    def _apply_once(
        self,
        snapshot: GroupSnapshot,
        *,
        kind: AddressKind,
        now: float,
        require_ready_check: bool,
        new_epoch: str | None,
    ) -> Reconciliation | SnapshotRefused:
        k = self.keys
        pipe: Any
        with self._r.pipeline(transaction=True) as pipe:
            # Race guarded: an assign or release between reading the state and
            # writing the reconciliation would be overwritten, and so would a
            # newer snapshot applied in between; WATCH aborts then. refresh_seq
            # is not watched: it only grows, and a seq issued meanwhile is
            # above this snapshot's, which stays in order.
            pipe.watch(k.machines, k.projects, k.group)
            group = _group_from_hash(pipe.hgetall(k.group))
            refused = snapshot_out_of_order(
                snapshot.seq, applied=group.applied_seq, issued=int(pipe.get(k.refresh_seq) or 0)
            )
            if refused is not None:
                pipe.unwatch()
                return refused
            recovery = next_recovery(
                group.recovery,
                known=group.known,
                snapshot_epoch=snapshot.epoch_tag,
                new_epoch=new_epoch or uuid.uuid4().hex,
                now=now,
            )
            view = _view_from(pipe.hgetall(k.machines), pipe.hgetall(k.projects))
            rec = reconcile(
                view, snapshot, kind=kind, now=now, require_ready_check=require_ready_check, recovery=recovery
            )
            pipe.multi()
            _write_reconciliation(pipe, k, rec)
            for event in snapshot_events(view, rec, now=now):  # in the same MULTI: no change unrecorded
                _xadd(pipe, k, event)
            pipe.hset(
                k.group,
                mapping={
                    "min_size": snapshot.min_size,
                    "max_size": snapshot.max_size,
                    "desired_capacity": snapshot.desired_capacity,
                    "observed_at": repr(snapshot.observed_at),
                    "refreshed_at": repr(now),
                    "refresh_error": "",
                    "epoch": recovery.epoch,
                    "epoch_confirmed": "1" if recovery.confirmed else "0",
                    "lost_at": repr(recovery.lost_at),
                    "applied_seq": snapshot.seq or group.applied_seq,
                },
            )
            pipe.execute()
            return rec

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
        if not instance_ids:
            return []
        k = self.keys
        args = [repr(now), detail, expected.value, "1" if decrement else "0", iso_utc(now), EVENTS_KEEP, reason]
        raws = self._call(self._claim, keys=[k.machines, k.idle, k.group, k.events], args=[*args, *instance_ids])
        return [Machine.from_json(json.loads(r)) for r in raws]

    def record_plan(
        self,
        *,
        wanted: int,
        capped: bool,
        desired_capacity: int | None,
        held_other: int,
        idle_target: int | None = None,
    ) -> None:
        mapping: dict[str, Any] = {"wanted": wanted, "capped": "1" if capped else "0", "held_other": held_other}
        if desired_capacity is not None:
            mapping["desired_capacity"] = desired_capacity
        if idle_target is not None:
            mapping["idle_target"] = idle_target
        self._call(self._r.hset, self.keys.group, mapping=mapping)

    def record_refresh_error(self, message: str, *, now: float) -> None:
        self._call(
            self._r.hset,
            self.keys.group,
            mapping={"refresh_error": message[:500], "refresh_error_at": repr(now)},
        )

    def lost(self, *, limit: int = 20) -> list[LostMachine]:
        raws = self._call(self._r.lrange, self.keys.lost, 0, max(0, limit - 1))
        return [LostMachine(**json.loads(r)) for r in raws]

    def request_top_up(self) -> bool:
        return bool(self._call(self._r.set, self.keys.top_up, "1", nx=True, px=TOP_UP_COALESCE_MS))

    def clear_top_up_request(self) -> None:
        self._call(self._r.delete, self.keys.top_up)

    def assigned_count(self) -> int:
        count: int = self._call(self._r.hlen, self.keys.projects)
        return count

    def record_dead_letter(self, letter: DeadLetter) -> None:
        k = self.keys
        pipe = self._r.pipeline(transaction=True)
        pipe.lpush(k.dead_letters, json.dumps(letter.to_json()))
        pipe.ltrim(k.dead_letters, 0, DEAD_LETTER_KEEP - 1)
        pipe.hincrby(k.dead_reasons, letter.reason, 1)
        self._call(pipe.execute)

    def dead_letters(self, *, limit: int = 20) -> list[DeadLetter]:
        if limit <= 0:
            return []
        raws = self._call(self._r.lrange, self.keys.dead_letters, 0, max(0, limit - 1))
        return [DeadLetter.from_json(json.loads(r)) for r in raws]

    def dead_letter_counts(self) -> dict[str, int]:
        counts = self._call(self._r.hgetall, self.keys.dead_reasons)
        return {reason: int(n) for reason, n in counts.items()}

    def reset(self) -> None:
        self._call(self._r.delete, *self.keys.all())

    # -- events (tasks.pool.events) ----------------------------------------
    def append_events(self, events: Sequence[Event]) -> None:
        if not events:
            return
        pipe = self._r.pipeline(transaction=True)
        for event in events:
            _xadd(pipe, self.keys, event)
        self._call(pipe.execute)

    def update_group(self, fields: Mapping[str, str], events: Sequence[Event] = ()) -> None:
        """Set operator fields of the group record (paused_at, unadopted) and record their events, in one MULTI."""
        pipe = self._r.pipeline(transaction=True)
        if fields:
            mapping: dict[Any, Any] = dict(fields)
            pipe.hset(self.keys.group, mapping=mapping)
        for event in events:
            _xadd(pipe, self.keys, event)
        self._call(pipe.execute)

    def adopt(
        self, assignments: Mapping[str, str], *, now: float, assigned_at: str, dry_run: bool = False
    ) -> tuple[list[Machine], str | None]:
        k = self.keys
        pairs = [x for project, iid in assignments.items() for x in (project, iid)]
        args = [repr(now), assigned_at, iso_utc(now), EVENTS_KEEP, "1" if dry_run else "0", *pairs]
        reply = self._call(self._adopt, keys=[k.machines, k.idle, k.projects, k.events], args=args)
        if reply[0] == "refused":
            return [], str(reply[1])
        return [Machine.from_json(json.loads(r)) for r in reply[1:]], None

    def events(self, *, after: str = "0-0", count: int = 100) -> list[StoredEvent]:
        """Up to ``count`` events with ids above ``after`` (oldest first); "0-0": from the oldest kept."""
        check_event_id(after)
        if count <= 0:
            return []
        entries = self._call(self._r.xrange, self.keys.events, min=f"({after}", max="+", count=count)
        return [decode(eid, fields.get(EVENT_FIELD)) for eid, fields in entries]


@functools.lru_cache(maxsize=20_000)
def _decode_record(raw: str) -> Machine:
    # Records are immutable strings and nearly all are byte-identical between
    # two reads of the pool, so every full read after the first is dictionary
    # lookups instead of JSON decoding (Machine is frozen: sharing is safe).
    return Machine.from_json(json.loads(raw))


def _view_from(machines_raw: dict[str, str], projects: dict[str, str]) -> PoolView:
    machines = {iid: _decode_record(raw) for iid, raw in machines_raw.items()}
    return PoolView(machines=machines, projects=dict(projects))


def _xadd(pipe: Any, k: PoolKeys, event: Event) -> None:
    pipe.xadd(k.events, {EVENT_FIELD: event.encode()}, maxlen=EVENTS_KEEP, approximate=True)


def _write_reconciliation(pipe: Any, k: PoolKeys, rec: Reconciliation) -> None:
    for m in rec.upserts:
        pipe.hset(k.machines, m.instance_id, json.dumps(m.to_json()))
        if m.state is MachineState.IDLE:
            pipe.zadd(k.idle, {m.instance_id: int(m.since * 1000)}, nx=True)
        else:
            pipe.zrem(k.idle, m.instance_id)
    if rec.removals:
        pipe.hdel(k.machines, *rec.removals)
        pipe.zrem(k.idle, *rec.removals)
    if rec.project_dels:
        pipe.hdel(k.projects, *rec.project_dels)
    if rec.project_sets:
        pipe.hset(k.projects, mapping=dict(rec.project_sets))
    if rec.lost:
        pipe.lpush(k.lost, *[json.dumps(x.to_json()) for x in rec.lost])
        pipe.ltrim(k.lost, 0, LOST_KEEP - 1)
        pipe.hincrby(k.group, "lost_total", len(rec.lost))
