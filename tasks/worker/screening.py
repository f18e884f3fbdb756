"""Screening what arrives on warmpool's queues: a message no job can be made of is set aside, never fatal.

Celery's consumer (celery/worker/consumer/consumer.py, ``create_task_handler``)
hands each message to the strategy of its task (celery/worker/strategy.py),
which builds a Request from its headers and body. In Celery 5.7 several
malformed messages make that path raise instead of refusing (upstream
celery#7975):

* an unknown task name without an ``id`` header: ``on_unknown_task`` raises
  TypeError and the worker exits; the message, never acknowledged, goes back
  to the queue and kills every restart again;
* a known task without ``id``: KeyError, which kombu's Redis transport counts
  as a connection error, so the worker reconnects forever and serves nothing;
* a ``timelimit`` that is not a pair, a body that is not ``[args, kwargs,
  embed]``, headers of the wrong types: each escapes as an exception.

``ScreeningConsumer`` (installed by tasks.worker.app as ``worker_consumer``,
so the pool worker and the aws workers both run it) checks every message
before Celery sees it (``screen``) and still catches what Celery raises on one
it let through. A refused message is logged ("message set aside"), recorded
in the pool's dead-letter list with a count per reason
(StateStore.record_dead_letter; ``status`` shows them), answered as a failed
job (InvalidRequest) when it carries an id a caller may wait on, and
acknowledged: it never goes back on the queue, and the worker goes on serving.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from celery.app.task import Task
from celery.utils.saferepr import saferepr
from celery.utils.time import maybe_iso8601
from celery.worker.consumer.consumer import Consumer

from tasks.contract import (
    REFUSED_BAD_BODY,
    REFUSED_BAD_HEADERS,
    REFUSED_CONTENT_TYPE,
    REFUSED_TOO_LARGE,
    REFUSED_UNHANDLED,
    REFUSED_UNKNOWN_TASK,
)
from tasks.errors import InvalidRequest
from tasks.pool.ports import DeadLetter

log = logging.getLogger("warmpool.screening")

# Far above any job warmpool sends (a snapshot of a 2,000-machine group is
# under 1 MiB), far below what would hurt the pool worker to decode.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
ACCEPTED_CONTENT_TYPES = frozenset({"application/json"})
EXCERPT_CHARS = 300  # of the headers and of the body, in a dead letter
MAX_ID_CHARS = 255
MAX_ETA_AHEAD_S = 3600.0

# Protocol 2 headers Celery reads, by the types it can handle; absent is fine.
_TEXT_HEADERS = ("root_id", "parent_id", "group", "shadow", "argsrepr", "kwargsrepr", "eta", "expires", "origin")
_WORKFLOW = ("callbacks", "errbacks", "chain", "chord")


@dataclass(frozen=True)
class Refusal:
    """Why a message is set aside: a stable reason (tasks.contract REFUSED_*) and what exactly is wrong."""

    reason: str
    detail: str


def _bad_headers(detail: str) -> Refusal:
    return Refusal(REFUSED_BAD_HEADERS, detail)


def _number_or_none(value: Any) -> bool:
    if value is None:
        return True
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value) and value >= 0


def _parse_time(value: str | None) -> datetime | None:
    """The time Celery's Request will parse from this header (the same parser), found fast when it can be."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)  # what Celery sends (isoformat()): a C parser, ~1 µs
    except ValueError:
        parsed: datetime | None = maybe_iso8601(value)  # anything else ISO 8601 that Celery accepts
        return parsed


def _seconds_ahead(when: datetime) -> float:
    aware = when if when.tzinfo is not None else when.replace(tzinfo=UTC)  # Celery sends UTC (enable_utc)
    return aware.timestamp() - time.time()


