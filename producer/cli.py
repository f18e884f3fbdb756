"""The ``warmpool`` command: pool operations for people and scripts, and the stack's processes.

Exit codes (docs/design.md): 0 ok, 2 invalid input or configuration, 3 no capacity, 4 pool unavailable, 1 other.

Every command but ``--version`` and ``config check`` first checks every setting
(tasks/config.py): a bad one ends the command before it does anything, with one
line per problem (``--json``: the failure object, code ``config_error``) and exit 2.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from producer import cli_economics, cli_events, cli_ops, cli_pools, cli_tokens
from producer.extras import missing_extra
from tasks import config
from tasks.contract import CODE_NO_CAPACITY, STATUS_FAILED, failure
from tasks.errors import (
    ConfigError,
    InvalidProject,
    InvalidRequest,
    NoCapacity,
    PoolUnavailable,
    WarmpoolError,
)
from tasks.pools import load_deployment

EXIT_OK, EXIT_OTHER, EXIT_INVALID, EXIT_NO_CAPACITY, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4

_EXIT_FOR: list[tuple[type[BaseException], int]] = [
    (InvalidProject, EXIT_INVALID),
    (InvalidRequest, EXIT_INVALID),
    (ConfigError, EXIT_INVALID),
    (NoCapacity, EXIT_NO_CAPACITY),
    (PoolUnavailable, EXIT_UNAVAILABLE),
]


def exit_code_for(exc: BaseException) -> int:
    for kind, code in _EXIT_FOR:
        if isinstance(exc, kind):
            return code
    return EXIT_OTHER


def _client(args: argparse.Namespace | None = None) -> Any:
    from producer.client import PoolClient

    # An unknown or malformed --pool is refused here, before anything is sent (exit 2).
    return PoolClient(pool=getattr(args, "pool", None))


def _emit_error(args: argparse.Namespace, exc: WarmpoolError, project_id: str | None = None) -> int:
    code = exit_code_for(exc)
    if getattr(args, "json", False):
        extra = {"project_id": project_id} if project_id is not None else {}
        print(json.dumps(failure(exc.code, str(exc), **extra)))
    else:
        print(f"warmpool: {exc}", file=sys.stderr)
    return code


def cmd_assign(args: argparse.Namespace) -> int:
    result = _client(args).assign_result(args.project, wait=args.wait, lease=args.lease)
    if result.get("status") == STATUS_FAILED:
        code = EXIT_NO_CAPACITY if result.get("code") == CODE_NO_CAPACITY else EXIT_OTHER
        if args.json:
            print(json.dumps(result))
        else:
            print(f"warmpool: {result.get('message', result.get('code'))}", file=sys.stderr)
        return code
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['project_id']} -> {result['instance_id']} ip={result['ip']} (assigned {result['assigned_at']})")
    return EXIT_OK


def cmd_release(args: argparse.Namespace) -> int:
    result = _client(args).release_result(args.project)
    if args.json:
        print(json.dumps(result))
    elif result["status"] == "released":
        print(f"{args.project}: released {result['instance_id']} (terminating; the pool refills)")
    else:
        print(f"{args.project}: held no machine (nothing to release)")
    return EXIT_OK


def cmd_touch(args: argparse.Namespace) -> int:
    result = _client(args).touch_result(args.project, lease=args.lease)
    if args.json:
        print(json.dumps(result))
    elif result["status"] == "not_assigned":
        print(f"{args.project}: holds no machine", file=sys.stderr)
    elif result["status"] == "no_lease":
        print(f"{args.project}: {result['instance_id']} has no lease (nothing to renew)")
    else:
        print(f"{args.project}: lease of {result['instance_id']} renewed until {result['lease_expires_at']}")
    return EXIT_OK if result["status"] != "not_assigned" else EXIT_OTHER


def cmd_release_quarantined(args: argparse.Namespace) -> int:
    if bool(args.all) == bool(args.instances):
        raise InvalidRequest("name the quarantined machines to release (INSTANCE ...), or --all")
    result = _client(args).release_quarantined(None if args.all else args.instances)
    if args.json:
        print(json.dumps(result))
    elif result["instance_ids"]:
        ids = " ".join(result["instance_ids"])
        print(f"released from quarantine: {ids} (idle at the next refresh if ready)")
    else:
        print("no machine named was quarantined (nothing released)")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    return cli_pools.cmd_status(args, _client(args))


def _celery(argv: list[str]) -> int:
    os.execvp(sys.executable, [sys.executable, "-m", "celery", "-A", "tasks", *argv])
    return EXIT_OTHER  # not reached


def cmd_worker(args: argparse.Namespace) -> int:
    if args.pool:
        # The owner of these pools: one serialized process (docs/pools.md); exit 2 for an unknown one.
        from producer.calls import configured_deployment

        queues = [configured_deployment().pool(name).queue for name in dict.fromkeys(args.pool)]
        base = ["worker", "-Q", ",".join(queues), "-P", "solo", "-n", f"pool-{'-'.join(args.pool)[:40]}@%h"]
    elif args.queue == "pool":
        # The pool worker is one serialized process: the solo pool (docs/design.md); it owns every pool.
        base = ["worker", "-Q", "pool", "-P", "solo", "-n", "pool@%h"]
    else:
        # Every AWS queue of the configuration ("aws", and any pool's own "aws.<name>").
        from producer.calls import configured_deployment

        aws_queues = ",".join(configured_deployment().aws_queues())
        base = ["worker", "-Q", aws_queues, "-P", "threads", "-c", str(args.concurrency), "-n", "aws@%h"]
    return _celery([*base, "--without-gossip", "--without-mingle", "-l", args.loglevel, *args.celery_args])


def cmd_beat(args: argparse.Namespace) -> int:
    return _celery(["beat", "-l", args.loglevel, "-s", args.schedule, *args.celery_args])


# The commands that need an optional extra (producer/extras.py); the name of each is its extra's.
_EXTRA_COMMANDS = frozenset({"gateway", "flower", "demo"})


def cmd_gateway(args: argparse.Namespace) -> int:
    from producer.gateway import serve

    settings = config.Settings.from_env()
    port = args.port if args.port is not None else settings.gateway_port
    serve(host=args.host, port=port, token=settings.api_token or None)
    return EXIT_OK


def cmd_flower(args: argparse.Namespace) -> int:
    from producer import flower_app

    return int(flower_app.main(args.flower_args) or 0)


def version() -> str:
    """The installed distribution's version ("unknown" when run from a tree that is not installed)."""
    try:
        return importlib.metadata.version("warmpool")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _pools_report(report: config.Report) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    """The pools of the configuration and the problems of its file (none checked while a setting is bad)."""
    if report.problems:
        return [], report.problems
    try:
        return cli_pools.pool_rows(load_deployment()), ()
    except ConfigError as exc:
        return [], exc.problems


