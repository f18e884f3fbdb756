"""``warmpool token create|list|revoke``: the gateway's scoped API tokens (producer/tokens.py)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from producer.tokens import TokenStore, make_scope
from tasks.config import Settings
from tasks.errors import PoolUnavailable
from tasks.state.connect import state_client

EXIT_OK, EXIT_OTHER = 0, 1


@contextmanager
def _store() -> Iterator[TokenStore]:
    """The token store of WARMPOOL_REDIS_URL; PoolUnavailable (exit 4) when that Redis does not answer."""
    settings = Settings.from_env()
    store = TokenStore(state_client(settings.redis_url, master_name=settings.sentinel_master, socket_timeout=5))
    try:
        yield store
    except redis.RedisError as exc:
        raise PoolUnavailable(f"the state Redis (WARMPOOL_REDIS_URL) did not answer: {exc}") from None
    finally:
        store.close()


def cmd_create(args: argparse.Namespace) -> int:
    """Create a token and print its secret, once."""
    scope = make_scope(args.scope, pools=args.pool or (), prefix=args.prefix)
    with _store() as store:
        record, secret = store.create(args.name, scope)
    if args.json:
        print(json.dumps({**record.public(), "token": secret}))
        return EXIT_OK
    print(f"token {record.name}: {scope.describe()}")
    print(secret)
    print("this secret is shown once: store it now (only its SHA-256 is kept)", file=sys.stderr)
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    """Every token's name and scope, never a secret."""
    with _store() as store:
        records = store.list()
    if args.json:
        print(json.dumps({"tokens": [r.public() for r in records]}))
        return EXIT_OK
    if not records:
        print("no tokens (warmpool token create --name N --scope read|assign|admin)")
    for r in records:
        print(f"{r.name}  {r.scope.describe()}  (created {r.created_at})")
    return EXIT_OK


def cmd_revoke(args: argparse.Namespace) -> int:
    """Delete a token: gateways refuse it within their token cache time."""
    with _store() as store:
        existed = store.revoke(args.name)
    if args.json:
        print(json.dumps({"status": "revoked" if existed else "not_found", "name": args.name}))
    elif existed:
        print(f"token {args.name} revoked (gateways refuse it within WARMPOOL_GATEWAY_TOKEN_CACHE_S)")
    else:
        print(f"warmpool: no token named {args.name!r}", file=sys.stderr)
    return EXIT_OK if existed else EXIT_OTHER


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``warmpool token ...`` on the main parser's subcommands."""
    p = sub.add_parser("token", help="manage the gateway's scoped API tokens (create, list, revoke)")
    actions = p.add_subparsers(dest="token_command", required=True, metavar="ACTION")

    c = actions.add_parser("create", help="create a token and print its secret (once)")
    c.add_argument("--name", required=True, help="a unique name: 1-64 of A-Z a-z 0-9 . _ -")
    c.add_argument("--pool", action="append", metavar="P", help="a pool it may use (repeat; none: every pool)")
    c.add_argument("--prefix", default="", help="project ids it may use start with this (e.g. team-a-) [any]")
    c.add_argument("--scope", required=True, help="read < assign < admin")
    c.add_argument("--json", action="store_true", help='print {"name", "token", "scope", ...}')
    c.set_defaults(func=cmd_create)

    c = actions.add_parser("list", help="list the tokens and their scopes (never their secrets)")
    c.add_argument("--json", action="store_true", help='print {"tokens": [...]}')
    c.set_defaults(func=cmd_list)

    c = actions.add_parser("revoke", help="delete a token")
    c.add_argument("name", help="the token's name")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.set_defaults(func=cmd_revoke)
