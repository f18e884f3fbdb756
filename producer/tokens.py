"""Scoped API tokens of the gateway: what a token may do, and where tokens are kept.

A token is ``wp_`` + 32 random bytes (URL-safe base64), shown once when it is
created. The state Redis (``WARMPOOL_REDIS_URL``) keeps, under the global hash
``warmpool:tokens`` (tasks/state/keys.py), one JSON record per token name:
its scope and the SHA-256 of its secret, never the secret. A plain hash (no
salt, no key stretching) is right for a secret of 256 random bits: nothing can
be guessed from it, and a lookup costs one hash.

A scope is three things: the pools (a list, or every pool), a project-id
prefix (``team-a-``; empty: every project) and a right, ``read`` < ``assign``
< ``admin`` (each includes the ones before it).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis

from tasks.errors import InvalidRequest
from tasks.pools import POOL_NAME_PATTERN
from tasks.state.keys import TOKENS_KEY

TOKEN_PREFIX = "wp_"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
PREFIX_PATTERN = re.compile(r"[A-Za-z0-9._-]{0,127}")


class Right(enum.IntEnum):
    """What a token may do; a higher right includes every lower one."""

    READ = 1  # status, events, the dashboard
    ASSIGN = 2  # assign, release, touch (of projects inside the prefix)
    ADMIN = 3  # operator commands

    @property
    def label(self) -> str:
        """``read``, ``assign`` or ``admin``."""
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Right:
        """The right named ``text``; InvalidRequest naming the allowed ones otherwise."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise InvalidRequest(f"scope {text!r}: expected read, assign or admin") from None


@dataclass(frozen=True)
class Scope:
    """Which pools (None: every pool), which project ids (by prefix) and which right."""

    right: Right
    pools: frozenset[str] | None = None
    prefix: str = ""

    def allows_pool(self, pool: str) -> bool:
        """Whether the scope covers ``pool``."""
        return self.pools is None or pool in self.pools

    def allows_project(self, project_id: str | None) -> bool:
        """Whether the scope covers ``project_id`` (an event without a project is the pool's: covered)."""
        return project_id is None or project_id.startswith(self.prefix)

    def describe(self) -> str:
        """One line: right, pools, prefix (for error messages and ``token list``)."""
        pools = "every pool" if self.pools is None else "pools " + ",".join(sorted(self.pools))
        projects = f"projects {self.prefix}*" if self.prefix else "every project"
        return f"{self.right.label} on {pools}, {projects}"


ADMIN_EVERYWHERE = Scope(right=Right.ADMIN)


@dataclass(frozen=True)
class TokenRecord:
    """A stored token: its name, scope, when it was made and the SHA-256 (hex) of its secret."""

    name: str
    scope: Scope
    sha256: str
    created_at: str = field(default="")

    def to_json(self) -> str:
        """The record as stored in ``warmpool:tokens``."""
        return json.dumps({**self.public(), "sha256": self.sha256}, separators=(",", ":"))

    def public(self) -> dict[str, Any]:
        """What ``token list`` shows: everything but the hash."""
        pools = None if self.scope.pools is None else sorted(self.scope.pools)
        return {
            "name": self.name,
            "scope": self.scope.right.label,
            "pools": pools,
            "prefix": self.scope.prefix,
            "created_at": self.created_at,
        }

    @classmethod
    def from_json(cls, text: str | bytes) -> TokenRecord:
        """A record read back; ValueError when it is not one."""
        data = json.loads(text)
        pools = data.get("pools")
        scope = Scope(
            right=Right[str(data["scope"]).upper()],
            pools=None if pools is None else frozenset(str(p) for p in pools),
            prefix=str(data.get("prefix") or ""),
        )
        return cls(name=str(data["name"]), scope=scope, sha256=str(data["sha256"]), created_at=str(data["created_at"]))


def hash_secret(secret: str | bytes) -> str:
    """The SHA-256 (hex) under which a token's secret is stored."""
    raw = secret.encode() if isinstance(secret, str) else secret
    return hashlib.sha256(raw).hexdigest()


def new_secret() -> str:
    """A fresh token: ``wp_`` and 256 random bits."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def check_name(name: str) -> str:
    """``name`` if it is a valid token name; InvalidRequest otherwise."""
    if NAME_PATTERN.fullmatch(name) is None:
        raise InvalidRequest(
            f"token name {name!r}: use 1-64 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit"
        )
    return name


def make_scope(right: str, *, pools: Iterable[str] = (), prefix: str = "") -> Scope:
    """A checked Scope (no pools named: every pool); InvalidRequest naming the bad field."""
    chosen = Right.parse(right)
    names = list(pools)
    for pool in names:
        if POOL_NAME_PATTERN.fullmatch(pool) is None:
            raise InvalidRequest(f"pool {pool!r}: expected a pool name, ^[a-z0-9][a-z0-9-]{{0,31}}$")
    if PREFIX_PATTERN.fullmatch(prefix) is None:
        raise InvalidRequest(f"prefix {prefix!r}: use at most 127 characters from A-Z a-z 0-9 . _ -")
    return Scope(right=chosen, pools=frozenset(names) if names else None, prefix=prefix)


def index_by_hash(raw: Mapping[Any, Any]) -> dict[str, TokenRecord]:
    """SHA-256 -> record, from the raw ``warmpool:tokens`` hash (an unreadable record is skipped)."""
    out: dict[str, TokenRecord] = {}
    for value in raw.values():
        try:
            record = TokenRecord.from_json(value)
        except (ValueError, KeyError, TypeError):
            continue
        out[record.sha256] = record
    return out


def match(records: Mapping[str, TokenRecord], secret: bytes) -> TokenRecord | None:
    """The record of ``secret``, or None. The digests are compared in constant time."""
    digest = hash_secret(secret)
    record = records.get(digest)
    if record is None or not hmac.compare_digest(record.sha256, digest):
        return None
    return record


class TokenStore:
    """Tokens in the state Redis (synchronous: the ``warmpool token`` commands)."""

    def __init__(self, client: redis.Redis, *, key: str = TOKENS_KEY) -> None:
        self.client = client
        self.key = key

    @classmethod
    def from_url(cls, url: str) -> TokenStore:
        """A store on the Redis at ``url`` (``WARMPOOL_REDIS_URL``)."""
        return cls(redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5))

    def create(self, name: str, scope: Scope) -> tuple[TokenRecord, str]:
        """A new token (record, secret); InvalidRequest when ``name`` exists. The secret is not kept."""
        check_name(name)
        secret = new_secret()
        now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        record = TokenRecord(name=name, scope=scope, sha256=hash_secret(secret), created_at=now)
        # HSETNX: two creates of one name cannot both win.
        if not self.client.hsetnx(self.key, name, record.to_json()):
            raise InvalidRequest(f"token name {name!r}: a token of that name exists (revoke it first)")
        return record, secret

    def list(self) -> list[TokenRecord]:
        """Every token, by name."""
        return sorted(index_by_hash(self.client.hgetall(self.key)).values(), key=lambda r: r.name)

    def revoke(self, name: str) -> bool:
        """Delete the token ``name``; whether it existed."""
        return bool(self.client.hdel(self.key, name))

    def close(self) -> None:
        """Close the Redis connections."""
        self.client.close()
