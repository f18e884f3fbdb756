"""Coalescing concurrent work: SetInstanceProtection batching, and one refresh at a time.

Each tag job still waits for its own instances to be protected before it
returns (and its message is acknowledged), so batching never weakens
delivery: it only merges the calls that threads of one worker make at the
same moment into one AWS request.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import redis

log = logging.getLogger("warmpool.aws")


@dataclass
class _Waiter:
    items: list[str]
    done: threading.Event = field(default_factory=threading.Event)
    result: set[str] = field(default_factory=set)
    error: BaseException | None = None


class Coalescer:
    """Merge concurrent ``call(items)`` requests into one call of ``fn`` with every item.

    The first caller leads: it waits ``window_s`` for others to join (never
    more than ``max_items`` items), calls ``fn`` once, and hands each caller
    the part of the result that is its own, or the error.
    """

    def __init__(self, fn: Callable[[list[str]], Sequence[str]], *, window_s: float, max_items: int) -> None:
        self._fn = fn
        self._window_s = window_s
        self._max_items = max_items
        self._lock = threading.Lock()
        self._pending: list[_Waiter] = []
        self._leading = False
        self._full = threading.Event()
        self.calls = 0  # calls of fn made (for tests and logs)

    def call(self, items: Sequence[str], *, timeout_s: float = 60.0) -> set[str]:
        """``fn``'s answer for these items (as a set), from a call shared with concurrent callers."""
        me = _Waiter(list(items))
        with self._lock:
            self._pending.append(me)
            lead = not self._leading
            self._leading = True
            if sum(len(w.items) for w in self._pending) >= self._max_items:
                self._full.set()
        if lead:
            self._lead()
        elif not me.done.wait(timeout_s):
            raise TimeoutError("the batched call did not finish in time")
        if me.error is not None:
            raise me.error
        return me.result

    def _lead(self) -> None:
        self._full.wait(self._window_s)
        with self._lock:
            batch, self._pending = self._pending, []
            self._leading = False
            self._full.clear()
        everything = [i for w in batch for i in w.items]
        try:
            self.calls += 1
            answered = set(self._fn(everything))
        except BaseException as exc:  # handed to every caller, each decides (retry)
            for w in batch:
                w.error = exc
                w.done.set()
            return
        for w in batch:
            w.result = answered.intersection(w.items)
            w.done.set()


@contextlib.contextmanager
def one_at_a_time(client: redis.Redis, key: str, *, ttl_s: float) -> Iterator[bool]:
    """Yield True when this caller may go ahead (it holds ``key`` until the block ends), False when another holds it.

    The lock expires after ``ttl_s`` (a worker killed while holding it blocks
    nobody for longer). If Redis does not answer, the caller goes ahead: an
    overlapping refresh is better than none.
    """
    lock = client.lock(key, timeout=ttl_s)
    try:
        held = lock.acquire(blocking=False)
    except redis.RedisError as exc:
        log.warning("refresh lock unavailable: going ahead", extra={"error": str(exc)})
        yield True
        return
    try:
        yield bool(held)
    finally:
        if held:
            with contextlib.suppress(redis.RedisError):
                lock.release()
