"""``warmpool simulate`` (registered by producer/cli_economics.py): arguments, runs, output, exit codes."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from typing import Any

from sandbox.sim.engine import SimSettings, Simulation
from sandbox.sim.report import plot, table, to_json
from sandbox.sim.trace import TraceError, parse_time, read_trace
from tasks.errors import ConfigError, InvalidRequest, UnknownPool
from tasks.pool.model import AddressKind
from tasks.pool.policy import parse_policy
from tasks.pool.service import PoolConfig
from tasks.pools import load_deployment, service_config

EXIT_OK, EXIT_INVALID, EXIT_OTHER = 0, 2, 1


class Refused(ValueError):
    """Bad input to simulate: one line, exit 2."""


def launch_range(raw: str) -> tuple[float, float]:
    lo, sep, hi = raw.partition(":")
    try:
        low, high = float(lo), float(hi if sep else lo)
    except ValueError:
        raise Refused(f"--launch-seconds {raw!r}: expected S or LO:HI (seconds)") from None
    if not 0 <= low <= high <= 86_400:
        raise Refused(f"--launch-seconds {raw!r}: expected 0 <= LO <= HI <= 86400")
    return low, high


def pool_config(config_file: str | None, pool_name: str | None) -> tuple[PoolConfig, dict[str, Any]]:
    """The pool's configuration (its pools file or the environment, as the workers read it)."""
    env = dict(os.environ)
    if config_file is not None:
        env["WARMPOOL_CONFIG"] = config_file
    try:
        pool = load_deployment(env).pool(pool_name)
    except ConfigError as exc:
        raise Refused("; ".join(exc.problems)) from None
    except (InvalidRequest, UnknownPool) as exc:
        raise Refused(f"--pool: {exc}") from None
    # A simulated group: public addresses, no readiness probe, no lease, no dry run or first-start hold.
    config = service_config(
        pool,
        address=AddressKind.PUBLIC,
        lease_s=0.0,
        require_ready_check=False,
        dry_run=False,
        hold_unadopted=False,
    )
    return config, {"refresh_s": pool.settings.refresh_seconds}


def policies(specs: list[str] | None, base: PoolConfig) -> list[tuple[str, PoolConfig]]:
    """(label, config) per --policy: ``config`` is the pool's own; other specs run without schedules."""
    out = []
    for spec in specs or ["config"]:
        if spec == "config":
            out.append((f"config ({base.policy})", base))
            continue
        try:
            canonical = parse_policy(spec).text()
        except InvalidRequest as exc:
            raise Refused(f"--policy {spec!r:.60}: {exc}") from None
        out.append((canonical, replace(base, policy=canonical, schedules=())))
    return out


def _settings(args: argparse.Namespace, extra: dict[str, Any]) -> SimSettings:
    if not 0 < args.wait <= 3_600:
        raise Refused(f"--wait {args.wait}: expected seconds above 0 and at most 3600")
    start = None
    if args.start is not None:
        try:
            start = parse_time(args.start)
        except ValueError as exc:
            raise Refused(f"--from {args.start!r:.60}: {exc}") from None
    return SimSettings(launch_s=launch_range(args.launch_seconds), wait_s=args.wait, score_from=start, **extra)


def run_simulate(args: argparse.Namespace) -> int:
    try:
        base, extra = pool_config(args.config, args.pool)
        runs = policies(args.policy, base)
        settings = _settings(args, extra)
        events = read_trace(args.trace)
    except (Refused, TraceError) as exc:
        print(f"warmpool: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if args.plot:
        from producer.extras import missing_extra

        if (need := missing_extra("plot", command="warmpool simulate --plot")) is not None:
            print(f"warmpool: {need}", file=sys.stderr)
            return EXIT_OTHER
    results = [Simulation(events, cfg, settings, label=label).run() for label, cfg in runs]
    rows = [to_json(r) for r in results]
    if args.json:
        print(json.dumps(rows, indent=2 if sys.stdout.isatty() else None))
    else:
        from rich.console import Console

        Console(width=200 if not sys.stdout.isatty() else None).print(table(rows))
    if args.plot:
        plot(results, args.plot)
    return EXIT_OK
