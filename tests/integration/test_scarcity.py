"""When machines are scarce or fail: waiting with a deadline, FIFO, readiness, leases, lost machines.

A readiness server in the test process plays the machines' editors: a new
instance answers its readiness URL only READY_DELAY_S after its first check,
so new machines take seconds to become usable, like real EC2 boots.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from producer.aio import AsyncPoolClient
from tests.integration.conftest import Stack, running_stack, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(120)]

READY_DELAY_S = 1.5
READY_TIMEOUT_S = 6


class Editors:
    """Readiness answers per instance: ready READY_DELAY_S after the first check, unless broken."""

    def __init__(self) -> None:
        self.first_seen: dict[str, float] = {}
        self.broken: set[str] = set()
        self.lock = threading.Lock()

    def ready(self, instance_id: str) -> bool:
        with self.lock:
            first = self.first_seen.setdefault(instance_id, time.monotonic())
            return instance_id not in self.broken and time.monotonic() - first >= READY_DELAY_S


@pytest.fixture(scope="module")
def editors() -> Iterator[tuple[Editors, int]]:
    state = Editors()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            instance_id = self.path.split("/")[2].split("?")[0] if self.path.startswith("/ready/") else ""
            self.send_response(200 if instance_id and state.ready(instance_id) else 503)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def scarce(tmp_path_factory: pytest.TempPathFactory, editors: tuple[Editors, int]) -> Iterator[Stack]:
    _, port = editors
    extra = {
        "WARMPOOL_READY_URL": f"http://127.0.0.1:{port}/ready/{{instance_id}}?address={{address}}",
        "WARMPOOL_READY_TIMEOUT_SECONDS": str(READY_TIMEOUT_S),
    }
    logs: Path = tmp_path_factory.mktemp("scarce-logs")
    with running_stack(logs, idle_target=2, extra_env=extra) as stack:
        yield stack


@pytest.fixture
def pool(scarce: Stack) -> Stack:
    scarce.fresh_group(max_size=20, desired=2)
    wait_for(lambda: scarce.idle_count() == 2, what="the idle buffer to fill")
    return scarce


def burst(stack: Stack, projects: list[str], *, wait: float) -> list[dict[str, Any]]:
    """Callers arriving 20 ms apart, in list order, all waiting up to ``wait`` seconds."""

    async def run() -> list[dict[str, Any]]:
        async with AsyncPoolClient(app=stack.app) as client:

            async def one(i: int, project: str) -> dict[str, Any]:
                await asyncio.sleep(0.02 * i)
                return await client.assign_result(project, wait=wait)

            return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(projects))))

    return asyncio.run(run())


def held(stack: Stack) -> dict[str, str]:
    return {m["project_id"]: m["instance_id"] for m in stack.client.status()["machines"] if m["state"] == "assigned"}


def test_a_burst_larger_than_the_buffer_is_served_in_arrival_order(pool: Stack) -> None:
    # given 2 idle machines, and new ones needing READY_DELAY_S to become ready
    projects = [f"student-{i:02d}" for i in range(8)]

    # when 8 students open their projects at once, each willing to wait
    results = burst(pool, projects, wait=30)

    # expect every one served with a distinct ready machine, in arrival order
    assert [r["status"] for r in results] == ["assigned"] * len(projects), results
    assert len({r["instance_id"] for r in results}) == len(projects)
    times = [r["assigned_at"] for r in results]
    assert times == sorted(times), "served out of arrival order"
    assert held(pool) == {r["project_id"]: r["instance_id"] for r in results}


def test_callers_whose_deadline_passes_get_no_capacity_and_nothing_later(pool: Stack) -> None:
    # given a group that can hold only 3 machines
    pool.fresh_group(max_size=3, desired=2)
    wait_for(lambda: pool.idle_count() == 2, what="the idle buffer to fill")

    # when 5 callers wait up to 6 s each
    started = time.monotonic()
    results = burst(pool, [f"late-{i}" for i in range(5)], wait=6)
    elapsed = time.monotonic() - started

    # expect 3 served, 2 refused within their deadline with a clear error
    served = [r for r in results if r["status"] == "assigned"]
    refused = [r for r in results if r["status"] == "failed"]
    assert len(served) == 3 and len(refused) == 2
    assert {r["code"] for r in refused} == {"no_capacity"}
    assert elapsed < 6 + 2
    # and when capacity frees up afterwards, nobody who gave up receives a machine
    pool.client.release(served[0]["project_id"])
    time.sleep(READY_DELAY_S + 3)
    holders = held(pool)
    assert not {r["project_id"] for r in refused} & set(holders)
    assert pool.client.status()["waiting"] == []


def test_a_machine_that_never_becomes_ready_is_never_handed_out_and_is_replaced(
    pool: Stack, editors: tuple[Editors, int]
) -> None:
    # given a new machine whose editor never comes up
    state, _ = editors
    before = set(pool.client.status()["group"] and [m["instance_id"] for m in pool.client.status()["machines"]])
    pool.aws("autoscaling").set_desired_capacity(AutoScalingGroupName="heavrdevs-asg", DesiredCapacity=3)
    new = wait_for(
        lambda: {m["instance_id"] for m in pool.client.status()["machines"]} - before, what="the new instance"
    )
    (broken,) = new
    state.broken.add(broken)

    # when projects keep asking
    handed = {pool.client.assign(f"ask-{i}", wait=10).instance_id for i in range(3)}

    # expect it never handed out, then terminated and replaced after the ready timeout
    assert broken not in handed
    gone = lambda: broken not in {i["InstanceId"] for i in pool.group()["Instances"]}  # noqa: E731
    wait_for(gone, timeout_s=READY_TIMEOUT_S + 10, what="the unready machine to be terminated")
    status = pool.client.status()
    assert status["unready_total"] >= 1
    assert broken not in held(pool).values()


def test_an_expired_lease_releases_the_machine_and_touch_keeps_it(pool: Stack) -> None:
    # given two assignments with a 2-second lease
    lapsing = pool.client.assign("crashed-backend", lease=2)
    kept = pool.client.assign("live-backend", lease=2)

    # when only one of them keeps touching
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        assert pool.client.touch("live-backend")
        time.sleep(0.5)

    # expect the lapsed one released and terminated exactly like release; the touched one kept
    holders = held(pool)
    assert "crashed-backend" not in holders
    assert holders.get("live-backend") == kept.instance_id
    wait_for(
        lambda: lapsing.instance_id not in {i["InstanceId"] for i in pool.group()["Instances"]},
        what="termination of the lapsed machine",
    )
    assert pool.client.touch("crashed-backend") is False


def test_a_vanished_assigned_machine_is_reported_lost_and_its_project_gets_a_fresh_one(pool: Stack) -> None:
    # given an assigned machine
    machine = pool.client.assign("spot-victim", wait=10)

    # when AWS takes it away (spot interruption, manual termination)
    pool.aws("autoscaling").terminate_instance_in_auto_scaling_group(
        InstanceId=machine.instance_id, ShouldDecrementDesiredCapacity=False
    )

    # expect it reported lost with its project, and the project's next assign a fresh machine
    def reported() -> dict[str, Any] | None:
        lost = pool.client.status()["lost"]
        return next((x for x in lost if x["instance_id"] == machine.instance_id), None)

    record = wait_for(reported, what="the loss to be reported")
    assert record["project_id"] == "spot-victim"
    assert "spot-victim" not in held(pool)
    fresh = pool.client.assign("spot-victim", wait=15)
    assert fresh.instance_id != machine.instance_id


def test_a_group_at_zero_scales_up_to_the_idle_target(scarce: Stack) -> None:
    # given a group scaled to zero
    scarce.fresh_group(max_size=5, desired=0)

    # expect the pool to scale it up and fill the buffer with ready machines
    wait_for(lambda: scarce.idle_count() == 2, timeout_s=20, what="scale-up from zero")
    assert scarce.group()["DesiredCapacity"] == 2
