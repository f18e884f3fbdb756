"""The pool's economics ledger: figures, launch times, demand history, policy override (a port).

The pool worker that owns a pool is the only writer (one serialized worker per pool),
so the figures are the same whoever asked: a gateway replica, a PoolClient, the CLI.
Implementations: :class:`MemoryLedger` here (pure, a dict) and
tasks.state.redis_ledger.RedisLedger (the Redis keys of tasks.state.keys.EconomicsKeys);
tests/contract/test_ledger_contract.py runs against both.

Pure: standard library only.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

# Wait-seconds histogram bucket upper bounds (Prometheus ``le``); the last bucket is +Inf.
WAIT_BUCKETS_S = (0.05, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
LAUNCH_KEEP = 100  # launch-to-ready samples kept (the most recent)
CLAIMS_KEEP = 500  # recent claim timestamps kept (the recent rate)
DEMAND_BUCKET_S = 60  # demand history granularity
HISTORY_DAYS = 14
HISTORY_KEEP_S = (HISTORY_DAYS + 1) * 86_400  # each day's history expires after this

# Figure names (counters unless noted); terminations are ``terminations:<reason>``.
ASSIGNS_WARM = "assigns_warm"
ASSIGNS_WAITED = "assigns_waited"
ASSIGNS_FAILED = "assigns_failed"
WAIT_SUM_S = "wait_seconds_sum"
LAUNCHES = "launches"
LAUNCH_READY_SUM_S = "launch_ready_seconds_sum"
LAUNCH_READY_COUNT = "launch_ready_count"
IDLE_MACHINE_S = "idle_machine_seconds"
TERMINATIONS = "terminations:"
WAIT_BUCKET = "wait_bucket:"  # + index into WAIT_BUCKETS_S (len: +Inf); not cumulative
# Gauges of the last rebalance.
TARGET = "policy_target"
TARGET_REASON = "policy_reason"
POLICY_SPEC = "policy_spec"
IDLE_AT = "idle_at"
IDLE_COUNT = "idle_count"
SURPLUS_SINCE = "surplus_since"

OUTCOME_WARM = "warm"
OUTCOME_WAITING = "waiting"
OUTCOME_FAILED = "failed"


def wait_bucket(wait_s: float) -> int:
    """The index of the histogram bucket ``wait_s`` falls in (len(WAIT_BUCKETS_S): above the last)."""
    return bisect.bisect_left(WAIT_BUCKETS_S, wait_s)


def demand_minute(at: float) -> int:
    """The demand history bucket of epoch second ``at``."""
    return int(at // DEMAND_BUCKET_S)


@dataclass(frozen=True)
class ClaimEvent:
    """What happened to one claim: it arrived (``assign``, with its outcome), or a waiting one was
    ``served`` or ``failed`` after ``wait_s``. The pool worker buffers these off the assign path and
    writes them in one batch (tasks.pool.economics)."""

    kind: str  # "assign" | "served" | "failed"
    at: float = 0.0
    outcome: str = ""  # of an assign: warm | waiting | failed
    wait_s: float = 0.0


@dataclass(frozen=True)
class LedgerRead:
    """One read of what the policies need (one round trip in Redis)."""

    override: str | None  # the runtime policy override (JSON text), None: the configured policy
    launch_seconds: tuple[float, ...]  # recent launch-to-ready samples, newest first
    recent_claims: tuple[float, ...]  # recent claim times, newest first
    demand: dict[int, int]  # demand minute -> assigns, for the minutes asked for (absent: none)
    history_since: float  # when the demand history began (0: none, e.g. lost)
    surplus_since: float  # since when the pool has had surplus idle machines (0: it has none)
    idle_at: float  # when idle machine-seconds were last accounted
    idle_count: int  # idle machines then


class Ledger(Protocol):
    """The economics state of one pool. Implementations: MemoryLedger, RedisLedger."""

    def read(self, *, minutes: Sequence[int]) -> LedgerRead: ...

    def record_claims(self, events: Sequence[ClaimEvent]) -> None:
        """Record claim events in one write (Redis: one pipeline)."""
        ...

    def record_assign(self, *, now: float, outcome: str, count_demand: bool = True) -> None:
        """A claim arrived: demand history and recent rate; the outcome (warm/waiting/failed) counted."""
        ...

    def record_served(self, *, wait_s: float) -> None:
        """A waiting claim was served after ``wait_s``."""
        ...

    def record_failed(self, *, wait_s: float) -> None:
        """A waiting claim gave up after ``wait_s``."""
        ...

    def count(self, name: str, n: int = 1) -> None: ...

    def record_launch_time(self, seconds: float) -> None: ...

    def record_rebalance(
        self, *, now: float, idle: int, target: int, reason: str, spec: str, surplus_since: float
    ) -> None:
        """Account idle machine-seconds since the last call and keep the decision's gauges."""
        ...

    def set_override(self, text: str | None) -> None: ...

    def figures(self) -> dict[str, float | str]: ...

    def reset(self) -> None: ...

    def forget_history(self) -> None:
        """Drop the demand history (what a lost Redis does; tests and the operator)."""
        ...


