"""Capacity policies: how many idle machines a pool should keep ready, and why (docs/economics.md).

Pure: no I/O and no clock. A policy is evaluated on :class:`PolicyInputs` (what the
pool worker knows now: the recent claim rate, the demand at the same time of week
before, the learned launch time) and yields a :class:`Decision`: the idle target and
a reason string (``fixed``, ``schedule: <name>``, ``adaptive: rate ..., lead ...``).

Policies (one spec string each, :func:`parse_policy`):

- ``fixed`` / ``fixed:N``: keep N idle (``fixed`` alone: the pool's WARMPOOL_IDLE_TARGET).
- ``adaptive`` / ``adaptive:goal=0.995,floor=1``: a base-stock buffer sized by Palm's theorem.
  With claims arriving as a Poisson process of rate lambda and one launch per claim taking L
  seconds on average, the machines still launching are Poisson(lambda*L) distributed
  whatever the launch-time distribution (Palm; the M/G/inf insensitivity), so with S machines
  in the buffer (idle + launching) a claim is served warm with probability
  P(Poisson(lambda*L) <= S - 1). The smallest S reaching ``goal`` is the target.
  lambda*L is the larger of the recent rate times L and the assigns the same window of the
  week saw one and two weeks ago (demand history), so a recurring burst is prepared for a
  launch time before it comes. ``floor`` (default: the fixed idle target) is never undercut,
  so a pool whose history is lost keeps at least its fixed buffer.

Schedules (:class:`Schedule`, :func:`parse_schedules`) apply on top of either policy: while
a window is open, and a launch time before it opens, at least its ``min_idle`` machines are
kept idle. Whatever the policy, the target is clamped by ``idle_max`` and by MaxSize.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from tasks.errors import InvalidRequest

DEFAULT_WARM_GOAL = 0.99
# The launch time assumed before any launch of this pool was measured.
DEFAULT_LEAD_S = 120.0
# How far back the recent claim rate looks.
RECENT_WINDOW_S = 300.0
# The demand history is consulted one and two weeks back (same time of week).
WEEK_S = 7 * 86_400.0
HISTORY_WEEKS = (1, 2)
# A recurring burst may come a little earlier than it did: look this much further ahead.
HISTORY_SLACK_S = 120.0
MAX_SCHEDULES = 50
MAX_TARGET = 10_000


def policy_error(field_name: str, message: str) -> InvalidRequest:
    """The one error of a bad policy or schedule: ``<field>: <what is wrong>``."""
    return InvalidRequest(f"{field_name}: {message}")


# -- specs --------------------------------------------------------------------------------
@dataclass(frozen=True)
class PolicySpec:
    """A parsed policy spec. ``idle``/``floor`` None: the pool's configured idle target."""

    kind: str  # "fixed" | "adaptive"
    idle: int | None = None
    goal: float | None = None  # None: the pool's warm_goal
    floor: int | None = None

    def text(self) -> str:
        """The canonical spec string (parse_policy(spec.text()) == spec)."""
        if self.kind == "fixed":
            return "fixed" if self.idle is None else f"fixed:{self.idle}"
        params = [] if self.goal is None else [f"goal={self.goal:g}"]
        if self.floor is not None:
            params.append(f"floor={self.floor}")
        return "adaptive" + (":" + ",".join(params) if params else "")


def _count(raw: str, field_name: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise policy_error(field_name, f"expected a whole number 0..{MAX_TARGET}, got {raw!r:.40}") from None
    if not 0 <= value <= MAX_TARGET:
        raise policy_error(field_name, f"expected a whole number 0..{MAX_TARGET}, got {value}")
    return value


def check_goal(raw: Any, field_name: str = "policy.goal") -> float:
    """A warm goal: a share in 0.5..0.9999 (InvalidRequest naming ``field_name`` otherwise)."""
    return _goal(str(raw), field_name)


def _goal(raw: str, field_name: str = "policy.goal") -> float:
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0.5 <= value < 1.0:
        raise policy_error(field_name, f"expected a share in 0.5..0.9999, got {raw!r:.40}")
    return value


def parse_policy(text: Any) -> PolicySpec:
    """``fixed``, ``fixed:N``, ``adaptive`` or ``adaptive:goal=G,floor=N``; InvalidRequest naming the field."""
    if not isinstance(text, str) or not text.strip():
        raise policy_error("policy", "expected fixed, fixed:N, adaptive or adaptive:goal=G,floor=N")
    kind, _, rest = text.strip().partition(":")
    if kind == "fixed":
        return PolicySpec("fixed", idle=_count(rest, "policy.fixed") if rest else None)
    if kind != "adaptive":
        raise policy_error("policy", f"unknown policy {kind!r:.40}: expected fixed, fixed:N or adaptive")
    params: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq or key not in ("goal", "floor"):
            raise policy_error("policy", f"adaptive takes goal=G and floor=N, got {part!r:.40}")
        params[key] = value
    return PolicySpec(
        "adaptive",
        goal=_goal(params["goal"]) if "goal" in params else None,
        floor=_count(params["floor"], "policy.floor") if "floor" in params else None,
    )


@dataclass(frozen=True)
class Schedule:
    """A window of demand known in advance: ``cron`` starts it, it lasts ``duration_s``, keeps ``min_idle``."""

    name: str
    cron: str
    duration_s: float
    timezone: str
    min_idle: int

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cron": self.cron,
            "duration_s": self.duration_s,
            "timezone": self.timezone,
            "min_idle": self.min_idle,
        }

    def last_start(self, at: float) -> float | None:
        """The latest start of this window at or before ``at`` (epoch seconds), None if none in a year."""
        zone = ZoneInfo(self.timezone)
        moment = datetime.fromtimestamp(at, tz=zone)
        try:
            start = next(CronSim(self.cron, moment, reverse=True))
        except StopIteration:
            return None
        return start.timestamp()


