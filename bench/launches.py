"""``python -m bench launches``: how soon a launched machine becomes idle, on real processes.

A pool (solo worker, aws worker, beat every 10 s) on moto, where a launched
instance is running and InService at once: its launch-to-idle time is what
warmpool adds on top of AWS. Each round one project takes an idle machine; the
pool launches its replacement, and the pool worker records the replacement's
launch-to-idle seconds (``status["economics"]["launch_ready_seconds"]``).
Run twice: with the fast poll of pending machines (``WARMPOOL_PENDING_POLL_S=1``,
the default) and without it (0: the next beat refresh notices the launch), the
baseline in the same run. Then, with nothing pending, the AWS reads over a
quiet minute: the fast poll must add none.
"""

from __future__ import annotations

import time
from typing import Any

from bench.stack import Infra, Warmpool
from bench.stats import ratio, say, wait_until
from producer.client import PoolClient

ROUNDS = 12
IDLE = 6
ROUND_GAP_S = 3.0
QUIET_S = 60.0
REFRESH_S = 10.0
GOAL_P95_S = 2.0


def _counts(client: PoolClient) -> dict[str, Any]:
    return dict(client.status()["counts"])


def _launch_run(infra: Infra, *, poll_s: float, rounds: int, quiet_s: float) -> dict[str, Any]:
    assert infra.app is not None
    label = f"launches-poll{poll_s:g}"
    # A buffer deep enough that the beat-only run never runs dry between its refreshes.
    with Warmpool(infra, label, idle_target=IDLE, refresh_s=REFRESH_S) as wp:
        wp.pool_env["WARMPOOL_PENDING_POLL_S"] = repr(poll_s)
        wp.pool_env["WARMPOOL_SCALE_IN_DELAY_S"] = "0"
        wp.start(group_steps=[IDLE], max_size=IDLE + rounds + 2)
        client = PoolClient(app=infra.app, reply_timeout_s=30.0)
        for i in range(rounds):
            client.assign(f"{label}-{i}")
            say(f"[{label}] round {i + 1}/{rounds}: assigned, a replacement launches")
            time.sleep(ROUND_GAP_S)
        wait_until(
            lambda: (c := _counts(client))["idle"] == IDLE and c["pending"] == 0,
            timeout_s=3 * REFRESH_S,
            what="every replacement idle",
            interval_s=0.2,
        )
        status = client.status()
        launches = status["economics"]["launch_ready_seconds"]
        before = dict(status.get("aws_calls") or {})
        say(f"[{label}] nothing pending: counting AWS reads for {quiet_s:.0f}s")
        time.sleep(quiet_s)
        after = dict(client.status().get("aws_calls") or {})
        quiet = {a: n - before.get(a, 0) for a, n in after.items() if n > before.get(a, 0)}
        return {"poll_s": poll_s, "launch_ready_seconds": launches, "quiet_aws_calls": quiet, "quiet_s": quiet_s}


def launches_scenario(infra: Infra, *, rounds: int = ROUNDS, quiet_s: float = QUIET_S) -> dict[str, Any]:
    """Launch-to-idle with the fast poll and without it (the baseline), and AWS reads while nothing is pending."""
    fast = _launch_run(infra, poll_s=1.0, rounds=rounds, quiet_s=quiet_s)
    slow = _launch_run(infra, poll_s=0.0, rounds=rounds, quiet_s=quiet_s)
    return {"fast_poll": fast, "beat_only": slow, "refresh_s": REFRESH_S, "goal_p95_s": GOAL_P95_S}


def launches_rows(results: dict[str, Any]) -> list[tuple[str, str, Any, Any, Any, str, bool | None]]:
    """Table rows (bench/report.py's shape)."""
    if not results:
        return []
    fast, slow = results["fast_poll"], results["beat_only"]
    f95, s95 = fast["launch_ready_seconds"].get("p95"), slow["launch_ready_seconds"].get("p95")
    rows: list[tuple[str, str, Any, Any, Any, str, bool | None]] = [
        (
            "9 launches",
            "launch-to-idle p95 s (fast poll | beat only)",
            f95,
            s95,
            ratio(f95, s95) if f95 is not None and s95 else float("nan"),
            f"<= {GOAL_P95_S:g} s",
            None if f95 is None else f95 <= GOAL_P95_S,
        )
    ]
    reads = fast["quiet_aws_calls"].get("DescribeAutoScalingGroups", 0)
    expected = fast["quiet_s"] / results["refresh_s"]
    rows.append(
        (
            "9 launches",
            f"group reads in {fast['quiet_s']:.0f}s, nothing pending",
            reads,
            round(expected, 1),
            ratio(reads, expected),
            "beat's only",
            reads <= expected + 1,
        )
    )
    return rows
