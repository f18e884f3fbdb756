"""Messages no job can run: set aside (logged, counted, kept in a dead-letter list), never fatal.

Celery's consumer lets some malformed messages escape as exceptions (celery#7975): an
unknown task name without an ``id`` header ends the worker with "Unrecoverable error:
TypeError", and the message, never acknowledged, kills every restart again; a known
task without ``id`` loops on "Connection to broker lost... KeyError('id')"; a
``timelimit`` that is not a pair ends it too. Here each malformed message is put on
warmpool's queues by hand, raw through kombu, and must be consumed, acknowledged and
recorded, while the very same worker process goes on serving.
"""

from __future__ import annotations

import contextlib
import json
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection

from tasks.contract import POOL_QUEUE, TASK_ASSIGN, TASK_AWS_TAG_ASSIGNMENTS, TASK_RELEASE, TASK_STATUS
from tasks.worker.screening import MAX_MESSAGE_BYTES
from tests.faults.conftest import FaultStack, Infra, running_stack, wait_for
from tests.faults.messages import DROP, EMBED, headers_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@dataclass(frozen=True)
class Raw:
    """One message as it lands on a queue: its body bytes, content type and headers."""

    label: str
    queue: str
    body: bytes
    headers: dict[str, Any]
    content_type: str | None = "application/json"
    content_encoding: str | None = "utf-8"


def body_of(args: Any, kwargs: Any = None, embed: Any = EMBED) -> bytes:
    return json.dumps([args, {} if kwargs is None else kwargs, embed]).encode()


def malformed(queue: str, task: str) -> list[Raw]:
    """Every kind of message a job cannot be made of, for one queue and one of its task names."""
    good = body_of(["p-1"])
    return [
        Raw("unknown task, no id", queue, good, headers_for("warmpool.nope", id=DROP)),
        Raw("known task, no id", queue, good, headers_for(task, id=DROP)),
        Raw("id not a string", queue, good, headers_for(task, id=12345)),
        Raw("unknown task", queue, good, headers_for("os.system")),
        Raw("task name not a string", queue, good, headers_for(42)),
        Raw("no task header (protocol 1)", queue, json.dumps({"task": task, "id": "x", "args": []}).encode(), {}),
        Raw("timelimit a string", queue, good, headers_for(task, timelimit="soon")),
        Raw("timelimit a triple", queue, good, headers_for(task, timelimit=[1, 2, 3])),
        Raw("timelimit of strings", queue, good, headers_for(task, timelimit=["a", "b"])),
        Raw("eta garbage", queue, good, headers_for(task, eta="yesterday")),
        Raw("expires a list", queue, good, headers_for(task, expires=[1])),
        Raw("retries a string", queue, good, headers_for(task, retries="many")),
        Raw("shadow not a string", queue, good, headers_for(task, shadow=["x"])),
        Raw("body an object", queue, json.dumps({"x": 1}).encode(), headers_for(task)),
        Raw("body a pair", queue, json.dumps([["p-1"], {}]).encode(), headers_for(task)),
        Raw("args a string", queue, body_of("p-1"), headers_for(task)),
        Raw("kwargs a list", queue, body_of([], ["p-1"]), headers_for(task)),
        Raw("kwargs the task does not take", queue, b'[[], {"nope": 1}, null]', headers_for(task)),
        Raw(
            "a callback to chain",
            queue,
            body_of(["p-1"], embed={**EMBED, "callbacks": [{"task": "x"}]}),
            headers_for(task),
        ),
        Raw("not JSON", queue, b"\xff\xfe{not json", headers_for(task)),
        Raw("truncated JSON", queue, b"[1, 2", headers_for(task)),
        Raw("huge", queue, body_of(["x" * (MAX_MESSAGE_BYTES + 1)]), headers_for(task)),
        Raw("text/plain", queue, b"hello", headers_for(task), content_type="text/plain"),
        Raw("no content type", queue, good, headers_for(task), content_type=None, content_encoding=None),
        Raw(
            "pickle",
            queue,
            pickle.dumps((("p-1",), {}, {})),
            headers_for(task),
            content_type="application/x-python-serialize",
            content_encoding="binary",
        ),
    ]


def publish(infra: Infra, messages: list[Raw]) -> None:
    with Connection(infra.broker.url(0)) as conn:
        producer = conn.Producer()
        for m in messages:
            producer.publish(
                m.body,
                exchange="",
                routing_key=m.queue,
                content_type=m.content_type,
                content_encoding=m.content_encoding,
                headers=m.headers,
                delivery_mode=2,
            )


def queues_drained(stack: FaultStack) -> bool:
    broker = stack.infra.broker.client()
    with contextlib.closing(broker):
        return broker.llen("pool") == 0 and broker.llen("aws") == 0 and not broker.hlen("unacked")


