"""PoolService.withdraw on InMemoryStore: a caller who left gets nothing, and gives back only what it got."""

from __future__ import annotations

from typing import Any

import pytest

from tasks.errors import InvalidProject, InvalidRequest
from tests.unit.test_service import Harness


def settled(h: Harness, *, idle: int) -> Harness:
    h.settle()
    assert h.counts()["idle"] == idle
    return h


@pytest.fixture
def empty() -> Harness:
    """A known group with no machine at all (idle target 0): callers who wait are queued."""
    return settled(Harness(desired=0, idle_target=0), idle=0)


@pytest.fixture
def pool() -> Harness:
    """Two idle machines (idle target 2)."""
    return settled(Harness(), idle=2)


def held(h: Harness) -> dict[str, str]:
    return {m["project_id"]: m["instance_id"] for m in h.service.status()["machines"] if m["state"] == "assigned"}


def delivered_to(h: Harness, request_id: str) -> list[Any]:
    return [result for rid, result in h.effects.of("deliver") if rid == request_id]


def add_machine(h: Harness) -> None:
    """One more machine becomes ready in the group (the next refresh sees it, serves waiters)."""
    h.cloud.set_desired_capacity(h.cloud.describe_group().desired_capacity + 1)
    h.settle()


class TestWithdrawWhileWaiting:
    def test_a_withdrawn_waiter_is_never_served(self, empty: Harness) -> None:
        # given a caller queued for a machine
        waiting = empty.service.assign("gone", wait_s=30, request_id="req-1")
        assert waiting["status"] == "waiting"
        # when its caller leaves and the gateway withdraws it
        result = empty.service.withdraw("req-1", "gone")
        # expect its place taken back
        assert result == {
            "status": "withdrawn",
            "project_id": "gone",
            "request_id": "req-1",
            "waiting": True,
            "released": None,
        }
        assert empty.service.status()["waiting"] == []
        # and when a machine becomes ready, the project holds nothing and nothing is delivered to it
        add_machine(empty)
        assert "gone" not in held(empty)
        assert delivered_to(empty, "req-1") == []

    def test_the_callers_behind_a_withdrawn_one_are_served_in_order(self, empty: Harness) -> None:
        empty.service.assign("gone", wait_s=30, request_id="req-1")
        empty.service.assign("stays", wait_s=30, request_id="req-2")
        empty.service.withdraw("req-1", "gone")
        add_machine(empty)
        assert list(held(empty)) == ["stays"]
        assert delivered_to(empty, "req-2")[0]["status"] == "assigned"


class TestWithdrawAfterTheAnswer:
    def test_the_machine_handed_to_the_request_is_released(self, pool: Harness) -> None:
        # given an assign answered with a machine whose caller had already left
        machine = pool.service.assign("gone", request_id="req-1")["instance_id"]
        # when the withdraw arrives
        result = pool.service.withdraw("req-1", "gone")
        # expect that machine released (terminated like a release), the project holding nothing
        assert result["released"] == machine and result["waiting"] is False
        assert "gone" not in held(pool)
        assert pool.pending_effects("terminate") == [(machine, True)]

    def test_a_waiter_served_in_the_race_gives_its_machine_back(self, empty: Harness) -> None:
        # given a waiting caller served by a refresh just before its withdraw arrives
        empty.service.assign("gone", wait_s=30, request_id="req-1")
        add_machine(empty)
        (served,) = delivered_to(empty, "req-1")
        # when the withdraw arrives
        result = empty.service.withdraw("req-1", "gone")
        # expect the machine it was handed released
        assert result["released"] == served["instance_id"]
        assert "gone" not in held(empty)

    def test_withdraw_is_idempotent(self, pool: Harness) -> None:
        machine = pool.service.assign("gone", request_id="req-1")["instance_id"]
        assert pool.service.withdraw("req-1", "gone")["released"] == machine
        again = pool.service.withdraw("req-1", "gone")
        assert again["status"] == "withdrawn" and again["released"] is None and again["waiting"] is False
        assert pool.pending_effects("terminate") == [(machine, True)]


class TestWithdrawNeverTakesWhatWasHeldBefore:
    def test_a_machine_the_project_held_before_the_request_stays(self, pool: Harness) -> None:
        # given a project that holds a machine, asking again (same machine) and leaving
        machine = pool.service.assign("proj", request_id="req-1")["instance_id"]
        assert pool.service.assign("proj", request_id="req-2")["instance_id"] == machine
        # when the second request is withdrawn
        result = pool.service.withdraw("req-2", "proj")
        # expect nothing released
        assert result["released"] is None and held(pool) == {"proj": machine}
        assert pool.pending_effects("terminate") == []

    def test_once_two_requests_were_told_neither_may_withdraw_it(self, pool: Harness) -> None:
        machine = pool.service.assign("proj", request_id="req-1")["instance_id"]
        pool.service.assign("proj", request_id="req-2")
        assert pool.service.withdraw("req-1", "proj")["released"] is None
        assert held(pool) == {"proj": machine}

    def test_a_redelivered_assign_of_the_same_request_keeps_it_withdrawable(self, pool: Harness) -> None:
        machine = pool.service.assign("proj", request_id="req-1")["instance_id"]
        pool.service.assign("proj", request_id="req-1")  # the same job, delivered again
        assert pool.service.withdraw("req-1", "proj")["released"] == machine

    def test_another_projects_machine_is_never_released(self, pool: Harness) -> None:
        pool.service.assign("other", request_id="req-1")
        assert pool.service.withdraw("req-1", "proj")["released"] is None
        assert "other" in held(pool)


class TestWithdrawBeforeTheAssign:
    def test_an_assign_arriving_after_its_withdraw_assigns_nothing(self, pool: Harness) -> None:
        # given a withdraw that overtook its assign (a reordered or redelivered message)
        pool.service.withdraw("req-1", "gone")
        # when the assign runs, with or without waiting
        now = pool.service.assign("gone", request_id="req-1")
        later = pool.service.assign("gone", wait_s=30, request_id="req-1")
        # expect nothing assigned and nothing queued
        assert now["status"] == later["status"] == "withdrawn"
        assert "gone" not in held(pool) and pool.service.status()["waiting"] == []
        # and the project's next request is served as usual
        assert pool.service.assign("gone", request_id="req-2")["status"] == "assigned"


class TestWithdrawInput:
    def test_a_request_waiting_for_another_project_is_left_alone(self, empty: Harness) -> None:
        empty.service.assign("real", wait_s=30, request_id="req-1")
        result = empty.service.withdraw("req-1", "someone-else")
        assert result["status"] == "failed" and result["code"] == "bad_request"
        assert [w["project_id"] for w in empty.service.status()["waiting"]] == ["real"]
        add_machine(empty)
        assert "real" in held(empty)

    @pytest.mark.parametrize("bad", ["", None, 42, "x" * 201])
    def test_bad_request_ids_are_refused(self, pool: Harness, bad: Any) -> None:
        with pytest.raises(InvalidRequest):
            pool.service.withdraw(bad, "proj")

    def test_bad_project_ids_are_refused(self, pool: Harness) -> None:
        before = pool.snapshot_state()
        with pytest.raises(InvalidProject):
            pool.service.withdraw("req-1", "bad id")
        assert pool.snapshot_state() == before
