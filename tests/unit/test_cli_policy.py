"""``warmpool policy show|set|clear``: validated here, stored in the pool's state, read by the worker."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
import redis

from producer.cli import main
from tasks.pool.economics import Economics, EconomicsConfig
from tasks.state.redis_ledger import RedisLedger
from tests.contract.conftest import REDIS_URL, _redis_problem


@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisLedger]:
    if (problem := _redis_problem()) is not None:
        pytest.skip(problem)
    name = f"cli-policy-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("WARMPOOL_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("WARMPOOL_ASG_NAME", name)
    client: redis.Redis[str] = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    ledger = RedisLedger(client, name)
    yield ledger
    ledger.reset()
    client.close()


def test_set_show_clear(pool: RedisLedger, capsys: pytest.CaptureFixture[str]) -> None:
    # when an operator sets an adaptive policy with a schedule
    windows = (
        '[{"name": "class", "cron": "45 8 * * 1-5", "duration_s": 600, "timezone": "Asia/Kolkata", "min_idle": 3}]'
    )
    assert main(["policy", "set", "adaptive:goal=0.995", "--schedules", windows]) == 0
    # expect the worker's economics to put it in force at its next evaluation
    econ = Economics(pool, EconomicsConfig(idle_target=2), started_at=0.0)
    econ.decide(now=1_764_000_000.0, held=0, max_size=50)
    assert econ.active.text() == "adaptive:goal=0.995" and econ.active.source == "override"
    assert [s.name for s in econ.active.schedules] == ["class"]
    capsys.readouterr()
    # and show reports the override
    assert main(["policy", "show", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["override"]["policy"] == "adaptive:goal=0.995"
    assert shown["configured"]["policy"] == "fixed"
    # when cleared, expect the configured policy back
    assert main(["policy", "clear"]) == 0
    econ.decide(now=1_764_000_001.0, held=0, max_size=50)
    assert econ.active.source == "config"


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["policy", "set", "fixd:2"], "policy: "),
        (["policy", "set", "adaptive:goal=2"], "policy.goal: "),
        (
            [
                "policy",
                "set",
                "fixed:1",
                "--schedules",
                '[{"name":"a","cron":"0 9 * * *","duration_s":60,"timezone":"Nowhere/Land","min_idle":1}]',
            ],
            "schedules[0].timezone: ",
        ),
    ],
)
def test_a_bad_policy_is_refused_with_one_line_and_changes_nothing(
    pool: RedisLedger, capsys: pytest.CaptureFixture[str], argv: list[str], field: str
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"warmpool: {field}") and err.count("\n") == 1
    assert pool.read(minutes=()).override is None
