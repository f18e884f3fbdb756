"""The per-pool routes: /v1/pools, /v1/pools/{pool}, and a pool's assign, touch and release."""

from __future__ import annotations

from typing import Any

import pytest

from producer.gateway import create_app
from tests.gateway.gwfakes import FakePool, call


@pytest.fixture
def pools() -> FakePool:
    return FakePool(("i-0001", "i-0002", "i-0003"), pools=("small", "gpu"))


@pytest.fixture
def app(pools: FakePool) -> Any:
    return create_app(pools)


def test_v1_pools_lists_every_configured_pool_and_the_default(app: Any) -> None:
    r = call(app, "GET", "/v1/pools")
    assert r.status_code == 200
    body = r.json()
    assert body["default_pool"] == "small"
    assert [p["name"] for p in body["pools"]] == ["small", "gpu"]
    assert {p["queue"] for p in body["pools"]} == {"pool.small", "pool.gpu"}


def test_a_pools_routes_call_that_pool_and_the_old_routes_the_default_one(app: Any, pools: FakePool) -> None:
    # when a project takes a machine in the gpu pool, renews it, releases it, and one in the default pool
    assert call(app, "POST", "/v1/pools/gpu/projects/p1/machine").status_code == 200
    assert call(app, "POST", "/v1/pools/gpu/projects/p1/touch").status_code == 200
    assert call(app, "DELETE", "/v1/pools/gpu/projects/p1/machine").status_code == 200
    assert call(app, "GET", "/v1/pools/gpu").status_code == 200
    assert call(app, "POST", "/v1/projects/p2/machine").status_code == 200
    assert call(app, "GET", "/p3").status_code == 200
    # expect every call of a pool route to name its pool, and the others none (the client's default)
    assert pools.pools_called == ["gpu", "gpu", "gpu", "gpu", None, None]


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/v1/pools/{}"),
        ("POST", "/v1/pools/{}/projects/p1/machine"),
        ("DELETE", "/v1/pools/{}/projects/p1/machine"),
        ("POST", "/v1/pools/{}/projects/p1/touch"),
    ],
)
def test_an_unknown_pool_is_404_and_a_malformed_one_400_before_any_call(
    app: Any, pools: FakePool, method: str, path: str
) -> None:
    r = call(app, method, path.format("nope"))
    assert r.status_code == 404 and r.json()["code"] == "unknown_pool" and "small, gpu" in r.json()["message"]
    r = call(app, method, path.format("NOT_A_POOL"))
    assert r.status_code == 400 and r.json()["code"] == "bad_request" and "pool name" in r.json()["message"]
    assert pools.calls == []


def test_metrics_label_every_series_with_its_pool(app: Any) -> None:
    call(app, "POST", "/v1/pools/gpu/projects/p1/machine")
    call(app, "POST", "/v1/projects/p2/machine")
    text = call(app, "GET", "/metrics").text
    assert 'warmpool_assigns_total{outcome="assigned",pool="gpu"} 1.0' in text
    assert 'warmpool_assigns_total{outcome="assigned",pool="small"} 1.0' in text
    assert 'warmpool_pool_status_up{pool="small"} 1.0' in text
    assert 'warmpool_pool_status_up{pool="gpu"} 1.0' in text
    assert 'warmpool_machines{pool="gpu",state="idle"}' in text


def test_healthz_stays_ready_while_one_pool_answers(pools: FakePool) -> None:
    async def only_small(*, pool: str | None = None) -> dict[str, Any]:
        if pool == "gpu":
            raise TimeoutError
        return {"counts": {}}

    pools.status = only_small  # type: ignore[method-assign]
    r = call(create_app(pools, health_cache_s=0.0), "GET", "/healthz")
    assert r.status_code == 200 and r.json()["pools"] == {"small": "ok", "gpu": "unavailable"}
