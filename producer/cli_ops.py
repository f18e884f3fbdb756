"""``warmpool`` operator commands: pause, resume, force-release, recycle, adopt, webhooks.

Registered by producer.cli.build_parser (``add_commands``). Every command takes ``--json``
(one JSON object on stdout); bad input (a duration, an adopt file) is one line and exit 2,
checked before anything is sent, so nothing is half-applied. docs/operations.md.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from producer.cli_pools import add_pool_option
from tasks.errors import ConfigError, InvalidRequest
from tasks.state.keys import PoolKeys

EXIT_OK = 0
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
MAX_ADOPT_FILE_BYTES = 8 * 1024 * 1024


def parse_duration(text: str, *, option: str = "--older-than") -> float:
    """``90s``, ``30m``, ``2h``, ``1d``, ``1h30m`` or plain seconds, as seconds; InvalidRequest otherwise."""
    raw = text.strip().lower()
    try:
        seconds = float(raw)
    except ValueError:
        parts = _DURATION.findall(raw)
        if not parts or "".join(n + u for n, u in parts) != raw:
            raise InvalidRequest(f"{option} {text!r}: expected a duration such as 90s, 30m, 2h, 1d or 1h30m") from None
        seconds = sum(float(n) * _UNIT_S[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidRequest(f"{option} {text!r}: expected a duration of zero or more")
    return seconds


def read_assignments(path: str) -> dict[str, str]:
    """An adopt file: CSV with the header ``project_id,instance_id``, or JSON ``{"project": "instance"}``."""
    try:
        data = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InvalidRequest(f"adopt file {path}: cannot read it ({reason})") from None
    if len(data) > MAX_ADOPT_FILE_BYTES:
        raise InvalidRequest(f"adopt file {path}: larger than {MAX_ADOPT_FILE_BYTES} bytes")
    if data.lstrip().startswith("{"):
        try:
            mapping = json.loads(data)
        except ValueError as exc:
            raise InvalidRequest(f"adopt file {path}: not valid JSON ({exc})") from None
        if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
            raise InvalidRequest(f'adopt file {path}: JSON must be an object {{"project": "instance", ...}}')
        return _checked(mapping, path)
    return _checked(_csv_assignments(data, path), path)


def _csv_assignments(data: str, path: str) -> dict[str, str]:
    rows = csv.reader(io.StringIO(data))
    header = [h.strip() for h in next(rows, [])]
    if header != ["project_id", "instance_id"]:
        raise InvalidRequest(f"adopt file {path}: expected the CSV header project_id,instance_id (or a JSON object)")
    mapping: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != 2:
            raise InvalidRequest(f"adopt file {path} line {line}: expected project_id,instance_id")
        project, iid = row[0].strip(), row[1].strip()
        if project in mapping:
            raise InvalidRequest(f"adopt file {path} line {line}: project {project} is listed twice")
        mapping[project] = iid
    return mapping


def _checked(mapping: dict[str, Any], path: str) -> dict[str, str]:
    from tasks.pool.operations import check_assignments

    try:
        return check_assignments(mapping)
    except InvalidRequest as exc:
        raise InvalidRequest(f"adopt file {path}: {exc}") from None


def _client(args: argparse.Namespace) -> Any:
    from producer.client import PoolClient

    # An unknown or malformed --pool is refused here, before anything is sent (exit 2).
    return PoolClient(pool=getattr(args, "pool", None))


def _print(args: argparse.Namespace, result: dict[str, Any], line: str) -> int:
    print(json.dumps(result) if args.json else line)
    return EXIT_OK


def cmd_pause(args: argparse.Namespace) -> int:
    r = _client(args).pause()
    state = "paused" if r["changed"] else "already paused"
    return _print(args, r, f"{state} since {r['since']}: no launch, termination or capacity change until resume")


def cmd_resume(args: argparse.Namespace) -> int:
    r = _client(args).resume()
    if not r["changed"]:
        return _print(args, r, "not paused (nothing to resume)")
    return _print(args, r, f"resumed; terminating {len(r['terminated'])} machine(s) released while paused")


def cmd_force_release(args: argparse.Namespace) -> int:
    r = _client(args).force_release(args.project)
    if r["status"] != "released":
        return _print(args, r, f"{args.project}: held no machine (nothing to release)")
    return _print(args, r, f"{args.project}: force-released {r['instance_id']} (recorded; terminating)")


def cmd_recycle(args: argparse.Namespace) -> int:
    if (args.older_than is None) == (args.not_template_version is None):
        raise InvalidRequest("recycle takes one of --older-than DURATION and --not-template-version V")
    older = None if args.older_than is None else parse_duration(args.older_than)
    r = _client(args).recycle(older_than_s=older, template_version=args.not_template_version)
    line = (
        f"recycling {len(r['idle_to_replace'])} idle machine(s), one at a time; "
        f"{len(r['assigned_after_release'])} assigned one(s) are replaced after their release"
    )
    return _print(args, r, line if r["status"] == "recycling" else "no idle machine to recycle")


def cmd_adopt(args: argparse.Namespace) -> int:
    if args.none == (args.file is not None):
        raise InvalidRequest("adopt takes a FILE (CSV project_id,instance_id or JSON), or --none")
    if args.none and args.dry_run:
        raise InvalidRequest("adopt --none has no dry run")
    assignments = None if args.none else read_assignments(args.file)
    r = _client(args).adopt(assignments, dry_run=args.dry_run)
    if args.none:
        return _print(args, r, f"confirmed: nothing to adopt; {len(r['released_from_hold'])} machine(s) no longer held")
    pairs = ", ".join(f"{a['project_id']}={a['instance_id']}" for a in r["adopted"][:20])
    if args.dry_run:
        return _print(args, r, f"dry run: would adopt {len(r['adopted'])}: {pairs}")
    held = len(r.get("unadopted", []))
    note = f"; {held} machine(s) found at the first start still held (warmpool adopt --none)" if held else ""
    return _print(args, r, f"adopted {len(r['adopted'])}: {pairs}{note}")


def cmd_webhooks_run(args: argparse.Namespace) -> int:
    """Deliver every event of the pool to the configured webhooks until SIGTERM / Ctrl-C."""
    from tasks.hooks.deliver import run_deliverers
    from tasks.pools import deployment_or_exit
    from tasks.state.connect import state_client

    deployment = deployment_or_exit()
    pools = {p.name: (PoolKeys.for_group(p.namespace), pool_webhooks(p)) for p in deployment}
    pools = {name: (keys, hooks) for name, (keys, hooks) in pools.items() if hooks}
    if not pools:
        raise ConfigError("no webhook configured: set WARMPOOL_WEBHOOK_URL and WARMPOOL_WEBHOOK_SECRET")
    logging.basicConfig(level=args.loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    shared = deployment.settings
    client = state_client(
        shared.redis_url, master_name=shared.sentinel_master, decode_responses=True, socket_timeout=30
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threads = run_deliverers(client, pools, stop=stop)
    for name, (_, hooks) in pools.items():
        logging.getLogger("warmpool.webhooks").info("delivering", extra={"pool": name, "webhooks": len(hooks)})
    try:
        while not stop.wait(1.0):
            pass
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    return EXIT_OK


def pool_webhooks(pool: Any) -> tuple[Any, ...]:
    """The webhooks of one pool (tasks.pools.PoolSettings): its own list, or the environment's one."""
    from tasks.hooks.config import webhooks_from_settings

    own = tuple(getattr(pool, "webhooks", ()) or ())
    return own or webhooks_from_settings(pool.settings)


