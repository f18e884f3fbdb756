"""The HTTP gateway against an in-memory pool client: routes, status codes, auth, hostile input."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from producer import gateway
from producer.gateway import (
    LEGACY_NO_MACHINE,
    RESERVED_LEGACY_IDS,
    FlowerProxy,
    create_app,
    env_port,
    is_loopback,
    serve,
)
from tasks.contract import PROJECT_ID_PATTERN
from tasks.errors import InvalidProject, JobFailed, PoolUnavailable
from tests.gateway.gwfakes import TOKEN, FakePool, call, raw_get
from tests.hostile import HOSTILE_IDS

AUTH = {"Authorization": f"Bearer {TOKEN}"}
LEAK_MARKERS = ("Traceback", 'File "', ".py", "hunter2", "redis://", "/etc/", "site-packages")


def assert_json_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["code"] == code
    assert isinstance(body["message"], str) and body["message"]
    assert_no_leak(response.text)
    return dict(body)


def assert_no_leak(text: str) -> None:
    for marker in LEAK_MARKERS:
        assert marker not in text, f"{marker!r} leaked in {text[:300]!r}"


@pytest.fixture
def pool() -> FakePool:
    return FakePool()


@pytest.fixture
def app(pool: FakePool) -> Any:
    return create_app(pool)


@pytest.fixture
def unavailable() -> BaseException:
    # a message with a credential and an address in it: none of it may reach a client
    return PoolUnavailable("no pool worker answered within 10.0s (redis://:hunter2@10.0.0.5:6379/0)")


# -- the seed-compatible route --------------------------------------------------
def test_legacy_route_answers_like_the_original_orchestrator(app: Any, pool: FakePool) -> None:
    r = call(app, "GET", "/proj-42")
    assert r.status_code == 200
    assert r.json() == {"ip": "203.0.113.1", "instanceId": "i-0001"}
    assert pool.assigns == [("assign", "proj-42", 0.0)]
    # same project again: the same machine
    assert call(app, "GET", "/proj-42").json() == {"ip": "203.0.113.1", "instanceId": "i-0001"}


def test_legacy_route_exhausted_pool_is_404_no_idle_machine(app: Any, pool: FakePool) -> None:
    pool.idle = []
    r = call(app, "GET", "/proj-1")
    assert r.status_code == 404
    assert r.json() == LEGACY_NO_MACHINE == {"error": "No idle machine found"}


@pytest.mark.parametrize("capped", [False, True])
def test_legacy_route_no_capacity_raised_or_capped_is_still_404(app: Any, pool: FakePool, capped: bool) -> None:
    pool.idle, pool.capped, pool.raise_no_capacity = [], capped, True
    r = call(app, "GET", "/proj-1")
    assert r.status_code == 404
    assert r.json() == {"error": "No idle machine found"}


@pytest.mark.parametrize(
    "path",
    ["/favicon.ico", "/robots.txt", "/FAVICON.ICO", "/apple-touch-icon.png", "/sitemap.xml", "/v1", "/index.html"],
)
def test_browser_and_crawler_files_never_assign(app: Any, pool: FakePool, path: str) -> None:
    r = call(app, "GET", path)
    assert_json_error(r, 404, "not_found")
    assert pool.calls == []


def test_reserved_names_are_valid_ids_that_remain_usable_through_v1(app: Any, pool: FakePool) -> None:
    assert all(PROJECT_ID_PATTERN.fullmatch(name) for name in RESERVED_LEGACY_IDS)
    r = call(app, "POST", "/v1/projects/favicon.ico/machine")
    assert r.status_code == 200
    assert r.json()["project_id"] == "favicon.ico"


@pytest.mark.parametrize("method", ["HEAD", "POST", "PUT", "DELETE", "OPTIONS"])
def test_legacy_route_assigns_on_get_only(app: Any, pool: FakePool, method: str) -> None:
    r = call(app, method, "/proj-1")
    assert r.status_code == 405
    assert pool.calls == []


def test_root_is_an_index_and_never_assigns(app: Any, pool: FakePool) -> None:
    r = call(app, "GET", "/")
    assert r.status_code == 200
    assert r.json()["docs"] == "/docs"
    assert pool.calls == []


def test_legacy_route_pool_unavailable_is_504(app: Any, pool: FakePool) -> None:
    pool.fail = PoolUnavailable("no pool worker answered within 10.0s at redis://:hunter2@10.0.0.5/0")
    assert_json_error(call(app, "GET", "/proj-1"), 504, "pool_unavailable")


# -- v1: assign ---------------------------------------------------------------
def test_v1_assign_returns_the_result_object(app: Any, pool: FakePool) -> None:
    r = call(app, "POST", "/v1/projects/proj-42/machine")
    assert r.status_code == 200
    body = r.json()
    assert body == {
        "status": "assigned",
        "project_id": "proj-42",
        "instance_id": "i-0001",
        "ip": "203.0.113.1",
        "private_ip": "10.0.0.9",
        "assigned_at": "2026-01-01T00:00:00.000Z",
    }
    assert pool.assigns == [("assign", "proj-42", 0.0)]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"params": {"wait": "2.5"}}, 2.5),
        ({"json": {"wait": 30}}, 30.0),
        ({"json": {}}, 0.0),
        ({"content": b"   "}, 0.0),
        ({"params": {"wait": "3600"}}, 3600.0),
        ({"params": {"wait": "7"}, "json": {"wait": 7}}, 7.0),
    ],
)
def test_v1_assign_wait_from_query_or_body(app: Any, pool: FakePool, kwargs: dict[str, Any], expected: float) -> None:
    r = call(app, "POST", "/v1/projects/p1/machine", **kwargs)
    assert r.status_code == 200, r.text
    assert pool.assigns == [("assign", "p1", expected)]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"params": {"wait": "abc"}},
        {"params": {"wait": "-1"}},
        {"params": {"wait": "3600.5"}},
        {"params": {"wait": "nan"}},
        {"params": {"wait": "inf"}},
        {"json": {"wait": -0.1}},
        {"json": {"wait": 3601}},
        {"json": {"wait": "30"}},
        {"json": {"wait": True}},
        {"json": {"wait": None, "deadline": 5}},
        {"json": {"wait": [1]}},
        {"content": b"{bad json"},
        {"content": b"[1, 2]"},
        {"content": b'"wait"'},
        {"content": b"null"},
        {"content": b'{"wait": NaN}'},
        {"content": b'{"wait": Infinity}'},
        {"content": b'{"wait": 1e400}'},
        {"content": b"\xff\xfe\x00garbage"},
        {"content": b"[" * 5000},
        {"content": b'{"wait": 1} trailing'},
        {"params": {"wait": "5"}, "json": {"wait": 6}},
    ],
)
def test_v1_assign_bad_wait_or_garbage_body_is_400(app: Any, pool: FakePool, kwargs: dict[str, Any]) -> None:
    r = call(app, "POST", "/v1/projects/p1/machine", **kwargs)
    assert_json_error(r, 400, "bad_request")
    assert pool.calls == []


def test_v1_assign_oversized_body_is_413(app: Any, pool: FakePool) -> None:
    r = call(app, "POST", "/v1/projects/p1/machine", content=b'{"wait": 1' + b" " * 20_000 + b"}")
    assert_json_error(r, 413, "payload_too_large")
    assert pool.calls == []


def test_v1_assign_no_capacity_is_503_with_retry_after(app: Any, pool: FakePool) -> None:
    pool.idle = []
    r = call(app, "POST", "/v1/projects/p1/machine", params={"wait": "1"})
    body = assert_json_error(r, 503, "no_capacity")
    assert int(r.headers["Retry-After"]) > 0
    assert body["capped"] is False


def test_v1_assign_capped_pool_says_so(app: Any, pool: FakePool) -> None:
    pool.idle, pool.capped, pool.raise_no_capacity = [], True, True
    body = assert_json_error(call(app, "POST", "/v1/projects/p1/machine"), 503, "no_capacity")
    assert body["capped"] is True and body["max_size"] == 5
    assert "MaxSize=5" in body["message"]


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (
            PoolUnavailable("no pool worker answered within 10.0s (redis://:hunter2@10.0.0.5:6379/0)"),
            504,
            "pool_unavailable",
        ),
        (JobFailed('worker failed: File "/srv/app/tasks/jobs.py", line 3, hunter2'), 500, "internal_error"),
        (RuntimeError("boom at /etc/passwd in /usr/lib/python3/site-packages/x.py"), 500, "internal_error"),
        (InvalidProject("bad"), 400, "invalid_project"),
    ],
)
def test_v1_assign_failures_map_to_status_codes_without_leaks(
    app: Any, pool: FakePool, error: BaseException, status: int, code: str
) -> None:
    pool.fail = error
    assert_json_error(call(app, "POST", "/v1/projects/p1/machine"), status, code)


def test_v1_assign_unknown_failure_result_is_500(app: Any, pool: FakePool) -> None:
    async def odd(project_id: str, *, wait: float) -> dict[str, Any]:
        return {"status": "failed", "code": "weird", "message": "at /srv/x.py"}

    pool.assign_result = odd  # type: ignore[method-assign]
    assert_json_error(call(app, "POST", "/v1/projects/p1/machine"), 500, "internal_error")


# -- v1: release, pool ------------------------------------------------------------
def test_v1_release_held_machine(app: Any, pool: FakePool) -> None:
    call(app, "POST", "/v1/projects/p1/machine")
    r = call(app, "DELETE", "/v1/projects/p1/machine")
    assert r.status_code == 200
    assert r.json() == {"status": "released", "project_id": "p1", "instance_id": "i-0001"}


def test_v1_release_nothing_held_is_404_not_assigned(app: Any, pool: FakePool) -> None:
    r = call(app, "DELETE", "/v1/projects/p1/machine")
    body = assert_json_error(r, 404, "not_assigned")
    assert body["project_id"] == "p1" and body["status"] == "not_assigned"


def test_v1_release_pool_unavailable_is_504(app: Any, pool: FakePool, unavailable: BaseException) -> None:
    pool.fail = unavailable
    assert_json_error(call(app, "DELETE", "/v1/projects/p1/machine"), 504, "pool_unavailable")


def test_v1_pool_status(app: Any, pool: FakePool) -> None:
    r = call(app, "GET", "/v1/pool")
    assert r.status_code == 200
    assert r.json()["counts"]["idle"] == 2


def test_v1_pool_unavailable_is_504(app: Any, pool: FakePool, unavailable: BaseException) -> None:
    pool.fail = unavailable
    assert_json_error(call(app, "GET", "/v1/pool"), 504, "pool_unavailable")


def test_unknown_route_and_method_are_json(app: Any, pool: FakePool) -> None:
    assert_json_error(call(app, "GET", "/v1/nothing/here"), 404, "not_found")
    r = call(app, "PUT", "/v1/projects/p1/machine")
    assert_json_error(r, 405, "method_not_allowed")
    assert "POST" in r.headers["allow"]
    assert pool.calls == []


# -- hostile project ids ------------------------------------------------------------


def _hostile_ids() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(HOSTILE_IDS),
        st.text(max_size=300),
        st.text(alphabet=st.characters(codec="ascii"), max_size=200),
        st.builds(
            lambda a, b: a + b, st.from_regex(PROJECT_ID_PATTERN, fullmatch=True), st.sampled_from("/\\ ;$`'\"\x00\n%")
        ),
    ).filter(lambda s: PROJECT_ID_PATTERN.fullmatch(s) is None)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(project_id=_hostile_ids())
@example(project_id="a" * 10_000)
@example(project_id="../../etc/passwd")
@example(project_id="a%2Fb")
def test_hostile_ids_never_reach_the_pool_over_http(project_id: str) -> None:
    pool = FakePool()
    app = create_app(pool)
    encoded = quote(project_id, safe="")
    for method, url in [
        ("GET", f"/{encoded}"),
        ("POST", f"/v1/projects/{encoded}/machine"),
        ("DELETE", f"/v1/projects/{encoded}/machine"),
        ("POST", f"/v1/projects/{encoded}/touch"),
    ]:
        r = call(app, method, url)
        assert r.status_code in (200, 400, 404, 405), (url, r.status_code, r.text)
        if r.status_code == 200:  # only "/" (an empty or dot-only id) may answer 200: the index
            assert r.json()["service"] == "warmpool"
        else:
            body = r.json()
            assert body.get("code") in ("invalid_project", "not_found", "method_not_allowed"), body
        assert_no_leak(r.text.replace(encoded, ""))
    assert pool.pool_calls == []


@settings(max_examples=150, deadline=None)
@given(project_id=_hostile_ids())
@example(project_id="../etc/passwd")
@example(project_id="a\x00b")
@example(project_id="a\r\nX-Injected: 1")
def test_hostile_raw_paths_never_reach_the_pool(project_id: str) -> None:
    """Straight into the ASGI app, with the decoded path exactly as a server might hand it over."""
    pool = FakePool()
    app = create_app(pool)
    status, body = raw_get(app, "/" + project_id)
    assert status in (200, 400, 404), (project_id, status, body[:200])
    data = json.loads(body)
    assert "code" in data or data.get("service") == "warmpool"
    assert_no_leak(json.dumps({k: v for k, v in data.items() if k != "message"}))
    assert b"Traceback" not in body
    assert pool.pool_calls == []


@settings(max_examples=60, deadline=None)
@given(project_id=st.from_regex(PROJECT_ID_PATTERN, fullmatch=True))
def test_every_valid_id_assigns_through_both_routes(project_id: str) -> None:
    pool = FakePool(machines=("i-0001",))
    app = create_app(pool)
    r = call(app, "GET", f"/{project_id}")
    if project_id.lower() in RESERVED_LEGACY_IDS:
        assert r.status_code == 404
    else:
        assert r.status_code == 200, r.text
        assert r.json()["instanceId"] == "i-0001"
    r = call(app, "POST", f"/v1/projects/{project_id}/machine")
    assert r.status_code == 200
    assert r.json()["project_id"] == project_id


# -- auth ----------------------------------------------------------------------------
@pytest.fixture
def secured(pool: FakePool) -> Any:
    return create_app(pool, token=TOKEN)


PROTECTED = [
    ("GET", "/proj-1"),
    ("POST", "/v1/projects/p1/machine"),
    ("DELETE", "/v1/projects/p1/machine"),
    ("POST", "/v1/projects/p1/touch"),
    ("GET", "/v1/pool"),
    ("GET", "/metrics"),
    ("GET", "/"),
    ("GET", "/favicon.ico"),
    ("GET", "/v1/projects/..%2F..%2Fetc/machine"),
]


@pytest.mark.parametrize(("method", "url"), PROTECTED)
def test_missing_token_is_401_with_bearer_challenge(secured: Any, pool: FakePool, method: str, url: str) -> None:
    r = call(secured, method, url)
    assert_json_error(r, 401, "unauthorized")
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert pool.calls == []


@pytest.mark.parametrize(
    "header",
    [
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        "Bearer ",
        "Bearer",
        f"Basic {TOKEN}",
        TOKEN,
        f"bearer{TOKEN}",
        "Bearer \x00",
    ],
)
def test_wrong_token_is_401_invalid_token(secured: Any, pool: FakePool, header: str) -> None:
    r = call(secured, "POST", "/v1/projects/p1/machine", headers={"Authorization": header})
    assert_json_error(r, 401, "unauthorized")
    assert "Bearer" in r.headers["WWW-Authenticate"]
    assert pool.calls == []


def test_right_token_is_accepted_on_every_route(secured: Any, pool: FakePool) -> None:
    assert call(secured, "GET", "/proj-1", headers=AUTH).status_code == 200
    assert call(secured, "POST", "/v1/projects/p2/machine", headers=AUTH).status_code == 200
    assert call(secured, "DELETE", "/v1/projects/p2/machine", headers=AUTH).status_code == 200
    assert call(secured, "GET", "/v1/pool", headers=AUTH).status_code == 200
    assert call(secured, "GET", "/metrics", headers=AUTH).status_code == 200
    # the scheme is case-insensitive (RFC 7235)
    assert call(secured, "GET", "/v1/pool", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200


def test_healthz_and_docs_stay_open_with_a_token(secured: Any) -> None:
    assert call(secured, "GET", "/healthz").status_code == 200
    assert call(secured, "GET", "/openapi.json").status_code == 200
    assert call(secured, "GET", "/docs").status_code == 200


def test_bad_input_without_token_is_401_not_400(secured: Any, pool: FakePool) -> None:
    r = call(secured, "POST", "/v1/projects/bad%20id/machine", content=b"{garbage")
    assert_json_error(r, 401, "unauthorized")


# -- health, metrics, OpenAPI -----------------------------------------------------------
def test_healthz_ok_and_unavailable(pool: FakePool, unavailable: BaseException) -> None:
    app = create_app(pool, health_cache_s=0.0)
    r = call(app, "GET", "/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok", "pools": {"default": "ok"}}
    pool.fail = unavailable
    assert_json_error(call(app, "GET", "/healthz"), 503, "pool_unavailable")


def test_healthz_times_out_on_a_silent_pool(pool: FakePool) -> None:
    import asyncio

    async def hang(**_: Any) -> dict[str, Any]:
        await asyncio.sleep(30)
        return {}

    pool.status = hang  # type: ignore[method-assign]
    app = create_app(pool, health_timeout_s=0.05, health_cache_s=0.0)
    assert_json_error(call(app, "GET", "/healthz"), 503, "pool_unavailable")


def test_healthz_is_cached_so_probes_do_not_flood_the_pool(pool: FakePool) -> None:
    app = create_app(pool, health_cache_s=60.0)
    for _ in range(5):
        assert call(app, "GET", "/healthz").status_code == 200
    assert pool.calls.count(("status",)) == 1


def test_metrics_exposes_counters_histogram_and_pool_gauges(app: Any, pool: FakePool) -> None:
    call(app, "POST", "/v1/projects/p1/machine")
    call(app, "GET", "/p2")
    pool.idle = []
    call(app, "POST", "/v1/projects/p3/machine")
    call(app, "POST", "/v1/projects/bad%20id/machine")
    call(app, "DELETE", "/v1/projects/p1/machine")
    call(app, "DELETE", "/v1/projects/p9/machine")
    r = call(app, "GET", "/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    for line in [
        'warmpool_assigns_total{outcome="assigned",pool="default"} 2.0',
        'warmpool_assigns_total{outcome="no_capacity",pool="default"} 1.0',
        'warmpool_releases_total{outcome="released",pool="default"} 1.0',
        'warmpool_releases_total{outcome="not_assigned",pool="default"} 1.0',
        'warmpool_assign_duration_seconds_count{outcome="assigned",pool="default"} 2.0',
        'warmpool_assign_duration_seconds_bucket{le="0.005",outcome="assigned",pool="default"}',
        'warmpool_machines{pool="default",state="idle"} 0.0',
        'warmpool_machines{pool="default",state="assigned"} 1.0',
        'warmpool_machines{pool="default",state="pending"} 1.0',
        'warmpool_machines{pool="default",state="releasing"} 0.0',
        'warmpool_desired_capacity{pool="default"} 3.0',
        'warmpool_min_size{pool="default"} 0.0',
        'warmpool_max_size{pool="default"} 5.0',
        'warmpool_capped{pool="default"} 0.0',
        'warmpool_lost_machines_total{pool="default"} 1.0',
        'warmpool_refresh_age_seconds{pool="default"} 2.5',
        'warmpool_pool_status_up{pool="default"} 1.0',
        'warmpool_waiting_requests{pool="default"} 1.0',
    ]:
        assert line in text, line
    # an invalid id never reaches the pool, so it is not an assign outcome
    assert "invalid_project" not in text


def test_a_new_status_series_is_one_function() -> None:
    from prometheus_client.core import GaugeMetricFamily

    from producer.gateway.metrics import STATUS_FAMILIES, GatewayMetrics

    def aws_calls(status: dict[str, Any]) -> Any:
        yield GaugeMetricFamily("warmpool_test_aws_calls", "AWS calls", value=status["aws_calls"])

    metrics = GatewayMetrics()
    metrics.pool.families = (*STATUS_FAMILIES, aws_calls)
    text, _ = metrics.render({"small": {"aws_calls": 7}, "gpu": None})
    assert b'warmpool_test_aws_calls{pool="small"} 7.0' in text
    assert b'warmpool_pool_status_up{pool="small"} 1.0' in text
    assert b'warmpool_pool_status_up{pool="gpu"} 0.0' in text


def test_metrics_without_a_pool_still_answers(app: Any, pool: FakePool, unavailable: BaseException) -> None:
    pool.fail = unavailable
    r = call(app, "GET", "/metrics")
    assert r.status_code == 200
    assert 'warmpool_pool_status_up{pool="default"} 0.0' in r.text
    assert "warmpool_machines{" not in r.text


def test_metrics_negotiates_openmetrics(app: Any) -> None:
    r = call(app, "GET", "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.rstrip().endswith("# EOF")


def test_each_app_has_its_own_registry() -> None:
    a, b = create_app(FakePool()), create_app(FakePool())
    call(a, "POST", "/v1/projects/p1/machine")
    assert 'warmpool_assigns_total{outcome="assigned",pool="default"} 1.0' in call(a, "GET", "/metrics").text
    assert "warmpool_assigns_total{" not in call(b, "GET", "/metrics").text


def test_openapi_document_and_docs_are_served(app: Any) -> None:
    r = call(app, "GET", "/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    paths = doc["paths"]
    assert set(paths["/v1/projects/{project_id}/machine"]) == {"post", "delete"}
    for path in ("/v1/pool", "/healthz", "/metrics", "/{project_id}"):
        assert "get" in paths[path]
    post = paths["/v1/projects/{project_id}/machine"]["post"]
    assert {"400", "503", "504"} <= set(post["responses"])
    assert "requestBody" in post
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert call(app, "GET", "/docs").status_code == 200
    assert call(app, "GET", "/redoc").status_code == 200


def test_secured_openapi_declares_bearer_security(secured: Any) -> None:
    assert call(secured, "GET", "/openapi.json").json()["security"] == [{"bearerAuth": []}]


def test_unexpected_error_in_a_route_is_a_json_500(app: Any, pool: FakePool) -> None:
    async def broken(**_: Any) -> dict[str, Any]:
        raise ZeroDivisionError("in /srv/secret.py")

    pool.status = broken  # type: ignore[method-assign]
    assert_json_error(call(app, "GET", "/v1/pool"), 500, "internal_error")


def test_lifespan_closes_the_client(pool: FakePool) -> None:
    import asyncio

    app = create_app(pool)

    async def run() -> None:
        async with app.router.lifespan_context(app):
            pass

    asyncio.run(run())
    assert pool.closed


def test_assign_logs_one_line_with_project_instance_outcome_duration(
    app: Any, pool: FakePool, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="warmpool.gateway"):
        call(app, "POST", "/v1/projects/p1/machine", headers={"Authorization": "Bearer hunter2"})
    records = [r for r in caplog.records if r.getMessage() == "assign"]
    assert len(records) == 1
    rec = records[0]
    assert (rec.project_id, rec.instance_id, rec.outcome) == ("p1", "i-0001", "assigned")  # type: ignore[attr-defined]
    assert rec.duration_ms >= 0  # type: ignore[attr-defined]
    assert "hunter2" not in caplog.text


def test_json_formatter_emits_extras() -> None:
    record = logging.makeLogRecord({"msg": "assign", "levelname": "INFO", "project_id": "p1", "outcome": "assigned"})
    line = json.loads(gateway.JsonFormatter().format(record))
    assert line["message"] == "assign" and line["project_id"] == "p1" and line["outcome"] == "assigned"


# -- the Flower proxy route -----------------------------------------------------------------
def flower_app(pool: FakePool, seen: list[httpx.Request], *, fail: bool = False, token: str | None = None) -> Any:
    def upstream(request: httpx.Request) -> httpx.Response:
        if fail:
            raise httpx.ConnectError("connection refused")
        seen.append(request)
        headers = [("X-From", "flower"), ("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "_xsrf=2; Path=/")]
        return httpx.Response(200, text="flower says hi", headers=headers)

    proxy = FlowerProxy(
        url="http://127.0.0.1:5555", user="admin", password="pw", transport=httpx.MockTransport(upstream)
    )
    return create_app(pool, token=token, flower=proxy)


BASIC_OK = {"Authorization": "Basic " + __import__("base64").b64encode(b"admin:pw").decode()}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic " + __import__("base64").b64encode(b"admin:wrong").decode()},
        {"Authorization": "Basic " + __import__("base64").b64encode(b"admin").decode()},
        {"Authorization": "Basic !!!not-base64"},
        {"Authorization": f"Bearer {TOKEN}"},
    ],
)
@pytest.mark.parametrize(
    "path", ["/flower", "/flower/", "/flower/metrics", "/flower/healthcheck", "/flower/api/workers"]
)
def test_flower_proxy_needs_the_flower_credentials(pool: FakePool, headers: dict[str, str], path: str) -> None:
    seen: list[httpx.Request] = []
    app = flower_app(pool, seen, token=TOKEN)
    r = call(app, "GET", path, headers=headers)
    assert_json_error(r, 401, "unauthorized")
    assert r.headers["WWW-Authenticate"].startswith("Basic")
    assert seen == []


def test_flower_proxy_forwards_with_credentials(pool: FakePool) -> None:
    seen: list[httpx.Request] = []
    app = flower_app(pool, seen, token=TOKEN)
    r = call(app, "GET", "/flower/metrics?x=1", headers=BASIC_OK)
    assert r.status_code == 200 and r.text == "flower says hi" and r.headers["x-from"] == "flower"
    assert r.headers.get_list("set-cookie") == ["a=1; Path=/", "_xsrf=2; Path=/"]
    (forwarded,) = seen
    assert forwarded.url.path == "/flower/metrics" and forwarded.url.query == b"x=1"
    assert forwarded.headers["authorization"] == BASIC_OK["Authorization"]  # Flower checks them again
    r = call(app, "POST", "/flower/api/task/revoke/abc", headers=BASIC_OK, content=b"terminate=false")
    assert r.status_code == 200 and seen[-1].method == "POST" and seen[-1].content == b"terminate=false"


def test_flower_proxy_upstream_down_is_502(pool: FakePool) -> None:
    app = flower_app(pool, [], fail=True)
    assert_json_error(call(app, "GET", "/flower/", headers=BASIC_OK), 502, "flower_unavailable")


def test_flower_route_without_proxy_is_404(app: Any) -> None:
    assert_json_error(call(app, "GET", "/flower/metrics", headers=BASIC_OK), 404, "not_found")


def test_flower_proxy_from_env() -> None:
    assert FlowerProxy.from_env({}) is None
    assert FlowerProxy.from_env({"WARMPOOL_FLOWER_URL": "http://127.0.0.1:5555"}) is None  # no credentials: off
    proxy = FlowerProxy.from_env(
        {
            "WARMPOOL_FLOWER_URL": "http://127.0.0.1:5555",
            "WARMPOOL_FLOWER_USER": "admin",
            "WARMPOOL_FLOWER_PASSWORD": "pw",
        }
    )
    assert proxy is not None and proxy.authorized(BASIC_OK["Authorization"])


# -- serving ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_serve_refuses_a_public_address_without_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WARMPOOL_API_TOKEN", raising=False)
    monkeypatch.setattr("uvicorn.run", lambda *a, **k: pytest.fail("must not start"))
    with pytest.raises(SystemExit, match="without WARMPOOL_API_TOKEN"):
        serve(host="0.0.0.0", port=8000, token=None)


def test_serve_without_token_binds_loopback_and_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WARMPOOL_API_TOKEN", raising=False)
    monkeypatch.delenv("WARMPOOL_GATEWAY_HOST", raising=False)
    started: dict[str, Any] = {}
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: started.update(kw))
    monkeypatch.setattr(gateway.app, "default_client", FakePool)
    warnings: list[str] = []
    monkeypatch.setattr(gateway.log, "warning", lambda msg, *args: warnings.append(msg % args))
    monkeypatch.setattr(gateway.server, "configure_logging", lambda level: None)
    serve(host=None, port=8123, token=None)
    assert started["host"] == "127.0.0.1" and started["port"] == 8123
    assert any("WARMPOOL_API_TOKEN is not set" in w and "127.0.0.1" in w for w in warnings)


def test_serve_with_token_from_env_may_bind_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARMPOOL_API_TOKEN", TOKEN)
    monkeypatch.setenv("WARMPOOL_GATEWAY_HOST", "0.0.0.0")
    captured: dict[str, Any] = {}

    def fake_run(app: Any, **kw: Any) -> None:
        captured.update(kw, app=app)

    monkeypatch.setattr("uvicorn.run", fake_run)
    monkeypatch.setattr(gateway.app, "default_client", FakePool)
    monkeypatch.setattr(gateway.server, "configure_logging", lambda level: None)
    serve(host=None, port=8000, token=None)
    assert captured["host"] == "0.0.0.0"
    assert call(captured["app"], "GET", "/v1/pool").status_code == 401


def test_env_port() -> None:
    assert env_port({}) == 8080
    assert env_port({"WARMPOOL_GATEWAY_PORT": "9000"}) == 9000
    for bad in ("0", "70000", "http", "-1"):
        with pytest.raises(SystemExit):
            env_port({"WARMPOOL_GATEWAY_PORT": bad})


def test_module_help_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "producer.gateway", "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    assert "WARMPOOL_API_TOKEN" in out.stdout and "--port" in out.stdout


@pytest.mark.parametrize("path", ["/proj-1/", "/v1/projects/p1/machine/", "/v1/pool/"])
def test_no_trailing_slash_redirects(app: Any, pool: FakePool, path: str) -> None:
    for method in ("GET", "POST"):
        r = call(app, method, path)
        assert r.status_code in (404, 405), (method, path, r.status_code)
        assert "location" not in r.headers
    assert raw_get(app, "//evil.example/")[0] == 404  # never an off-site redirect
    assert pool.calls == []


# -- container healthcheck probe ------------------------------------------------------
def test_probe_pidfile(tmp_path: Any) -> None:
    from producer import probe

    pidfile = tmp_path / "x.pid"
    assert probe.check_pidfile(str(pidfile)) is not None
    pidfile.write_text(str(__import__("os").getpid()))
    assert probe.check_pidfile(str(pidfile)) is None
    pidfile.write_text("999999999")
    assert probe.check_pidfile(str(pidfile)) is not None


def test_probe_http_failures() -> None:
    from producer import probe

    assert probe.check_http("file:///etc/passwd", timeout_s=1, flower_auth=False) is not None
    assert probe.check_http("http://127.0.0.1:9/", timeout_s=1, flower_auth=False) is not None


# -- leases -------------------------------------------------------------------------------
def test_assign_with_a_lease_and_touch_it() -> None:
    from tests.gateway.gwfakes import LeasingPool

    pool = LeasingPool()
    app = create_app(pool)
    assert call(app, "POST", "/v1/projects/p1/machine", params={"lease": "600"}).status_code == 200
    assert call(app, "POST", "/v1/projects/p2/machine", json={"wait": 1, "lease": 60}).status_code == 200
    assert pool.assigns == [("assign", "p1", 0.0, 600.0), ("assign", "p2", 1.0, 60.0)]
    r = call(app, "POST", "/v1/projects/p1/touch")
    assert r.status_code == 200
    assert r.json() == {
        "status": "touched",
        "project_id": "p1",
        "instance_id": "i-0001",
        "lease_expires_at": "2026-01-01T01:00:00.000Z",
    }
    assert call(app, "POST", "/v1/projects/p2/touch", json={"lease": 0}).json()["status"] == "no_lease"
    body = assert_json_error(call(app, "POST", "/v1/projects/p9/touch"), 404, "not_assigned")
    assert body["project_id"] == "p9"
    metrics = call(app, "GET", "/metrics").text
    assert 'warmpool_touches_total{outcome="touched",pool="default"} 1.0' in metrics
    assert 'warmpool_touches_total{outcome="not_assigned",pool="default"} 1.0' in metrics


@pytest.mark.parametrize(
    ("url", "kwargs"),
    [
        ("/v1/projects/p1/machine", {"params": {"lease": "-1"}}),
        ("/v1/projects/p1/machine", {"params": {"lease": "1e12"}}),
        ("/v1/projects/p1/machine", {"json": {"lease": "60"}}),
        ("/v1/projects/p1/machine", {"params": {"lease": "5"}, "json": {"lease": 6}}),
        ("/v1/projects/p1/touch", {"json": {"lease": -5}}),
        ("/v1/projects/p1/touch", {"json": {"wait": 5}}),
        ("/v1/projects/p1/touch", {"content": b"{nope"}),
        ("/v1/projects/bad%20id/touch", {}),
    ],
)
def test_bad_lease_requests_are_400(url: str, kwargs: dict[str, Any]) -> None:
    from tests.gateway.gwfakes import LeasingPool

    pool = LeasingPool()
    r = call(create_app(pool), "POST", url, **kwargs)
    assert r.status_code == 400, r.text
    assert r.json()["code"] in ("bad_request", "invalid_project")
    assert pool.calls == []