def cmd_config_check(args: argparse.Namespace) -> int:
    report = config.load()
    pools, problems = _pools_report(report)
    code = EXIT_INVALID if problems else EXIT_OK
    rows = [
        {"name": e.name, "value": e.value, "source": e.source, "origin": e.origin, "secret": e.secret}
        for e in report.entries
    ]
    if args.json:
        if problems:
            message = "; ".join(problems)
            out = failure(ConfigError.code, message, problems=list(problems), settings=rows)
        else:
            out = {"status": "ok", "settings": rows, "pools": pools}
        print(json.dumps(out, indent=2 if sys.stdout.isatty() else None))
        return code
    width = max(len(e.name) for e in report.entries)
    for e in report.entries:
        where = e.source if e.source in (config.SOURCE_DEFAULT, config.SOURCE_INVALID) else e.origin
        print(f"{e.name:<{width}}  {e.value or '(unset)'}  [{where}]")
    for p in pools:
        mark = " (default)" if p["default"] else ""
        print(f"pool {p['name']}{mark}: group {p['asg']}, queue {p['queue']}, region {p['region']}")
    for problem in problems:
        print(f"warmpool: {problem}", file=sys.stderr)
    if problems:
        print(f"warmpool: {len(problems)} bad setting(s): fix them and run again", file=sys.stderr)
    return code


def cmd_demo(args: argparse.Namespace) -> int:
    from sandbox.demo import run_demo

    return run_demo(idle_target=args.idle_target, stay=not args.once, config=args.config)


