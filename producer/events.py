"""Reading a pool's event stream (``PoolKeys.events``): a synchronous and an asyncio reader.

The pool worker appends each event to a bounded Redis stream, one field
``event`` holding a JSON object (docs/design.md "Events"). A reader returns
each as a dict with at least ``id`` (the stream entry id, the event's
identity: resume after it, deduplicate by it), ``at``, ``pool`` (the pool of
the stream read), ``type``, ``project_id``, ``instance_id`` and ``reason``.

``since`` is an entry id (the events after it), ``0`` (from the oldest kept) or
``$`` (new events only). The stream keeps about EVENTS_KEEP events: when
``since`` is older than the oldest one kept, the events in between are gone,
and the reader resumes from the oldest kept event with one :class:`Notice`
(never an error, never a loop). Following blocks in ``XREAD BLOCK`` and reads
at most ``count`` events at a time, so a reader's memory is bounded whatever
the stream holds.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis

from tasks.errors import InvalidRequest

FIELD = "event"
BASE_KEYS = ("at", "type", "project_id", "instance_id", "reason")
ID_PATTERN = re.compile(r"\d{1,20}(-\d{1,20})?")
FROM_OLDEST = "0"
NEW_ONLY = "$"
DEFAULT_COUNT = 200
DEFAULT_BLOCK_MS = 5_000


@dataclass(frozen=True)
class Notice:
    """Something a reader says once instead of an event (the stream was trimmed past ``since``)."""

    message: str
    resumed_from: str | None


def check_since(text: str) -> str:
    """``text`` if it is a stream id, ``0`` or ``$``; InvalidRequest (one line) otherwise."""
    if text == NEW_ONLY or ID_PATTERN.fullmatch(text) is not None:
        return text
    raise InvalidRequest(
        f"since {text!r}: expected an event id like 1764590400123-0, 0 (the oldest kept) or $ (new events only)"
    )


def id_key(entry_id: str) -> tuple[int, int]:
    """A stream id as a sortable pair (``5`` is ``5-0``)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def decode(entry_id: Any, fields: Mapping[Any, Any], *, pool: str) -> dict[str, Any]:
    """One stream entry as the published event: its JSON plus ``id`` and ``pool`` (readers' values win)."""
    raw = fields.get(FIELD, fields.get(FIELD.encode()))
    try:
        data = json.loads(raw) if raw is not None else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        data = {"type": "unreadable", "reason": "the stream entry holds no JSON event object"}
    event: dict[str, Any] = dict.fromkeys(BASE_KEYS)
    event.update(data)
    event["id"] = _text(entry_id)
    event["pool"] = pool
    return event


def trim_notice(since: str, oldest: str | None) -> Notice | None:
    """The notice owed when ``since`` is older than the ``oldest`` kept entry (None: nothing was lost)."""
    if oldest is None or since in (FROM_OLDEST, NEW_ONLY) or id_key(since) == (0, 0):
        return None
    if id_key(since) >= id_key(oldest):
        return None
    return Notice(
        f"events after {since} were trimmed from the stream: resuming from the oldest kept event {oldest}", oldest
    )


def _first_id(entries: Any) -> str | None:
    return _text(entries[0][0]) if entries else None


def _entries_of(reply: Any) -> list[tuple[Any, Mapping[Any, Any]]]:
    # XREAD answers [[key, [(id, fields), ...]]] (RESP2) or {key: [[...]]} (RESP3).
    if not reply:
        return []
    if isinstance(reply, Mapping):
        return [(e[0], e[1]) for batch in reply.values() for e in batch[0]]
    return [(e[0], e[1]) for e in reply[0][1]]


class EventReader:
    """The events of one pool's stream, read with redis-py (the ``warmpool events`` command)."""

    def __init__(self, client: redis.Redis, *, pool: str, key: str, count: int = DEFAULT_COUNT) -> None:
        self.client = client
        self.pool = pool
        self.key = key
        self.count = count

    def _start(self, since: str) -> tuple[str, Notice | None]:
        if since == NEW_ONLY:
            last = self.client.xrevrange(self.key, "+", "-", count=1)
            return _first_id(last) or "0-0", None
        oldest = _first_id(self.client.xrange(self.key, "-", "+", count=1))
        return since, trim_notice(since, oldest)

    def read(
        self, since: str = FROM_OLDEST, *, follow: bool = False, block_ms: int = DEFAULT_BLOCK_MS
    ) -> Iterator[dict[str, Any] | Notice]:
        """The events after ``since`` (and a Notice if some were trimmed); ``follow``: forever, blocking."""
        cursor, notice = self._start(check_since(since))
        if notice is not None:
            yield notice
        while True:
            reply = self.client.xread({self.key: cursor}, count=self.count, block=block_ms if follow else None)
            entries = _entries_of(reply)
            for entry_id, fields in entries:
                cursor = _text(entry_id)
                yield decode(entry_id, fields, pool=self.pool)
            if not entries and not follow:
                return
            if len(entries) == self.count:  # behind: the stream may have been trimmed past the cursor
                oldest = _first_id(self.client.xrange(self.key, "-", "+", count=1))
                if (late := trim_notice(cursor, oldest)) is not None:
                    yield late


class AsyncEventReader:
    """The events of one pool's stream, read with redis.asyncio (the gateway's SSE, the dashboard)."""

    def __init__(self, client: aioredis.Redis, *, pool: str, key: str, count: int = DEFAULT_COUNT) -> None:
        self.client = client
        self.pool = pool
        self.key = key
        self.count = count

    async def _start(self, since: str) -> tuple[str, Notice | None]:
        if since == NEW_ONLY:
            last = await self.client.xrevrange(self.key, "+", "-", count=1)
            return _first_id(last) or "0-0", None
        oldest = _first_id(await self.client.xrange(self.key, "-", "+", count=1))
        return since, trim_notice(since, oldest)

    async def latest(self, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` events, oldest first (the dashboard's first view)."""
        entries: list[Any] = list(await self.client.xrevrange(self.key, "+", "-", count=limit) or [])
        return [decode(i, f or {}, pool=self.pool) for i, f in reversed(entries)]

    async def read(
        self, since: str = FROM_OLDEST, *, follow: bool = False, block_ms: int = DEFAULT_BLOCK_MS
    ) -> AsyncIterator[dict[str, Any] | Notice | None]:
        """As EventReader.read; following, None is yielded after each ``block_ms`` without an event (a heartbeat)."""
        cursor, notice = await self._start(check_since(since))
        if notice is not None:
            yield notice
        while True:
            reply = await self.client.xread({self.key: cursor}, count=self.count, block=block_ms if follow else None)
            entries = _entries_of(reply)
            for entry_id, fields in entries:
                cursor = _text(entry_id)
                yield decode(entry_id, fields, pool=self.pool)
            if not entries:
                if not follow:
                    return
                yield None
            if len(entries) == self.count:
                oldest = _first_id(await self.client.xrange(self.key, "-", "+", count=1))
                if (late := trim_notice(cursor, oldest)) is not None:
                    yield late
