"""Jobs name their pool and group; a worker refuses another group's job (wrong_group), a job of a pool it
does not know (unknown_pool) or does not own (wrong_pool), and changes nothing."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from celery import Celery

import tasks.worker.aws_jobs as aws_jobs
import tasks.worker.pool_jobs as pool_jobs
from producer.calls import BaseClient, Job
from tasks.contract import CODE_BAD_REQUEST, CODE_UNKNOWN_POOL, CODE_WRONG_GROUP, CODE_WRONG_POOL, group_mismatch
from tasks.pool.model import Machine, MachineState
from tasks.worker.app import runtime, runtimes
from tasks.worker.runtime import PoolRuntime
from tasks.worker.side_effects import CelerySideEffects
from tests.unit.test_effects import FakeApp

OWN = runtime().settings.asg_name
OTHER = "team-b-asg"


def test_a_job_of_the_workers_own_group_or_of_none_is_its_own() -> None:
    assert group_mismatch(None, own=OWN) is None
    assert group_mismatch(OWN, own=OWN) is None


@pytest.mark.parametrize("group", [OTHER, "", 42, ["x"]])
def test_another_groups_job_is_refused_naming_both_groups_and_the_fix(group: Any) -> None:
    message = group_mismatch(group, own=OWN)
    assert message is not None and repr(group) in message and repr(OWN) in message and "broker" in message


def refused(result: Any, code: str = CODE_WRONG_GROUP) -> bool:
    return isinstance(result, dict) and result.get("status") == "failed" and result.get("code") == code


def every_job(*, aws: bool = True, **kw: Any) -> list[Any]:
    """Run every pool (and aws) job with ``kw`` (group=/pool=) while the pool's state and AWS are untouchable."""
    untouchable = property(mock.Mock(side_effect=AssertionError("a refused job reached the pool or AWS")))
    with (
        mock.patch.object(PoolRuntime, "service", untouchable),
        mock.patch.object(PoolRuntime, "cloud", untouchable),
    ):
        pool_results = [
            pool_jobs.assign.run("p-1", 5.0, **kw),
            pool_jobs.release.run("p-1", **kw),
            pool_jobs.touch.run("p-1", **kw),
            pool_jobs.status.run(**kw),
            pool_jobs.top_up.run(**kw),
            pool_jobs.mark_ready.run(["i-0123"], **kw),
            pool_jobs.release_quarantined.run(None, **kw),
            pool_jobs.withdraw.run("req-1", "p-1", **kw),
            pool_jobs.apply_snapshot.run({"error": "x", "name": kw.get("group", OWN)}, pool=kw.get("pool")),
        ]
        if not aws:
            return pool_results
        return pool_results + [
            aws_jobs.refresh.run(**kw),
            aws_jobs.tag_assignments.run([["i-0123", "p-1", "t"]], **kw),
            aws_jobs.terminate.run("i-0123", **kw),
            aws_jobs.set_desired.run(3, **kw),
            aws_jobs.tag_group.run("0123abcd", **kw),
            aws_jobs.probe.run([["i-0123", "10.0.0.1"]], **kw),
        ]


def test_every_job_refuses_another_groups_before_touching_state_or_aws() -> None:
    results = every_job(group=OTHER)
    assert all(refused(r) for r in results), results
    assert results[0]["worker_group"] == OWN and results[0]["group"] == OTHER


def test_every_job_refuses_a_pool_the_configuration_does_not_have() -> None:
    results = every_job(pool="gpu")
    assert all(refused(r, CODE_UNKNOWN_POOL) for r in results), results
    assert "unknown pool 'gpu'" in results[0]["message"] and "default" in results[0]["message"]


@pytest.mark.parametrize("pool", ["GPU", "-x", "a" * 33, 42, ["default"], ""])
def test_every_job_refuses_a_malformed_pool_name(pool: Any) -> None:
    results = every_job(pool=pool)
    assert all(refused(r, CODE_BAD_REQUEST) for r in results), results
    assert "malformed pool name" in results[0]["message"]


def test_a_pool_worker_refuses_jobs_of_a_pool_it_does_not_own() -> None:
    # given a worker that consumes no pool queue of the default pool (it owns none)
    saved = runtimes().owned
    runtimes().owned = frozenset()
    try:
        pool_results = every_job(aws=False)
    finally:
        runtimes().owned = saved
    # expect every pool-queue job refused (wrong_pool)
    assert all(refused(r, CODE_WRONG_POOL) for r in pool_results), pool_results
    assert "pool.default" in pool_results[0]["message"]


def test_side_effects_name_their_pool_and_group_in_every_message() -> None:
    app = FakeApp()
    kwargs = {"pool": "small", "group": OWN}
    effects = CelerySideEffects(app, job_kwargs=kwargs, pool_queue="pool.small", tag_linger_s=0)  # type: ignore[arg-type]
    effects.tag_assignments([Machine("i-0123", MachineState.ASSIGNED, since=1.0, project_id="p", assigned_at="t")])
    effects.terminate("i-0123", decrement=True)
    effects.set_desired(3)
    effects.top_up()
    effects.refresh(delay_s=1.0)
    effects.probe([("i-0123", "10.0.0.1")])
    assert len(app.sent) == 6
    assert all(options["kwargs"]["group"] == OWN and options["kwargs"]["pool"] == "small" for _, options in app.sent)
    # the top-up goes to the pool's own queue, AWS work to the shared aws queue
    assert {name: options["queue"] for name, options in app.sent}["warmpool.rebalance"] == "pool.small"


def test_both_clients_send_their_pool_and_group_with_every_job_never_overriding_what_a_job_names() -> None:
    # given a client configured for a group
    client = BaseClient(app=Celery("groups-test"), group="team-a")
    # expect the pool and group added to each job's kwargs, never overriding one a job names itself
    assert client._for_pool(Job("warmpool.status"), None).kwargs == {"pool": "default", "group": "team-a"}
    assert client._for_pool(Job("x", (), {"group": "b"}), None).kwargs == {"pool": "default", "group": "b"}
