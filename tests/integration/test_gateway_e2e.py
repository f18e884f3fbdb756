"""The HTTP gateway as a real process in front of the real stack, driven like curl would."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import IDLE_TARGET, Stack
from tests.integration.gateway_proc import running_gateway

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def gateway(stack: Stack) -> Iterator[str]:
    with running_gateway(stack, name="gateway", token=TOKEN) as url:
        yield url


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def test_the_seed_compatible_route_hands_out_machines_then_says_none_is_free(pool: Stack, gateway: str) -> None:
    # given IDLE_TARGET idle machines behind the gateway
    with httpx.Client(base_url=gateway, headers=auth(), timeout=10) as http:
        # when projects open through the original orchestrator's route
        answers = [http.get(f"/legacy-{i}") for i in range(IDLE_TARGET)]
        again = http.get("/legacy-0")
        exhausted = http.get("/legacy-extra")

    # expect {"ip", "instanceId"} for each, the same machine again, then the original 404
    assert [a.status_code for a in answers] == [200] * IDLE_TARGET
    bodies = [a.json() for a in answers]
    assert all(set(b) == {"ip", "instanceId"} for b in bodies)
    assert len({b["instanceId"] for b in bodies}) == IDLE_TARGET
    assert again.json() == bodies[0]
    assert exhausted.status_code == 404
    assert exhausted.json() == {"error": "No idle machine found"}


def test_the_v1_api_assigns_waits_releases_and_reports(pool: Stack, gateway: str) -> None:
    with httpx.Client(base_url=gateway, headers=auth(), timeout=30) as http:
        # when a project asks through the versioned API, waiting if need be
        assigned = http.post("/v1/projects/api-1/machine", params={"wait": 10})
        # expect the result object of the contract
        assert assigned.status_code == 200, assigned.text
        body = assigned.json()
        assert body["status"] == "assigned" and body["project_id"] == "api-1" and body["instance_id"]
        assert {"ip", "private_ip", "assigned_at"} <= set(body)

        # and bad ids, absurd waits and garbage bodies are refused without touching the pool
        assert http.post("/v1/projects/bad%20id/machine").status_code in (400, 404)
        assert http.post("/v1/projects/api-2/machine", params={"wait": 99999}).status_code == 400
        garbage = http.post(
            "/v1/projects/api-2/machine", content=b"{not json", headers={"Content-Type": "application/json"}
        )
        assert garbage.status_code == 400 and "Traceback" not in garbage.text

        # and the pool, metrics and release behave
        pool_view = http.get("/v1/pool").json()
        assert pool_view["counts"]["assigned"] >= 1
        metrics = http.get("/metrics")
        assert metrics.status_code == 200 and "warmpool_assign_duration_seconds" in metrics.text
        released = http.delete("/v1/projects/api-1/machine")
        assert released.status_code == 200 and released.json()["status"] == "released"
        assert http.delete("/v1/projects/api-1/machine").status_code == 404


def test_without_the_token_nothing_is_assigned(pool: Stack, gateway: str) -> None:
    # when callers come without the token, or with a wrong one
    missing = httpx.get(gateway + "/intruder-1", timeout=10)
    wrong = httpx.post(
        gateway + "/v1/projects/intruder-2/machine", headers={"Authorization": "Bearer nope"}, timeout=10
    )
    metrics = httpx.get(gateway + "/metrics", timeout=10)

    # expect 401 everywhere and no assignment made
    assert (missing.status_code, wrong.status_code, metrics.status_code) == (401, 401, 401)
    held = {m["project_id"] for m in pool.client.status()["machines"] if m["state"] == "assigned"}
    assert not held & {"intruder-1", "intruder-2"}
