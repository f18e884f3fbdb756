"""The client core (producer.calls): validation, job encoding and result mapping, without any transport."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

from producer.calls import Assign, Job, Release, Reply, Status, Touch, outcome, reply_from_meta
from tasks.contract import TASK_ASSIGN, TASK_RELEASE, TASK_STATUS, TASK_TOUCH
from tasks.errors import InvalidProject, InvalidRequest, JobFailed, NoCapacity, PoolUnavailable

ASSIGNED = {
    "status": "assigned",
    "project_id": "p-1",
    "instance_id": "i-1",
    "ip": "10.0.0.1",
    "private_ip": "10.0.0.1",
    "assigned_at": 1.0,
}


def test_an_assign_that_waits_is_encoded_with_its_wait_as_timeout_and_an_absolute_deadline() -> None:
    # given an assign waiting 30 s with a lease
    before = time.time()
    call = Assign.build("p-1", wait=30, lease=60, reply_timeout_s=10.0)

    # expect the job the worker knows, bounded by the wait (not the reply timeout)
    job = call.job
    assert (job.task, job.args, job.timeout_s) == (TASK_ASSIGN, ("p-1",), 30.0)
    assert job.kwargs["wait_s"] == 30.0 and job.kwargs["lease_s"] == 60.0
    assert before + 30 <= job.kwargs["deadline"] <= time.time() + 30
    # and an assign that does not wait bounded by the reply timeout
    assert Assign.build("p-1", wait=0, lease=None, reply_timeout_s=7.0).job.timeout_s == 7.0


@pytest.mark.parametrize(
    ("build", "error"),
    [
        (lambda: Assign.build("../etc", wait=0, lease=None, reply_timeout_s=1), InvalidProject),
        (lambda: Assign.build("p", wait=-1, lease=None, reply_timeout_s=1), InvalidRequest),
        (lambda: Assign.build("p", wait=math.nan, lease=None, reply_timeout_s=1), InvalidRequest),
        (lambda: Assign.build("p", wait=0, lease=math.inf, reply_timeout_s=1), InvalidRequest),
        (lambda: Touch.build("p", lease=-5, reply_timeout_s=1), InvalidRequest),
        (lambda: Release.build("a b", reply_timeout_s=1), InvalidProject),
    ],
)
def test_bad_arguments_are_refused_before_any_job_exists(build: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        build()


def test_the_other_calls_are_encoded_as_the_worker_expects() -> None:
    assert Touch.build("p", lease=None, reply_timeout_s=3).job == Job(TASK_TOUCH, ("p",), {"lease_s": None}, 3)
    assert Release.build("p", reply_timeout_s=3).job == Job(TASK_RELEASE, ("p",), {}, 3)
    assert Status(3).job == Job(TASK_STATUS, (), {}, 3)


def test_a_reply_becomes_the_result_or_the_error_the_caller_sees() -> None:
    job = Assign.build("p-1", wait=5, lease=None, reply_timeout_s=1).job
    # a result
    assert outcome(job, Reply("SUCCESS", ASSIGNED)) == ASSIGNED
    # a caller queued for a machine until its deadline: no_capacity, with why
    waited = outcome(job, Reply("WAITING", {"reason": "capped", "capped": True, "max_size": 3}))
    assert (waited["code"], waited["capped"], waited["max_size"]) == ("no_capacity", True, 3)
    assert "capped" in waited["message"]
    # no worker in time, an expired job, a failed job
    with pytest.raises(PoolUnavailable, match="no pool worker answered within 5.0s"):
        outcome(job, Reply(None))
    with pytest.raises(PoolUnavailable, match="expired"):
        outcome(job, Reply("REVOKED"))
    with pytest.raises(JobFailed, match="KeyError"):
        outcome(job, Reply("FAILURE", {"exc_type": "KeyError", "exc_message": ["x"]}))


def test_backend_records_are_read_as_replies() -> None:
    assert reply_from_meta(None) == Reply(None)
    assert reply_from_meta(b'{"status": "SUCCESS", "result": {"a": 1}}') == Reply("SUCCESS", {"a": 1})
    assert reply_from_meta('{"status": "WAITING", "result": null}') == Reply("WAITING", None)


def test_results_map_onto_values_and_the_contracts_errors() -> None:
    # assign_result keeps no_capacity as data; assign raises it
    no_capacity = {"status": "failed", "code": "no_capacity", "message": "none", "capped": True, "max_size": 2}
    assert Assign.result(no_capacity) == no_capacity
    with pytest.raises(NoCapacity) as raised:
        Assign.value(no_capacity)
    assert (raised.value.capped, raised.value.max_size) == (True, 2)
    assert Assign.value(ASSIGNED).instance_id == "i-1"
    with pytest.raises(InvalidProject):
        Assign.result({"status": "failed", "code": "invalid_project", "message": "bad"})
    with pytest.raises(PoolUnavailable):
        Release.result({"status": "failed", "code": "store_unavailable", "message": "down"})
    with pytest.raises(JobFailed):
        Assign.value({"status": "released"})
    # release and touch as booleans
    assert Release.value({"status": "released"}) is True
    assert Release.value({"status": "not_assigned"}) is False
    with pytest.raises(JobFailed):
        Release.value({"status": "touched"})
    assert Touch.value({"status": "touched"}) is True
    assert Touch.value({"status": "not_assigned"}) is False
    # a status without counts is a bug in the worker, not a snapshot
    with pytest.raises(JobFailed):
        Status.result({"machines": []})
