"""Scoped API tokens on the gateway: scopes (pools, project prefix, right), revocation, rate limits, hashing.

Tokens live in a real Redis (``WARMPOOL_TEST_REDIS_URL``), each test under a
key of its own; the pool is the in-memory FakePool, so "nothing enqueued"
is the pool having seen no call.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from producer.gateway import create_app
from producer.gateway.access import SESSION_COOKIE, Access, RateLimiter
from producer.tokens import Right, TokenStore, hash_secret, make_scope
from tasks.errors import InvalidRequest
from tasks.state.keys import ui_session_key
from tests.contract.conftest import REDIS_URL, _in_ci, _redis_problem
from tests.gateway.gwfakes import FakePool

POOL = "heavrdevs-asg"
ADMIN_TOKEN = "legacy-admin-token"


@pytest.fixture
def redis_url() -> str:
    problem = _redis_problem()
    if problem is not None:
        if _in_ci():
            pytest.fail(problem + " (CI is set: Redis is required)")
        pytest.skip(problem)
    return REDIS_URL


@pytest.fixture
def tokens(redis_url: str) -> Iterator[TokenStore]:
    """A token store under a key of this test's own (deleted afterwards)."""
    client = redis.Redis.from_url(redis_url)
    store = TokenStore(client, key=f"test:tokens:{uuid.uuid4().hex}")
    yield store
    client.delete(store.key)
    client.close()


def scenario(
    tokens: TokenStore,
    pool: FakePool,
    steps: Callable[[httpx.AsyncClient], Awaitable[Any]],
    *,
    api_token: str | None = None,
    limiter: RateLimiter | None = None,
    cache_s: float = 0.0,
    miss_reload_s: float = 0.5,
) -> Any:
    """Run ``steps`` against a gateway whose scoped tokens are ``tokens``, inside one event loop."""

    async def go() -> Any:
        client = aioredis.Redis.from_url(REDIS_URL)
        access = Access(
            api_token=api_token,
            client=client,
            token_cache_s=cache_s,
            limiter=limiter,
            tokens_key=tokens.key,
            miss_reload_s=miss_reload_s,
        )
        app = create_app(pool, token=api_token, access=access)
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as http:
                return await steps(http)

    return asyncio.run(go())


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def team_tokens(tokens: TokenStore) -> tuple[str, str]:
    _, a = tokens.create("team-a", make_scope("assign", prefix="team-a-"))
    _, b = tokens.create("team-b", make_scope("assign", prefix="team-b-"))
    return a, b


def assert_forbidden(response: httpx.Response, *words: str) -> None:
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["code"] == "forbidden"
    for word in words:
        assert word in body["message"], body["message"]


# -- two teams ---------------------------------------------------------------------
def test_two_teams_cannot_touch_each_others_projects(tokens: TokenStore) -> None:
    # given team A's and team B's assign tokens, each for its own project prefix
    a, b = team_tokens(tokens)
    pool = FakePool(pools=(POOL,))

    async def steps(http: httpx.AsyncClient) -> list[httpx.Response]:
        # when team A assigns, touches and releases team B's project (and team B team A's), by every route
        return [
            await http.post("/v1/projects/team-b-1/machine", headers=bearer(a), json={"wait": 5}),
            await http.post("/v1/projects/team-b-1/touch", headers=bearer(a)),
            await http.delete("/v1/projects/team-b-1/machine", headers=bearer(a)),
            await http.get("/team-b-1", headers=bearer(a)),
            await http.post("/v1/projects/team-a-1/machine", headers=bearer(b)),
            await http.delete("/v1/projects/team-a-1/machine", headers=bearer(b)),
        ]

    # expect 403 naming the token and its prefix each time, and nothing reached the pool
    for response in scenario(tokens, pool, steps):
        assert_forbidden(response, "team-", "projects team-")
    assert pool.calls == []


