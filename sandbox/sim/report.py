"""A run's figures as the contract's JSON object, a table, and a plot (docs/economics.md)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sandbox.sim.engine import RunResult


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile by the nearest-rank method (0 for no values)."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def to_json(r: RunResult) -> dict[str, Any]:
    """The contract's object: policy, assigns, warm(_ratio), failed, wait_s, machine hours, launches, terminations."""
    assigns = len(r.waits)
    machine_h = r.machine_s / 3600
    assigned_h = r.assigned_s / 3600
    return {
        "policy": r.policy,
        "assigns": assigns,
        "warm": r.warm,
        "warm_ratio": round(r.warm / assigns, 6) if assigns else 0.0,
        "failed": r.failed,
        "wait_s": {
            "p50": round(percentile(r.waits, 0.50), 3),
            "p95": round(percentile(r.waits, 0.95), 3),
            "p99": round(percentile(r.waits, 0.99), 3),
            "max": round(max(r.waits, default=0.0), 3),
        },
        "machine_hours": round(machine_h, 3),
        "assigned_machine_hours": round(assigned_h, 3),
        "overhead_machine_hours": round(machine_h - assigned_h, 3),
        "launches": r.launches,
        "terminations": r.terminations,
    }


def table(rows: Sequence[dict[str, Any]]) -> Any:
    """The runs side by side as a rich table."""
    from rich.table import Table

    t = Table(title="warmpool simulate", title_justify="left")
    for column in (
        "policy",
        "assigns",
        "warm %",
        "failed",
        "wait p50",
        "p95",
        "p99",
        "max",
        "machine h",
        "overhead h",
        "launches",
    ):
        t.add_column(column, justify="left" if column == "policy" else "right")
    for row in rows:
        w = row["wait_s"]
        t.add_row(
            row["policy"],
            str(row["assigns"]),
            f"{100 * row['warm_ratio']:.2f}",
            str(row["failed"]),
            f"{w['p50']:.1f}",
            f"{w['p95']:.1f}",
            f"{w['p99']:.1f}",
            f"{w['max']:.1f}",
            f"{row['machine_hours']:.1f}",
            f"{row['overhead_machine_hours']:.1f}",
            str(row["launches"]),
        )
    return t


def plot(results: Sequence[RunResult], path: str) -> None:
    """Demand, idle buffer and waits over time, one line per policy (matplotlib, warmpool[plot])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (demand, buffer, waits) = plt.subplots(3, 1, figsize=(12, 9), sharex=True)
    first = results[0]
    if first.served:
        start = min(a for a, _ in first.served)
        hours = [(a - start) / 3600 for a, _ in first.served]
        demand.hist(hours, bins=max(1, int(max(hours) * 2) + 1), color="grey")
    demand.set_ylabel("assigns / 30 min")
    for r in results:
        if not r.samples:
            continue
        t0 = r.samples[0].at
        xs = [(s.at - t0) / 3600 for s in r.samples]
        buffer.plot(xs, [s.idle + s.pending for s in r.samples], label=r.policy, linewidth=0.8)
        if r.served:
            waits.scatter(
                [(a - t0) / 3600 for a, w in r.served if w > 0], [w for _, w in r.served if w > 0], s=4, label=r.policy
            )
    buffer.set_ylabel("idle + launching")
    buffer.legend(loc="upper right", fontsize="small")
    waits.set_ylabel("wait s (waited assigns)")
    waits.set_xlabel("hours since the first scored assign")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
