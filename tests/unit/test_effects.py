"""CelerySideEffects: messages held during a pool job are sent after it, tags batched."""

from __future__ import annotations

import time
from typing import Any

from tasks.contract import TASK_AWS_TAG_ASSIGNMENTS, TASK_AWS_TERMINATE, TASK_TOP_UP
from tasks.pool.model import Machine, MachineState
from tasks.worker.side_effects import CelerySideEffects


class FakeApp:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send_task(self, name: str, **options: Any) -> None:
        self.sent.append((name, options))


def assigned(n: int) -> Machine:
    return Machine(f"i-{n:017x}", MachineState.ASSIGNED, since=1.0, project_id=f"p{n}", assigned_at=f"t{n}")


def make(*, tag_linger_s: float = 60.0) -> tuple[FakeApp, CelerySideEffects]:
    app = FakeApp()
    return app, CelerySideEffects(app, tag_linger_s=tag_linger_s)  # type: ignore[arg-type]


def names(app: FakeApp) -> list[str]:
    return [name for name, _ in app.sent]


def test_outside_a_job_every_side_effect_is_sent_at_once() -> None:
    app, effects = make()
    effects.tag_assignments([assigned(1)])
    effects.terminate("i-00000000000000002", decrement=True)
    assert names(app) == [TASK_AWS_TAG_ASSIGNMENTS, TASK_AWS_TERMINATE]
    assert app.sent[0][1]["args"] == ([["i-00000000000000001", "p1", "t1"]],)


def test_a_jobs_messages_wait_for_its_end_and_its_tags_linger_for_the_next_jobs() -> None:
    # given a job that tags a machine and asks for a termination and a rebalance
    app, effects = make()
    effects.hold()
    effects.tag_assignments([assigned(0)])
    effects.terminate("i-00000000000000fff", decrement=False)
    effects.top_up()
    # expect nothing sent while the job runs
    assert app.sent == []
    # when it ends: its messages go, in order; the tag lingers
    effects.send_held()
    assert names(app) == [TASK_AWS_TERMINATE, TASK_TOP_UP]
    assert app.sent[1][1]["countdown"] > 0
    # when two more jobs tag a machine each, then the linger ends
    for n in (1, 2):
        effects.hold()
        effects.tag_assignments([assigned(n)])
        effects.send_held()
    assert names(app) == [TASK_AWS_TERMINATE, TASK_TOP_UP]
    effects.flush_tags()
    # expect the three tags in one message, in assignment order
    assert names(app)[2:] == [TASK_AWS_TAG_ASSIGNMENTS]
    assert [item[1] for item in app.sent[2][1]["args"][0]] == ["p0", "p1", "p2"]


def test_a_full_batch_goes_when_its_job_ends_in_messages_of_50() -> None:
    app, effects = make()
    effects.hold()
    effects.tag_assignments([assigned(n) for n in range(120)])
    assert app.sent == []
    effects.send_held()
    batches = [options["args"][0] for _, options in app.sent]
    assert [len(b) for b in batches] == [50, 50, 20]
    assert [item[1] for b in batches for item in b] == [f"p{n}" for n in range(120)]


def test_lingering_tags_are_sent_by_the_timer_without_another_job() -> None:
    app, effects = make(tag_linger_s=0.05)
    effects.hold()
    effects.tag_assignments([assigned(1)])
    effects.send_held()
    deadline = time.monotonic() + 5
    while not app.sent and time.monotonic() < deadline:
        time.sleep(0.01)
    assert names(app) == [TASK_AWS_TAG_ASSIGNMENTS]
    effects.flush_tags()  # nothing left: sends nothing
    assert len(app.sent) == 1


def test_sending_with_nothing_held_sends_nothing() -> None:
    app, effects = make()
    effects.send_held()
    effects.hold()
    effects.send_held()
    effects.flush_tags()
    assert app.sent == []


def test_a_job_ending_after_the_linger_sends_the_lingering_tags() -> None:
    # given a tag that has lingered longer than the linger (its timer found a job running)
    app, effects = make(tag_linger_s=0.05)
    effects.hold()
    effects.tag_assignments([assigned(1)])
    time.sleep(0.2)  # the timer fired while this job ran: it left the sending to the job's end
    assert app.sent == []
    # when the job ends / expect the tag sent by the worker's own thread
    effects.send_held()
    assert names(app) == [TASK_AWS_TAG_ASSIGNMENTS]


def test_the_timer_never_sends_while_a_job_runs() -> None:
    # given a tag from a job that ended before the linger did
    app, effects = make(tag_linger_s=0.05)
    effects.hold()
    effects.tag_assignments([assigned(1)])
    effects.send_held()
    # when the next job is still running when the linger ends
    effects.hold()
    time.sleep(0.2)
    # expect nothing sent meanwhile (an assign never competes with the timer for the GIL)
    assert app.sent == []
    # and the tag sent when that job ends
    effects.send_held()
    assert names(app) == [TASK_AWS_TAG_ASSIGNMENTS]
