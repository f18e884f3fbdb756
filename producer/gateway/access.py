"""Who is calling and what they may do: scoped tokens, the dashboard session, rate limits.

Authentication (ASGI middleware :class:`AccessControl`, on every route but the
open ones) finds the caller's :class:`Principal`:

* ``Authorization: Bearer <token>``: ``WARMPOOL_API_TOKEN`` (an admin of every
  pool, compared in constant time) or a scoped token of the state Redis
  (producer/tokens.py), looked up by its SHA-256 in a cache re-read every
  ``token_cache_s`` (``WARMPOOL_GATEWAY_TOKEN_CACHE_S``, 2 s by default): a
  revoked token is refused within that time, a new one within MISS_RELOAD_S
  (an unknown token re-reads the tokens, at most that often).
* the dashboard's session cookie (``POST /ui/session``): read-only, whatever
  the token it was opened with may do, and only as long as that token exists.
* neither configured (no ``WARMPOOL_API_TOKEN``, no scoped token in Redis):
  nobody is asked anything, as before: serve() then binds loopback only. The
  first scoped token seen turns authentication on for good (until restart).

Authorization is :func:`authorize`, called by every route with the pool it acts
on, the right it needs and the project it touches: outside the token's scope it
raises 403 before anything is enqueued. Rate limits (a token bucket per token,
``WARMPOOL_GATEWAY_RATE_PER_S`` and ``_BURST``) answer 429 with Retry-After.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any

import redis
import redis.asyncio as aioredis
from fastapi import Request

from producer.gateway.asgi import ASGIApp, Receive, Scope, Send, send_json
from producer.gateway.constants import CODE_POOL_UNAVAILABLE, CODE_UNAUTHORIZED, FLOWER_PREFIX, OPEN_PATHS
from producer.gateway.errors import ApiError
from producer.gateway.logs import log
from producer.tokens import ADMIN_EVERYWHERE, Right, TokenRecord, hash_secret, index_by_hash, match
from producer.tokens import Scope as TokenScope
from tasks.state.keys import TOKENS_KEY, UI_SESSION_TTL_S, ui_session_key

CODE_FORBIDDEN = "forbidden"
CODE_RATE_LIMITED = "rate_limited"
API_TOKEN_NAME = "WARMPOOL_API_TOKEN"
SESSION_COOKIE = "warmpool_ui"
MISS_RELOAD_S = 0.5  # an unknown token re-reads the tokens at most this often (no Redis flood)
STALE_MAX_S = 60.0  # Redis down: cached tokens serve this long, then scoped tokens get 503
STATE_KEY = "warmpool_principal"
UI_STATIC_PREFIX = "/ui/static/"
LOGIN_PATHS = frozenset(
    {"/ui", "/ui/session", "/ui/logout"}
)  # reached without credentials: the login form and its POST


@dataclass(frozen=True)
class Principal:
    """The caller: a token's name and scope; ``via_cookie`` when it came from a dashboard session."""

    name: str
    scope: TokenScope
    via_cookie: bool = False
    digest: str = ""  # the SHA-256 of the token it authenticated with (a dashboard session keeps it)


ANONYMOUS = Principal("anonymous", ADMIN_EVERYWHERE)  # no authentication configured (loopback only)
# GET /ui without credentials: may see the login form only (its scope covers no pool).
NOBODY = Principal("", TokenScope(right=Right.READ, pools=frozenset()), via_cookie=True)


class TokenCache:
    """The scoped tokens of ``warmpool:tokens``, re-read at most every ``ttl_s``."""

    def __init__(
        self,
        client: aioredis.Redis | None,
        *,
        ttl_s: float,
        key: str = TOKENS_KEY,
        miss_reload_s: float = MISS_RELOAD_S,
    ) -> None:
        self.client = client
        self.key = key
        self.ttl_s = ttl_s
        self.miss_reload_s = miss_reload_s
        self._by_hash: dict[str, TokenRecord] = {}
        self._loaded_at = -math.inf
        self._tried_at = -math.inf
        self._lock = asyncio.Lock()
        self.seen_any = False  # a scoped token existed once: authentication stays on

    async def records(self, *, missed: bool = False) -> dict[str, TokenRecord]:
        """SHA-256 -> record. ``missed``: the caller's token was not found (re-read if not too recent)."""
        if self.client is None:
            return {}
        if self._due(missed=missed):
            async with self._lock:
                if self._due(missed=missed):  # not re-read meanwhile by another request
                    await self._load()
        if self.seen_any and time.monotonic() - self._loaded_at > max(STALE_MAX_S, self.ttl_s):
            raise ApiError(503, CODE_POOL_UNAVAILABLE, "the token store (state Redis) did not answer")
        return self._by_hash

    def _due(self, *, missed: bool) -> bool:
        # A failed read is retried no sooner than the re-read floor: a Redis that
        # is down is not asked again by every request.
        now = time.monotonic()
        since_try = now - self._tried_at
        stale = now - self._loaded_at >= self.ttl_s and since_try >= min(self.ttl_s, self.miss_reload_s)
        return stale or (missed and since_try >= self.miss_reload_s)

    async def _load(self) -> None:
        assert self.client is not None
        self._tried_at = time.monotonic()
        try:
            raw = await self.client.hgetall(self.key)
        except redis.RedisError as exc:
            log.warning("cannot read the scoped tokens (keeping the last ones read)", extra={"error": repr(exc)[:300]})
            return
        self._by_hash = index_by_hash(raw)
        self._loaded_at = time.monotonic()
        self.seen_any = self.seen_any or bool(self._by_hash)


