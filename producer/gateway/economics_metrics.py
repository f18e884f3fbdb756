"""Prometheus series of the pool's economics (docs/economics.md), from the ``economics`` part of a status.

The figures are counted by the pool worker that owns the pool and kept in the pool's
state (tasks.pool.ledger), so every gateway replica exports the same numbers whoever
made the assigns (the gateway, a PoolClient, the CLI).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)


def _num(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return 0.0


def _assigns(econ: Mapping[str, Any]) -> Iterator[Metric]:
    fam = CounterMetricFamily(
        "warmpool_pool_assigns", "Assigns counted by the pool worker, by how they were served", labels=["served"]
    )
    for served in ("warm", "waited", "failed"):
        fam.add_metric([served], _num(econ.get(f"assigns_{served}")))
    yield fam


def _waits(econ: Mapping[str, Any]) -> Iterator[Metric]:
    wait = econ.get("wait_seconds") or {}
    bounds, counts = wait.get("buckets") or [], wait.get("counts") or []
    if not counts or len(bounds) != len(counts):
        return
    cumulative, buckets = 0.0, []
    for bound, count in zip(bounds, counts, strict=True):
        cumulative += _num(count)
        buckets.append(("+Inf" if bound == "+Inf" else repr(float(bound)), cumulative))
    yield HistogramMetricFamily(
        "warmpool_pool_wait_seconds",
        "Seconds an assign waited for a machine (0: served warm), counted by the pool worker",
        buckets=buckets,
        sum_value=_num(wait.get("sum")),
    )


def _launches(econ: Mapping[str, Any]) -> Iterator[Metric]:
    yield CounterMetricFamily(
        "warmpool_pool_launches", "Machines the pool asked AWS to launch", value=_num(econ.get("launches"))
    )
    ready = econ.get("launch_ready_seconds") or {}
    yield SummaryMetricFamily(
        "warmpool_launch_ready_seconds",
        "Launch to ready (pending to idle, readiness check included) of the pool's machines",
        count_value=int(_num(ready.get("total_count"))),
        sum_value=_num(ready.get("total_sum")),
    )
    recent = GaugeMetricFamily(
        "warmpool_launch_ready_recent_seconds",
        "Launch-to-ready seconds of the most recent launches, by quantile",
        labels=["quantile"],
    )
    for key, q in (("p50", "0.5"), ("p95", "0.95"), ("max", "1")):
        if ready.get(key) is not None:
            recent.add_metric([q], _num(ready.get(key)))
    yield recent


def _costs(econ: Mapping[str, Any]) -> Iterator[Metric]:
    terms = CounterMetricFamily(
        "warmpool_pool_terminations", "Machines terminated by the pool, by reason", labels=["reason"]
    )
    for reason, count in sorted((econ.get("terminations") or {}).items()):
        terms.add_metric([str(reason)], _num(count))
    yield terms
    yield CounterMetricFamily(
        "warmpool_idle_machine_seconds",
        "Idle machine-seconds the buffer has cost (idle machines integrated over time)",
        value=_num(econ.get("idle_machine_seconds")),
    )


def _policy(econ: Mapping[str, Any]) -> Iterator[Metric]:
    policy = econ.get("policy") or {}
    yield GaugeMetricFamily(
        "warmpool_policy_idle_target", "Idle target of the capacity policy now", value=_num(policy.get("target"))
    )
    reason = str(policy.get("reason") or "")
    kind = reason.split(" (", 1)[0] if reason.startswith("schedule:") else reason.split(":", 1)[0]
    info = GaugeMetricFamily(
        "warmpool_policy_info",
        "The capacity policy in force (spec, where from) and what set the target (fixed, schedule: NAME, adaptive)",
        labels=["spec", "source", "reason"],
    )
    info.add_metric([str(policy.get("spec") or ""), str(policy.get("source") or ""), kind[:80]], 1.0)
    yield info


def economics_families(status: Mapping[str, Any]) -> Iterator[Metric]:
    """Every economics series of one status snapshot (nothing when the worker reports none)."""
    econ = status.get("economics")
    if not isinstance(econ, Mapping):
        return
    for family in (_assigns, _waits, _launches, _costs, _policy):
        yield from family(econ)
