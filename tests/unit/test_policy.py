"""Capacity policies (tasks/pool/policy.py): spec parsing, schedules, Palm sizing, the bounds every policy keeps."""

from __future__ import annotations

import math
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.errors import InvalidRequest
from tasks.pool.model import Machine, MachineState, PoolView
from tasks.pool.planner import GroupBounds, plan_capacity
from tasks.pool.policy import (
    PolicyInputs,
    PolicySpec,
    Schedule,
    base_stock,
    evaluate,
    open_schedules,
    palm_warm_share,
    parse_policy,
    parse_schedules,
)

KOLKATA = ZoneInfo("Asia/Kolkata")
CLASS = {
    "name": "class",
    "cron": "45 8 * * 1-5",
    "duration_minutes": 90,
    "timezone": "Asia/Kolkata",
    "min_idle": 20,
}


def at(*args: int) -> float:
    return datetime(*args, tzinfo=KOLKATA).timestamp()  # type: ignore[misc]


def inputs(**kw: object) -> PolicyInputs:
    base: dict[str, object] = {"now": at(2026, 12, 1, 12, 0), "fixed_idle": 2, "held": 0, "max_size": 100}
    base.update(kw)
    return PolicyInputs(**base)  # type: ignore[arg-type]


class TestParsing:
    @pytest.mark.parametrize(
        ("text", "spec"),
        [
            ("fixed", PolicySpec("fixed")),
            ("fixed:0", PolicySpec("fixed", idle=0)),
            ("fixed:7", PolicySpec("fixed", idle=7)),
            ("adaptive", PolicySpec("adaptive")),
            ("adaptive:goal=0.995", PolicySpec("adaptive", goal=0.995)),
            ("adaptive:goal=0.9,floor=1", PolicySpec("adaptive", goal=0.9, floor=1)),
        ],
    )
    def test_good_specs_parse_and_print_back(self, text: str, spec: PolicySpec) -> None:
        # given a spec string, expect its parse, and the canonical text parsing to the same spec
        assert parse_policy(text) == spec
        assert parse_policy(spec.text()) == spec

    @pytest.mark.parametrize(
        ("text", "field"),
        [
            ("", "policy"),
            ("fixd:2", "policy"),
            ("fixed:-1", "policy.fixed"),
            ("fixed:two", "policy.fixed"),
            ("adaptive:goal=1.5", "policy.goal"),
            ("adaptive:goal=x", "policy.goal"),
            ("adaptive:floor=-3", "policy.floor"),
            ("adaptive:speed=3", "policy"),
        ],
    )
    def test_a_bad_spec_is_one_error_naming_the_field(self, text: str, field: str) -> None:
        with pytest.raises(InvalidRequest) as caught:
            parse_policy(text)
        assert str(caught.value).startswith(f"{field}: ")
        assert "\n" not in str(caught.value)

    def test_schedules_parse_minutes_or_seconds(self) -> None:
        (s,) = parse_schedules([CLASS])
        assert s == Schedule("class", "45 8 * * 1-5", 5400.0, "Asia/Kolkata", 20)
        assert parse_schedules('[{"name":"n","cron":"0 9 * * *","duration_s":60,"min_idle":1}]')[0].timezone == "UTC"

    @pytest.mark.parametrize(
        ("change", "field"),
        [
            ({"cron": "61 8 * * *"}, "schedules[0].cron"),
            ({"cron": 5}, "schedules[0].cron"),
            ({"timezone": "Mars/Olympus"}, "schedules[0].timezone"),
            ({"timezone": ""}, "schedules[0].timezone"),
            ({"min_idle": -1}, "schedules[0].min_idle"),
            ({"min_idle": True}, "schedules[0].min_idle"),
            ({"duration_minutes": 0}, "schedules[0].duration_minutes"),
            ({"name": ""}, "schedules[0].name"),
            ({"colour": "red"}, "schedules[0].colour"),
        ],
    )
    def test_a_bad_schedule_names_its_field(self, change: dict[str, object], field: str) -> None:
        with pytest.raises(InvalidRequest) as caught:
            parse_schedules([{**CLASS, **change}])
        assert str(caught.value).startswith(f"{field}: ")

    def test_schedules_must_be_a_json_list_with_unique_names(self) -> None:
        for bad in ("{", "{}", [CLASS, CLASS], [1]):
            with pytest.raises(InvalidRequest) as caught:
                parse_schedules(bad)
            assert str(caught.value).startswith("schedules")


class TestPalm:
    def test_the_warm_share_is_the_poisson_cdf(self) -> None:
        # given a mean of 2 launching: P(N <= S-1)
        assert palm_warm_share(0, 2.0) == 0.0
        assert palm_warm_share(1, 2.0) == pytest.approx(math.exp(-2))
        assert palm_warm_share(3, 2.0) == pytest.approx(math.exp(-2) * (1 + 2 + 2))

    @given(mean=st.floats(0.01, 400), goal=st.floats(0.5, 0.9999))
    @settings(max_examples=200, deadline=None)
    def test_base_stock_is_the_smallest_buffer_reaching_the_goal(self, mean: float, goal: float) -> None:
        s = base_stock(mean, goal)
        assert palm_warm_share(s, mean) >= goal - 1e-9
        assert s == 0 or palm_warm_share(s - 1, mean) < goal

    def test_no_expected_claim_needs_no_buffer(self) -> None:
        assert base_stock(0.0, 0.99) == 0


