"""RedisLedger: the economics ledger port (tasks.pool.ledger) on Redis (keys: tasks.state.keys.EconomicsKeys).

Every call is one pipelined round trip. The pool worker is the ledger's only writer
(one serialized worker per pool), so read-modify-write of the idle accounting needs
no transaction: a second pool worker (invariant 6) at worst double-counts a few
idle machine-seconds, never corrupts a counter (counters are HINCRBY).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

from tasks.errors import StoreUnavailable
from tasks.pool.ledger import (
    ASSIGNS_FAILED,
    ASSIGNS_WAITED,
    ASSIGNS_WARM,
    CLAIMS_KEEP,
    HISTORY_KEEP_S,
    IDLE_AT,
    IDLE_COUNT,
    IDLE_MACHINE_S,
    LAUNCH_KEEP,
    LAUNCH_READY_COUNT,
    LAUNCH_READY_SUM_S,
    OUTCOME_FAILED,
    OUTCOME_WARM,
    POLICY_SPEC,
    SURPLUS_SINCE,
    TARGET,
    TARGET_REASON,
    WAIT_BUCKET,
    WAIT_SUM_S,
    ClaimEvent,
    LedgerRead,
    demand_minute,
    wait_bucket,
)
from tasks.state.connect import state_client
from tasks.state.keys import EconomicsKeys

_MINUTES_PER_DAY = 1440


def _num(value: Any) -> float:
    try:
        return float(value) if value is not None else 0.0
    except ValueError:
        return 0.0


class RedisLedger:
    """The Ledger of one pool in its state Redis (decode_responses clients)."""

    def __init__(self, client: redis.Redis, asg_name: str) -> None:
        self._r = client
        self.keys = EconomicsKeys.for_group(asg_name)

    @classmethod
    def from_url(cls, url: str, namespace: str, *, sentinel_master: str = "mymaster") -> RedisLedger:
        """The ledger of the pool whose state lives under ``namespace`` at ``url`` (Sentinel too)."""
        client = state_client(
            url, master_name=sentinel_master, decode_responses=True, socket_timeout=5, socket_connect_timeout=5
        )
        return cls(client, namespace)

    def _run(self, pipe: Any) -> list[Any]:
        try:
            result: list[Any] = pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailable(f"state store unreachable: {exc}") from exc
        return result

    def read(self, *, minutes: Sequence[int]) -> LedgerRead:
        k = self.keys
        by_day: dict[int, list[int]] = {}
        for m in minutes:
            by_day.setdefault(m // _MINUTES_PER_DAY, []).append(m)
        pipe = self._r.pipeline(transaction=False)
        pipe.get(k.policy)
        pipe.lrange(k.launch, 0, LAUNCH_KEEP - 1)
        pipe.lrange(k.claims, 0, CLAIMS_KEEP - 1)
        pipe.get(k.since)
        pipe.hmget(k.figures, [SURPLUS_SINCE, IDLE_AT, IDLE_COUNT])
        days = sorted(by_day)
        for day in days:
            pipe.hmget(k.demand(day), [str(m) for m in by_day[day]])
        override, launch, claims, since, (surplus, idle_at, idle_count), *demand_rows = self._run(pipe)
        demand: dict[int, int] = {}
        for day, row in zip(days, demand_rows, strict=True):
            for m, value in zip(by_day[day], row, strict=True):
                if value is not None:
                    demand[m] = int(value)
        return LedgerRead(
            override=override,
            launch_seconds=tuple(_num(x) for x in launch),
            recent_claims=tuple(_num(x) for x in claims),
            demand=demand,
            history_since=_num(since),
            surplus_since=_num(surplus),
            idle_at=_num(idle_at),
            idle_count=int(_num(idle_count)),
        )

    def record_claims(self, events: Sequence[ClaimEvent]) -> None:
        if not events:
            return
        pipe = self._r.pipeline(transaction=False)
        for e in events:
            if e.kind == "assign":
                self._assign(pipe, now=e.at, outcome=e.outcome, count_demand=True)
            else:
                self._waited(pipe, ASSIGNS_WAITED if e.kind == "served" else ASSIGNS_FAILED, e.wait_s)
        self._run(pipe)

    def record_assign(self, *, now: float, outcome: str, count_demand: bool = True) -> None:
        pipe = self._r.pipeline(transaction=False)
        self._assign(pipe, now=now, outcome=outcome, count_demand=count_demand)
        self._run(pipe)

    def _assign(self, pipe: Any, *, now: float, outcome: str, count_demand: bool) -> None:
        k = self.keys
        if count_demand:
            minute = demand_minute(now)
            day_key = k.demand(minute // _MINUTES_PER_DAY)
            pipe.hincrby(day_key, str(minute), 1)
            pipe.expire(day_key, HISTORY_KEEP_S)
            pipe.set(k.since, repr(now), nx=True)
            pipe.lpush(k.claims, repr(now))
            pipe.ltrim(k.claims, 0, CLAIMS_KEEP - 1)
        if outcome == OUTCOME_WARM:
            pipe.hincrby(k.figures, ASSIGNS_WARM, 1)
            pipe.hincrby(k.figures, WAIT_BUCKET + str(wait_bucket(0.0)), 1)
        elif outcome == OUTCOME_FAILED:
            pipe.hincrby(k.figures, ASSIGNS_FAILED, 1)

    def _waited(self, pipe: Any, name: str, wait_s: float) -> None:
        k = self.keys
        pipe.hincrby(k.figures, name, 1)
        pipe.hincrbyfloat(k.figures, WAIT_SUM_S, wait_s)
        pipe.hincrby(k.figures, WAIT_BUCKET + str(wait_bucket(wait_s)), 1)

    def record_served(self, *, wait_s: float) -> None:
        self.record_claims([ClaimEvent("served", wait_s=wait_s)])

    def record_failed(self, *, wait_s: float) -> None:
        self.record_claims([ClaimEvent("failed", wait_s=wait_s)])

    def count(self, name: str, n: int = 1) -> None:
        pipe = self._r.pipeline(transaction=False)
        pipe.hincrby(self.keys.figures, name, n)
        self._run(pipe)

    def record_launch_time(self, seconds: float) -> None:
        k = self.keys
        pipe = self._r.pipeline(transaction=False)
        pipe.lpush(k.launch, repr(seconds))
        pipe.ltrim(k.launch, 0, LAUNCH_KEEP - 1)
        pipe.hincrbyfloat(k.figures, LAUNCH_READY_SUM_S, seconds)
        pipe.hincrby(k.figures, LAUNCH_READY_COUNT, 1)
        self._run(pipe)

    def record_rebalance(
        self, *, now: float, idle: int, target: int, reason: str, spec: str, surplus_since: float
    ) -> None:
        k = self.keys
        pipe = self._r.pipeline(transaction=False)
        pipe.hmget(k.figures, [IDLE_AT, IDLE_COUNT])
        ((last, count),) = self._run(pipe)
        pipe = self._r.pipeline(transaction=False)
        last_at = _num(last)
        if 0 < last_at < now:
            pipe.hincrbyfloat(k.figures, IDLE_MACHINE_S, _num(count) * (now - last_at))
        pipe.hset(
            k.figures,
            mapping={
                IDLE_AT: repr(now),
                IDLE_COUNT: idle,
                TARGET: target,
                TARGET_REASON: reason[:300],
                POLICY_SPEC: spec[:300],
                SURPLUS_SINCE: repr(surplus_since),
            },
        )
        self._run(pipe)

    def set_override(self, text: str | None) -> None:
        pipe = self._r.pipeline(transaction=False)
        if text is None:
            pipe.delete(self.keys.policy)
        else:
            pipe.set(self.keys.policy, text)
        self._run(pipe)

    def figures(self) -> dict[str, float | str]:
        pipe = self._r.pipeline(transaction=False)
        pipe.hgetall(self.keys.figures)
        (raw,) = self._run(pipe)
        out: dict[str, float | str] = {}
        for name, value in raw.items():
            out[name] = value if name in (TARGET_REASON, POLICY_SPEC) else _num(value)
        return out

    def _demand_keys(self) -> list[str]:
        return list(self._r.scan_iter(match=self.keys.demand_prefix + "*", count=500))

    def forget_history(self) -> None:
        keys = [*self._demand_keys(), self.keys.since]
        pipe = self._r.pipeline(transaction=False)
        pipe.delete(*keys)
        self._run(pipe)

    def reset(self) -> None:
        k = self.keys
        pipe = self._r.pipeline(transaction=False)
        pipe.delete(k.figures, k.launch, k.claims, k.since, k.policy, *self._demand_keys())
        self._run(pipe)
