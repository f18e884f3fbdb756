"""The simulation: the product's own PoolService on InMemoryStore + FakeCloud, on a virtual clock.

Every process around the pool worker is played here, with the product's timings:
beat refreshes every ``refresh_s``; the side effects the service asks for run as the aws
workers would (tags and terminations at once, desired capacity raised as
``aws_jobs.set_desired`` does, top-ups 0.5 s later as ``warmpool.rebalance`` is sent, early
refreshes after the delay the service names). The cloud launches each machine in
``launch_seconds`` (fixed or uniform). Callers assign with ``wait``; a release of a project
whose assign still waits withdraws it, as the gateway does for a caller that left.

Two shortcuts, with no effect on what the service decides: a refresh that would read exactly
what the last one read (nothing changed at AWS) runs what apply_snapshot runs after folding in
an unchanged snapshot (serve waiters, rebalance, converge) without re-reading; and an early
(poll) refresh in that case is moved to the first poll tick after the next launch completes.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sandbox.sim.trace import ASSIGN, TraceEvent
from tasks.cloud.fake_cloud import FakeCloud
from tasks.errors import CapacityRejected
from tasks.pool.ledger import MemoryLedger
from tasks.pool.model import Machine
from tasks.pool.service import PoolConfig, PoolService
from tasks.state.memory_store import InMemoryStore

TOP_UP_COUNTDOWN_S = 0.5  # tasks.worker.side_effects sends warmpool.rebalance with this countdown
ASG = "sim-asg"


@dataclass(frozen=True)
class SimSettings:
    """How the world around the pool behaves in a run."""

    launch_s: tuple[float, float] = (60.0, 60.0)  # uniform between; equal: fixed
    wait_s: float = 600.0  # a caller gives up after this
    score_from: float | None = None  # events before it only feed the history
    refresh_s: float = 10.0  # WARMPOOL_REFRESH_SECONDS
    min_size: int = 0
    max_size: int = 1000
    seed: int = 1
    sample_every_s: float = 300.0  # the plot's time series


@dataclass
class Sample:
    at: float
    idle: int
    pending: int
    assigned: int
    target: int


@dataclass
class RunResult:
    """What a run measured (report.py makes the contract's JSON of it)."""

    policy: str
    waits: list[float] = field(default_factory=list)  # per scored assign (warm: 0; failed: its wait)
    warm: int = 0
    failed: int = 0
    machine_s: float = 0.0
    assigned_s: float = 0.0
    launches: int = 0
    terminations: int = 0
    samples: list[Sample] = field(default_factory=list)
    served: list[tuple[float, float]] = field(default_factory=list)  # (arrival, wait) of scored assigns
    status: dict[str, Any] = field(default_factory=dict)


class SimCloud(FakeCloud):
    """A FakeCloud with per-launch delays, lifetimes recorded, and a change counter."""

    def __init__(self, settings: SimSettings, clock: Callable[[], float]) -> None:
        self._rng = random.Random(settings.seed)
        self._lo, self._hi = settings.launch_s
        self.lifetimes: dict[str, list[float]] = {}  # instance -> [launched, ended (0: running)]
        self.version = 0
        self._ready_at: float | None = None
        self._ready_at_version = -1
        super().__init__(ASG, min_size=settings.min_size, max_size=settings.max_size, clock=clock)

    def _launch(self) -> None:
        self.launch_delay_s = self._rng.uniform(self._lo, self._hi) if self._hi > self._lo else self._lo
        before = set(self._instances)
        super()._launch()
        for iid in set(self._instances) - before:
            self.lifetimes[iid] = [self._clock(), 0.0]
        self.version += 1

    def _settle(self) -> None:
        pending = sum(1 for i in self._instances.values() if i.ready_at)
        super()._settle()
        if sum(1 for i in self._instances.values() if i.ready_at) != pending:
            self.version += 1

    def next_ready_at(self) -> float | None:
        # Asked after every refresh and poll; instances change only with the version.
        if self._ready_at_version != self.version:
            self._ready_at = min((i.ready_at for i in self._instances.values() if i.ready_at), default=None)
            self._ready_at_version = self.version
        return self._ready_at

    def terminate_instance(self, instance_id: str, *, decrement: bool) -> bool:
        done = super().terminate_instance(instance_id, decrement=decrement)
        if done:
            self.lifetimes[instance_id][1] = self._clock()
            self.version += 1
        return done

    def tag_project(self, instance_id: str, *, project_id: str, assigned_at: str) -> bool:
        self.version += 1
        return super().tag_project(instance_id, project_id=project_id, assigned_at=assigned_at)

    def protect(self, instance_ids: Sequence[str]) -> list[str]:
        self.version += 1
        return super().protect(instance_ids)

    def tag_group(self, epoch: str) -> None:
        self.version += 1
        super().tag_group(epoch)


class Simulation:
    """One policy over one trace."""

    def __init__(self, events: Sequence[TraceEvent], config: PoolConfig, settings: SimSettings, *, label: str) -> None:
        self.events = events
        self.settings = settings
        self.now = events[0].at - 3_600.0  # an hour to start the pool before the first event
        self.end = events[-1].at
        self.score_from = events[0].at if settings.score_from is None else settings.score_from
        self.cloud = SimCloud(settings, self.clock)
        self.store = InMemoryStore(monotonic=self.clock)
        self.result = RunResult(policy=label)
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._requests = itertools.count(1)
        self._waiting: dict[str, tuple[str, float]] = {}  # request id -> (project, arrival)
        self._request_of: dict[str, str] = {}  # project -> its waiting request id
        self._held_since: dict[str, float] = {}  # project -> when it got its machine
        self._poll_at: float | None = None
        self._last_read = -1
        self.service = PoolService(
            self.store,
            _Effects(self),
            config=replace(config, asg_name=ASG),
            clock=self.clock,
            ledger=MemoryLedger(),
        )

    def clock(self) -> float:
        return self.now

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (when, next(self._seq), action))

    # -- the processes around the pool worker ------------------------------------------------
    def _read(self) -> Any:
        return replace(self.cloud.describe_group(), seq=self.store.next_refresh_seq())

    def _unchanged(self) -> bool:
        """Whether a refresh now would read exactly what the last one read."""
        due = self.cloud.next_ready_at()
        return self.cloud.version == self._last_read and (due is None or due > self.now)

    def _refresh(self) -> None:
        if self._unchanged():
            # The same snapshot again: apply_snapshot would change nothing but refreshed_at, and
            # then serve waiters and rebalance; run those (the product's code) without the re-read.
            self.service.serve_waiters()
            self.service.rebalance(converge=True)
            return
        snapshot = self._read()
        self._last_read = self.cloud.version
        self.service.apply_snapshot(snapshot)

    def beat(self) -> None:
        self._refresh()
        if self.now < self.end:
            self.at(self.now + self.settings.refresh_s, self.beat)

    def early_refresh(self, token: float) -> None:
        if token != self._poll_at:
            return  # superseded by an earlier one
        self._poll_at = None
        if self._unchanged():
            due = self.cloud.next_ready_at()
            if due is not None:  # nothing new at AWS: the first poll tick that can see something new
                delay = self.service.config.pending_poll_s or 1.0
                self.refresh_after(max(1, math.ceil((due - self.now) / delay)) * delay)
            return
        self._refresh()

    def refresh_after(self, delay_s: float) -> None:
        when = self.now + max(0.0, delay_s)
        if self._poll_at is not None and self._poll_at <= when:
            return  # one already due sooner (the refresh_soon flag does this for the product)
        self._poll_at = when
        self.at(when, functools.partial(self.early_refresh, when))

    def top_up(self) -> None:
        self.service.top_up()

    # -- callers -------------------------------------------------------------------------
    def _scored(self, arrival: float) -> bool:
        return arrival >= self.score_from

    def assign(self, event: TraceEvent) -> None:
        request_id = f"r-{next(self._requests)}"
        result = self.service.assign(event.project_id, wait_s=self.settings.wait_s, request_id=request_id)
        status = result.get("status")
        if status == "assigned":
            self._held_since.setdefault(event.project_id, self.now)
            self._score(event.at, 0.0, warm=True)
        elif status == "waiting":
            self._waiting[request_id] = (event.project_id, event.at)
            self._request_of[event.project_id] = request_id
        else:
            self._score(event.at, 0.0, failed=True)

    def delivered(self, request_id: str, result: dict[str, Any]) -> None:
        waiting = self._waiting.pop(request_id, None)
        if waiting is None:
            return
        project, arrival = waiting
        self._request_of.pop(project, None)
        if result.get("status") == "assigned":
            self._held_since.setdefault(project, self.now)
            self._score(arrival, self.now - arrival)
        else:
            self._score(arrival, self.now - arrival, failed=True)

    def _score(self, arrival: float, wait: float, *, warm: bool = False, failed: bool = False) -> None:
        if not self._scored(arrival):
            return
        r = self.result
        r.waits.append(wait)
        r.served.append((arrival, wait))
        r.warm += warm
        r.failed += failed

    def release(self, event: TraceEvent) -> None:
        request_id = self._request_of.pop(event.project_id, None)
        if request_id is not None:  # still waiting: the caller left
            self.service.withdraw(request_id, event.project_id)
            waiting = self._waiting.pop(request_id, None)
            if waiting is not None:
                self._score(waiting[1], self.now - waiting[1], failed=True)
        since = self._held_since.pop(event.project_id, None)
        if since is not None:
            self.result.assigned_s += _overlap(since, self.now, self.score_from, self.end)
        self.service.release(event.project_id)

    # -- the run -------------------------------------------------------------------------
    def sample(self) -> None:
        counts = self.store.view().counts()
        self.result.samples.append(
            Sample(self.now, counts["idle"], counts["pending"], counts["assigned"], self.service.economics.target)
        )
        if self.now < self.end:
            self.at(self.now + self.settings.sample_every_s, self.sample)

    def run(self) -> RunResult:
        self.at(self.now, self.beat)
        self.at(self.score_from, self.sample)
        for event in self.events:
            self.at(event.at, functools.partial(self.assign if event.event == ASSIGN else self.release, event))
        while self._queue:
            when, _, action = heapq.heappop(self._queue)
            if when > self.end:
                break
            self.now = max(self.now, when)
            action()
        self.now = self.end
        self._finish()
        return self.result

    def _finish(self) -> None:
        r = self.result
        for project, since in self._held_since.items():
            r.assigned_s += _overlap(since, self.end, self.score_from, self.end)
            del project
        for _, (launched, ended) in self.cloud.lifetimes.items():
            r.machine_s += _overlap(launched, ended or self.end, self.score_from, self.end)
            r.launches += self.score_from <= launched <= self.end
            r.terminations += bool(ended) and self.score_from <= ended <= self.end
        for request_id, (_, arrival) in list(self._waiting.items()):
            # Still waiting at the end of the trace: scored as waited so far (not yet failed).
            self._score(arrival, self.end - arrival, failed=self.end - arrival >= self.settings.wait_s)
            del self._waiting[request_id]
        r.status = self.service.status()["economics"]


