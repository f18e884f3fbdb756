"""The series the gateway really exports, read from its own /metrics rendering.

The pool status comes from the real ``build_status`` over an in-memory store (the shape the
pool worker answers with), and every gateway counter and histogram is touched once, so each
family shows up with its samples (``_total``, ``_bucket``, ``_count``, ``_sum``...).
"""

from __future__ import annotations

import functools
import re

from prometheus_client.parser import text_string_to_metric_families

from producer.gateway.metrics import GatewayMetrics
from tasks.pool.model import AddressKind, GroupSnapshot
from tasks.pool.ports import RefreshStats
from tasks.pool.status import build_status
from tasks.state.memory_store import InMemoryStore

NAME = re.compile(r"\bwarmpool_[a-z0-9_]+\b")


@functools.cache
def families() -> dict[str, str]:
    """Family name -> type (counter, gauge, histogram) of everything /metrics serves."""
    metrics = GatewayMetrics()
    metrics.observe_assign("assigned", 0.002)
    metrics.observe_release("released")
    metrics.observe_touch("touched")
    store = InMemoryStore()
    # one refresh folded in (refresh age exists only after one), with its AWS call counts
    empty = GroupSnapshot("warmpool-pool", min_size=0, max_size=5, desired_capacity=0, instances=(), observed_at=10.0)
    store.apply_snapshot(empty, kind=AddressKind.PUBLIC, now=10.0)
    store.record_refresh_stats(RefreshStats(0.2, {"DescribeInstances": 1}, {"DescribeInstances": 1}))
    status = build_status(store, asg_name="warmpool-pool", idle_target=2, address=AddressKind.PUBLIC, now=12.0)
    data, _ = metrics.render({"default": status})
    return {f.name: f.type for f in text_string_to_metric_families(data.decode())}


@functools.cache
def sample_names() -> frozenset[str]:
    """Every series name a PromQL expression can select (family names plus their sample suffixes)."""
    metrics_text = []
    for name, kind in families().items():
        metrics_text.append(name)
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_count", "_sum", "_created"),
        }.get(kind, ())
        metrics_text.extend(name + s for s in suffixes)
    return frozenset(metrics_text)


def names_in(expression: str) -> set[str]:
    """The warmpool_* series an expression selects."""
    return set(NAME.findall(expression))
