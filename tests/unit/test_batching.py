"""Coalescer: concurrent protection requests of one aws worker share one AWS call."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from tasks.errors import CloudThrottled
from tasks.worker.batching import Coalescer


class Recorder:
    def __init__(self, *, gone: Sequence[str] = (), fail: BaseException | None = None) -> None:
        self.calls: list[list[str]] = []
        self.gone = set(gone)
        self.fail = fail

    def __call__(self, items: list[str]) -> list[str]:
        self.calls.append(list(items))
        if self.fail is not None:
            raise self.fail
        return [i for i in items if i not in self.gone]


def call_concurrently(coalescer: Coalescer, requests: list[list[str]]) -> list[set[str] | BaseException]:
    results: list[set[str] | BaseException] = [set()] * len(requests)
    start = threading.Barrier(len(requests))

    def run(n: int) -> None:
        start.wait()
        try:
            results[n] = coalescer.call(requests[n])
        except BaseException as exc:  # the test inspects it
            results[n] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return results


def test_concurrent_callers_share_one_call_and_each_gets_its_own_answer() -> None:
    # given four tag jobs arriving together, one of whose instances is gone
    fn = Recorder(gone=["i-3"])
    coalescer = Coalescer(fn, window_s=0.2, max_items=50)
    # when each asks for its instances
    results = call_concurrently(coalescer, [["i-1"], ["i-2", "i-3"], ["i-4"], ["i-5"]])
    # expect one call with all five, and each caller told about its own only
    assert len(fn.calls) == 1 and sorted(fn.calls[0]) == ["i-1", "i-2", "i-3", "i-4", "i-5"]
    assert results == [{"i-1"}, {"i-2"}, {"i-4"}, {"i-5"}]


def test_an_error_reaches_every_caller_of_the_batch() -> None:
    fn = Recorder(fail=CloudThrottled("SetInstanceProtection: throttled", action="SetInstanceProtection"))
    coalescer = Coalescer(fn, window_s=0.2, max_items=50)
    results = call_concurrently(coalescer, [["i-1"], ["i-2"], ["i-3"]])
    assert len(fn.calls) == 1
    assert all(isinstance(r, CloudThrottled) for r in results)


def test_a_full_batch_does_not_wait_for_the_window() -> None:
    # given a window far longer than the test may take, and a batch that fills it at once
    fn = Recorder()
    coalescer = Coalescer(fn, window_s=30.0, max_items=3)
    began = time.monotonic()
    results = call_concurrently(coalescer, [["i-1"], ["i-2"], ["i-3"]])
    # expect everyone answered well before the window ran out
    assert time.monotonic() - began < 5
    assert results == [{"i-1"}, {"i-2"}, {"i-3"}]


def test_callers_after_a_batch_left_start_the_next_one() -> None:
    fn = Recorder()
    coalescer = Coalescer(fn, window_s=0.01, max_items=50)
    assert coalescer.call(["i-1"]) == {"i-1"}
    assert coalescer.call(["i-2"]) == {"i-2"}
    assert fn.calls == [["i-1"], ["i-2"]] and coalescer.calls == 2