@dataclass
class RateLimiter:
    """A token bucket per caller: ``rate_per_s`` requests a second, ``burst`` at once (0: no limit)."""

    rate_per_s: float
    burst: int
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (tokens, at)

    def wait_s(self, name: str) -> float:
        """0 if ``name`` may send a request now (it is counted), else the seconds until it may."""
        if self.rate_per_s <= 0:
            return 0.0
        now = self.clock()
        tokens, at = self._buckets.get(name, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate_per_s)
        if tokens >= 1.0:
            self._buckets[name] = (tokens - 1.0, now)
            return 0.0
        self._buckets[name] = (tokens, now)
        return (1.0 - tokens) / self.rate_per_s


class Access:
    """Everything AccessControl and authorize() need: the admin token, the token cache, sessions, limits."""

    def __init__(
        self,
        *,
        api_token: str | None,
        client: aioredis.Redis | None = None,
        token_cache_s: float = 2.0,
        limiter: RateLimiter | None = None,
        tokens_key: str = TOKENS_KEY,
        miss_reload_s: float = MISS_RELOAD_S,
    ) -> None:
        self.api_token = api_token.encode() if api_token else None
        self.client = client
        self.tokens = TokenCache(client, ttl_s=token_cache_s, key=tokens_key, miss_reload_s=miss_reload_s)
        self.limiter = limiter or RateLimiter(0.0, 1)

    async def aclose(self) -> None:
        """Close the Redis connections."""
        if self.client is not None:
            await self.client.aclose()

    async def enforcing(self) -> bool:
        """Whether callers must authenticate (an admin token, or a scoped token was ever seen)."""
        if self.api_token is not None or self.tokens.seen_any:
            return True
        try:
            await self.tokens.records()
        except ApiError:
            return True
        return self.tokens.seen_any

    async def from_bearer(self, credential: bytes) -> Principal | None:
        """The principal of a bearer token, None when it is no valid token."""
        if self.api_token is not None and hmac.compare_digest(credential, self.api_token):
            return Principal(API_TOKEN_NAME, ADMIN_EVERYWHERE, digest=hash_secret(self.api_token))
        record = match(await self.tokens.records(), credential)
        if record is None:
            record = match(await self.tokens.records(missed=True), credential)
        return None if record is None else Principal(record.name, record.scope, digest=record.sha256)

    async def from_session(self, cookie: str) -> Principal | None:
        """The (read-only) principal of a dashboard session cookie, None when it is no live session."""
        if self.client is None or not cookie:
            return None
        try:
            raw = await self.client.get(ui_session_key(hash_secret(cookie)))
        except redis.RedisError:
            raise ApiError(503, CODE_POOL_UNAVAILABLE, "the session store (state Redis) did not answer") from None
        if raw is None:
            return None
        # The session holds the SHA-256 of its token: a revoked (or replaced) token ends it.
        digest = raw.decode() if isinstance(raw, bytes) else str(raw)
        if self.api_token is not None and hmac.compare_digest(digest, hash_secret(self.api_token)):
            return Principal(API_TOKEN_NAME, ADMIN_EVERYWHERE, via_cookie=True, digest=digest)
        record = (await self.tokens.records()).get(digest)
        if record is None:
            return None
        return Principal(record.name, record.scope, via_cookie=True, digest=digest)

    async def open_session(self, principal: Principal, session: str) -> None:
        """Remember the dashboard session ``session`` (its SHA-256 only) for UI_SESSION_TTL_S."""
        if self.client is None:
            raise ApiError(503, CODE_POOL_UNAVAILABLE, "dashboard sessions need the state Redis")
        await self.client.set(ui_session_key(hash_secret(session)), principal.digest, ex=UI_SESSION_TTL_S)

    async def close_session(self, session: str) -> None:
        """Forget a dashboard session."""
        if self.client is not None and session:
            await self.client.delete(ui_session_key(hash_secret(session)))


