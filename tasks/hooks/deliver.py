"""The webhook deliverer: reads each pool's event stream and POSTs every event, signed.

It runs as its own process (``warmpool webhooks run``), never in the pool worker: a receiver
that hangs, fails or redirects costs this process time, never an assign (docs/design.md).

Per (pool, webhook) one thread and one consumer group (``Webhook.group``) on the pool's stream:

- at least once: an entry is acknowledged (XACK) only after its POST answered 2xx, or after
  it was given up; a deliverer killed in between reads its pending entries again first
  (XREADGROUP from id 0) when it restarts, so receivers deduplicate by ``X-Warmpool-Event-Id``;
- in order per webhook: the next event waits until the current one is delivered or given up;
- bounded: each event is tried ``attempts`` times with exponential back-off (``backoff_base_s``
  doubling up to ``backoff_max_s``), each POST with a short timeout; 3xx counts as a failure
  (redirects are never followed). After ``suspend_after`` events in a row were given up, the
  webhook is *failing*: each later event is tried once until one succeeds again.
- reported: the pool's ``webhooks`` hash (tasks.state.keys) holds each webhook's delivery
  health, and failures are logged (``warmpool.webhooks``).

A new webhook's group starts at the stream's end (events from now on). A group behind the
stream's trimmed start simply resumes at the oldest kept event (logged once).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from tasks.hooks.config import Webhook
from tasks.hooks.signing import EVENT_ID_HEADER, SIGNATURE_HEADER, signature
from tasks.pool.events import EVENT_FIELD, decode
from tasks.state.keys import PoolKeys

log = logging.getLogger("warmpool.webhooks")
CONSUMER = "deliverer"  # one name: a restarted deliverer reads what its predecessor left pending
MAX_ERROR_CHARS = 300


@dataclass(frozen=True)
class DeliveryPolicy:
    """How hard a webhook is tried (defaults: ~2 minutes of retries per event at most)."""

    timeout_s: float = 5.0
    attempts: int = 6
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    suspend_after: int = 3  # events given up in a row: the webhook is failing, one try per event
    block_ms: int = 2_000  # how long one read waits for new events
    batch: int = 20


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects are answers, not instructions: a 3xx fails the attempt (never followed)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects())


def post(url: str, body: bytes, headers: Mapping[str, str], *, timeout_s: float) -> str | None:
    """POST ``body``; None on a 2xx answer, else why not (one line)."""
    request = urllib.request.Request(url, data=body, method="POST", headers=dict(headers))
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}" + (" (redirects are not followed)" if 300 <= exc.code < 400 else "")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"{type(exc).__name__}: {reason}"[:MAX_ERROR_CHARS]
    return None if 200 <= status < 300 else f"HTTP {status}"


class WebhookDeliverer:
    """Delivers one pool's events to one webhook (``run`` until ``stop`` is set)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        pool: str,
        keys: PoolKeys,
        webhook: Webhook,
        policy: DeliveryPolicy = DeliveryPolicy(),
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._r = client
        self.pool = pool
        self.keys = keys
        self.webhook = webhook
        self.policy = policy
        self.stop = stop or threading.Event()
        self._clock = clock
        self._given_up_in_a_row = 0
        self._trim_noticed = (0, 0)
        self._health: dict[str, Any] = {"url": webhook.url, "delivered": 0, "retried": 0, "given_up": 0}

    # -- the loop ---------------------------------------------------------
    def ensure_group(self) -> None:
        """Create this webhook's consumer group at the stream's end (events from now on), once."""
        try:
            self._r.xgroup_create(self.keys.events, self.webhook.group, id="$", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def trimmed_before_delivery(self) -> bool:
        """Whether the stream dropped events this webhook had not been given (said once per gap, in the log).

        Redis trims the oldest entries (``MAXLEN ~``); a webhook further behind resumes at the
        oldest kept event: XREADGROUP does that by itself, this only makes it visible.
        """
        info: Any = self._r.xinfo_stream(self.keys.events)
        first = info.get("first-entry")
        if not first or int(info.get("entries-added") or 0) <= int(info.get("length") or 0):
            return False  # nothing was ever trimmed
        groups: Any = self._r.xinfo_groups(self.keys.events)
        position = next((str(g["last-delivered-id"]) for g in groups if g["name"] == self.webhook.group), "0-0")
        oldest = str(first[0])
        # Trimming removes the oldest entries first: while one at or before this group's position
        # is kept, nothing after it was lost; a position before every kept entry lost some.
        if _entry_id(position) >= _entry_id(oldest) or _entry_id(oldest) <= self._trim_noticed:
            return False
        if self._r.xrange(self.keys.events, min="-", max=position, count=1):
            return False
        self._trim_noticed = _entry_id(oldest)
        log.warning(
            "events were trimmed before this webhook got them: resuming at the oldest kept event",
            extra={"pool": self.pool, "url": self.webhook.url, "after": position, "oldest_kept": oldest},
        )
        self._health["trimmed_notice"] = oldest
        return True

    def run(self) -> None:
        """Deliver until ``stop`` is set; a Redis outage is waited out, never fatal."""
        self.ensure_group()
        while not self.stop.is_set():
            try:
                self.run_once()
            except redis.RedisError as exc:
                log.warning("webhook deliverer: state store unavailable", extra={"pool": self.pool, "error": str(exc)})
                self.stop.wait(1.0)

    def run_once(self, *, block_ms: int | None = None) -> int:
        """Deliver what is pending (first) or new; returns how many entries were settled."""
        entries = self._read("0", block_ms=None)  # left pending by a delivery cut short (a restart)
        if not entries:
            self.trimmed_before_delivery()
            entries = self._read(">", block_ms=self.policy.block_ms if block_ms is None else block_ms)
        settled = 0
        for entry_id, fields in entries:
            if self.stop.is_set():
                break
            if self._settle(entry_id, fields):
                settled += 1
        return settled

    def _read(self, start: str, *, block_ms: int | None) -> list[tuple[str, dict[str, str] | None]]:
        reply: Any = self._r.xreadgroup(
            self.webhook.group,
            CONSUMER,
            {self.keys.events: start},
            count=self.policy.batch,
            block=block_ms if block_ms else None,
        )
        if not reply:
            return []
        if isinstance(reply, dict):  # RESP3
            return list(next(iter(reply.values()), [[]])[0])
        return list(reply[0][1])

    def _settle(self, entry_id: str, fields: dict[str, str] | None) -> bool:
        """Deliver one entry (or give it up) and acknowledge it; False when stopped first."""
        if not fields:  # trimmed while pending: nothing left to deliver
            self._r.xack(self.keys.events, self.webhook.group, entry_id)
            return True
        event = decode(entry_id, fields.get(EVENT_FIELD)).published(self.pool)
        body = json.dumps(event, separators=(",", ":"), sort_keys=True).encode()
        outcome = self._deliver(entry_id, body)
        if outcome is None:
            return False  # stopped mid-retries: stays pending, delivered after the restart
        self._r.xack(self.keys.events, self.webhook.group, entry_id)
        return True

    def _deliver(self, entry_id: str, body: bytes) -> bool | None:
        """True: delivered; False: given up; None: stopped before either."""
        attempts = 1 if self._given_up_in_a_row >= self.policy.suspend_after else self.policy.attempts
        error = ""
        for attempt in range(attempts):
            if attempt:
                self._health["retried"] += 1
                delay = min(self.policy.backoff_max_s, self.policy.backoff_base_s * 2 ** (attempt - 1))
                if self.stop.wait(delay):
                    return None
            now = int(self._clock())
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "warmpool-webhooks",
                EVENT_ID_HEADER: entry_id,
                SIGNATURE_HEADER: signature(self.webhook.secret, body, timestamp=now),
            }
            problem = post(self.webhook.url, body, headers, timeout_s=self.policy.timeout_s)
            if problem is None:
                self._given_up_in_a_row = 0
                self._record(entry_id, delivered=True)
                return True
            error = problem
            log.warning(
                "webhook delivery failed",
                extra={"pool": self.pool, "url": self.webhook.url, "event_id": entry_id, "error": error},
            )
        self._given_up_in_a_row += 1
        log.error(
            "webhook event given up",
            extra={"pool": self.pool, "url": self.webhook.url, "event_id": entry_id, "attempts": attempts},
        )
        self._record(entry_id, delivered=False, error=error)
        return False

    def _record(self, entry_id: str, *, delivered: bool, error: str = "") -> None:
        h = self._health
        if delivered:
            h["delivered"] += 1
        else:
            h.update(given_up=h["given_up"] + 1, last_error=error, last_error_at=self._clock())
        h.update(last_event_id=entry_id, failing=self._given_up_in_a_row >= self.policy.suspend_after)
        self._r.hset(self.keys.webhooks, self.webhook.group, json.dumps(h))


def _entry_id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms or 0), int(seq or 0)


def webhook_health(client: redis.Redis, keys: PoolKeys) -> dict[str, dict[str, Any]]:
    """Each webhook's delivery health on one pool (consumer group -> record), as the deliverers left it."""
    raw: dict[str, str] = client.hgetall(keys.webhooks)  # type: ignore[assignment]
    health: dict[str, dict[str, Any]] = {}
    for group, value in raw.items():
        try:
            health[group] = json.loads(value)
        except ValueError:
            continue
    return health


def run_deliverers(
    client: redis.Redis,
    pools: Mapping[str, tuple[PoolKeys, Sequence[Webhook]]],
    *,
    policy: DeliveryPolicy = DeliveryPolicy(),
    stop: threading.Event,
) -> list[threading.Thread]:
    """Start one deliverer thread per (pool, webhook); they run until ``stop`` is set."""
    threads = []
    for pool, (keys, hooks) in pools.items():
        for hook in hooks:
            worker = WebhookDeliverer(client, pool=pool, keys=keys, webhook=hook, policy=policy, stop=stop)
            thread = threading.Thread(target=worker.run, name=f"webhook {pool} {hook.group}", daemon=True)
            thread.start()
            threads.append(thread)
    return threads
