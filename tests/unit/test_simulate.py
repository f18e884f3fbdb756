"""``warmpool simulate``: the pool code on a virtual clock, checked against Palm's formula and its contract."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from producer.cli import main
from sandbox.sim.engine import SimSettings, Simulation
from sandbox.sim.report import to_json
from sandbox.sim.trace import TraceError, parse_rows
from tasks.pool.model import AddressKind
from tasks.pool.policy import palm_warm_share
from tasks.pool.service import PoolConfig

T0 = 1_764_547_200.0  # 2025-12-01T00:00:00Z
FIELDS = {
    "policy",
    "assigns",
    "warm",
    "warm_ratio",
    "failed",
    "wait_s",
    "machine_hours",
    "assigned_machine_hours",
    "overhead_machine_hours",
    "launches",
    "terminations",
}


def poisson_trace(*, n: int, rate_per_s: float, hold_mean_s: float, seed: int) -> str:
    """Poisson claims, exponential holding times: a CSV trace."""
    rng = random.Random(seed)
    lines, t = ["at,project_id,event"], T0
    for i in range(n):
        t += rng.expovariate(rate_per_s)
        lines.append(f"{t:.3f},p-{i},assign")
        lines.append(f"{t + rng.expovariate(1 / hold_mean_s):.3f},p-{i},release")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def palm_events() -> list:  # type: ignore[type-arg]
    return parse_rows(poisson_trace(n=1500, rate_per_s=1 / 30, hold_mean_s=900, seed=7).splitlines())


@pytest.mark.parametrize("buffer", [1, 2, 3, 5])
def test_the_warm_share_follows_palm(palm_events: list, buffer: int) -> None:  # type: ignore[type-arg]
    # given Poisson claims (one per 30 s), exponential sessions, launches of exactly 60 s,
    # and a fixed buffer of ``buffer`` machines
    config = PoolConfig(asg_name="palm", idle_target=buffer, address=AddressKind.PUBLIC, pending_poll_s=1.0)
    settings = SimSettings(launch_s=(60.0, 60.0), wait_s=600.0)
    result = to_json(Simulation(palm_events, config, settings, label=f"fixed:{buffer}").run())
    # expect the simulated warm share within 4 points of Palm's P(Poisson(lambda * L) <= S - 1),
    # L being the launch plus the top-up's 0.5 s and on average half a 1 s poll
    expected = palm_warm_share(buffer, (1 / 30) * 61.0)
    assert result["assigns"] == 1500
    assert abs(result["warm_ratio"] - expected) < 0.04, (result["warm_ratio"], expected)


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "trace.csv"
    path.write_text(text)
    return str(path)


SMALL = "at,project_id,event\n" + "".join(
    f"{T0 + 40 * i},p-{i},assign\n{T0 + 40 * i + 300},p-{i},release\n" for i in range(30)
)


def test_json_has_exactly_the_contract_fields(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = write(tmp_path, SMALL)
    assert (
        main(["simulate", trace, "--policy", "fixed:0", "--policy", "adaptive", "--launch-seconds", "20:40", "--json"])
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert [r["policy"] for r in rows] == ["fixed:0", "adaptive"]
    for row in rows:
        assert set(row) == FIELDS
        assert set(row["wait_s"]) == {"p50", "p95", "p99", "max"}
        assert row["assigns"] == 30
        assert row["overhead_machine_hours"] == pytest.approx(
            row["machine_hours"] - row["assigned_machine_hours"], abs=0.01
        )
    # a pool without a buffer serves nobody warm; every caller waited for a launch
    assert rows[0]["warm"] == 0 and rows[0]["wait_s"]["p50"] >= 20
    assert rows[1]["warm"] > 0


def test_events_before_from_feed_history_but_are_not_scored(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = write(tmp_path, SMALL)
    start = T0 + 40 * 20 - 1
    assert main(["simulate", trace, "--policy", "fixed:1", "--from", f"{start}", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["assigns"] == 10


def test_the_table_and_the_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = write(tmp_path, SMALL)
    out_png = tmp_path / "sim.png"
    assert main(["simulate", trace, "--policy", "fixed:2", "--plot", str(out_png)]) == 0
    assert "fixed:2" in capsys.readouterr().out
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("at,project,event\n", "line 1: expected the header"),
        ("at,project_id,event\n1764547200,p-1,assign\nyesterday,p-2,assign\n", "line 3: at 'yesterday'"),
        ("at,project_id,event\n2025-12-01T00:00:00,p-1,assign\n", "line 2: at"),
        ("at,project_id,event\n1764547200,p 1,assign\n", "line 2: project_id"),
        ("at,project_id,event\n1764547200,p-1,claim\n", "line 2: event 'claim'"),
        ("at,project_id,event\n1764547200,p-1\n", "line 2: expected 3 fields"),
    ],
)
def test_a_bad_row_names_its_line_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, needle: str
) -> None:
    assert main(["simulate", write(tmp_path, body), "--json"]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--policy", "fixed:x"], "--policy 'fixed:x': policy.fixed"),
        (["--launch-seconds", "9:3"], "--launch-seconds"),
        (["--from", "noon"], "--from 'noon'"),
        (["--wait", "0"], "--wait"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], needle: str
) -> None:
    assert main(["simulate", write(tmp_path, SMALL), *extra]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def test_rows_may_come_in_any_order_and_iso_times_with_offsets() -> None:
    events = parse_rows(
        ["at,project_id,event", "2025-12-01T05:30:10+05:30,p-1,release", "2025-12-01T00:00:00Z,p-1,assign"]
    )
    assert [(e.at, e.event) for e in events] == [(T0, "assign"), (T0 + 10, "release")]
    with pytest.raises(TraceError):
        parse_rows(["at,project_id,event", f"{T0},p-1,release"])


def test_config_runs_the_pools_file_policy_with_its_schedules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a pools file whose pool keeps 0 idle but 30 during a daily window that covers the trace
    monkeypatch.delenv("WARMPOOL_CONFIG", raising=False)
    pools = tmp_path / "pools.toml"
    pools.write_text(
        '[pools.lab]\nasg = "lab-asg"\nidle_target = 0\n'
        'schedules = [{ name = "day", cron = "0 0 * * *", duration_s = 86400, timezone = "UTC", min_idle = 30 }]\n'
    )
    trace = write(tmp_path, SMALL)
    # when simulated as configured and as fixed:0
    assert (
        main(
            [
                "simulate",
                trace,
                "--config",
                str(pools),
                "--pool",
                "lab",
                "--policy",
                "config",
                "--policy",
                "fixed:0",
                "--json",
            ]
        )
        == 0
    )
    configured, bare = json.loads(capsys.readouterr().out)
    # expect the schedule to serve every assign warm, and the bare fixed:0 none
    assert configured["warm"] == 30 and bare["warm"] == 0
    # and an unknown pool refused in one line
    assert main(["simulate", trace, "--config", str(pools), "--pool", "lib", "--policy", "config"]) == 2
    assert "--pool" in capsys.readouterr().err


def test_a_launch_is_idle_within_a_poll_of_being_ready(palm_events: list) -> None:  # type: ignore[type-arg]
    # given launches of exactly 45 s and the 1 s pending poll, on the product's own refresh scheduling
    config = PoolConfig(asg_name="poll", idle_target=2, address=AddressKind.PUBLIC, pending_poll_s=1.0)
    run = Simulation(palm_events[:400], config, SimSettings(launch_s=(45.0, 45.0)), label="fixed:2").run()
    launch = run.status["launch_ready_seconds"]
    # expect every measured launch idle within about a second of AWS showing it ready (the beat is 10 s)
    assert launch["count"] >= 50
    assert 45.0 <= launch["p50"] and launch["max"] <= 46.5
