"""``python -m bench NAME``: run warmpool's benchmarks against real processes.

Names: floor, sequential, burst, slowaws, refresh, orchestrator, profile, pools, launches, all, smoke.
Every run measures the no-op floor first (ratios need it), prints a table,
writes raw numbers to bench/results/NAME-<time>.json (and NAME-latest.json)
and a plot (bench/results/NAME-latest.png; ``all`` also docs/benchmarks.png).
``smoke`` runs everything at tiny sizes in well under a minute and exits
non-zero only if something is broken (a failed or duplicate assign), never
because a goal was missed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import Any

from bench import report
from bench.stack import REPO, RESULTS_DIR, Infra
from bench.stats import say

NAMES = (
    "floor",
    "sequential",
    "burst",
    "slowaws",
    "refresh",
    "orchestrator",
    "profile",
    "pools",
    "launches",
    "all",
    "smoke",
)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n", 1)[0])
    p.add_argument("name", choices=NAMES)
    p.add_argument("--n", type=int, help="sequential assigns per client (default 500)")
    p.add_argument("--burst", type=int, help="concurrent assigns in the burst (default 1000)")
    p.add_argument("--refresh-n", type=int, help="instances in the refresh benchmark (default 5000)")
    p.add_argument("--many-reservations", type=int, help="instances, one per reservation (default 1500; 0 skips)")
    p.add_argument("--sustain", type=float, help="seconds of sustained demand per design (default 60)")
    p.add_argument("--clients", type=int, help="concurrent users in the sustained benchmark (default 10)")
    p.add_argument("--no-profile", action="store_true", help="all: skip the py-spy pass")
    p.add_argument("--no-plot", action="store_true")
    return p.parse_args(argv)


def sizes_for(args: argparse.Namespace) -> Any:
    from bench.scenarios import Sizes

    sizes = Sizes.smoke() if args.name == "smoke" else Sizes.full()
    overrides = {
        "seq_n": args.n,
        "burst_n": args.burst,
        "refresh_n": args.refresh_n,
        "many_reservations_n": args.many_reservations,
        "sustain_s": args.sustain,
        "clients": args.clients,
    }
    return replace(sizes, **{k: v for k, v in overrides.items() if v is not None})


def run(name: str, infra: Infra, sizes: Any, args: argparse.Namespace, results: dict[str, Any]) -> None:
    from bench import scenarios
    from bench.launches import launches_scenario
    from bench.original import orchestrator_scenario
    from bench.pools import PoolSizes, pools_scenario

    if name == "smoke":
        results["floor"] = scenarios.floor(infra, sizes)
        say("\n=== smoke: sequential, burst, refresh, slow AWS on one stack ===")
        results.update(scenarios.smoke_scenario(infra, sizes))
        say("\n=== smoke: 1, 2 and 4 pools ===")
        results["pools"] = pools_scenario(infra, PoolSizes.smoke())
        return
    wanted = set(NAMES[:-2]) if name == "all" else {name}
    if args.no_profile:
        wanted.discard("profile")
    steps: list[tuple[str, str, Any]] = [
        ("floor", "floor", lambda: scenarios.floor(infra, sizes)),
        ("sequential", "sequential", lambda: scenarios.sequential_scenario(infra, sizes)),
        ("burst", "burst", lambda: scenarios.burst_scenario(infra, sizes)),
        ("slowaws", "slow_aws", lambda: scenarios.slow_aws_scenario(infra, sizes)),
        ("refresh", "refresh", lambda: scenarios.refresh_scenario(infra, sizes)),
        (
            "orchestrator",
            "orchestrator",
            lambda: orchestrator_scenario(
                infra, duration_s=sizes.sustain_s, clients=sizes.clients, seq_n=sizes.original_seq_n
            ),
        ),
        ("profile", "profile", lambda: scenarios.profile_scenario(infra, sizes, RESULTS_DIR)),
        ("pools", "pools", lambda: pools_scenario(infra)),
        ("launches", "launches", lambda: launches_scenario(infra)),
    ]
    for step, key, fn in steps:
        if step != "floor" and step not in wanted:
            continue
        started = time.monotonic()
        say(f"\n=== {step} ===")
        results[key] = fn()
        results.setdefault("durations_s", {})[key] = round(time.monotonic() - started, 1)


def broken(results: dict[str, Any]) -> list[str]:
    """What a smoke run must not see: lost or duplicate assigns."""
    problems = []
    for key in ("burst",):
        b = results.get(key)
        if b and not (b["completed"] == b["n"] and b["distinct_machines"] and b["all_in_group"]):
            problems.append(f"{key}: {b['completed']}/{b['n']} served, distinct={b['distinct_machines']}")
    slow = results.get("slow_aws", {}).get("burst")
    if slow and not (slow["completed"] == slow["n"] and slow["distinct_machines"]):
        problems.append("slow-AWS burst: not every assign served by a distinct machine")
    for key in ("sequential",):
        s = results.get(key)
        if s and not s["distinct_machines"]:
            problems.append(f"{key}: a machine was handed out twice")
    for count, run in results.get("pools", {}).get("runs", {}).items():
        agg = run["aggregate"]
        if agg["served"] != agg["wanted"] or not agg["distinct_machines"]:
            problems.append(
                f"pools x{count}: {agg['served']}/{agg['wanted']} served, distinct={agg['distinct_machines']}"
            )
    return problems


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if importlib.util.find_spec("moto") is None:
        # bench/ is not part of the wheel: it runs from a checkout, with the bench extra
        say("python -m bench needs moto (its AWS stand-in): pip install -e '.[bench]'")
        return 1
    sizes = sizes_for(args)
    run_dir = RESULTS_DIR / f"run-{args.name}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    results: dict[str, Any] = {"meta": report.meta(), "name": args.name, "sizes": asdict(sizes)}
    started = time.monotonic()
    say(f"warmpool benchmarks: {args.name} (logs in {run_dir.relative_to(REPO)})")
    try:
        with Infra(run_dir) as infra:
            run(args.name, infra, sizes, args, results)
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        from bench.measure import client_stats

        results["async_client_first_call"] = dict(client_stats)
        results["meta"]["total_s"] = round(time.monotonic() - started, 1)
        results["meta"]["loadavg_at_end"] = os.getloadavg()
        path = report.write_json(args.name, results)
        say(f"\nraw numbers: {path.relative_to(REPO)}")
    print(report.table(results))
    if not args.no_plot:
        target = REPO / "docs" / "benchmarks.png" if args.name == "all" else RESULTS_DIR / f"{args.name}-latest.png"
        png = report.plot(results, target)
        if png is not None:
            say(f"plot: {png.relative_to(REPO)}")
    if "profile" in results:
        say(json.dumps({k: results["profile"][k] for k in ("busy_share", "busy_categories")}, indent=1))
    say(f"total {results['meta']['total_s']:.0f}s")
    problems = broken(results)
    for p in problems:
        say(f"BROKEN: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
