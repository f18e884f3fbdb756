"""CelerySideEffects: messages held during a pool job are sent after it, tags batched."""

from __future__ import annotations

from typing import Any

from tasks.contract import TASK_AWS_TAG_BATCH, TASK_AWS_TERMINATE, TASK_REBALANCE
from tasks.effects import CelerySideEffects
from tasks.model import Machine, MachineState


class FakeApp:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send_task(self, name: str, **options: Any) -> None:
        self.sent.append((name, options))


def assigned(n: int) -> Machine:
    return Machine(f"i-{n:017x}", MachineState.ASSIGNED, since=1.0, project_id=f"p{n}", assigned_at=f"t{n}")


def make() -> tuple[FakeApp, CelerySideEffects]:
    app = FakeApp()
    return app, CelerySideEffects(app)  # type: ignore[arg-type]


def test_outside_a_job_every_side_effect_is_sent_at_once() -> None:
    app, effects = make()
    effects.tag([assigned(1)])
    effects.terminate("i-00000000000000002", decrement=True)
    assert [name for name, _ in app.sent] == [TASK_AWS_TAG_BATCH, TASK_AWS_TERMINATE]
    assert app.sent[0][1]["args"] == ([["i-00000000000000001", "p1", "t1"]],)


def test_during_a_job_nothing_is_sent_until_it_ends_then_tags_go_in_batches_of_50() -> None:
    # given a job that tags 120 machines and asks for a termination and a rebalance
    app, effects = make()
    effects.hold()
    for n in range(120):
        effects.tag([assigned(n)])
    effects.terminate("i-00000000000000fff", decrement=False)
    effects.rebalance()
    # expect nothing sent while the job runs
    assert app.sent == []
    # when it ends
    effects.send_held()
    # expect three tag messages (50 + 50 + 20, in assignment order), then the rest in order
    names = [name for name, _ in app.sent]
    assert names == [TASK_AWS_TAG_BATCH] * 3 + [TASK_AWS_TERMINATE, TASK_REBALANCE]
    batches = [options["args"][0] for _, options in app.sent[:3]]
    assert [len(b) for b in batches] == [50, 50, 20]
    assert [item[1] for b in batches for item in b] == [f"p{n}" for n in range(120)]
    assert app.sent[4][1]["countdown"] > 0
    # and after the job, side effects are sent at once again
    effects.terminate("i-00000000000000abc", decrement=True)
    assert len(app.sent) == 6


def test_sending_with_nothing_held_sends_nothing() -> None:
    app, effects = make()
    effects.send_held()
    effects.hold()
    effects.send_held()
    assert app.sent == []
