"""GET /livez: the gateway's liveness, independent of the pool worker (Kubernetes' livenessProbe)."""

from __future__ import annotations

import asyncio
from typing import Any

from producer.gateway import RESERVED_LEGACY_IDS, create_app
from tasks.errors import PoolUnavailable
from tests.gateway.gwfakes import TOKEN, FakePool, call


def test_livez_answers_without_asking_the_pool() -> None:
    # given a gateway whose pool worker is down
    pool = FakePool()
    pool.fail = PoolUnavailable("no pool worker answered within 2.0s")
    app = create_app(pool, health_cache_s=0.0)
    # when probed for liveness and for readiness
    live = call(app, "GET", "/livez")
    ready = call(app, "GET", "/healthz")
    # expect alive (no pool call made), but not ready
    assert live.status_code == 200 and live.json() == {"status": "ok"}
    assert ready.status_code == 503
    assert pool.calls == [("status",)]  # only /healthz asked


def test_livez_answers_while_the_pool_hangs() -> None:
    pool = FakePool()

    async def hang(**_: Any) -> dict[str, Any]:
        await asyncio.sleep(30)
        return {}

    pool.status = hang  # type: ignore[method-assign]
    app = create_app(pool, health_timeout_s=0.05, health_cache_s=0.0)
    assert call(app, "GET", "/livez").status_code == 200
    assert call(app, "GET", "/healthz").status_code == 503


def test_livez_needs_no_token_and_is_never_a_project() -> None:
    pool = FakePool()
    secured = create_app(pool, token=TOKEN)
    assert call(secured, "GET", "/livez").status_code == 200
    assert call(secured, "GET", "/v1/pool").status_code == 401  # the token still guards the rest
    assert "livez" in RESERVED_LEGACY_IDS
    assert not [c for c in pool.calls if c[0] == "assign"]
    assert "/livez" in call(create_app(pool), "GET", "/openapi.json").json()["paths"]
