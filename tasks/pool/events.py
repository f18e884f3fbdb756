"""Pool events: what the pool worker records in the pool's event stream, and how.

Contract (docs/operations.md "Events"; readers rely on it): each stream entry
has one field, ``event``, holding a JSON object with at least ``at`` (ISO 8601
UTC), ``type``, ``project_id``, ``instance_id`` and ``reason`` (the last three
may be null), plus optional extra keys. Readers add ``id`` (the stream entry
id) and ``pool`` (which stream they read).

Where a change is a Lua transition (tasks/state/lua), the script writes its
event itself, in the same atomic step; the events of a refresh are derived
here from the reconciliation (``snapshot_events``) and written in the same
MULTI as the reconciliation; the rest (pause, capped, ...) are written by the
service through ``StateStore.append_events``.

Pure: standard library and the pool model only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tasks.errors import InvalidRequest
from tasks.pool.model import Machine, MachineState, PoolView, iso_utc
from tasks.pool.reconcile import Reconciliation

ASSIGNED = "assigned"
RELEASED = "released"
LEASE_EXPIRED = "lease_expired"
LOST = "lost"
LAUNCHED = "launched"
READY = "ready"
TERMINATED = "terminated"
CAPPED = "capped"
LAUNCH_FAILED = "launch_failed"
TARGET_CHANGED = "target_changed"
PAUSED = "paused"
RESUMED = "resumed"
ADOPTED = "adopted"
EVENT_TYPES = frozenset(
    {
        ASSIGNED,
        RELEASED,
        LEASE_EXPIRED,
        LOST,
        LAUNCHED,
        READY,
        TERMINATED,
        CAPPED,
        LAUNCH_FAILED,
        TARGET_CHANGED,
        PAUSED,
        RESUMED,
        ADOPTED,
    }
)

# Reasons of ``terminated`` (why warmpool let a machine go) and of ``released``.
REASON_RELEASE = "release"
REASON_SURPLUS = "surplus"
REASON_UNREADY = "unready"
REASON_RECYCLE = "recycle"
REASON_FORCE_RELEASE = "force_release"
REASON_LEASE_EXPIRED = "lease_expired"
REASON_WITHDRAWN = "withdrawn"
REASON_DUPLICATE = "duplicate"

EVENT_FIELD = "event"  # the one field of a stream entry


@dataclass(frozen=True)
class Event:
    """One event as the pool worker writes it (without ``id`` and ``pool``: readers add those)."""

    type: str
    at: float  # epoch seconds
    project_id: str | None = None
    instance_id: str | None = None
    reason: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.extra,
            "at": iso_utc(self.at),
            "type": self.type,
            "project_id": self.project_id,
            "instance_id": self.instance_id,
            "reason": self.reason,
        }

    def encode(self) -> str:
        """The value of the stream entry's ``event`` field."""
        return json.dumps(self.to_json(), separators=(",", ":"))


@dataclass(frozen=True)
class StoredEvent:
    """An event read back from a pool's stream: its entry id and the decoded object."""

    id: str
    event: dict[str, Any]

    def published(self, pool: str) -> dict[str, Any]:
        """The event as consumers get it: with ``id`` and ``pool`` (the contract's published object)."""
        return {"id": self.id, "pool": pool, **self.event}


EVENT_ID_PATTERN = re.compile(r"\d{1,20}(-\d{1,20})?")


def check_event_id(value: Any) -> str:
    """A stream entry id (``<ms>-<seq>``, or ``<ms>``) as given; InvalidRequest otherwise."""
    if not isinstance(value, str) or EVENT_ID_PATTERN.fullmatch(value) is None:
        raise InvalidRequest(f"event id {str(value)[:40]!r}: expected <milliseconds>-<sequence>, e.g. 1764590400123-0")
    return value


def decode(event_id: str, raw: str | None) -> StoredEvent:
    """A stream entry as a StoredEvent; an undecodable one keeps its id with type ``unknown``."""
    try:
        value = json.loads(raw or "")
    except ValueError:
        value = None
    if not isinstance(value, dict):
        value = {"type": "unknown", "at": None, "project_id": None, "instance_id": None, "reason": "undecodable"}
    return StoredEvent(id=event_id, event=value)


def snapshot_events(view: PoolView, rec: Reconciliation, *, now: float) -> list[Event]:
    """The events of applying ``rec`` to ``view``: machines launched, ready, lost, duplicate claims retired."""
    events: list[Event] = []
    for m in rec.upserts:
        before = view.machines.get(m.instance_id)
        if before is None:
            events.append(Event(LAUNCHED, now, instance_id=m.instance_id, reason=m.detail or None))
        if m.state is MachineState.IDLE and (before is None or before.state is not MachineState.IDLE):
            events.append(Event(READY, now, instance_id=m.instance_id))
        if m.state is MachineState.RELEASING and (before is None or before.state is not MachineState.RELEASING):
            # A stale claim found in tags (tasks.pool.reconcile._restored): converge terminates it.
            events.append(_terminated(m, now, REASON_DUPLICATE))
    for lost in rec.lost:
        events.append(Event(LOST, now, project_id=lost.project_id, instance_id=lost.instance_id, reason=lost.reason))
    return events


def _terminated(m: Machine, now: float, reason: str) -> Event:
    return Event(TERMINATED, now, project_id=m.project_id, instance_id=m.instance_id, reason=reason)


def terminated(m: Machine, *, now: float, reason: str) -> Event:
    """``terminated`` for ``m``: warmpool asked AWS to terminate it, for ``reason``."""
    return _terminated(m, now, reason)