def _count(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= 0


def _check_text_headers(headers: Mapping[str, Any]) -> Refusal | None:
    for name in _TEXT_HEADERS:
        if not isinstance(headers.get(name), str | None):
            return _bad_headers(f"header {name!r} must be a string, got {type(headers[name]).__name__}")
    for name in ("eta", "expires"):
        try:
            when = _parse_time(headers.get(name))
        except (ValueError, TypeError, OverflowError) as exc:
            return _bad_headers(f"header {name!r} must be an ISO 8601 time, got {headers[name]!r:.60}: {exc}")
        # A job delayed for hours would sit unacknowledged in this worker (and come back
        # with every visibility timeout); warmpool's own delays are seconds to a minute.
        ahead_s = _seconds_ahead(when) if name == "eta" and when is not None else 0.0
        if ahead_s > MAX_ETA_AHEAD_S:
            return _bad_headers(f"header 'eta' is {ahead_s:.0f}s ahead (at most {MAX_ETA_AHEAD_S:.0f}s)")
    return None


def _check_other_headers(headers: Mapping[str, Any]) -> Refusal | None:
    limits = headers.get("timelimit")
    pair = isinstance(limits, list | tuple) and len(limits) == 2 and all(_number_or_none(v) for v in limits)
    if limits is not None and not pair:
        return _bad_headers(f"header 'timelimit' must be a pair of [hard, soft] seconds or nulls, got {limits!r:.80}")
    for name in ("retries", "replaced_task_nesting"):
        if headers.get(name) is not None and not _count(headers[name]):
            return _bad_headers(f"header {name!r} must be a non-negative integer, got {headers[name]!r:.40}")
    if not isinstance(headers.get("ignore_result"), bool | None):
        return _bad_headers("header 'ignore_result' must be true, false or absent")
    for name in ("groups", "stamped_headers"):
        if not isinstance(headers.get(name), list | None):
            return _bad_headers(f"header {name!r} must be a list")
    if not isinstance(headers.get("stamps"), dict | None):
        return _bad_headers("header 'stamps' must be a mapping")
    return None


def _check_headers(headers: Any, *, known: Container[str]) -> Refusal | None:
    if not isinstance(headers, dict):
        return _bad_headers(f"headers must be a mapping, got {type(headers).__name__}")
    task = headers.get("task")
    if task is None:
        return _bad_headers("no 'task' header: not a Celery protocol 2 message (protocol 1 is not accepted)")
    if not isinstance(task, str):
        return _bad_headers(f"header 'task' must be a string, got {type(task).__name__}")
    if task not in known:
        return Refusal(REFUSED_UNKNOWN_TASK, f"unknown task {task[:100]!r}: no warmpool worker runs it")
    task_id = headers.get("id")
    if not isinstance(task_id, str) or not 0 < len(task_id) <= MAX_ID_CHARS:
        return _bad_headers(f"header 'id' must be a string of 1-{MAX_ID_CHARS} characters, got {task_id!r:.60}")
    return _check_text_headers(headers) or _check_other_headers(headers)


def _check_payload(payload: Any, task: Task | None) -> Refusal | None:
    if not isinstance(payload, list | tuple) or len(payload) != 3:
        return Refusal(REFUSED_BAD_BODY, f"body must be [args, kwargs, embed], got {saferepr(payload, maxlen=80)}")
    args, kwargs, embed = payload
    if not isinstance(args, list | tuple):
        return Refusal(REFUSED_BAD_BODY, f"args must be a list, got {type(args).__name__}")
    if not isinstance(kwargs, dict):
        return Refusal(REFUSED_BAD_BODY, f"kwargs must be a mapping, got {type(kwargs).__name__}")
    if not isinstance(embed, dict | None):
        return Refusal(REFUSED_BAD_BODY, f"embed must be a mapping, got {type(embed).__name__}")
    chained = [k for k in _WORKFLOW if embed and embed.get(k)]
    if chained:
        # warmpool never sends workflows; one would make this worker send jobs of the sender's choosing.
        return Refusal(REFUSED_BAD_BODY, f"embedded workflow ({', '.join(chained)}) is not part of warmpool's jobs")
    header = getattr(task, "__header__", None)
    if task is not None and header is not None:
        try:
            header(*args, **kwargs)  # Celery's own check of arguments against the task's signature
        except TypeError as exc:
            return Refusal(REFUSED_BAD_BODY, f"arguments do not fit {task.name}: {exc}")
    return None


def screen(message: Any, *, known: Container[str], tasks: Mapping[str, Task]) -> Refusal | None:
    """Why ``message`` (a kombu Message) cannot become a job of a known task, or None when it can.

    Checks what Celery's strategy would choke on: headers (task name, id, and
    the types of the others), content type (JSON only: pickle and yaml are never
    decoded), size (MAX_MESSAGE_BYTES), and the body's shape and arguments.
    """
    refusal = _check_headers(message.headers, known=known)
    if refusal is not None:
        return refusal
    content_type = message.content_type
    if content_type not in ACCEPTED_CONTENT_TYPES:
        detail = f"Refusing to deserialize content of type {content_type!r}: only application/json is accepted"
        return Refusal(REFUSED_CONTENT_TYPE, detail)
    size = len(message.body or b"")
    if size > MAX_MESSAGE_BYTES:
        return Refusal(REFUSED_TOO_LARGE, f"body of {size} bytes is above the limit of {MAX_MESSAGE_BYTES}")
    try:
        payload = message.decode()
    except Exception as exc:  # kombu raises many types for a body it cannot decode
        return Refusal(REFUSED_BAD_BODY, f"undecodable body: {type(exc).__name__}: {str(exc)[:200]}")
    return _check_payload(payload, tasks.get(message.headers["task"]))


def _excerpt(value: Any) -> str:
    if isinstance(value, bytes | str):
        return repr(value[:EXCERPT_CHARS])[: 2 * EXCERPT_CHARS]
    return str(saferepr(value, maxlen=EXCERPT_CHARS))


def dead_letter(message: Any, refusal: Refusal, *, worker: str, now: float) -> DeadLetter:
    """The record of a refused message: where it came from, why, and excerpts of it (never all of it)."""
    headers = getattr(message, "headers", None)
    headers = headers if isinstance(headers, dict) else {}
    delivery = getattr(message, "delivery_info", None) or {}
    body = getattr(message, "body", None)
    return DeadLetter(
        at=now,
        queue=str(delivery.get("routing_key") or "")[:200],
        task=str(headers.get("task") or "")[:200],
        task_id=str(headers.get("id") or "")[:MAX_ID_CHARS],
        reason=refusal.reason,
        detail=refusal.detail[:500],
        content_type=str(getattr(message, "content_type", "") or "")[:100],
        size_bytes=len(body) if isinstance(body, bytes | str) else 0,
        headers=_excerpt(headers),
        body=_excerpt(body),
        worker=worker,
    )


def _record(letter: DeadLetter) -> None:
    from tasks.worker.app import runtimes  # the worker's stores; imported late: the app loads this module

    # Recorded with the pool whose queue the message came from (the default pool's otherwise).
    runtimes().for_queue(letter.queue).service.store.record_dead_letter(letter)


class ScreeningConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, with every message screened first and every refusal set aside (never fatal)."""

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Any], None]:
        celery_handler = super().create_task_handler(*args, **kwargs)
        # Real connection errors must still reach Celery's reconnect logic;
        # kombu's Redis transport counts KeyError among them, which a
        # malformed message raises, so LookupErrors are the message's fault.
        fatal = tuple(e for e in self.connection_errors if not issubclass(e, LookupError))

        def on_task_received(message: Any) -> None:
            refusal = screen(message, known=self.strategies, tasks=self.app.tasks)
            if refusal is not None:
                self.set_aside(message, refusal)
                return
            try:
                celery_handler(message)
            except fatal:
                raise
            except Exception as exc:
                self.set_aside(message, Refusal(REFUSED_UNHANDLED, f"{type(exc).__name__}: {str(exc)[:300]}"))

        return on_task_received

    def set_aside(self, message: Any, refusal: Refusal) -> None:
        """Log, record and acknowledge a refused message: it never goes back on the queue."""
        letter = dead_letter(message, refusal, worker=str(self.hostname or ""), now=time.time())
        log.error(
            "message set aside",
            extra={"reason": letter.reason, "detail": letter.detail, "queue": letter.queue, "task": letter.task[:100]},
        )
        try:
            _record(letter)
        except Exception as exc:  # the store is down: the message must still not come back
            log.error("dead letter not recorded", extra={"reason": letter.reason, "error": str(exc)[:300]})
        if getattr(message, "acknowledged", False):
            return  # its job ran and answered already (Celery failed after it): leave its result be
        self._answer(letter)
        if callable(getattr(message, "ack_log_error", None)):
            message.ack_log_error(log, self.connection_errors)

    def _answer(self, letter: DeadLetter) -> None:
        # A caller may be waiting for this job's result (Celery marks an unknown
        # task failed for the same reason): tell it at once instead of letting
        # it time out. Only under an id the message carried, never a made-up one.
        if not letter.task_id:
            return
        refused = InvalidRequest(f"message set aside ({letter.reason}): {letter.detail}")
        try:
            self.app.backend.mark_as_failure(letter.task_id, refused)
        except Exception as exc:  # the result backend is down: the dead letter stands anyway
            log.warning("caller of a refused message not answered", extra={"error": str(exc)[:300]})

    # Celery's own refusal paths, reached only if screen() let something through.
    def on_unknown_message(self, body: Any, message: Any) -> None:
        self.set_aside(message, _bad_headers("not a Celery task message"))

    def on_unknown_task(self, body: Any, message: Any, exc: BaseException) -> None:
        self.set_aside(message, Refusal(REFUSED_UNKNOWN_TASK, f"unknown task: {exc!r:.200}"))

    def on_invalid_task(self, body: Any, message: Any, exc: BaseException) -> None:
        self.set_aside(message, Refusal(REFUSED_BAD_BODY, f"invalid task message: {str(exc)[:300]}"))

    def on_decode_error(self, message: Any, exc: BaseException) -> None:
        self.set_aside(message, Refusal(REFUSED_BAD_BODY, f"undecodable message: {type(exc).__name__}: {exc!s:.200}"))
