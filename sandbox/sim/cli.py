"""``warmpool simulate`` (registered by producer/cli_economics.py): arguments, runs, output, exit codes."""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from dataclasses import replace
from typing import Any

from sandbox.sim.engine import SimSettings, Simulation
from sandbox.sim.report import plot, table, to_json
from sandbox.sim.trace import TraceError, parse_time, read_trace
from tasks import config
from tasks.errors import InvalidRequest
from tasks.pool.model import AddressKind
from tasks.pool.policy import parse_policy, parse_schedules
from tasks.pool.service import PoolConfig

EXIT_OK, EXIT_INVALID, EXIT_OTHER = 0, 2, 1
_POOL_FIELDS = (
    "idle_target",
    "policy",
    "warm_goal",
    "idle_max",
    "scale_in_delay_s",
    "scale_in_step",
    "pending_poll_s",
)


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


def _from_env() -> tuple[PoolConfig, dict[str, Any]]:
    s = config.Settings.from_env()
    pool = PoolConfig(
        asg_name=s.asg_name,
        idle_target=s.idle_target,
        address=AddressKind.PUBLIC,
        policy=s.policy,
        warm_goal=s.warm_goal,
        idle_max=s.idle_max,
        schedules=parse_schedules(s.schedules),
        scale_in_delay_s=s.scale_in_delay_s,
        scale_in_step=s.scale_in_step,
        pending_poll_s=s.pending_poll_s,
    )
    return pool, {"refresh_s": s.refresh_seconds}


def _pool_table(path: str, pool_name: str | None) -> tuple[str, dict[str, Any]]:
    """The ``[pools.NAME]`` table of a TOML file (the only one when no name is given)."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise Refused(f"--config {path}: cannot read it ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise Refused(f"--config {path}: not TOML ({exc})") from None
    pools = data.get("pools")
    if not isinstance(pools, dict) or not pools:
        raise Refused(f"--config {path}: no [pools.NAME] table")
    if pool_name is None:
        if len(pools) != 1:
            raise Refused(f"--config {path}: several pools ({', '.join(sorted(pools))}): name one with --pool")
        pool_name = next(iter(pools))
    table_ = pools.get(pool_name)
    if not isinstance(table_, dict):
        raise Refused(f"--pool {pool_name}: not in {path} (pools: {', '.join(sorted(pools))})")
    return pool_name, table_


def _from_toml(path: str, pool_name: str | None) -> tuple[PoolConfig, dict[str, Any]]:
    """A pool of a TOML file ``[pools.NAME]`` (keys: the settings' field names) over the environment's."""
    pool_name, table_ = _pool_table(path, pool_name)
    base, extra = _from_env()
    values: dict[str, Any] = {k: table_[k] for k in _POOL_FIELDS if k in table_}
    try:
        if "policy" in values:
            values["policy"] = parse_policy(values["policy"]).text()
        if "schedules" in table_:
            values["schedules"] = parse_schedules(table_["schedules"])
    except InvalidRequest as exc:
        raise Refused(f"pools.{pool_name}.{exc}") from None
    for key in ("min_size", "max_size", "refresh_seconds"):
        if key in table_:
            extra["refresh_s" if key == "refresh_seconds" else key] = table_[key]
    return replace(base, asg_name=pool_name, **values), extra


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
        base, extra = _from_toml(args.config, args.pool) if args.config else _from_env()
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