def dead_letter_total(stack: FaultStack) -> int:
    return int(stack.status()["dead_letters_total"])


@pytest.fixture(scope="module")
def stack(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    logs = tmp_path_factory.mktemp("dead-letters")
    with running_stack(infra, logs, idle_target=2, refresh_s=1.0) as stack:
        yield stack


@pytest.mark.parametrize("queue,task", [(POOL_QUEUE, TASK_ASSIGN), ("aws", TASK_AWS_TAG_ASSIGNMENTS)])
def test_each_malformed_message_is_set_aside_and_the_same_worker_keeps_serving(
    stack: FaultStack, queue: str, task: str
) -> None:
    worker = "pool" if queue == POOL_QUEUE else "aws"
    pid = stack.procs.get(worker).pid
    before = dead_letter_total(stack)
    cases = malformed(queue, task)
    for n, raw in enumerate(cases, start=1):
        # given a running stack, when one malformed message lands on the queue
        publish(stack.infra, [raw])
        # expect it consumed and acknowledged (nothing stays queued or unacknowledged to come back)
        wait_for(lambda: queues_drained(stack), timeout_s=30, what=f"{raw.label!r} to be consumed")
        # and the same worker process still serving: an assign for the pool, a refresh for aws
        assert stack.procs.alive(worker), f"{worker} worker died on {raw.label!r}"
        assert stack.procs.get(worker).pid == pid
        if worker == "pool":
            project = f"after-{n}"
            assert stack.client.assign(project, wait=15).instance_id, raw.label
            assert stack.client.release(project) is True
        else:
            stack.refresh_now(timeout_s=30)
        # and the message counted as set aside
        wait_for(
            lambda n=n: dead_letter_total(stack) >= before + n,
            timeout_s=10,
            what=f"{raw.label!r} to be counted",
        )
    assert dead_letter_total(stack) == before + len(cases)
    # expect each one in the dead-letter list, with its queue and why it was refused
    letters = stack.store.dead_letters(limit=len(cases))
    assert len(letters) == len(cases)
    assert {d.queue for d in letters} == {queue}
    assert all(d.reason and d.detail for d in letters)
    assert all(len(d.body) <= 1000 for d in letters), "a dead letter keeps an excerpt of the body, not all of it"
    by_reason = stack.status()["dead_letters_by_reason"]
    assert by_reason.get("unknown_task", 0) >= 2 and by_reason.get("too_large", 0) >= 1, by_reason
    # and each logged by the worker
    assert stack.log_text(worker).count("message set aside") >= len(cases)


def test_a_restarted_worker_with_the_bad_messages_still_queued_does_not_crash_loop(stack: FaultStack) -> None:
    # given the pool worker stopped, and the messages that used to kill it waiting on its queue
    before = dead_letter_total(stack)
    stack.procs.stop("pool")
    killers = [
        Raw("unknown task, no id", POOL_QUEUE, body_of(["x"]), headers_for("warmpool.nope", id=DROP)),
        Raw("known task, no id", POOL_QUEUE, body_of(["x"]), headers_for(TASK_RELEASE, id=DROP)),
        Raw("timelimit a string", POOL_QUEUE, body_of([]), headers_for(TASK_STATUS, timelimit="soon")),
    ]
    publish(stack.infra, killers)
    # when it starts again
    stack.start_pool_worker()
    pid = stack.procs.get("pool").pid
    # expect it to serve at once, and to stay up
    assert stack.client.assign("after-restart", wait=20).instance_id
    wait_for(lambda: queues_drained(stack), timeout_s=30, what="the bad messages to be consumed")
    assert stack.procs.alive("pool") and stack.procs.get("pool").pid == pid
    assert dead_letter_total(stack) == before + len(killers)
    assert stack.client.release("after-restart") is True
    assert stack.procs.alive("pool") and stack.procs.get("pool").pid == pid


def test_messages_set_aside_never_reach_a_job(stack: FaultStack, tmp_path: Path) -> None:
    # given a well-formed assign whose embedded callback would chain another job
    project = "chained"
    body = body_of([project], embed={**EMBED, "callbacks": [{"task": TASK_RELEASE, "args": [project]}]})
    # when it is delivered
    publish(stack.infra, [Raw("callback", POOL_QUEUE, body, headers_for(TASK_ASSIGN))])
    wait_for(lambda: queues_drained(stack), timeout_s=30, what="the message to be consumed")
    # expect no machine handed out: the whole message was refused, not run
    assert project not in stack.store.view().projects
    assert stack.store.dead_letters(limit=1)[0].reason == "bad_body"