def test_each_team_uses_its_own_projects(tokens: TokenStore) -> None:
    a, b = team_tokens(tokens)
    pool = FakePool(pools=(POOL,))

    async def steps(http: httpx.AsyncClient) -> list[httpx.Response]:
        return [
            await http.post("/v1/projects/team-a-1/machine", headers=bearer(a)),
            await http.post("/v1/projects/team-b-1/machine", headers=bearer(b)),
            await http.delete("/v1/projects/team-a-1/machine", headers=bearer(a)),
        ]

    assigned_a, assigned_b, released_a = scenario(tokens, pool, steps)
    assert assigned_a.status_code == 200 and assigned_a.json()["project_id"] == "team-a-1"
    assert assigned_b.status_code == 200 and assigned_b.json()["project_id"] == "team-b-1"
    assert released_a.status_code == 200 and released_a.json()["status"] == "released"
    assert [c[:2] for c in pool.pool_calls] == [("assign", "team-a-1"), ("assign", "team-b-1"), ("release", "team-a-1")]


def test_a_read_token_reads_but_cannot_assign(tokens: TokenStore) -> None:
    _, secret = tokens.create("viewer", make_scope("read"))
    pool = FakePool(pools=(POOL,))

    async def steps(http: httpx.AsyncClient) -> tuple[httpx.Response, httpx.Response]:
        return await http.get("/v1/pool", headers=bearer(secret)), await http.post(
            "/v1/projects/p1/machine", headers=bearer(secret)
        )

    status, assign = scenario(tokens, pool, steps)
    assert status.status_code == 200 and "counts" in status.json()
    assert_forbidden(assign, "viewer", "may read", "needs assign")
    assert pool.assigns == []


def test_a_token_for_another_pool_may_not_use_this_one(tokens: TokenStore) -> None:
    _, secret = tokens.create("other-pool", make_scope("admin", pools=["gpu-pool"]))
    pool = FakePool(pools=(POOL,))

    async def steps(http: httpx.AsyncClient) -> list[httpx.Response]:
        return [
            await http.get("/v1/pool", headers=bearer(secret)),
            await http.post("/v1/projects/p1/machine", headers=bearer(secret)),
        ]

    for response in scenario(tokens, pool, steps):
        assert_forbidden(response, f"pool {POOL}")
    assert pool.calls == []


def test_a_prefix_token_sees_no_other_teams_project_in_the_status(tokens: TokenStore) -> None:
    a, _ = team_tokens(tokens)
    pool = FakePool(pools=(POOL,))

    async def status_with(machines: list[dict[str, Any]]) -> dict[str, Any]:
        return {"counts": {"assigned": 2}, "machines": machines, "waiting": [{"project_id": "team-b-9"}], "lost": []}

    machines = [
        {"instance_id": "i-1", "state": "assigned", "project_id": "team-a-1"},
        {"instance_id": "i-2", "state": "assigned", "project_id": "team-b-1"},
    ]
    pool.status = lambda **_: status_with(machines)  # type: ignore[method-assign]

    async def steps(http: httpx.AsyncClient) -> dict[str, Any]:
        return dict((await http.get("/v1/pool", headers=bearer(a))).json())

    body = scenario(tokens, pool, steps)
    assert [m["project_id"] for m in body["machines"]] == ["team-a-1", None]
    assert body["waiting"] == [] and body["counts"] == {"assigned": 2}
    assert "team-b" not in str(body)


# -- the admin token, revocation, hashing ----------------------------------------------
def test_the_single_api_token_stays_an_admin_beside_scoped_tokens(tokens: TokenStore) -> None:
    team_tokens(tokens)
    pool = FakePool(pools=(POOL,))

    async def steps(http: httpx.AsyncClient) -> list[httpx.Response]:
        return [
            await http.post("/v1/projects/anyone-1/machine", headers=bearer(ADMIN_TOKEN)),
            await http.get("/v1/pool", headers=bearer(ADMIN_TOKEN)),
            await http.get("/v1/pool"),
        ]

    assign, status, anonymous = scenario(tokens, pool, steps, api_token=ADMIN_TOKEN)
    assert assign.status_code == 200 and status.status_code == 200
    assert anonymous.status_code == 401 and anonymous.json()["code"] == "unauthorized"


