"""The pool's economics at run time: which policy is in force, its idle target, the delayed scale-in,
launch-time learning and the pool-level figures (docs/economics.md).

PoolService owns one :class:`Economics`; it reads and writes the pool's :class:`Ledger`
and evaluates the pure policies of tasks.pool.policy. Pure: no I/O of its own.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tasks.errors import InvalidRequest
from tasks.pool.ledger import (
    ASSIGNS_FAILED,
    ASSIGNS_WAITED,
    ASSIGNS_WARM,
    DEMAND_BUCKET_S,
    IDLE_MACHINE_S,
    LAUNCH_READY_COUNT,
    LAUNCH_READY_SUM_S,
    LAUNCHES,
    TERMINATIONS,
    WAIT_BUCKET,
    WAIT_BUCKETS_S,
    WAIT_SUM_S,
    ClaimEvent,
    Ledger,
    LedgerRead,
    demand_minute,
)
from tasks.pool.model import Machine, MachineState
from tasks.pool.policy import (
    DEFAULT_LEAD_S,
    HISTORY_SLACK_S,
    HISTORY_WEEKS,
    RECENT_WINDOW_S,
    WEEK_S,
    Decision,
    PolicyInputs,
    PolicySpec,
    Schedule,
    evaluate,
    parse_policy,
    parse_schedules,
)

log = logging.getLogger("warmpool.pool")

# The demand history window read per rebalance is sized for launches up to this long.
MAX_LEAD_S = 3_600.0
_PARKED = ("lifecycle Standby", "lifecycle EnteringStandby")
MAX_BUFFERED_CLAIMS = 500  # a burst between rebalances is written in batches of at most this many


@dataclass(frozen=True)
class EconomicsConfig:
    """The per-pool economics settings (PoolConfig's fields of the same names)."""

    idle_target: int  # the fixed idle target (``fixed`` and the adaptive floor)
    policy: str = "fixed"
    warm_goal: float = 0.99
    idle_max: int = 0  # 0: no cap
    schedules: tuple[Schedule, ...] = ()
    scale_in_delay_s: float = 0.0  # surplus idle kept this long before it is terminated
    scale_in_step: int = 0  # at most this many terminated per rebalance; 0: no bound
    ready_timeout_s: float = 600.0


@dataclass(frozen=True)
class ActivePolicy:
    """The policy in force: parsed spec, schedules, and where it came from."""

    spec: PolicySpec
    schedules: tuple[Schedule, ...]
    source: str  # "config" | "override"

    def text(self) -> str:
        return self.spec.text()


def override_text(spec: str, schedules: Any = None, *, now: float) -> str:
    """Validate a runtime policy (InvalidRequest naming the field) and return its stored JSON."""
    parsed = parse_policy(spec)
    schedule_list = None if schedules is None else [s.to_json() for s in parse_schedules(schedules)]
    return json.dumps({"policy": parsed.text(), "schedules": schedule_list, "set_at": now})


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


def _busiest_window(demand: dict[int, int], *, start: float, span_s: float, lead_s: float) -> float:
    """Assigns in the busiest lead-long stretch of [start, start + span] (whole history minutes).

    A lead-long window, not the whole span: the span only allows a recurring burst to come a
    little earlier than it did, it must not inflate the background rate.
    """
    first, last = demand_minute(start), demand_minute(start + span_s)
    counts = [demand.get(m, 0) for m in range(first, last + 1)]
    width = max(1, min(len(counts), math.ceil(lead_s / DEMAND_BUCKET_S)))
    best = running = sum(counts[:width])
    for i in range(width, len(counts)):
        running += counts[i] - counts[i - width]
        best = max(best, running)
    return float(best)


def launch_summary(samples: Sequence[float]) -> dict[str, Any]:
    """count, mean, p50, p95, max of launch-to-ready seconds."""
    if not samples:
        return {"count": 0, "mean": None, "p50": None, "p95": None, "max": None}
    return {
        "count": len(samples),
        "mean": round(sum(samples) / len(samples), 3),
        "p50": round(_percentile(samples, 0.5), 3),
        "p95": round(_percentile(samples, 0.95), 3),
        "max": round(max(samples), 3),
    }


class Economics:
    """Policy evaluation, delayed scale-in and figures for one pool."""

    def __init__(self, ledger: Ledger, config: EconomicsConfig, *, started_at: float) -> None:
        self.ledger = ledger
        self._started_at = started_at  # machines launched before this are not launch-time samples
        self._override_seen: str | None = None
        self._lead_s = DEFAULT_LEAD_S
        # Claim events wait here, off the assign path, until the next rebalance or status
        # writes them in one batch (a killed worker loses at most these).
        self._claims: list[ClaimEvent] = []
        self.reconfigure(config)

    # -- claims (buffered) -----------------------------------------------------------------
    def claimed(self, *, now: float, outcome: str) -> None:
        """A claim arrived, served warm, queued to wait, or failed at once."""
        self._note(ClaimEvent("assign", at=now, outcome=outcome))

    def served(self, *, wait_s: float) -> None:
        self._note(ClaimEvent("served", wait_s=wait_s))

    def gave_up(self, *, wait_s: float) -> None:
        self._note(ClaimEvent("failed", wait_s=wait_s))

    def _note(self, event: ClaimEvent) -> None:
        self._claims.append(event)
        if len(self._claims) >= MAX_BUFFERED_CLAIMS:
            self.flush()

    def flush(self) -> None:
        """Write the buffered claim events (one batch)."""
        if self._claims:
            events, self._claims = self._claims, []
            self.ledger.record_claims(events)

    def reconfigure(self, config: EconomicsConfig) -> None:
        """Put ``config`` in force (its policy, unless an override is); InvalidRequest if its policy is bad."""
        configured = ActivePolicy(parse_policy(config.policy), config.schedules, "config")
        self.config = config
        self._configured = configured
        if self._override_seen is None:
            self._active = configured
        self._last = Decision(self._initial_target(), "fixed")
        self._decided = False

    @property
    def decided(self) -> bool:
        """Whether this process evaluated the policy yet (before that, ``target`` is the configured one)."""
        return self._decided

    def _initial_target(self) -> int:
        spec = self._configured.spec
        if spec.kind == "fixed" and spec.idle is not None:
            return spec.idle
        return self.config.idle_target

    @property
    def target(self) -> int:
        """The idle target of the last evaluation (what assigns compare the buffer with)."""
        return self._last.target

    @property
    def reason(self) -> str:
        """Why the last evaluation chose its target (``fixed``, ``schedule: <name>``, ``adaptive: ...``)."""
        return self._last.reason

    @property
    def decision(self) -> Decision:
        return self._last

    @property
    def active(self) -> ActivePolicy:
        return self._active

    # -- the policy in force -----------------------------------------------------------
    def _policy(self, override: str | None) -> ActivePolicy:
        """The override if there is a good one; a bad one keeps the last good policy."""
        if override == self._override_seen:
            return self._active
        self._override_seen = override
        if override is None:
            self._active = self._configured
            return self._active
        try:
            data = json.loads(override)
            spec = parse_policy(data.get("policy"))
            raw = data.get("schedules")
            schedules = self.config.schedules if raw is None else parse_schedules(raw)
        except (InvalidRequest, ValueError, AttributeError, TypeError) as exc:
            log.error("policy override refused: keeping the last good policy", extra={"error": str(exc)[:300]})
            return self._active
        self._active = ActivePolicy(spec, schedules, "override")
        log.info("policy override in force", extra={"policy": spec.text()})
        return self._active

    def _history_minutes(self, now: float) -> list[int]:
        span = min(MAX_LEAD_S, self._lead_s) + HISTORY_SLACK_S
        minutes: list[int] = []
        for weeks in HISTORY_WEEKS:
            start = now - weeks * WEEK_S
            minutes.extend(range(demand_minute(start), demand_minute(start + span) + 1))
        return minutes

    def _inputs(self, read: LedgerRead, *, now: float, held: int, max_size: int) -> PolicyInputs:
        samples = read.launch_seconds
        lead = sum(samples) / len(samples) if samples else DEFAULT_LEAD_S
        self._lead_s = lead
        recent = 0
        for t in read.recent_claims:  # newest first: stop at the first one out of the window
            if t <= now - RECENT_WINDOW_S:
                break
            recent += t <= now
        span = min(MAX_LEAD_S, lead) + HISTORY_SLACK_S
        history: list[float | None] = []
        for weeks in HISTORY_WEEKS:
            start = now - weeks * WEEK_S
            if not read.history_since or read.history_since > start:
                history.append(None)  # no history that far back (new pool, or the history was lost)
                continue
            history.append(_busiest_window(read.demand, start=start, span_s=span, lead_s=lead))
        return PolicyInputs(
            now=now,
            fixed_idle=self.config.idle_target,
            held=held,
            max_size=max_size,
            lead_s=lead,
            lead_p95_s=_percentile(samples, 0.95) if samples else DEFAULT_LEAD_S,
            recent_rate_per_s=recent / RECENT_WINDOW_S,
            history=tuple(history),
            idle_max=self.config.idle_max,
            warm_goal=self.config.warm_goal,
        )

    def decide(self, *, now: float, held: int, max_size: int) -> tuple[Decision, LedgerRead]:
        """Evaluate the policy in force now; the decision is kept as ``target``."""
        self.flush()
        read = self.ledger.read(minutes=self._history_minutes(now))
        policy = self._policy(read.override)
        inputs = self._inputs(read, now=now, held=held, max_size=max_size)
        self._last = evaluate(policy.spec, policy.schedules, inputs)
        self._decided = True
        return self._last, read

    # -- scale-in ----------------------------------------------------------------------
    def scale_in(
        self, surplus: Sequence[Machine], idle: Iterable[Machine], *, now: float, surplus_since: float
    ) -> tuple[list[Machine], float]:
        """Which of the planner's surplus to terminate now, and since when there is surplus.

        Nothing is terminated until the pool has had surplus for ``scale_in_delay_s``; then the
        longest-idle machines go first, at most ``scale_in_step`` per rebalance.
        """
        if not surplus:
            return [], 0.0
        since = surplus_since or now
        if now - since < self.config.scale_in_delay_s:
            return [], since
        count = len(surplus)
        if self.config.scale_in_step > 0:
            count = min(count, self.config.scale_in_step)
        candidates = sorted((m for m in idle if m.state is MachineState.IDLE), key=lambda m: (m.since, m.instance_id))
        return candidates[:count], since

    def after_rebalance(self, *, now: float, idle: int, surplus_since: float) -> None:
        self.ledger.record_rebalance(
            now=now,
            idle=idle,
            target=self._last.target,
            reason=self._last.reason,
            spec=f"{self._active.text()} ({self._active.source})",
            surplus_since=surplus_since,
        )

    # -- figures -------------------------------------------------------------------------
    def terminated(self, reason: str, n: int = 1) -> None:
        if n > 0:
            self.ledger.count(TERMINATIONS + reason, n)

    def launched(self, n: int) -> None:
        if n > 0:
            self.ledger.count(LAUNCHES, n)

    def became_ready(self, machines: Iterable[Machine], *, now: float) -> None:
        """Learn launch-to-ready times from machines that just became idle (launched since start)."""
        for m in machines:
            if m.state is not MachineState.IDLE or m.since != now or not m.launched_at:
                continue
            if m.launched_at < self._started_at or m.launched_at > now:
                continue
            self.ledger.record_launch_time(min(now - m.launched_at, self.config.ready_timeout_s or math.inf))

    def status(self, read: LedgerRead | None = None) -> dict[str, Any]:
        """The economics part of ``status``: policy, figures, launch times."""
        self.flush()
        read = read or self.ledger.read(minutes=())
        figures = self.ledger.figures()

        def num(name: str) -> float:
            value = figures.get(name, 0.0)
            return float(value) if not isinstance(value, str) else 0.0

        buckets = [int(num(WAIT_BUCKET + str(i))) for i in range(len(WAIT_BUCKETS_S) + 1)]
        terminations = {
            name[len(TERMINATIONS) :]: int(num(name)) for name in sorted(figures) if name.startswith(TERMINATIONS)
        }
        ready_count = num(LAUNCH_READY_COUNT)
        return {
            "policy": {
                "spec": self._active.text(),
                "source": self._active.source,
                "schedules": [s.name for s in self._active.schedules],
                "target": self._last.target,
                "reason": self._last.reason,
            },
            "assigns_warm": int(num(ASSIGNS_WARM)),
            "assigns_waited": int(num(ASSIGNS_WAITED)),
            "assigns_failed": int(num(ASSIGNS_FAILED)),
            "wait_seconds": {
                "buckets": [*WAIT_BUCKETS_S, "+Inf"],
                "counts": buckets,
                "sum": round(num(WAIT_SUM_S), 3),
            },
            "launches": int(num(LAUNCHES)),
            "launch_ready_seconds": {
                **launch_summary(read.launch_seconds),
                "total_count": int(ready_count),
                "total_sum": round(num(LAUNCH_READY_SUM_S), 3),
            },
            "terminations": terminations,
            "idle_machine_seconds": round(num(IDLE_MACHINE_S), 1),
        }


def wants_fast_poll(machines: Iterable[Machine]) -> bool:
    """Whether a machine is launching (pending, not parked in Standby): refresh every second or two."""
    return any(m.state is MachineState.PENDING and not m.detail.startswith(_PARKED) for m in machines)
