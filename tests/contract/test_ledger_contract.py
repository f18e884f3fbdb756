"""One contract for both economics ledgers (tasks.pool.ledger.MemoryLedger, tasks.state.redis_ledger.RedisLedger)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from tasks.pool.economics import Economics, EconomicsConfig
from tasks.pool.ledger import (
    CLAIMS_KEEP,
    LAUNCH_KEEP,
    OUTCOME_FAILED,
    OUTCOME_WAITING,
    OUTCOME_WARM,
    ClaimEvent,
    Ledger,
    MemoryLedger,
    demand_minute,
    wait_bucket,
)
from tasks.pool.model import Machine, MachineState
from tasks.state.keys import EconomicsKeys
from tasks.state.redis_ledger import RedisLedger

T0 = 1_764_000_000.0


@pytest.fixture(params=["memory", "redis"])
def ledger(request: pytest.FixtureRequest) -> Iterator[Ledger]:
    if request.param == "memory":
        yield MemoryLedger()
        return
    url = request.getfixturevalue("redis_url")
    client: redis.Redis[str] = redis.Redis.from_url(url, decode_responses=True, socket_timeout=5)
    made = RedisLedger(client, f"ledger-{uuid.uuid4().hex[:12]}")
    try:
        yield made
    finally:
        made.reset()
        client.close()


class TestFigures:
    def test_assign_outcomes_and_waits_are_counted(self, ledger: Ledger) -> None:
        ledger.record_assign(now=T0, outcome=OUTCOME_WARM)
        ledger.record_assign(now=T0, outcome=OUTCOME_WAITING)
        ledger.record_assign(now=T0, outcome=OUTCOME_FAILED)
        ledger.record_served(wait_s=12.0)
        ledger.record_failed(wait_s=600.0)
        ledger.count("terminations:release", 2)
        ledger.count("launches", 3)
        f = ledger.figures()
        assert (f["assigns_warm"], f["assigns_waited"], f["assigns_failed"]) == (1, 1, 2)
        assert f["wait_seconds_sum"] == 612.0
        assert f[f"wait_bucket:{wait_bucket(0.0)}"] == 1
        assert f[f"wait_bucket:{wait_bucket(12.0)}"] == 1
        assert f["terminations:release"] == 2 and f["launches"] == 3

    def test_a_batch_of_claim_events_counts_as_its_events_one_by_one(self, ledger: Ledger) -> None:
        ledger.record_claims(
            [
                ClaimEvent("assign", at=T0, outcome=OUTCOME_WARM),
                ClaimEvent("assign", at=T0 + 1, outcome=OUTCOME_WAITING),
                ClaimEvent("served", wait_s=30.0),
                ClaimEvent("assign", at=T0 + 2, outcome=OUTCOME_WAITING),
                ClaimEvent("failed", wait_s=600.0),
            ]
        )
        f = ledger.figures()
        assert (f["assigns_warm"], f["assigns_waited"], f["assigns_failed"]) == (1, 1, 1)
        assert f["wait_seconds_sum"] == 630.0
        read = ledger.read(minutes=[demand_minute(T0)])
        assert read.demand == {demand_minute(T0): 3} and read.recent_claims == (T0 + 2, T0 + 1, T0)

    def test_rebalances_integrate_idle_machine_seconds_and_keep_the_decision(self, ledger: Ledger) -> None:
        ledger.record_rebalance(now=T0, idle=3, target=3, reason="fixed", spec="fixed", surplus_since=0.0)
        ledger.record_rebalance(now=T0 + 10, idle=5, target=5, reason="schedule: x", spec="fixed", surplus_since=T0)
        ledger.record_rebalance(now=T0 + 12, idle=5, target=5, reason="schedule: x", spec="fixed", surplus_since=T0)
        f = ledger.figures()
        assert f["idle_machine_seconds"] == 3 * 10 + 5 * 2
        assert (f["policy_target"], f["policy_reason"]) == (5, "schedule: x")
        read = ledger.read(minutes=())
        assert (read.surplus_since, read.idle_count, read.idle_at) == (T0, 5, T0 + 12)


class TestBounded:
    def test_launch_samples_and_recent_claims_keep_only_the_newest(self, ledger: Ledger) -> None:
        for n in range(LAUNCH_KEEP + 5):
            ledger.record_launch_time(float(n))
        for n in range(CLAIMS_KEEP + 5):
            ledger.record_assign(now=T0 + n, outcome=OUTCOME_WARM)
        read = ledger.read(minutes=())
        assert len(read.launch_seconds) == LAUNCH_KEEP and read.launch_seconds[0] == LAUNCH_KEEP + 4
        assert len(read.recent_claims) == CLAIMS_KEEP and read.recent_claims[0] == T0 + CLAIMS_KEEP + 4
        assert ledger.figures()["launch_ready_count"] == LAUNCH_KEEP + 5

    def test_demand_history_counts_per_minute_and_can_be_lost(self, ledger: Ledger) -> None:
        for offset in (0, 1, 59, 61, 86_400):
            ledger.record_assign(now=T0 + offset, outcome=OUTCOME_WARM)
        minutes = [demand_minute(T0 + x) for x in (0, 61, 86_400, 3_600)]
        read = ledger.read(minutes=minutes)
        first = demand_minute(T0)  # T0 is on a minute boundary: 0, 1 and 59 s fall in one minute
        assert read.demand == {first: 3, first + 1: 1, first + 1440: 1}
        assert read.history_since == T0
        ledger.forget_history()
        lost = ledger.read(minutes=minutes)
        assert lost.demand == {} and lost.history_since == 0


def test_the_redis_history_expires_by_itself(redis_url: str) -> None:
    # given a RedisLedger recording a claim, expect that day's history key to carry a TTL of ~15 days
    client: redis.Redis[str] = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=5)
    ledger = RedisLedger(client, f"ledger-{uuid.uuid4().hex[:12]}")
    try:
        ledger.record_assign(now=T0, outcome=OUTCOME_WARM)
        key = EconomicsKeys.for_group(ledger.keys.figures.split("{")[1].split("}")[0]).demand(demand_minute(T0) // 1440)
        assert 14 * 86_400 < client.ttl(key) <= 15 * 86_400
    finally:
        ledger.reset()
        client.close()


def test_the_policy_override_round_trips_and_a_bad_one_is_ignored(ledger: Ledger) -> None:
    econ = Economics(ledger, EconomicsConfig(idle_target=2), started_at=T0)
    ledger.set_override('{"policy": "fixed:4", "schedules": null, "set_at": 1}')
    decision, _ = econ.decide(now=T0, held=0, max_size=50)
    assert decision.target == 4
    ledger.set_override("not json")
    assert econ.decide(now=T0, held=0, max_size=50)[0].target == 4


def test_scale_in_chooses_the_longest_idle(ledger: Ledger) -> None:
    econ = Economics(ledger, EconomicsConfig(idle_target=0, scale_in_delay_s=60, scale_in_step=2), started_at=T0)
    idle = [Machine(f"i-{n}", MachineState.IDLE, since=T0 + 10 - n) for n in range(5)]
    assert econ.scale_in(idle, idle, now=T0, surplus_since=0.0) == ([], T0)
    chosen, since = econ.scale_in(idle, idle, now=T0 + 61, surplus_since=T0)
    assert [m.instance_id for m in chosen] == ["i-4", "i-3"] and since == T0