def test_scoped_tokens_alone_turn_authentication_on(tokens: TokenStore) -> None:
    # given no WARMPOOL_API_TOKEN but one scoped token: anonymous callers are refused
    team_tokens(tokens)
    pool = FakePool(pools=(POOL,))

    async def steps(http: httpx.AsyncClient) -> list[httpx.Response]:
        return [await http.post("/v1/projects/team-a-1/machine"), await http.get("/team-a-1")]

    for response in scenario(tokens, pool, steps):
        assert response.status_code == 401
    assert pool.calls == []


def test_a_revoked_token_is_refused_with_401(tokens: TokenStore) -> None:
    a, _ = team_tokens(tokens)
    pool = FakePool(pools=(POOL,))

    async def steps(http: httpx.AsyncClient) -> tuple[int, int]:
        before = (await http.get("/v1/pool", headers=bearer(a))).status_code
        assert tokens.revoke("team-a")
        after = await http.post("/v1/projects/team-a-1/machine", headers=bearer(a))
        assert after.json()["code"] == "unauthorized"
        return before, after.status_code

    # the cache time is 0 here: the next request sees the revocation
    assert scenario(tokens, pool, steps) == (200, 401)
    assert pool.assigns == []


def test_an_unknown_token_rereads_the_tokens_although_the_cache_is_fresh(tokens: TokenStore) -> None:
    team_tokens(tokens)
    pool = FakePool(pools=(POOL,))

    async def steps(http: httpx.AsyncClient) -> int:
        await http.get("/v1/pool")  # the cache is loaded
        _, fresh = tokens.create("fresh", make_scope("read"))
        return (await http.get("/v1/pool", headers=bearer(fresh))).status_code

    # (a miss re-reads at most every miss_reload_s: 0 here, half a second by default)
    assert scenario(tokens, pool, steps, cache_s=300.0, miss_reload_s=0.0) == 200


def test_only_hashes_of_the_secrets_are_stored(tokens: TokenStore) -> None:
    record, secret = tokens.create("ci-bot", make_scope("assign", pools=[POOL], prefix="ci-"))
    assert secret.startswith("wp_") and len(secret) >= 40
    raw = tokens.client.hgetall(tokens.key)
    stored = b" ".join(k + b" " + v for k, v in raw.items())
    assert secret.encode() not in stored and secret[3:].encode() not in stored
    assert hash_secret(secret).encode() in stored
    assert record.public() == {
        "name": "ci-bot",
        "scope": "assign",
        "pools": [POOL],
        "prefix": "ci-",
        "created_at": record.created_at,
    }


def test_a_token_name_is_taken_once(tokens: TokenStore) -> None:
    tokens.create("dup", make_scope("read"))
    with pytest.raises(InvalidRequest, match="exists"):
        tokens.create("dup", make_scope("admin"))
    assert [r.scope.right for r in tokens.list()] == [Right.READ]


# -- rate limits ------------------------------------------------------------------------
def test_a_token_over_its_rate_gets_429_with_retry_after(tokens: TokenStore) -> None:
    a, b = team_tokens(tokens)
    pool = FakePool(pools=(POOL,))
    limiter = RateLimiter(rate_per_s=0.01, burst=2)  # two at once, then one per 100 s

    async def steps(http: httpx.AsyncClient) -> list[httpx.Response]:
        return [await http.get("/v1/pool", headers=bearer(a)) for _ in range(3)] + [
            await http.get("/v1/pool", headers=bearer(b))
        ]

    first, second, third, other_team = scenario(tokens, pool, steps, limiter=limiter)
    assert first.status_code == second.status_code == 200
    assert third.status_code == 429 and third.json()["code"] == "rate_limited"
    assert 1 <= int(third.headers["Retry-After"]) <= 100
    assert other_team.status_code == 200  # each token has its own bucket