def _overlap(start: float, end: float, low: float, high: float) -> float:
    return max(0.0, min(end, high) - max(start, low))


class _Effects:
    """The SideEffects port, carried out inside the simulation as the aws workers would."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim

    def tag_assignments(self, machines: Sequence[Machine]) -> None:
        for m in machines:
            if m.project_id:
                self.sim.cloud.tag_and_protect(m.instance_id, project_id=m.project_id, assigned_at=m.assigned_at or "")

    def terminate(self, instance_id: str, *, decrement: bool) -> None:
        self.sim.cloud.terminate_instance(instance_id, decrement=decrement)

    def set_desired(self, desired: int) -> None:
        try:
            self.sim.cloud.raise_desired_capacity(desired)
        except CapacityRejected:
            pass  # what aws_jobs.set_desired does: the next refresh shows the real bounds

    def tag_group(self, epoch: str) -> None:
        self.sim.cloud.tag_group(epoch)

    def top_up(self) -> None:
        self.sim.at(self.sim.now + TOP_UP_COUNTDOWN_S, self.sim.top_up)

    def refresh(self, *, delay_s: float) -> None:
        self.sim.refresh_after(delay_s)

    def probe(self, candidates: list[tuple[str, str]]) -> None:
        return None  # no readiness URL in a simulation

    def deliver(self, request_id: str, result: dict[str, Any]) -> None:
        self.sim.delivered(request_id, result)