_SCHEDULE_FIELDS = ("name", "cron", "duration_s", "timezone", "min_idle")


def _schedule(raw: Any, index: int) -> Schedule:
    where = f"schedules[{index}]"
    if not isinstance(raw, Mapping):
        raise policy_error(where, "expected an object with name, cron, duration_s, timezone, min_idle")
    unknown = sorted(set(raw) - set(_SCHEDULE_FIELDS) - {"duration_minutes"})
    if unknown:
        raise policy_error(f"{where}.{unknown[0]}", "unknown field")
    name = raw.get("name")
    if not isinstance(name, str) or not 0 < len(name) <= 64:
        raise policy_error(f"{where}.name", "expected a name of 1-64 characters")
    cron = raw.get("cron")
    if not isinstance(cron, str):
        raise policy_error(f"{where}.cron", "expected a cron expression such as '45 8 * * 1-5'")
    try:
        CronSim(cron, datetime(2026, 1, 1))
    except CronSimError as exc:
        raise policy_error(f"{where}.cron", f"{cron!r:.60} is not a cron expression ({exc})") from None
    if "duration_minutes" in raw and "duration_s" not in raw:
        duration = _number(raw["duration_minutes"], f"{where}.duration_minutes") * 60.0
    else:
        duration = _number(raw.get("duration_s"), f"{where}.duration_s")
    tz = raw.get("timezone", "UTC")
    if not _is_zone(tz):
        raise policy_error(f"{where}.timezone", f"expected an IANA timezone such as Asia/Kolkata, got {tz!r:.60}")
    min_idle = raw.get("min_idle")
    if isinstance(min_idle, bool) or not isinstance(min_idle, int) or not 0 <= min_idle <= MAX_TARGET:
        raise policy_error(f"{where}.min_idle", f"expected a whole number 0..{MAX_TARGET}")
    return Schedule(name=name, cron=cron, duration_s=duration, timezone=tz, min_idle=min_idle)


