"""The operator routes: admin only, bad arguments refused before anything is sent, each command to its pool."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from producer.tokens import TokenStore, make_scope
from tests.gateway.gwfakes import FakePool
from tests.gateway.test_access import bearer, redis_url, scenario, tokens  # noqa: F401 - the fixtures

ADMIN = "operator-admin-token"


def test_an_admin_pauses_resumes_recycles_force_releases_and_adopts_each_pool(tokens: TokenStore) -> None:  # noqa: F811
    pool = FakePool(pools=("small", "gpu"))
    auth = bearer(ADMIN)

    async def steps(http: httpx.AsyncClient) -> list[httpx.Response]:
        return [
            await http.post("/v1/pools/gpu/pause", headers=auth),
            await http.post("/v1/pools/gpu/resume", headers=auth),
            await http.post("/v1/pools/small/recycle", headers=auth, json={"older_than": "2h"}),
            await http.post("/v1/pools/small/recycle", headers=auth, json={"not_template_version": "7"}),
            await http.post("/v1/pools/gpu/projects/proj-1/force-release", headers=auth),
            await http.post(
                "/v1/pools/gpu/adopt", headers=auth, json={"assignments": {"proj-9": "i-0123456789abcdef0"}}
            ),
            await http.post("/v1/pools/gpu/adopt", headers=auth, json={"none": True}),
        ]

    responses = scenario(tokens, pool, steps, api_token=ADMIN)
    assert [r.status_code for r in responses] == [200] * 7, [r.text for r in responses]
    # expect each command sent to the pool of its route, with its arguments
    assert pool.pools_called == ["gpu", "gpu", "small", "small", "gpu", "gpu", "gpu"]
    commands = [(c[1], c[2], c[3]) for c in pool.calls]
    assert commands[0][0] == "warmpool.pause" and commands[1][0] == "warmpool.resume"
    assert commands[2][2] == {"older_than_s": 7200.0} and commands[3][2] == {"template_version": "7"}
    assert commands[4][1] == ("proj-1",)
    assert commands[5][1] == ({"proj-9": "i-0123456789abcdef0"},) and commands[5][2] == {"dry_run": False}
    assert commands[6][2] == {"none": True}


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        ("/v1/pools/gpu/recycle", {}, "one of"),
        ("/v1/pools/gpu/recycle", {"older_than": "soon"}, "older_than"),
        ("/v1/pools/gpu/recycle", {"older_than": "2h", "not_template_version": "3"}, "one of"),
        ("/v1/pools/gpu/recycle", {"bogus": 1}, "unknown field"),
        ("/v1/pools/gpu/adopt", {}, "assignments"),
        ("/v1/pools/gpu/adopt", {"assignments": {"proj-1": "not-an-instance"}}, "not-an-instance"),
        ("/v1/pools/gpu/adopt", {"assignments": {"../x": "i-0123456789abcdef0"}}, "project"),
        ("/v1/pools/gpu/adopt", {"assignments": {}, "dry_run": "yes"}, "dry_run"),
        ("/v1/pools/gpu/projects/bad%20id/force-release", None, "project"),
    ],
)
def test_bad_arguments_are_400_and_nothing_is_sent(
    tokens: TokenStore,  # noqa: F811
    path: str,
    body: Any,
    words: str,
) -> None:
    pool = FakePool(pools=("small", "gpu"))

    async def steps(http: httpx.AsyncClient) -> httpx.Response:
        return await http.post(path, headers=bearer(ADMIN), json=body)

    r = scenario(tokens, pool, steps, api_token=ADMIN)
    assert r.status_code == 400, r.text
    assert words.lower() in r.json()["message"].lower(), r.json()
    assert pool.calls == []


def test_operator_routes_need_admin_on_the_pool_and_refuse_unknown_pools(tokens: TokenStore) -> None:  # noqa: F811
    _, assign_everywhere = tokens.create("team-a", make_scope("assign"))
    _, admin_of_small = tokens.create("small-admin", make_scope("admin", pools=["small"]))
    pool = FakePool(pools=("small", "gpu"))

    async def steps(http: httpx.AsyncClient) -> list[httpx.Response]:
        return [
            await http.post("/v1/pools/gpu/pause", headers=bearer(assign_everywhere)),
            await http.post("/v1/pools/gpu/pause", headers=bearer(admin_of_small)),
            await http.post("/v1/pools/small/pause", headers=bearer(admin_of_small)),
            await http.post("/v1/pools/nope/pause", headers=bearer(ADMIN)),
            await http.post("/v1/pools/gpu/pause"),
        ]

    assign_only, other_pool, own_pool, unknown, anonymous = scenario(tokens, pool, steps, api_token=ADMIN)
    assert assign_only.status_code == 403 and "admin" in assign_only.json()["message"]
    assert other_pool.status_code == 403 and "gpu" in other_pool.json()["message"]
    assert own_pool.status_code == 200
    assert unknown.status_code == 404 and unknown.json()["code"] == "unknown_pool"
    assert anonymous.status_code == 401
    assert pool.pools_called == ["small"]