def _project(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("project", help="project id: 1-128 of A-Z a-z 0-9 . _ -, starting alphanumeric")
    parser.add_argument("--json", action="store_true", help="print one JSON object (the job's result)")
    cli_pools.add_pool_option(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="warmpool", description="Warm pool of EC2 machines for projects.")
    parser.add_argument("--version", action="version", version=f"warmpool {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("assign", help="hand the project a ready machine (the one it holds, if any)")
    _project(p)
    p.add_argument("--wait", type=float, default=0.0, metavar="S", help="wait up to S seconds for a machine [0]")
    p.add_argument(
        "--lease", type=float, default=None, metavar="S", help="lease length in seconds [WARMPOOL_LEASE_SECONDS]"
    )
    p.set_defaults(func=cmd_assign)

    p = sub.add_parser("release", help="release the project's machine (it is terminated)")
    _project(p)
    p.set_defaults(func=cmd_release)

    p = sub.add_parser("touch", help="renew the lease of the project's machine")
    _project(p)
    p.add_argument("--lease", type=float, default=None, metavar="S", help="new lease length in seconds")
    p.set_defaults(func=cmd_touch)

    p = sub.add_parser(
        "release-quarantined",
        help="after a lost pool state: vouch that quarantined machines are in nobody's use (they become idle)",
    )
    p.add_argument("instances", nargs="*", metavar="INSTANCE", help="instance ids (i-...) to release")
    p.add_argument("--all", action="store_true", help="every quarantined machine")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    cli_pools.add_pool_option(p)
    p.set_defaults(func=cmd_release_quarantined)

    p = sub.add_parser("status", help="show the pools: machines, counts, group size, lost machines")
    p.add_argument("--json", action="store_true", help="print the snapshot as JSON (every pool: a list)")
    cli_pools.add_pool_option(p, every=True)
    p.add_argument("--watch", type=float, nargs="?", const=2.0, metavar="S", help="refresh every S seconds [2]")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("pools", help="list the configured pools: group, queue, region, state namespace")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=cli_pools.cmd_pools)

    p = sub.add_parser("worker", help="run a worker: the pool worker (one per pool) or an aws side-effect worker")
    p.add_argument("--queue", choices=["pool", "aws"], default="pool", help="pool: owns every pool [pool]")
    p.add_argument("--pool", action="append", metavar="NAME", help="own this pool only (repeatable)")
    p.add_argument("--concurrency", type=int, default=8, help="aws worker threads [8]")
    p.add_argument("--loglevel", default="INFO")
    p.add_argument("celery_args", nargs=argparse.REMAINDER, help="passed to celery worker")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("beat", help="run the scheduler (periodic refresh and rebalance)")
    p.add_argument("--loglevel", default="INFO")
    p.add_argument("--schedule", default="celerybeat-schedule", help="beat's schedule file")
    p.add_argument("celery_args", nargs=argparse.REMAINDER, help="passed to celery beat")
    p.set_defaults(func=cmd_beat)

    p = sub.add_parser("gateway", help="run the HTTP gateway")
    p.add_argument("--host", default=None, help="address to bind [WARMPOOL_GATEWAY_HOST or 127.0.0.1]")
    p.add_argument("--port", type=int, default=None, help="port [WARMPOOL_GATEWAY_PORT or 8080]")
    p.set_defaults(func=cmd_gateway)

    p = sub.add_parser("flower", help="run Flower (monitoring) with authentication")
    p.add_argument("flower_args", nargs=argparse.REMAINDER, help="passed to flower")
    p.set_defaults(func=cmd_flower)

    p = sub.add_parser("demo", help="run the local demo stack (Redis, moto, workers, beat) and show it working")
    p.add_argument("--idle-target", type=int, default=2)
    p.add_argument("--once", action="store_true", help="stop after the scripted assigns and releases")
    p.add_argument("--config", metavar="FILE", help="a pools file (as WARMPOOL_CONFIG): a group and a worker per pool")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("config", help="check the configuration: every setting, its value and where it came from")
    config_sub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    c = config_sub.add_parser("check", help="print the effective settings (secrets masked); exit 2 if one is bad")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.set_defaults(func=cmd_config_check)
    cli_tokens.add_commands(sub)
    cli_events.add_commands(sub)
    cli_ops.add_commands(sub)  # pause, resume, force-release, recycle, adopt, webhooks
    cli_economics.add_commands(sub)
    return parser


# The commands whose --json output is one JSON object, a configuration failure included.
_JSON_COMMANDS = frozenset({"assign", "release", "touch", "status"})


def _config_problem(argv: list[str]) -> int | None:
    """Exit status 2 after reporting bad settings (None when every setting is good)."""
    try:
        load_deployment()
    except ConfigError as exc:
        if argv[:1] and argv[0] in _JSON_COMMANDS and "--json" in argv[1:]:
            print(json.dumps(failure(exc.code, str(exc), problems=list(exc.problems))))
        else:
            for problem in exc.problems:
                print(f"warmpool: {problem}", file=sys.stderr)
        return EXIT_INVALID
    return None


def _checks_settings(argv: list[str]) -> bool:
    # --version and `config check` must work whatever the settings; config check reports them itself.
    return not (argv[:1] == ["--version"] or argv[:1] == ["config"])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``warmpool`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if _checks_settings(argv) and (status := _config_problem(argv)) is not None:
        return status
    if argv[:1] and argv[0] in _EXTRA_COMMANDS and (need := missing_extra(argv[0], command=f"warmpool {argv[0]}")):
        print(f"warmpool: {need}", file=sys.stderr)
        return EXIT_OTHER
    if argv[:1] == ["flower"]:
        # Every option after "flower" is Flower's (argparse would claim --help and --no-auth).
        from producer import flower_app

        return flower_app.main(argv[1:])
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except WarmpoolError as exc:
        return _emit_error(args, exc, getattr(args, "project", None))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
