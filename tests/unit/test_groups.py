"""Jobs name their group; a worker refuses another group's job (wrong_group) and changes nothing."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from celery import Celery

import tasks.worker.aws_jobs as aws_jobs
import tasks.worker.pool_jobs as pool_jobs
from producer.calls import BaseClient, Job, with_group
from tasks.contract import CODE_WRONG_GROUP, group_mismatch
from tasks.pool.model import Machine, MachineState
from tasks.worker.app import settings
from tasks.worker.side_effects import CelerySideEffects
from tests.unit.test_effects import FakeApp

OWN = settings().asg_name
OTHER = "team-b-asg"


def test_a_job_of_the_workers_own_group_or_of_none_is_its_own() -> None:
    assert group_mismatch(None, own=OWN) is None
    assert group_mismatch(OWN, own=OWN) is None


@pytest.mark.parametrize("group", [OTHER, "", 42, ["x"]])
def test_another_groups_job_is_refused_naming_both_groups_and_the_fix(group: Any) -> None:
    message = group_mismatch(group, own=OWN)
    assert message is not None and repr(group) in message and repr(OWN) in message and "broker" in message


def refused(result: Any) -> bool:
    return isinstance(result, dict) and result.get("status") == "failed" and result.get("code") == CODE_WRONG_GROUP


def test_every_job_refuses_another_groups_before_touching_state_or_aws() -> None:
    untouchable = mock.Mock(side_effect=AssertionError("a refused job reached the pool or AWS"))
    with (
        mock.patch.object(pool_jobs, "service", untouchable),
        mock.patch.object(aws_jobs, "service", untouchable),
        mock.patch.object(aws_jobs, "cloud", untouchable),
        mock.patch.object(aws_jobs, "state_redis", untouchable),
    ):
        results = [
            pool_jobs.assign.run("p-1", 5.0, group=OTHER),
            pool_jobs.release.run("p-1", group=OTHER),
            pool_jobs.touch.run("p-1", group=OTHER),
            pool_jobs.status.run(group=OTHER),
            pool_jobs.top_up.run(group=OTHER),
            pool_jobs.mark_ready.run(["i-0123"], group=OTHER),
            pool_jobs.release_quarantined.run(None, group=OTHER),
            pool_jobs.withdraw.run("req-1", "p-1", group=OTHER),
            pool_jobs.apply_snapshot.run({"error": "x", "name": OTHER}),
            aws_jobs.refresh.run(group=OTHER),
            aws_jobs.tag_assignments.run([["i-0123", "p-1", "t"]], group=OTHER),
            aws_jobs.terminate.run("i-0123", group=OTHER),
            aws_jobs.set_desired.run(3, group=OTHER),
            aws_jobs.tag_group.run("0123abcd", group=OTHER),
            aws_jobs.probe.run([["i-0123", "10.0.0.1"]], group=OTHER),
        ]
    assert all(refused(r) for r in results), results
    assert results[0]["worker_group"] == OWN and results[0]["group"] == OTHER


def test_side_effects_name_their_group_in_every_message() -> None:
    app = FakeApp()
    effects = CelerySideEffects(app, group=OWN, tag_linger_s=0)  # type: ignore[arg-type]
    effects.tag_assignments([Machine("i-0123", MachineState.ASSIGNED, since=1.0, project_id="p", assigned_at="t")])
    effects.terminate("i-0123", decrement=True)
    effects.set_desired(3)
    effects.top_up()
    effects.refresh(delay_s=1.0)
    effects.probe([("i-0123", "10.0.0.1")])
    assert len(app.sent) == 6
    assert all(options["kwargs"]["group"] == OWN for _, options in app.sent)


def test_producers_add_their_group_without_overriding_one_given() -> None:
    assert with_group({}, None) == {}
    assert with_group({"wait_s": 1}, None) == {"wait_s": 1}
    assert with_group({}, "a") == {"group": "a"}
    assert with_group({"wait_s": 1}, "a") == {"wait_s": 1, "group": "a"}
    assert with_group({"group": "b"}, "a") == {"group": "b"}


def test_both_clients_send_their_group_with_every_job() -> None:
    # given clients configured for a group
    client = BaseClient(app=Celery("groups-test"), group="team-a")
    # expect it added to each job's kwargs, never overriding one a job names itself
    assert client._for_group(Job("warmpool.status")).kwargs == {"group": "team-a"}
    assert client._for_group(Job("x", (), {"group": "b"})).kwargs == {"group": "b"}
