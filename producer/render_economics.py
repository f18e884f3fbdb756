"""The economics lines of ``warmpool status`` (policy, figures, launch times)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.text import Text


def _wait_quantile(wait: Mapping[str, Any], q: float) -> str:
    """The upper bound of the bucket holding the q-quantile of waits ('-' when nothing was counted)."""
    counts = [int(c) for c in wait.get("counts") or []]
    total = sum(counts)
    if not total:
        return "-"
    running = 0
    for bound, count in zip(wait.get("buckets") or [], counts, strict=False):
        running += count
        if running >= q * total:
            return f"<= {bound}s" if bound != "+Inf" else f"> {wait['buckets'][-2]}s"
    return "-"


def economics_text(status: Mapping[str, Any]) -> Text | None:
    """Policy and its reason, warm share, waits, launches and launch times, terminations, idle cost."""
    econ = status.get("economics")
    if not isinstance(econ, Mapping):
        return None
    policy = econ.get("policy") or {}
    text = Text()
    text.append("policy ", style="bold")
    text.append(
        f"{policy.get('spec')} ({policy.get('source')}): idle target {policy.get('target')}, {policy.get('reason')}"
    )
    warm, waited, failed = (int(econ.get(k) or 0) for k in ("assigns_warm", "assigns_waited", "assigns_failed"))
    total = warm + waited + failed
    share = f"{100 * warm / total:.1f}%" if total else "-"
    wait = econ.get("wait_seconds") or {}
    text.append(
        f"\nassigns {total}: warm {warm} ({share}), waited {waited}, failed {failed}; "
        f"wait p50 {_wait_quantile(wait, 0.5)}, p99 {_wait_quantile(wait, 0.99)}"
    )
    ready = econ.get("launch_ready_seconds") or {}
    if ready.get("count"):
        text.append(
            f"\nlaunches {econ.get('launches')}; launch to ready (last {ready['count']}): "
            f"p50 {ready['p50']}s, p95 {ready['p95']}s, max {ready['max']}s"
        )
    else:
        text.append(f"\nlaunches {econ.get('launches')}; launch to ready: not measured yet")
    terms = econ.get("terminations") or {}
    shown = ", ".join(f"{k} {v}" for k, v in sorted(terms.items())) or "none"
    hours = float(econ.get("idle_machine_seconds") or 0) / 3600
    text.append(f"\nterminations: {shown}; idle machine-hours {hours:.2f}")
    return text
