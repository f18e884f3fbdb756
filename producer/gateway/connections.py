"""Connection limits of the served gateway: a header timeout, an idle timeout and a connection cap.

uvicorn alone cannot be kept from exhaustion by slow clients: its keep-alive
timer runs only between requests and is cancelled by the first byte of the
next one, so a connection that opens and sends its headers a byte at a time
(or never) is held forever; ``limit_concurrency`` answers 503 to requests but
never bounds the sockets themselves. GuardedH11Protocol (uvicorn's h11
protocol, which serve() always selects) adds what is missing:

* a **header timeout**: from the moment a connection opens, or its previous
  response ends, the next request's line, headers and body must have arrived
  within ``header_timeout_s``, else the connection is closed. A request that is
  being answered (a waiting assign, say) has no such deadline.
* an **idle timeout**: uvicorn's keep-alive timer (``idle_timeout_s``).
* a **connection cap**: at ``max_connections`` open connections a new one
  evicts the connection that has waited longest for a request (an attacker's
  half-sent headers, or an idle keep-alive), so a legitimate client is served
  even while the cap is full of slow ones; when every connection has a request
  in flight, the new one is closed at once.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from dataclasses import dataclass
from typing import ClassVar

from uvicorn.protocols.http.h11_impl import H11Protocol

from producer.gateway.constants import (
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
    ENV_MAX_CONNECTIONS,
    MAX_TIMEOUT_S,
)
from tasks.config import Settings

log = logging.getLogger("warmpool.gateway")

MIN_TIMEOUT_S = 0.01
MAX_IDLE_S = int(MAX_TIMEOUT_S)
SUMMARY_EVERY_S = 10.0  # at most one log line per this many seconds about closed connections


@dataclass(frozen=True)
class ConnectionLimits:
    """How long a request may take to arrive, how long an idle connection stays, how many may be open."""

    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    idle_timeout_s: int = DEFAULT_IDLE_TIMEOUT_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        """The WARMPOOL_GATEWAY_{HEADER_TIMEOUT_S,IDLE_TIMEOUT_S,MAX_CONNECTIONS} limits (checked by tasks.config)."""
        return cls(
            header_timeout_s=settings.gateway_header_timeout_s,
            idle_timeout_s=settings.gateway_idle_timeout_s,
            max_connections=settings.gateway_max_connections,
        )


def warn_if_above_file_limit(limits: ConnectionLimits) -> None:
    """Log a warning when the process may not open ``max_connections`` sockets (RLIMIT_NOFILE)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Room for the listening socket, the broker and result-backend connections, logs.
    if soft != resource.RLIM_INFINITY and soft < limits.max_connections + 64:
        log.warning(
            "%s=%d is close to or above this process's open-file limit (%d): raise `ulimit -n` or lower it",
            ENV_MAX_CONNECTIONS,
            limits.max_connections,
            soft,
        )


class ConnectionGuard:
    """The open connections of one server, and those waiting for a request, longest-waiting first."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.open: set[GuardedH11Protocol] = set()
        # Insertion-ordered: the first key has waited longest for its next request.
        self.awaiting: dict[GuardedH11Protocol, None] = {}
        self.timed_out = 0
        self.evicted = 0
        self.refused = 0
        self._summarized_at = time.monotonic()
        self._summarized = (0, 0, 0)

    def admit(self, conn: GuardedH11Protocol) -> bool:
        """Whether ``conn`` may stay open; at the cap the longest-waiting idle connection makes room."""
        if len(self.open) >= self.limits.max_connections:
            oldest = next(iter(self.awaiting), None)
            if oldest is None:
                self.refused += 1
                self._summarize()
                return False
            self.evicted += 1
            oldest.drop()
        self.open.add(conn)
        self._summarize()
        return True

    def waiting(self, conn: GuardedH11Protocol) -> None:
        """``conn`` now waits for a request: it becomes the newest eviction candidate."""
        self.awaiting.pop(conn, None)
        self.awaiting[conn] = None

    def busy(self, conn: GuardedH11Protocol) -> None:
        """``conn`` received a whole request: it is answered, never evicted."""
        self.awaiting.pop(conn, None)

    def closed(self, conn: GuardedH11Protocol) -> None:
        """``conn`` is gone."""
        self.open.discard(conn)
        self.awaiting.pop(conn, None)

    def note_timeout(self) -> None:
        """Count one connection closed for not sending its request in time."""
        self.timed_out += 1
        self._summarize()

    def _summarize(self) -> None:
        # One line per SUMMARY_EVERY_S, not one per attacking connection.
        now = time.monotonic()
        counts = (self.timed_out, self.evicted, self.refused)
        if counts == self._summarized or now - self._summarized_at < SUMMARY_EVERY_S:
            return
        last = self._summarized
        self._summarized, self._summarized_at = counts, now
        log.warning(
            "connections closed by the gateway's limits",
            extra={
                "header_timeouts": counts[0] - last[0],
                "evicted_at_cap": counts[1] - last[1],
                "refused_at_cap": counts[2] - last[2],
                "open": len(self.open),
                "max_connections": self.limits.max_connections,
            },
        )


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the header timeout and the connection cap of its ``guard``."""

    guard: ClassVar[ConnectionGuard]
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.guard.admit(self):
            transport.close()  # every open connection is being answered: no room
            return
        self._expect_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self.guard.closed(self)
        super().connection_lost(exc)

    def handle_events(self) -> None:
        # A new request-response cycle is created exactly when h11 parsed a
        # request's headers; the deadline ends when its body is complete too.
        super().handle_events()
        if self._head_timer is not None and self.cycle is not None and not self.cycle.more_body:
            if not self.cycle.response_complete:
                self._cancel_timer()
                self.guard.busy(self)

    def on_response_complete(self) -> None:
        # Armed before uvicorn handles pipelined bytes (inside the call below),
        # which may already hold the next whole request and cancel it again.
        if not self.transport.is_closing():
            self._expect_request()
        super().on_response_complete()

    def _expect_request(self) -> None:
        self._cancel_timer()
        self._head_timer = self.loop.call_later(self.guard.limits.header_timeout_s, self._request_timed_out)
        self.guard.waiting(self)

    def _cancel_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _request_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.guard.note_timeout()
            self.drop()

    def drop(self) -> None:
        """Close this connection now (timed out, or evicted to make room)."""
        self._cancel_timer()
        self.guard.closed(self)
        self.transport.close()


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedH11Protocol]:
    """A GuardedH11Protocol class with a guard of its own (one per server), for uvicorn's ``http=``."""

    class ServedProtocol(GuardedH11Protocol):
        guard = ConnectionGuard(limits)

    return ServedProtocol
