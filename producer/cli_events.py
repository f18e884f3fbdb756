"""``warmpool events [--pool P] [--follow] [--since ID] [--json]``: the pool's events (producer/events.py)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import redis

from producer.cli_pools import add_pool_option
from producer.events import FROM_OLDEST, EventReader, Notice, check_since
from tasks.errors import PoolUnavailable
from tasks.pools import load_deployment
from tasks.state.connect import state_client
from tasks.state.keys import PoolKeys

EXIT_OK = 0
DETAIL_KEYS = ("project_id", "instance_id", "reason")


def line_of(event: dict[str, Any]) -> str:
    """One readable line: time, type, the fields that are set, then any extra keys and the id."""
    parts = [str(event.get("at") or "-"), f"{event.get('type') or '?':<14}"]
    parts += [f"{k.removesuffix('_id')}={event[k]}" for k in DETAIL_KEYS if event.get(k) is not None]
    known = {"id", "at", "pool", "type", *DETAIL_KEYS}
    parts += [f"{k}={json.dumps(v)}" for k, v in event.items() if k not in known and v is not None]
    parts.append(f"[{event.get('id')}]")
    return "  ".join(parts)


def cmd_events(args: argparse.Namespace) -> int:
    """Print the kept events after --since (all kept ones by default); --follow keeps printing."""
    since = check_since(args.since)
    pool = load_deployment().pool(args.pool)  # unknown or malformed --pool: exit 2
    settings = pool.settings
    # No socket timeout shorter than the blocking read: XREAD BLOCK waits up to block_ms.
    client = state_client(
        settings.redis_url, master_name=settings.sentinel_master, socket_timeout=30, socket_connect_timeout=5
    )
    reader = EventReader(client, pool=pool.name, key=PoolKeys.for_group(pool.namespace).events)
    try:
        for item in reader.read(since, follow=args.follow):
            if isinstance(item, Notice):
                print(f"warmpool: {item.message}", file=sys.stderr, flush=True)
            elif args.json:
                print(json.dumps(item), flush=True)
            else:
                print(line_of(item), flush=True)
    except redis.RedisError as exc:
        raise PoolUnavailable(f"the state Redis (WARMPOOL_REDIS_URL) did not answer: {exc}") from None
    finally:
        client.close()
    return EXIT_OK


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``warmpool events`` on the main parser's subcommands."""
    p = sub.add_parser("events", help="print the pool's events (assigned, released, lost, launched, ...)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new events until interrupted")
    p.add_argument(
        "--since",
        default=FROM_OLDEST,
        metavar="ID",
        help="the events after this event id; 0: every kept event [0]; $: new ones only",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    add_pool_option(p)
    p.set_defaults(func=cmd_events)