def test_the_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(rate_per_s=2.0, burst=1, clock=lambda: now[0])
    assert limiter.wait_s("t") == 0.0
    assert limiter.wait_s("t") == pytest.approx(0.5)
    now[0] = 0.5
    assert limiter.wait_s("t") == 0.0
    assert RateLimiter(rate_per_s=0.0, burst=1).wait_s("t") == 0.0  # 0: no limit


# -- the dashboard session -----------------------------------------------------------
def test_a_dashboard_session_reads_but_never_assigns(tokens: TokenStore) -> None:
    _, secret = tokens.create("ops", make_scope("admin"))
    pool = FakePool(pools=(POOL,))

    async def steps(http: httpx.AsyncClient) -> list[httpx.Response]:
        login = await http.post("/ui/session", data={"token": secret})
        assert login.status_code == 303 and login.headers["location"] == "/ui"
        cookie = login.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and secret not in cookie
        session = http.cookies[SESSION_COOKIE]
        try:
            return [
                await http.get("/ui"),
                await http.get("/v1/pool"),
                await http.post("/v1/projects/p1/machine"),
                await http.get("/p1"),
            ]
        finally:
            await http.post("/ui/logout")
            assert not redis.Redis.from_url(REDIS_URL).exists(ui_session_key(hash_secret(session)))

    page, status, assign, legacy = scenario(tokens, pool, steps)
    assert page.status_code == 200 and "dashboard.js" in page.text
    assert status.status_code == 200
    assert_forbidden(assign, "dashboard session")
    assert_forbidden(legacy, "dashboard session")
    assert pool.assigns == []


def test_the_dashboard_asks_for_a_token_and_refuses_a_bad_one(tokens: TokenStore) -> None:
    team_tokens(tokens)

    async def steps(http: httpx.AsyncClient) -> list[httpx.Response]:
        return [await http.get("/ui"), await http.post("/ui/session", data={"token": "wp_wrong"})]

    form, refused = scenario(tokens, FakePool(pools=(POOL,)), steps)
    assert form.status_code == 401 and 'action="/ui/session"' in form.text
    assert refused.status_code == 401 and "not valid" in refused.text
    assert "set-cookie" not in refused.headers


# -- scopes are checked input ---------------------------------------------------------
@pytest.mark.parametrize(
    ("right", "pools", "prefix", "field"),
    [
        ("write", [], "", "scope"),
        ("read", ["bad{pool}"], "", "pool"),
        ("read", [], "team a", "prefix"),
        ("read", [], "x" * 200, "prefix"),
    ],
)
def test_a_bad_scope_is_refused_naming_the_field(right: str, pools: list[str], prefix: str, field: str) -> None:
    with pytest.raises(InvalidRequest, match=f"^{field} "):
        make_scope(right, pools=pools, prefix=prefix)


@given(
    prefix=st.from_regex(r"[a-z0-9-]{0,8}", fullmatch=True), project=st.from_regex(r"[a-z0-9-]{1,12}", fullmatch=True)
)
def test_a_prefix_scope_covers_exactly_the_projects_starting_with_it(prefix: str, project: str) -> None:
    scope = make_scope("assign", prefix=prefix)
    assert scope.allows_project(project) == project.startswith(prefix)
    assert scope.allows_project(None)  # a pool-wide event has no project


