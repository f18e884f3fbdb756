"""The CLI's pool commands: ``warmpool pools``, and ``status`` of one pool or of every pool."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from tasks.pools import Deployment

EXIT_OK = 0


def add_pool_option(parser: argparse.ArgumentParser, *, every: bool = False) -> None:
    """``--pool NAME`` (default: the default pool; with ``every``, no --pool means every pool)."""
    meaning = "the pool (default: every pool)" if every else "the pool (default: the configuration's default pool)"
    parser.add_argument("--pool", default=None, metavar="NAME", help=meaning)


def pool_rows(deployment: Deployment) -> list[dict[str, Any]]:
    """One row per pool: what it is and where its jobs and state live."""
    return [
        {
            "name": p.name,
            "default": p.name == deployment.default_pool,
            "asg": p.asg_name,
            "queue": p.queue,
            "aws_queue": p.aws_queue,
            "region": p.settings.region,
            "endpoint_url": p.settings.aws_endpoint_url or None,
            "role_arn": p.role_arn or None,
            "namespace": p.namespace,
            "idle_target": p.settings.idle_target,
            "refresh_seconds": p.settings.refresh_seconds,
        }
        for p in deployment
    ]


def cmd_pools(args: argparse.Namespace) -> int:
    from producer.calls import configured_deployment

    deployment = configured_deployment()
    rows = pool_rows(deployment)
    if args.json:
        print(json.dumps(rows))
        return EXIT_OK
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"pools ({deployment.source})")
    for column in ("pool", "group", "queue", "region", "idle target", "refresh s", "state namespace"):
        table.add_column(column)
    for r in rows:
        name = f"{r['name']} (default)" if r["default"] else r["name"]
        table.add_row(
            name,
            r["asg"],
            r["queue"],
            r["region"],
            str(r["idle_target"]),
            f"{r['refresh_seconds']:g}",
            r["namespace"],
        )
    Console(width=None if sys.stdout.isatty() else 200).print(table)
    return EXIT_OK


def _statuses(client: Any, pools: list[str]) -> list[dict[str, Any]]:
    return [client.status(pool=name) for name in pools]


def cmd_status(args: argparse.Namespace, client: Any) -> int:
    """One pool's status (``--pool``: a JSON object), or every pool's (a JSON list, one table each)."""
    from producer.render import status_renderable

    pools = [client.pool] if args.pool else list(client.pool_names())
    if args.json:
        statuses: Any = client.status() if args.pool else _statuses(client, pools)
        print(json.dumps(statuses, indent=2 if sys.stdout.isatty() else None))
        return EXIT_OK
    from rich.console import Console, Group

    def view() -> Group:
        return Group(*(status_renderable(s) for s in _statuses(client, pools)))

    # Piped output keeps full ids and addresses instead of wrapping at 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=200)
    if args.watch is None:
        console.print(view())
        return EXIT_OK
    from rich.live import Live

    with Live(view(), console=console, refresh_per_second=4) as live:
        try:
            while True:
                time.sleep(args.watch)
                live.update(view())
        except KeyboardInterrupt:
            pass
    return EXIT_OK