def is_open(path: str) -> bool:
    """Whether ``path`` needs no token (/livez, /healthz, the docs, the dashboard's script and style
    sheet, which hold no data; /flower checks its own basic auth)."""
    if path in OPEN_PATHS or path.startswith(UI_STATIC_PREFIX):
        return True
    return path == FLOWER_PREFIX or path.startswith(FLOWER_PREFIX + "/")


def _header(scope: Scope, name: bytes) -> bytes | None:
    values = [v for k, v in scope.get("headers", []) if k.lower() == name]
    return bytes(values[0]) if values else None


def session_cookie(headers: Mapping[str, str] | None = None, raw: bytes | None = None) -> str:
    """The dashboard session cookie of a request ("" when absent or unreadable)."""
    text = raw.decode("latin-1") if raw is not None else (headers or {}).get("cookie", "")
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(text)
    except Exception:  # a malformed Cookie header is no session
        return ""
    morsel = jar.get(SESSION_COOKIE)
    return morsel.value if morsel is not None else ""


async def _unauthorized(send: Send, *, given: bool) -> None:
    challenge = 'Bearer realm="warmpool"' + (', error="invalid_token"' if given else "")
    message = "the bearer token is not valid" if given else "a bearer token is required"
    await send_json(send, 401, {"code": CODE_UNAUTHORIZED, "message": message}, [("WWW-Authenticate", challenge)])


class AccessControl:
    """ASGI middleware: authenticates the caller, applies its rate limit, leaves the Principal in the scope."""

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app = app
        self.access = access

    async def principal(self, scope: Scope) -> Principal | bool:
        """The caller, or False (credentials given but wrong) / True (none given)."""
        header = _header(scope, b"authorization")
        if header is not None:
            kind, _, credential = header.partition(b" ")
            if kind.lower() != b"bearer":
                return False
            return await self.access.from_bearer(credential.strip()) or False
        cookie = session_cookie(raw=_header(scope, b"cookie") or b"")
        if cookie:
            return await self.access.from_session(cookie) or False
        return True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        try:
            found = await self.principal(scope) if await self.access.enforcing() else ANONYMOUS
        except ApiError as exc:
            await send_json(send, exc.status, exc.body(), list(exc.headers.items()))
            return
        if not isinstance(found, Principal):
            if scope.get("path") in LOGIN_PATHS:
                found = NOBODY
            else:
                await _unauthorized(send, given=found is False)
                return
        if found not in (ANONYMOUS, NOBODY) and (wait_s := self.access.limiter.wait_s(found.name)) > 0:
            body = {"code": CODE_RATE_LIMITED, "message": f"token {found.name} sent too many requests: retry later"}
            await send_json(send, 429, body, [("Retry-After", str(max(1, math.ceil(wait_s))))])
            return
        scope.setdefault("state", {})[STATE_KEY] = found
        await self.app(scope, receive, send)


def principal_of(request: Request) -> Principal:
    """The caller AccessControl found (a request it never saw is refused)."""
    found = request.scope.get("state", {}).get(STATE_KEY)
    if not isinstance(found, Principal):
        raise ApiError(401, CODE_UNAUTHORIZED, "a bearer token is required")
    return found


def authorize(request: Request, *, pool: str, right: Right, project_id: str | None = None) -> Principal:
    """The caller, if its scope covers ``right`` on ``pool`` (and ``project_id``); else ApiError 403.

    Call it first in a route, before anything is read or enqueued: a refusal changes nothing.
    """
    who = principal_of(request)
    scope = who.scope
    if who.via_cookie and right > Right.READ:
        raise ApiError(403, CODE_FORBIDDEN, "a dashboard session may only read: send the token as a bearer header")
    if not scope.allows_pool(pool):
        raise ApiError(403, CODE_FORBIDDEN, f"token {who.name} may not use pool {pool} ({scope.describe()})")
    if scope.right < right:
        message = f"token {who.name} may {scope.right.label}, this needs {right.label} ({scope.describe()})"
        raise ApiError(403, CODE_FORBIDDEN, message)
    if project_id is not None and not scope.allows_project(project_id):
        message = f"token {who.name} may not use project {project_id} ({scope.describe()})"
        raise ApiError(403, CODE_FORBIDDEN, message)
    return who


def redact_status(status: dict[str, Any], scope: TokenScope) -> dict[str, Any]:
    """``status`` as a caller of ``scope`` may see it: projects outside its prefix are not named.

    Counts stay pool-wide (they say how full the pool is, not whose machines they are).
    """
    if not scope.prefix:
        return status
    out = dict(status)
    out["machines"] = [
        m if scope.allows_project(m.get("project_id")) else {**m, "project_id": None, "hidden": True}
        for m in status.get("machines") or []
    ]
    out["waiting"] = [w for w in status.get("waiting") or [] if scope.allows_project(w.get("project_id"))]
    out["lost"] = [x for x in status.get("lost") or [] if scope.allows_project(x.get("project_id"))]
    return out