# -- serving, and a state Redis that does not answer ------------------------------------
def test_serve_may_bind_every_address_once_a_scoped_token_exists(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from producer import gateway
    from tasks.state.keys import TOKENS_KEY
    from tests.gateway.gwfakes import call

    db_url = redis_url.rsplit("/", 1)[0] + "/12"  # the database of the token CLI tests (global token key)
    store = TokenStore(redis.Redis.from_url(db_url))
    store.client.delete(TOKENS_KEY)
    monkeypatch.delenv("WARMPOOL_API_TOKEN", raising=False)
    monkeypatch.setenv("WARMPOOL_REDIS_URL", db_url)
    captured: dict[str, Any] = {}
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: captured.update(kw, app=app))
    monkeypatch.setattr(gateway.app, "default_client", FakePool)
    monkeypatch.setattr(gateway.server, "configure_logging", lambda level: None)
    try:
        with pytest.raises(SystemExit, match="or a scoped token"):
            gateway.serve(host="0.0.0.0", port=8000, token=None)
        _, secret = store.create("edge", make_scope("read"))
        gateway.serve(host="0.0.0.0", port=8000, token=None)
        assert captured["host"] == "0.0.0.0"
        assert call(captured["app"], "GET", "/v1/pool").status_code == 401
        assert call(captured["app"], "GET", "/v1/pool", headers=bearer(secret)).status_code == 200
    finally:
        store.client.delete(TOKENS_KEY)
        store.close()


def test_with_the_state_redis_down_the_admin_token_works_and_others_are_refused() -> None:
    from sandbox import free_port

    pool = FakePool(pools=(POOL,))

    async def go() -> list[int]:
        # nothing listens on this port: every token read fails at once
        client = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
        access = Access(api_token=ADMIN_TOKEN, client=client, token_cache_s=0.0)
        app = create_app(pool, token=ADMIN_TOKEN, access=access)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as http:
                return [
                    (await http.post("/v1/projects/p1/machine", headers=bearer(ADMIN_TOKEN))).status_code,
                    (await http.post("/v1/projects/p2/machine", headers=bearer("wp_unknown"))).status_code,
                ]

    assert asyncio.run(go()) == [200, 401]
    assert [c[1] for c in pool.assigns] == ["p1"]


def test_revoking_the_token_ends_its_dashboard_sessions_even_if_the_name_is_reused(tokens: TokenStore) -> None:
    _, secret = tokens.create("ops", make_scope("read"))
    pool = FakePool(pools=(POOL,))

    async def steps(http: httpx.AsyncClient) -> list[int]:
        await http.post("/ui/session", data={"token": secret})
        session = http.cookies[SESSION_COOKIE]
        try:
            before = (await http.get("/v1/pool")).status_code
            tokens.revoke("ops")
            tokens.create("ops", make_scope("admin"))  # a new token of the same name
            after = (await http.get("/v1/pool")).status_code
            return [before, after]
        finally:
            redis.Redis.from_url(REDIS_URL).delete(ui_session_key(hash_secret(session)))

    assert scenario(tokens, pool, steps) == [200, 401]


def test_a_token_of_one_pool_uses_that_pools_routes_only(tokens: TokenStore) -> None:
    # given two pools, alpha (the default) and beta, and a token that may assign in beta only
    _, secret = tokens.create("beta-team", make_scope("assign", pools=["beta"]))
    pool = FakePool(pools=("alpha", "beta"))

    async def steps(http: httpx.AsyncClient) -> list[httpx.Response]:
        return [
            await http.post("/v1/pools/beta/projects/p1/machine", headers=bearer(secret)),
            await http.post("/v1/pools/alpha/projects/p1/machine", headers=bearer(secret)),
            await http.post("/v1/projects/p1/machine", headers=bearer(secret)),  # the default pool: alpha
            await http.get("/v1/pools/alpha", headers=bearer(secret)),
            await http.get("/v1/pools", headers=bearer(secret)),
            await http.get("/metrics", headers=bearer(secret)),  # every pool's gauges
        ]

    beta, alpha, default, alpha_status, listing, metrics = scenario(tokens, pool, steps)
    assert beta.status_code == 200 and beta.json()["project_id"] == "p1"
    for refused in (alpha, default, alpha_status, metrics):
        assert_forbidden(refused, "pool alpha")
    assert [p["name"] for p in listing.json()["pools"]] == ["beta"]
    assert pool.pools_called == ["beta"]  # nothing reached alpha