def _is_zone(name: Any) -> bool:
    if not isinstance(name, str) or not name:
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _number(raw: Any, field_name: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 < raw <= 7 * 86_400:
        raise policy_error(field_name, "expected a duration above 0 and at most a week")
    return float(raw)


def parse_schedules(raw: Any) -> tuple[Schedule, ...]:
    """A JSON list (or its text) of schedule objects; InvalidRequest naming the bad field."""
    if isinstance(raw, str):
        if not raw.strip():
            return ()
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise policy_error("schedules", f"not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(raw, list):
        raise policy_error("schedules", "expected a list of schedule objects")
    if len(raw) > MAX_SCHEDULES:
        raise policy_error("schedules", f"at most {MAX_SCHEDULES} schedules")
    schedules = tuple(_schedule(item, i) for i, item in enumerate(raw))
    names = [s.name for s in schedules]
    if len(set(names)) != len(names):
        raise policy_error("schedules", "two schedules have the same name")
    return schedules


# -- evaluation ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PolicyInputs:
    """What a policy is evaluated on (gathered by tasks.pool.economics from the pool's ledger)."""

    now: float
    fixed_idle: int  # the pool's configured idle target (the fixed floor)
    held: int  # machines occupying the group that are not idle (assigned, quarantined, foreign)
    max_size: int
    lead_s: float = DEFAULT_LEAD_S  # mean launch-to-ready time
    lead_p95_s: float = DEFAULT_LEAD_S  # how early a schedule's machines are launched
    recent_rate_per_s: float = 0.0
    # Assigns seen in [now - k weeks, now - k weeks + lead + slack] for k = 1, 2; None: no history for it.
    history: tuple[float | None, ...] = field(default=())
    idle_max: int = 0  # 0: no cap
    warm_goal: float = DEFAULT_WARM_GOAL  # adaptive's goal unless its spec names one


@dataclass(frozen=True)
class Decision:
    """A policy's answer: the idle target and why."""

    target: int
    reason: str


def poisson_cdf(k: int, mean: float) -> float:
    """P(Poisson(mean) <= k)."""
    if k < 0:
        return 0.0
    if mean <= 0:
        return 1.0
    log_mean = math.log(mean)
    total = 0.0
    for i in range(k + 1):
        total += math.exp(i * log_mean - mean - math.lgamma(i + 1))
    return min(1.0, total)


def palm_warm_share(buffer: int, mean_outstanding: float) -> float:
    """Palm's theorem: the share of claims served from a base stock of ``buffer`` machines.

    ``mean_outstanding`` is claim rate times mean launch time (the mean number launching).
    """
    return poisson_cdf(buffer - 1, mean_outstanding)


def base_stock(mean_outstanding: float, goal: float) -> int:
    """The smallest buffer S with P(Poisson(mean) <= S - 1) >= goal (0 when no claim is expected)."""
    if mean_outstanding <= 0:
        return 0
    log_mean = math.log(mean_outstanding)
    total = 0.0
    limit = int(mean_outstanding + 12 * math.sqrt(mean_outstanding) + 12)
    for s in range(1, min(limit, MAX_TARGET) + 1):
        total += math.exp((s - 1) * log_mean - mean_outstanding - math.lgamma(s))
        if total >= goal:
            return s
    return min(limit, MAX_TARGET)


def _adaptive(spec: PolicySpec, inputs: PolicyInputs) -> Decision:
    lead = max(1.0, inputs.lead_s)
    recent = inputs.recent_rate_per_s * lead
    known = [h for h in inputs.history if h is not None]
    past = sum(known) / len(known) if known else 0.0  # the weeks' mean: a Poisson count's best guess
    mean = max(recent, past)
    floor = inputs.fixed_idle if spec.floor is None else spec.floor
    goal = inputs.warm_goal if spec.goal is None else spec.goal
    stock = base_stock(mean, goal)
    source = "history" if past > recent else "recent"
    if not known:
        source += ", no history"
    reason = (
        f"adaptive: rate {inputs.recent_rate_per_s * 60:.2f}/min, lead {lead:.0f}s, "
        f"expected {mean:.1f} ({source}), goal {goal:g}"
    )
    if stock < floor:
        return Decision(floor, reason + f", floor {floor}")
    return Decision(stock, reason)


def open_schedules(schedules: Iterable[Schedule], *, now: float, lead_s: float) -> list[Schedule]:
    """Schedules whose window is open at ``now``, or opens within ``lead_s`` (launched early)."""
    active = []
    for s in schedules:
        start = s.last_start(now + lead_s)
        if start is not None and start + s.duration_s > now:
            active.append(s)
    return active


def evaluate(spec: PolicySpec, schedules: Sequence[Schedule], inputs: PolicyInputs) -> Decision:
    """The idle target of ``spec`` plus ``schedules`` at ``inputs.now``, clamped by idle_max.

    MaxSize is enforced by the planner (tasks.pool.planner.plan_capacity clamps desired capacity
    to it), so a target above what MaxSize leaves is reported as capped instead of hidden.
    """
    if spec.kind == "fixed":
        decision = Decision(inputs.fixed_idle if spec.idle is None else spec.idle, "fixed")
    else:
        decision = _adaptive(spec, inputs)
    for s in open_schedules(schedules, now=inputs.now, lead_s=inputs.lead_p95_s):
        if s.min_idle > decision.target:
            decision = Decision(s.min_idle, f"schedule: {s.name}")
    target = decision.target
    if inputs.idle_max > 0 and target > inputs.idle_max:
        target = inputs.idle_max
    if target != decision.target:
        decision = Decision(target, f"{decision.reason} (capped by idle_max={inputs.idle_max})")
    # MaxSize is the planner's to enforce (the pool is then reported capped); the reason says so.
    room = max(0, inputs.max_size - inputs.held)
    if inputs.max_size and target > room:
        decision = Decision(target, f"{decision.reason} (MaxSize leaves room for {room})")
    return decision
