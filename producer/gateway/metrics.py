"""Prometheus metrics of the HTTP gateway, in a registry of its own.

Two kinds of series:

* **Events counted by the gateway** (assign latency, assigns and releases by
  outcome): ordinary counters and a histogram, updated as requests finish.
* **Pool state** (machines by state, desired/min/max, refresh age, capped;
  the worker's own totals of lost and unready machines as counters): built at
  scrape time from one ``status`` snapshot of each pool's worker, every
  series labelled with its ``pool``. Each family
  comes from one small function of the snapshot listed in ``STATUS_FAMILIES``;
  adding a series the worker starts reporting later is one more such function.

Nothing here registers in prometheus_client's global registry, so several
gateway apps (tests) never collide.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from producer.gateway.economics_metrics import economics_families

# Assign latency: a served assign takes milliseconds (one Celery round trip is
# ~1.5 ms here); waiting for capacity can take up to the caller's wait.
ASSIGN_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    math.inf,
)

MACHINE_STATES = ("pending", "idle", "assigned", "releasing", "quarantined", "foreign")

StatusFamilies = Callable[[Mapping[str, Any]], Iterable[Metric]]


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def machines_by_state(status: Mapping[str, Any]) -> Iterator[Metric]:
    fam = GaugeMetricFamily("warmpool_machines", "Machines in the pool by state", labels=["state"])
    counts = status.get("counts") or {}
    states = list(MACHINE_STATES) + sorted(k for k in counts if k not in MACHINE_STATES)
    for state in states:
        fam.add_metric([str(state)], _number(counts.get(state)) or 0.0)
    yield fam


def group_bounds(status: Mapping[str, Any]) -> Iterator[Metric]:
    group = status.get("group") or {}
    for key, name, doc in (
        ("desired_capacity", "warmpool_desired_capacity", "Desired capacity of the Auto Scaling Group"),
        ("min_size", "warmpool_min_size", "MinSize of the Auto Scaling Group"),
        ("max_size", "warmpool_max_size", "MaxSize of the Auto Scaling Group"),
        ("wanted", "warmpool_wanted_capacity", "Capacity the pool wants before clamping to MinSize/MaxSize"),
    ):
        value = _number(group.get(key))
        if value is not None:
            yield GaugeMetricFamily(name, doc, value=value)
    yield GaugeMetricFamily(
        "warmpool_capped",
        "1 when the pool wants more machines than MaxSize allows",
        value=1.0 if group.get("capped") else 0.0,
    )


def idle_target(status: Mapping[str, Any]) -> Iterator[Metric]:
    value = _number(status.get("idle_target"))
    if value is not None:
        yield GaugeMetricFamily("warmpool_idle_target", "Idle machines the pool keeps ready", value=value)


def lost_machines(status: Mapping[str, Any]) -> Iterator[Metric]:
    value = _number(status.get("lost_total"))
    if value is not None:
        # A counter: it only grows while the state store lives. A flushed store
        # restarts it from zero, which rate()/increase() read as a counter reset.
        yield CounterMetricFamily(
            "warmpool_lost_machines",
            "Assigned machines that vanished from AWS (total recorded by the pool worker)",
            value=value,
        )


def launch_failures(status: Mapping[str, Any]) -> Iterator[Metric]:
    value = _number(status.get("unready_total"))
    if value is not None:
        yield CounterMetricFamily(
            "warmpool_unready_machines",
            "Machines terminated and replaced because they never became ready within the timeout",
            value=value,
        )
    if "scale_up_paused_until" in status:
        yield GaugeMetricFamily(
            "warmpool_scale_up_paused",
            "1 while scale-up is paused (back-off after machines kept failing to become ready)",
            value=1.0 if status.get("scale_up_paused_until") else 0.0,
        )


def refresh_age(status: Mapping[str, Any]) -> Iterator[Metric]:
    value = _number(status.get("refresh_age_s"))
    if value is not None:
        yield GaugeMetricFamily(
            "warmpool_refresh_age_seconds",
            "Seconds since the last successful refresh from AWS",
            value=value,
        )
    yield GaugeMetricFamily(
        "warmpool_refresh_error",
        "1 when the last refresh from AWS failed",
        value=1.0 if status.get("refresh_error") else 0.0,
    )


def refresh_duration(status: Mapping[str, Any]) -> Iterator[Metric]:
    value = _number(status.get("refresh_duration_s"))
    if value is not None:
        yield GaugeMetricFamily(
            "warmpool_refresh_duration_seconds",
            "Wall time of the last refresh's AWS reads (DescribeAutoScalingGroups + DescribeInstances)",
            value=value,
        )


def aws_api(status: Mapping[str, Any]) -> Iterator[Metric]:
    for key, name, doc in (
        ("aws_calls", "warmpool_aws_api_calls_total", "AWS API attempts made by the aws workers, by action"),
        ("aws_errors", "warmpool_aws_api_errors_total", "AWS API attempts that failed (throttled, 5xx, refused)"),
    ):
        counts = status.get(key)
        if not isinstance(counts, Mapping):
            continue
        family = CounterMetricFamily(name, doc, labels=["action"])
        for action, count in sorted(counts.items()):
            number = _number(count)
            if number is not None:
                family.add_metric([str(action)], number)
        yield family


def waiting_requests(status: Mapping[str, Any]) -> Iterator[Metric]:
    waiting = status.get("waiting")
    if isinstance(waiting, list):  # present once the worker keeps waiting callers
        yield GaugeMetricFamily(
            "warmpool_waiting_requests",
            "Assign requests waiting for a machine",
            value=float(len(waiting)),
        )


# One function per family derived from a status snapshot. To publish a new
# series the worker reports (AWS calls and errors by action, refresh duration),
# add one function here.
STATUS_FAMILIES: tuple[StatusFamilies, ...] = (
    economics_families,
    machines_by_state,
    group_bounds,
    idle_target,
    lost_machines,
    launch_failures,
    refresh_age,
    refresh_duration,
    aws_api,
    waiting_requests,
)


def labelled(metrics: Iterable[Metric], pool: str, into: dict[str, Metric]) -> None:
    """Add ``metrics`` to ``into`` (one family per name), every sample labelled with its ``pool``."""
    for metric in metrics:
        family = into.get(metric.name)
        if family is None:
            family = into[metric.name] = Metric(metric.name, metric.documentation, metric.type, metric.unit)
        for sample in metric.samples:
            family.add_sample(sample.name, {"pool": pool, **sample.labels}, sample.value, sample.timestamp)


class PoolStatusCollector(Collector):
    """Gauges from the latest status snapshot of each pool, labelled ``pool``; ``warmpool_pool_status_up`` per pool."""

    def __init__(self, families: Iterable[StatusFamilies] = STATUS_FAMILIES) -> None:
        self.families = tuple(families)
        self.snapshots: Mapping[str, Mapping[str, Any] | None] = {}

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "warmpool_pool_status_up",
            "1 when the pool's worker answered the status job of this scrape",
            labels=["pool"],
        )
        merged: dict[str, Metric] = {}
        for pool, snapshot in self.snapshots.items():
            up.add_metric([pool], 0.0 if snapshot is None else 1.0)
            if snapshot is not None:
                for family in self.families:
                    labelled(family(snapshot), pool, merged)
        yield up
        yield from merged.values()


class GatewayMetrics:
    """Every series the gateway exports, in its own CollectorRegistry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.assign_latency = Histogram(
            "warmpool_assign_duration_seconds",
            "Time to answer an assign request (including any wait for capacity), by outcome",
            labelnames=["pool", "outcome"],
            buckets=ASSIGN_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.assigns = Counter(
            "warmpool_assigns",
            "Assign requests answered by the gateway, by outcome",
            labelnames=["pool", "outcome"],
            registry=self.registry,
        )
        self.releases = Counter(
            "warmpool_releases",
            "Release requests answered by the gateway, by outcome",
            labelnames=["pool", "outcome"],
            registry=self.registry,
        )
        self.touches = Counter(
            "warmpool_touches",
            "Lease renewals answered by the gateway, by outcome",
            labelnames=["pool", "outcome"],
            registry=self.registry,
        )
        self.pool = PoolStatusCollector()
        self.registry.register(self.pool)

    def observe_assign(self, outcome: str, seconds: float, *, pool: str = "default") -> None:
        self.assigns.labels(pool=pool, outcome=outcome).inc()
        self.assign_latency.labels(pool=pool, outcome=outcome).observe(max(0.0, seconds))

    def observe_release(self, outcome: str, *, pool: str = "default") -> None:
        self.releases.labels(pool=pool, outcome=outcome).inc()

    def observe_touch(self, outcome: str, *, pool: str = "default") -> None:
        self.touches.labels(pool=pool, outcome=outcome).inc()

    def render(self, statuses: Mapping[str, Mapping[str, Any] | None], accept: str = "") -> tuple[bytes, str]:
        """Exposition bytes and content type (negotiated from ``accept``), pool gauges from ``statuses``.

        ``statuses``: pool name -> its status snapshot, or None when its worker did
        not answer (its gauges are left out and ``warmpool_pool_status_up`` is 0).
        """
        encoder, content_type = choose_encoder(accept)
        self.pool.snapshots = statuses
        try:
            data: bytes = encoder(self.registry)
        finally:
            self.pool.snapshots = {}
        return data, content_type
