"""``GET /v1/events``: the pool's events as Server-Sent Events (producer/events.py reads them).

Each event is ``id: <stream id>``, ``event: <type>``, ``data: <JSON>``; a
browser's EventSource resumes after a reconnect with ``Last-Event-ID`` (a
script may pass ``?since=ID``; ``?last=N`` starts with the newest N kept
events; neither: new events only). A comment line (``: heartbeat``) goes out
after every HEARTBEAT_S without an event, so proxies keep the connection and a
gone client is noticed. A stream trimmed past the resume id answers one
``event: notice`` and goes on from the oldest kept event.

Memory per connection is bounded (at most READ_COUNT events read at a time,
each written before the next read), connections are capped (MAX_STREAMS:
beyond it 503), and a client that disconnects ends its stream at once
(Starlette cancels the response, and with it the blocking read).

A token sees only the pools it may read, and no event of a project outside its
project-id prefix (pool-wide events, without a project, are shown).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import redis
import redis.asyncio as aioredis
from fastapi import FastAPI, Path, Query, Request
from fastapi.responses import StreamingResponse

from producer.events import NEW_ONLY, AsyncEventReader, Notice, check_since
from producer.gateway.access import authorize
from producer.gateway.constants import CODE_POOL_UNAVAILABLE
from producer.gateway.errors import ApiError
from producer.gateway.logs import log
from producer.gateway.service import Gateway
from producer.tokens import Right
from producer.tokens import Scope as TokenScope
from tasks.contract import CODE_BAD_REQUEST
from tasks.errors import InvalidRequest
from tasks.pools import Deployment
from tasks.state.connect import async_state_client
from tasks.state.keys import PoolKeys

HEARTBEAT_S = 15.0
READ_COUNT = 100
MAX_STREAMS = 100
MAX_LAST = 1_000
RETRY_MS = 3_000


class EventFeed:
    """The event streams the gateway serves: pool name -> (redis.asyncio client, stream key)."""

    def __init__(
        self,
        sources: Mapping[str, tuple[aioredis.Redis, str]],
        *,
        heartbeat_s: float = HEARTBEAT_S,
        max_streams: int = MAX_STREAMS,
    ) -> None:
        self.sources = dict(sources)
        self.heartbeat_s = heartbeat_s
        self.max_streams = max_streams
        self.open = 0

    @classmethod
    def for_deployment(cls, deployment: Deployment, *, heartbeat_s: float = HEARTBEAT_S) -> EventFeed:
        """A feed of every pool of ``deployment`` (its state Redis, its PoolKeys.events); one client per URL."""
        clients: dict[str, aioredis.Redis] = {}
        sources: dict[str, tuple[aioredis.Redis, str]] = {}
        for pool in deployment:
            url = pool.settings.redis_url
            if url not in clients:
                # The socket timeout outlasts the blocking read (XREAD BLOCK heartbeat_s).
                clients[url] = async_state_client(
                    url,
                    master_name=pool.settings.sentinel_master,
                    socket_timeout=heartbeat_s + 10,
                    socket_connect_timeout=5,
                )
            sources[pool.name] = (clients[url], PoolKeys.for_group(pool.namespace).events)
        return cls(sources, heartbeat_s=heartbeat_s)

    def reader(self, pool: str) -> AsyncEventReader:
        """The reader of ``pool``'s stream (ApiError 404 for a pool this gateway does not serve)."""
        source = self.sources.get(pool)
        if source is None:
            raise ApiError(404, "not_found", f"no event stream for pool {pool}")
        client, key = source
        return AsyncEventReader(client, pool=pool, key=key, count=READ_COUNT)

    async def aclose(self) -> None:
        """Close the Redis connections."""
        for client in {id(c): c for c, _ in self.sources.values()}.values():
            await client.aclose()


def frame(event: Mapping[str, Any]) -> bytes:
    """One event as an SSE frame (``id``, ``event``, ``data``)."""
    kind = "".join(ch for ch in str(event.get("type") or "event") if ch not in "\r\n")
    return f"id: {event['id']}\nevent: {kind}\ndata: {json.dumps(event)}\n\n".encode()