def cmd_webhooks_status(args: argparse.Namespace) -> int:
    from tasks.hooks.deliver import webhook_health
    from tasks.pools import deployment_or_exit
    from tasks.state.connect import state_client

    deployment = deployment_or_exit()
    shared = deployment.settings
    client = state_client(shared.redis_url, master_name=shared.sentinel_master, decode_responses=True, socket_timeout=5)
    health = {
        f"{p.name}/{group}": {**h, "pool": p.name}
        for p in deployment
        if args.pool in (None, p.name)
        for group, h in webhook_health(client, PoolKeys.for_group(p.namespace)).items()
    }
    if args.json:
        print(json.dumps(health))
        return EXIT_OK
    if not health:
        print("no webhook has delivered or failed yet")
    for group, h in sorted(health.items()):
        state = "FAILING" if h.get("failing") else "ok"
        last = f", last error {h.get('last_error')}" if h.get("last_error") else ""
        counts = f"delivered {h['delivered']}, given up {h['given_up']}{last}"
        print(f"{h['pool']}: {h.get('url')} [{group.split('/', 1)[1]}] {state}: {counts}")
    return EXIT_OK


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the operator commands to the ``warmpool`` parser."""

    def json_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="print the result as JSON")
        if p.prog.split()[-1] != "status":
            add_pool_option(p)

    p = sub.add_parser("pause", help="stop every AWS change of the pool (assigns and releases keep working)")
    json_flag(p)
    p.set_defaults(func=cmd_pause)
    p = sub.add_parser("resume", help="resume AWS changes; machines released while paused are terminated")
    json_flag(p)
    p.set_defaults(func=cmd_resume)
    p = sub.add_parser("force-release", help="an operator takes the project's machine back (recorded)")
    p.add_argument("project", help="project id")
    json_flag(p)
    p.set_defaults(func=cmd_force_release)
    p = sub.add_parser("recycle", help="replace idle machines gradually (after an image or template change)")
    p.add_argument("--older-than", metavar="DURATION", help="launched more than DURATION ago (90m, 2h, 1d)")
    p.add_argument("--not-template-version", metavar="V", help="not launched from launch template version V")
    json_flag(p)
    p.set_defaults(func=cmd_recycle)
    p = sub.add_parser("adopt", help="import assignments made outside warmpool (CSV project_id,instance_id or JSON)")
    p.add_argument("file", nargs="?", metavar="FILE", help="the assignments ('-': stdin)")
    p.add_argument("--dry-run", action="store_true", help="show what would be adopted; change nothing")
    p.add_argument("--none", action="store_true", help="confirm that no machine needs adopting (ends the hold)")
    json_flag(p)
    p.set_defaults(func=cmd_adopt)
    p = sub.add_parser("webhooks", help="deliver events to the configured webhooks, or show their health")
    hooks = p.add_subparsers(dest="webhooks_command", required=True, metavar="ACTION")
    run = hooks.add_parser("run", help="run the deliverer (one per deployment; restart-safe)")
    run.add_argument("--loglevel", default="INFO")
    run.set_defaults(func=cmd_webhooks_run)
    st = hooks.add_parser("status", help="each webhook's delivery health")
    json_flag(st)
    add_pool_option(st, every=True)
    st.set_defaults(func=cmd_webhooks_status)