class MemoryLedger:
    """A Ledger in a dict: the in-memory twin of RedisLedger (tests, the simulator)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._figures: dict[str, float | str] = {}
        self._launch: list[float] = []
        self._claims: list[float] = []
        self._demand: dict[int, int] = {}
        self._history_since = 0.0
        self._override: str | None = None

    def forget_history(self) -> None:
        self._demand = {}
        self._history_since = 0.0

    def _add(self, name: str, n: float) -> None:
        current = self._figures.get(name, 0)
        assert not isinstance(current, str)
        self._figures[name] = current + n

    def read(self, *, minutes: Sequence[int]) -> LedgerRead:
        f = self._figures
        return LedgerRead(
            override=self._override,
            launch_seconds=tuple(self._launch),
            recent_claims=tuple(self._claims),
            demand={m: self._demand[m] for m in minutes if m in self._demand},
            history_since=self._history_since,
            surplus_since=float(f.get(SURPLUS_SINCE, 0.0)),
            idle_at=float(f.get(IDLE_AT, 0.0)),
            idle_count=int(float(f.get(IDLE_COUNT, 0))),
        )

    def record_claims(self, events: Sequence[ClaimEvent]) -> None:
        for e in events:
            if e.kind == "assign":
                self.record_assign(now=e.at, outcome=e.outcome)
            elif e.kind == "served":
                self.record_served(wait_s=e.wait_s)
            else:
                self.record_failed(wait_s=e.wait_s)

    def record_assign(self, *, now: float, outcome: str, count_demand: bool = True) -> None:
        if count_demand:
            minute = demand_minute(now)
            self._demand[minute] = self._demand.get(minute, 0) + 1
            if not self._history_since:
                self._history_since = now
            oldest = demand_minute(now - HISTORY_KEEP_S)
            if len(self._demand) > HISTORY_KEEP_S // DEMAND_BUCKET_S:
                self._demand = {m: c for m, c in self._demand.items() if m >= oldest}
            self._claims = [now, *self._claims[: CLAIMS_KEEP - 1]]
        if outcome == OUTCOME_WARM:
            self._add(ASSIGNS_WARM, 1)
            self._add(WAIT_BUCKET + str(wait_bucket(0.0)), 1)
        elif outcome == OUTCOME_FAILED:
            self._add(ASSIGNS_FAILED, 1)

    def record_served(self, *, wait_s: float) -> None:
        self._add(ASSIGNS_WAITED, 1)
        self._add(WAIT_SUM_S, wait_s)
        self._add(WAIT_BUCKET + str(wait_bucket(wait_s)), 1)

    def record_failed(self, *, wait_s: float) -> None:
        self._add(ASSIGNS_FAILED, 1)
        self._add(WAIT_SUM_S, wait_s)
        self._add(WAIT_BUCKET + str(wait_bucket(wait_s)), 1)

    def count(self, name: str, n: int = 1) -> None:
        self._add(name, n)

    def record_launch_time(self, seconds: float) -> None:
        self._launch = [seconds, *self._launch[: LAUNCH_KEEP - 1]]
        self._add(LAUNCH_READY_SUM_S, seconds)
        self._add(LAUNCH_READY_COUNT, 1)

    def record_rebalance(
        self, *, now: float, idle: int, target: int, reason: str, spec: str, surplus_since: float
    ) -> None:
        f = self._figures
        last = float(f.get(IDLE_AT, 0.0))
        if 0 < last < now:
            self._add(IDLE_MACHINE_S, float(f.get(IDLE_COUNT, 0)) * (now - last))
        f.update(
            {
                IDLE_AT: now,
                IDLE_COUNT: idle,
                TARGET: target,
                TARGET_REASON: reason,
                POLICY_SPEC: spec,
                SURPLUS_SINCE: surplus_since,
            }
        )

    def set_override(self, text: str | None) -> None:
        self._override = text

    def figures(self) -> dict[str, float | str]:
        return dict(self._figures)
