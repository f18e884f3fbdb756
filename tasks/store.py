"""The state store port and its Redis implementation.

The store is the only place pool state lives between jobs. Every transition
that touches more than one key is atomic: the hot ones (assign, release,
scale-in claim) are Lua scripts in ``tasks/lua``; applying a refresh snapshot
runs the pure ``model.reconcile`` under WATCH/MULTI. Key names: ``tasks.keys``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol

import redis

from tasks.errors import StoreUnavailable
from tasks.keys import LOST_KEEP, REBALANCE_COALESCE_MS, PoolKeys
from tasks.model import (
    AddressKind,
    GroupSnapshot,
    LostMachine,
    Machine,
    MachineState,
    PoolView,
    Reconciliation,
    reconcile,
)
from tasks.planner import GroupBounds


@dataclass(frozen=True)
class AssignOutcome:
    machine: Machine | None  # None: no idle machine
    new: bool  # False when the project already held ``machine``
    rebalance: bool  # this caller should enqueue a rebalance


@dataclass(frozen=True)
class ReleaseOutcome:
    machine: Machine | None  # None: the project held nothing
    decrement: bool  # terminate with ShouldDecrementDesiredCapacity
    rebalance: bool


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

    @property
    def known(self) -> bool:
        return self.observed_at > 0

    @property
    def bounds(self) -> GroupBounds:
        return GroupBounds(self.min_size, self.max_size, self.desired_capacity)


class StateStore(Protocol):
    """Pool state. Implementations: RedisStore, tasks.memstore.InMemoryStore."""

    def assign(self, project_id: str, *, now: float, assigned_at: str, idle_target: int) -> AssignOutcome: ...

    def release(self, project_id: str, *, now: float) -> ReleaseOutcome: ...

    def view(self) -> PoolView: ...

    def group(self) -> GroupInfo: ...

    def apply_snapshot(self, snapshot: GroupSnapshot, *, kind: AddressKind, now: float) -> Reconciliation | None: ...

    def claim_for_termination(self, instance_ids: list[str], *, now: float, detail: str) -> list[Machine]: ...

    def record_plan(self, *, wanted: int, capped: bool, desired_capacity: int | None) -> None: ...

    def record_refresh_error(self, message: str, *, now: float) -> None: ...

    def lost(self, *, limit: int = 20) -> list[LostMachine]: ...

    def request_rebalance(self) -> bool: ...

    def rebalance_started(self) -> None: ...

    def reset(self) -> None: ...


def _load_script(name: str) -> str:
    return resources.files("tasks").joinpath("lua", name).read_text(encoding="utf-8")


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
    )


class RedisStore:
    """StateStore on Redis (``WARMPOOL_REDIS_URL``)."""

    def __init__(self, client: redis.Redis, asg_name: str) -> None:
        self._r = client
        self.keys = PoolKeys.for_group(asg_name)
        self._assign = client.register_script(_load_script("assign.lua"))
        self._release = client.register_script(_load_script("release.lua"))
        self._claim = client.register_script(_load_script("claim.lua"))

    @classmethod
    def from_url(cls, url: str, asg_name: str) -> RedisStore:
        client = redis.Redis.from_url(
            url,
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

    def assign(self, project_id: str, *, now: float, assigned_at: str, idle_target: int) -> AssignOutcome:
        k = self.keys
        kind, raw, flag = self._call(
            self._assign,
            keys=[k.machines, k.idle, k.projects, k.rebalance],
            args=[
                project_id,
                repr(now),
                assigned_at,
                idle_target,
                REBALANCE_COALESCE_MS,
            ],
        )
        machine = Machine.from_json(json.loads(raw)) if raw else None
        return AssignOutcome(machine=machine, new=kind == "new", rebalance=bool(flag))

    def release(self, project_id: str, *, now: float) -> ReleaseOutcome:
        k = self.keys
        reply = self._call(
            self._release,
            keys=[k.machines, k.idle, k.projects, k.group, k.rebalance],
            args=[project_id, repr(now), REBALANCE_COALESCE_MS],
        )
        if reply[0] != "released":
            return ReleaseOutcome(machine=None, decrement=False, rebalance=False)
        machine = Machine.from_json(json.loads(reply[1]))
        return ReleaseOutcome(machine=machine, decrement=bool(reply[2]), rebalance=bool(reply[3]))

    def view(self) -> PoolView:
        pipe = self._r.pipeline(transaction=True)
        pipe.hgetall(self.keys.machines)
        pipe.hgetall(self.keys.projects)
        machines_raw, projects = self._call(pipe.execute)
        return _view_from(machines_raw, projects)

    def group(self) -> GroupInfo:
        return _group_from_hash(self._call(self._r.hgetall, self.keys.group))

    def apply_snapshot(self, snapshot: GroupSnapshot, *, kind: AddressKind, now: float) -> Reconciliation | None:
        for _attempt in range(20):
            try:
                rec: Reconciliation | None = self._call(self._apply_once, snapshot, kind=kind, now=now)
                return rec
            except redis.WatchError:
                continue  # an assign/release landed between our read and write: redo
        raise StoreUnavailable("state kept changing while applying a snapshot (20 attempts)")

    def _apply_once(self, snapshot: GroupSnapshot, *, kind: AddressKind, now: float) -> Reconciliation | None:
        k = self.keys
        pipe: Any
        with self._r.pipeline(transaction=True) as pipe:
            # Race guarded: an assign or release between reading the state and
            # writing the reconciliation would be overwritten; WATCH aborts then.
            pipe.watch(k.machines, k.projects, k.group)
            observed_at = float(pipe.hget(k.group, "observed_at") or 0)
            if snapshot.observed_at < observed_at:
                pipe.unwatch()
                return None  # an older refresh arrived late: newer truth is applied
            view = _view_from(pipe.hgetall(k.machines), pipe.hgetall(k.projects))
            rec = reconcile(view, snapshot, kind=kind, now=now)
            pipe.multi()
            _write_reconciliation(pipe, k, rec)
            pipe.hset(
                k.group,
                mapping={
                    "min_size": snapshot.min_size,
                    "max_size": snapshot.max_size,
                    "desired_capacity": snapshot.desired_capacity,
                    "observed_at": repr(snapshot.observed_at),
                    "refreshed_at": repr(now),
                    "refresh_error": "",
                },
            )
            pipe.execute()
            return rec

    def claim_for_termination(self, instance_ids: list[str], *, now: float, detail: str) -> list[Machine]:
        if not instance_ids:
            return []
        k = self.keys
        raws = self._call(
            self._claim,
            keys=[k.machines, k.idle, k.group],
            args=[repr(now), detail, *instance_ids],
        )
        return [Machine.from_json(json.loads(r)) for r in raws]

    def record_plan(self, *, wanted: int, capped: bool, desired_capacity: int | None) -> None:
        mapping: dict[str, Any] = {"wanted": wanted, "capped": "1" if capped else "0"}
        if desired_capacity is not None:
            mapping["desired_capacity"] = desired_capacity
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

    def request_rebalance(self) -> bool:
        return bool(self._call(self._r.set, self.keys.rebalance, "1", nx=True, px=REBALANCE_COALESCE_MS))

    def rebalance_started(self) -> None:
        self._call(self._r.delete, self.keys.rebalance)

    def reset(self) -> None:
        self._call(self._r.delete, *self.keys.all())


def _view_from(machines_raw: dict[str, str], projects: dict[str, str]) -> PoolView:
    machines = {iid: Machine.from_json(json.loads(raw)) for iid, raw in machines_raw.items()}
    return PoolView(machines=machines, projects=dict(projects))


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