class TestEvaluate:
    def test_fixed_is_the_configured_target(self) -> None:
        assert evaluate(parse_policy("fixed"), (), inputs()).target == 2
        d = evaluate(parse_policy("fixed:5"), (), inputs())
        assert (d.target, d.reason) == (5, "fixed")

    def test_adaptive_sizes_by_the_recent_rate_and_lead(self) -> None:
        # given 6 claims a minute and 100 s launches: 10 launching on average
        d = evaluate(parse_policy("adaptive:floor=0"), (), inputs(recent_rate_per_s=0.1, lead_s=100.0))
        assert d.target == base_stock(10.0, 0.99)
        assert d.reason.startswith("adaptive: rate 6.00/min, lead 100s")

    def test_adaptive_prepares_for_what_the_same_time_last_week_saw(self) -> None:
        # given a quiet now but 30 assigns in the coming window a week ago
        d = evaluate(parse_policy("adaptive:floor=0"), (), inputs(history=(30.0, None)))
        assert d.target == base_stock(30.0, 0.99) and "history" in d.reason

    def test_adaptive_without_history_never_drops_below_the_fixed_floor(self) -> None:
        d = evaluate(parse_policy("adaptive"), (), inputs(history=(None, None)))
        assert d.target == 2 and "no history" in d.reason

    def test_idle_max_caps_every_policy(self) -> None:
        d = evaluate(parse_policy("fixed:50"), (), inputs(idle_max=8))
        assert d.target == 8 and "idle_max" in d.reason


class TestSchedules:
    def test_a_window_is_open_from_a_launch_time_before_it_until_it_ends(self) -> None:
        (s,) = parse_schedules([CLASS])
        lead = 300.0
        # Tuesday 1 December 2026, 08:45 Kolkata
        assert open_schedules([s], now=at(2026, 12, 1, 8, 39), lead_s=lead) == []
        assert open_schedules([s], now=at(2026, 12, 1, 8, 41), lead_s=lead) == [s]
        assert open_schedules([s], now=at(2026, 12, 1, 10, 14), lead_s=lead) == [s]
        assert open_schedules([s], now=at(2026, 12, 1, 10, 16), lead_s=lead) == []
        # and not on Saturday
        assert open_schedules([s], now=at(2026, 12, 5, 9, 0), lead_s=lead) == []

    def test_an_open_window_raises_the_target_and_says_so(self) -> None:
        schedules = parse_schedules([CLASS])
        d = evaluate(parse_policy("fixed"), schedules, inputs(now=at(2026, 12, 1, 9, 0)))
        assert (d.target, d.reason) == (20, "schedule: class")
        assert evaluate(parse_policy("fixed"), schedules, inputs(now=at(2026, 12, 1, 12, 0))).reason == "fixed"


SPECS = st.sampled_from(["fixed", "fixed:0", "fixed:9", "adaptive", "adaptive:goal=0.999,floor=0"])


@st.composite
def pools(draw: st.DrawFn) -> tuple[PoolView, GroupBounds]:
    states = draw(st.lists(st.sampled_from(list(MachineState)), max_size=30))
    machines = {
        f"i-{n:04d}": Machine(
            f"i-{n:04d}", state, since=float(n), project_id="p" if state is MachineState.ASSIGNED else None
        )
        for n, state in enumerate(states)
    }
    max_size = draw(st.integers(0, 40))
    min_size = draw(st.integers(0, max_size))
    desired = draw(st.integers(min_size, max_size))
    return PoolView(machines=machines, projects={}), GroupBounds(min_size, max_size, desired)


class TestEveryPolicyKeepsTheBounds:
    @given(
        spec=SPECS,
        pool=pools(),
        rate=st.floats(0, 5),
        lead=st.floats(1, 900),
        history=st.tuples(st.none() | st.floats(0, 500), st.none() | st.floats(0, 500)),
        fixed=st.integers(0, 20),
        idle_max=st.integers(0, 30),
    )
    @settings(max_examples=300, deadline=None)
    def test_never_above_max_size_never_an_assigned_machine_never_below_the_floor(
        self,
        spec: str,
        pool: tuple[PoolView, GroupBounds],
        rate: float,
        lead: float,
        history: tuple[float | None, float | None],
        fixed: int,
        idle_max: int,
    ) -> None:
        view, bounds = pool
        held = sum(1 for m in view.machines.values() if m.state is MachineState.ASSIGNED)
        decision = evaluate(
            parse_policy(spec),
            (),
            inputs(
                fixed_idle=fixed,
                held=held,
                max_size=bounds.max_size,
                recent_rate_per_s=rate,
                lead_s=lead,
                history=history,
                idle_max=idle_max,
            ),
        )
        plan = plan_capacity(view, bounds, idle_target=decision.target)
        # expect desired never above MaxSize, and only idle machines chosen for termination
        assert plan.set_desired is None or plan.set_desired <= bounds.max_size
        assert all(m.state is MachineState.IDLE for m in plan.terminate)
        # and, whatever the history (lost or not), never below the fixed floor unless idle_max caps it
        if spec in ("fixed", "adaptive"):
            assert decision.target >= (min(fixed, idle_max) if idle_max else fixed)
