"""A caller of the real gateway that waits for a machine and hangs up gets none (the real stack)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import ASG, IDLE_TARGET, Stack, wait_for
from tests.integration.gateway_proc import running_gateway

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TOKEN = "s3cret-token-for-withdraw"


@pytest.fixture(scope="module")
def gateway(stack: Stack) -> Iterator[str]:
    with running_gateway(stack, name="gateway-withdraw", token=TOKEN) as url:
        yield url


def waiting_projects(stack: Stack) -> set[str]:
    return {w["project_id"] for w in stack.client.status()["waiting"]}


def holders(stack: Stack) -> dict[str, str]:
    machines = stack.client.status()["machines"]
    return {m["project_id"]: m["instance_id"] for m in machines if m["state"] == "assigned"}


def test_a_caller_that_hangs_up_while_waiting_is_never_handed_a_machine(stack: Stack, gateway: str) -> None:
    # given a pool whose every machine is held, and that may not grow (MaxSize reached)
    stack.fresh_group(min_size=0, max_size=IDLE_TARGET, desired=IDLE_TARGET)
    wait_for(lambda: stack.idle_count() == IDLE_TARGET, timeout_s=30, what="the idle buffer to fill")
    for n in range(IDLE_TARGET):
        stack.client.assign(f"holder-{n}")

    # when an HTTP caller asks for a machine, waiting up to 60 s, and hangs up while it is queued
    port = int(gateway.rsplit(":", 1)[1])
    caller = socket.create_connection(("127.0.0.1", port), timeout=10)
    caller.sendall(
        b"POST /v1/projects/gone/machine?wait=60 HTTP/1.1\r\nHost: gw\r\n"
        b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: 0\r\n\r\n"
    )
    wait_for(lambda: "gone" in waiting_projects(stack), timeout_s=20, what="the caller to be queued")
    caller.close()

    # expect its place in the queue withdrawn at once (not at its deadline, 60 s away)
    wait_for(lambda: "gone" not in waiting_projects(stack), timeout_s=20, what="the waiter to be withdrawn")
    # and when machines become ready (MaxSize raised), the project that left holds none of them
    stack.aws("autoscaling").update_auto_scaling_group(AutoScalingGroupName=ASG, MaxSize=IDLE_TARGET * 3)
    wait_for(lambda: stack.idle_count() >= 1, timeout_s=45, what="a machine to become idle")
    assert "gone" not in holders(stack)
    # and the gateway still hands machines to callers who stay
    with httpx.Client(base_url=gateway, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as http:
        stays = http.post("/v1/projects/stays/machine", params={"wait": 20})
    assert stays.status_code == 200, stays.text
    assert holders(stack)["stays"] == stays.json()["instance_id"]