def notice_frame(notice: Notice) -> bytes:
    """A notice (no ``id``: the client's resume point stays its last event)."""
    data = {"type": "notice", "message": notice.message, "resumed_from": notice.resumed_from}
    return f"event: notice\ndata: {json.dumps(data)}\n\n".encode()


def visible(event: Mapping[str, Any], scope: TokenScope) -> bool:
    """Whether a caller of ``scope`` may see ``event`` (its project inside the prefix, or none)."""
    project = event.get("project_id")
    return scope.allows_project(project if isinstance(project, str) else None)


async def frames(
    feed: EventFeed, reader: AsyncEventReader, *, since: str, last: int, scope: TokenScope
) -> AsyncIterator[bytes]:
    """The SSE frames of one connection, until the client leaves (counted open meanwhile)."""
    feed.open += 1
    try:
        yield f"retry: {RETRY_MS}\n\n".encode()
        if last > 0:
            latest = await reader.latest(last)
            for event in latest:
                if visible(event, scope):
                    yield frame(event)
            since = latest[-1]["id"] if latest else NEW_ONLY
        block_ms = max(1, int(feed.heartbeat_s * 1000))
        async for item in reader.read(since, follow=True, block_ms=block_ms):
            if item is None:
                yield b": heartbeat\n\n"
            elif isinstance(item, Notice):
                yield notice_frame(item)
            elif visible(item, scope):
                yield frame(item)
    except redis.RedisError as exc:
        # The response has started: say why it ends (EventSource reconnects and resumes).
        log.warning("event stream interrupted", extra={"error": repr(exc)[:300]})
        yield notice_frame(Notice("the event store did not answer: reconnect to resume", None))
    finally:
        feed.open -= 1


def event_stream(request: Request, feed: EventFeed | None, *, pool: str, since: str | None, last: int) -> Any:
    """The SSE response of ``pool``'s events for this request (authorized: ``read`` on the pool)."""
    who = authorize(request, pool=pool, right=Right.READ)
    if feed is None:
        raise ApiError(404, "not_found", "this gateway serves no event stream")
    resume = request.headers.get("last-event-id") or since
    try:
        start = check_since(resume) if resume else NEW_ONLY
    except InvalidRequest as exc:
        raise ApiError(400, CODE_BAD_REQUEST, str(exc)) from None
    if resume:
        last = 0  # a resume continues where it was, never replays the newest again
    if feed.open >= feed.max_streams:
        raise ApiError(503, CODE_POOL_UNAVAILABLE, "too many event streams are open", headers={"Retry-After": "5"})
    reader = feed.reader(pool)
    return StreamingResponse(
        frames(feed, reader, since=start, last=last, scope=who.scope),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def add_event_routes(app: FastAPI, gw: Gateway, feed: EventFeed | None) -> None:
    """``GET /v1/events`` (the default pool) and ``GET /v1/pools/{pool}/events``."""
    responses: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {}}}}
    since_query = Query(None, description="the events after this id (0: every kept one)")
    last_query = Query(0, ge=0, le=MAX_LAST, description="start with the newest N kept events")

    @app.get("/v1/events", tags=["v1"], response_class=StreamingResponse, responses=responses)
    async def events(request: Request, since: str | None = since_query, last: int = last_query) -> Any:
        """The default pool's events as Server-Sent Events; resumable with `Last-Event-ID`."""
        return event_stream(request, feed, pool=gw.pool_name, since=since, last=last)

    @app.get("/v1/pools/{pool}/events", tags=["v1"], response_class=StreamingResponse, responses=responses)
    async def pool_events(
        request: Request,
        pool: str = Path(description="a configured pool's name"),
        since: str | None = since_query,
        last: int = last_query,
    ) -> Any:
        """That pool's events as Server-Sent Events (as /v1/events); 404 `unknown_pool`."""
        return event_stream(request, feed, pool=gw.check_pool(pool), since=since, last=last)
