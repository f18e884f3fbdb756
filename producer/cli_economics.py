"""``warmpool policy show|set|clear`` and ``warmpool simulate``: the pool's capacity policy (docs/economics.md).

``policy set`` validates the spec (and schedules) here and stores it as the pool's
runtime override in its state Redis (tasks.state.keys ``econ:policy``); the pool worker
reads it at its next rebalance, validates it again, and keeps its last good policy if
it cannot use it. No worker restarts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from producer.cli_pools import add_pool_option
from tasks.pool.economics import override_text
from tasks.pool.policy import parse_policy, parse_schedules

EXIT_OK, EXIT_INVALID = 0, 2


def _pool(args: argparse.Namespace) -> Any:
    """The pool ``--pool`` names (the configuration's default pool without it)."""
    from tasks.pools import load_deployment

    return load_deployment().pool(getattr(args, "pool", None))


def _ledger(args: argparse.Namespace) -> Any:
    from tasks.state.redis_ledger import RedisLedger

    pool = _pool(args)
    s = pool.settings
    return RedisLedger.from_url(s.redis_url, pool.namespace, sentinel_master=s.sentinel_master)


def _schedules_arg(raw: str | None) -> Any:
    if raw is None:
        return None
    if raw.startswith("@"):
        try:
            return Path(raw[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise SystemExit(f"warmpool: --schedules {raw}: cannot read the file ({exc.strerror})") from None
    return raw


def policy_state(args: argparse.Namespace) -> dict[str, Any]:
    """The configured policy, the runtime override (if any) and the worker's last decision."""
    pool = _pool(args)
    s = pool.settings
    ledger = _ledger(args)
    read = ledger.read(minutes=())
    figures = ledger.figures()
    override = json.loads(read.override) if read.override else None
    return {
        "pool": pool.name,
        "asg_name": s.asg_name,
        "configured": {
            "policy": s.policy,
            "warm_goal": s.warm_goal,
            "idle_max": s.idle_max,
            "schedules": [x.to_json() for x in parse_schedules(s.schedules)],
            "scale_in_delay_s": s.scale_in_delay_s,
            "scale_in_step": s.scale_in_step,
        },
        "override": override,
        "in_force": figures.get("policy_spec"),
        "target": figures.get("policy_target"),
        "reason": figures.get("policy_reason"),
    }


def cmd_policy_show(args: argparse.Namespace) -> int:
    state = policy_state(args)
    if args.json:
        print(json.dumps(state, indent=2 if sys.stdout.isatty() else None))
        return EXIT_OK
    conf = state["configured"]
    print(
        f"{state['asg_name']}: configured {conf['policy']} (warm goal {conf['warm_goal']}, idle max {conf['idle_max']})"
    )
    for sch in conf["schedules"]:
        window = f"{sch['cron']} {sch['timezone']} for {sch['duration_s']:.0f}s"
        print(f"  schedule {sch['name']}: {window}, min idle {sch['min_idle']}")
    if state["override"]:
        print(f"override: {state['override']['policy']} (set {time.ctime(state['override']['set_at'])})")
    print(f"in force: {state['in_force'] or 'not reported yet'}; target {state['target']}: {state['reason']}")
    return EXIT_OK


def cmd_policy_set(args: argparse.Namespace) -> int:
    try:
        text = override_text(args.spec, _schedules_arg(args.schedules), now=time.time())
    except Exception as exc:  # InvalidRequest: one line naming the field
        from tasks.errors import InvalidRequest

        if not isinstance(exc, InvalidRequest):
            raise
        print(f"warmpool: {exc}", file=sys.stderr)
        return EXIT_INVALID
    _ledger(args).set_override(text)
    print(f"policy override stored: {parse_policy(args.spec).text()} (in force at the pool worker's next rebalance)")
    return EXIT_OK


def cmd_policy_clear(args: argparse.Namespace) -> int:
    _ledger(args).set_override(None)
    print("policy override removed: the configured policy is in force at the next rebalance")
    return EXIT_OK


def cmd_simulate(args: argparse.Namespace) -> int:
    from sandbox.sim.cli import run_simulate

    return run_simulate(args)


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``policy`` and ``simulate`` on the ``warmpool`` parser."""
    p = sub.add_parser("policy", help="show or change the pool's capacity policy at run time")
    actions = p.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="the configured policy, the override and the worker's last decision")
    show.add_argument("--json", action="store_true", help="print one JSON object")
    add_pool_option(show)
    show.set_defaults(func=cmd_policy_show)
    put = actions.add_parser("set", help="put SPEC in force (fixed:N, adaptive, adaptive:goal=0.995,floor=1)")
    put.add_argument("spec", metavar="SPEC")
    put.add_argument("--schedules", metavar="JSON|@FILE", help="schedules to use with it (default: configured)")
    add_pool_option(put)
    put.set_defaults(func=cmd_policy_set)
    clear = actions.add_parser("clear", help="remove the override: the configured policy is in force again")
    add_pool_option(clear)
    clear.set_defaults(func=cmd_policy_clear)

    s = sub.add_parser("simulate", help="replay a demand trace against policies, on the pool's own code")
    s.add_argument("trace", metavar="TRACE.csv", help="CSV with header at,project_id,event")
    s.add_argument("--policy", action="append", metavar="SPEC", help="fixed:N, adaptive[:goal=G], config (repeatable)")
    s.add_argument("--config", metavar="FILE", help="a pools file (as WARMPOOL_CONFIG) for --policy config")
    s.add_argument("--pool", metavar="NAME", help="the pool whose configuration runs (default: the default pool)")
    s.add_argument("--launch-seconds", default="60", metavar="S|LO:HI", help="launch time: fixed or uniform [60]")
    s.add_argument("--from", dest="start", metavar="ISO8601", help="score only events from here on")
    s.add_argument("--wait", type=float, default=600.0, metavar="S", help="a caller gives up after S seconds [600]")
    s.add_argument("--json", action="store_true", help="one JSON list, an object per policy")
    s.add_argument("--plot", metavar="OUT.png", help="plot demand, buffer and waits (needs warmpool[plot])")
    s.set_defaults(func=cmd_simulate)
