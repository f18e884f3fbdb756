"""The gateway app: create_app() and its routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Path, Query, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response

from producer.cli_pools import pool_rows
from producer.client import check_lease, check_wait
from producer.gateway.access import Access, AccessControl, authorize, principal_of, redact_status
from producer.gateway.asgi import ErrorShield
from producer.gateway.clients import GatewayClient
from producer.gateway.clients import default_client as default_client  # re-exported: serve() and tests look it up here
from producer.gateway.constants import (
    CODE_NOT_ASSIGNED,
    CODE_NOT_FOUND,
    CODE_POOL_UNAVAILABLE,
    CODE_UNAUTHORIZED,
    FLOWER_PREFIX,
    LEGACY_NO_MACHINE,
    RESERVED_LEGACY_IDS,
)
from producer.gateway.errors import ApiError, check_project_id, install_error_handlers
from producer.gateway.flower_proxy import FlowerProxy
from producer.gateway.metrics import GatewayMetrics
from producer.gateway.models import (
    PROJECT_ID_PARAM,
    AssignRequest,
    AssignResult,
    ErrorBody,
    Health,
    LegacyMachine,
    LegacyNoMachine,
    ReleaseResult,
    TouchRequest,
    TouchResult,
    error_responses,
)
from producer.gateway.operator_routes import add_operator_routes
from producer.gateway.parsing import checked, fields_from_body, merged, read_body
from producer.gateway.service import Gateway, HealthProbe, disconnect_of, statuses_within
from producer.gateway.sse import EventFeed, add_event_routes
from producer.gateway.ui import add_ui_routes
from producer.tokens import Right
from tasks.contract import CODE_NO_CAPACITY, MAX_LEASE_S, MAX_WAIT_S, STATUS_NOT_ASSIGNED

POOL_PREFIX = "/v1/pools/{pool}"
# Checked by Gateway.check_pool (400 malformed, 404 unknown_pool), not by a pattern (422).
POOL_PARAM = Path(description="a configured pool's name (GET /v1/pools lists them)")
FLOWER_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]


def create_app(
    client: GatewayClient | None = None,
    *,
    token: str | None = None,
    flower: FlowerProxy | None = None,
    retry_after_s: int = 5,
    health_timeout_s: float = 2.0,
    health_cache_s: float = 1.0,
    access: Access | None = None,
    events: EventFeed | None = None,
) -> FastAPI:
    """The gateway app. ``token`` None means no authentication (serve() then binds loopback only).

    ``client`` defaults to producer.aio.AsyncPoolClient (configured from the
    environment); ``flower`` enables the authenticated /flower proxy.
    ``access`` (producer.gateway.access) adds scoped tokens and rate limits to
    ``token``; ``events`` serves /v1/events, /v1/pools/{pool}/events and the
    dashboard's live feed.
    """
    pool = client if client is not None else default_client()
    access = access if access is not None else Access(api_token=token)
    gw = Gateway(
        client=pool,
        metrics=GatewayMetrics(),
        health=HealthProbe(pool, timeout_s=health_timeout_s, cache_s=health_cache_s),
        flower=flower,
        retry_after_s=retry_after_s,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if gw.flower is not None:
                await gw.flower.aclose()
            await gw.client.aclose()
            await access.aclose()
            if events is not None:
                await events.aclose()

    app = FastAPI(
        title="warmpool gateway",
        version="1",
        summary="Warm EC2 machines for projects, in milliseconds",
        description=(
            "Assign and release machines of the warm pool. With WARMPOOL_API_TOKEN set or a scoped token "
            "(`warmpool token create`), every route except /livez, /healthz and this documentation needs "
            "`Authorization: Bearer <token>`; a request outside the token's scope (pools, project-id prefix, "
            "right read < assign < admin) is 403, one over its rate limit 429 with Retry-After."
        ),
        lifespan=lifespan,
        # No trailing-slash redirects: "/proj-1/" is not found rather than a 307
        # to "/proj-1" (which a client would follow into an assign), and
        # "//host/" can never become an off-site redirect.
        redirect_slashes=False,
    )
    app.state.gateway = gw
    app.state.events = events
    install_error_handlers(app)
    add_routes(app, gw, events=events, access=access)
    install_openapi(app, secured=token is not None or access.client is not None)
    app.add_middleware(AccessControl, access=access)
    app.add_middleware(ErrorShield)
    return app


def install_openapi(app: FastAPI, *, secured: bool) -> None:
    """Declare the bearer scheme in the OpenAPI document so /docs can send the token."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
            )
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearerAuth": {"type": "http", "scheme": "bearer"},
            }
            if secured:
                schema["security"] = [{"bearerAuth": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def add_routes(app: FastAPI, gw: Gateway, *, events: EventFeed | None = None, access: Access | None = None) -> None:
    """Every route, in matching order: the catch-all GET /{project_id} comes last."""
    _add_operations_routes(app, gw)
    add_event_routes(app, gw, events)
    add_operator_routes(app, gw)
    add_ui_routes(app, gw, access or Access(api_token=None))
    _add_pool_route(app, gw)
    for prefix in ("/v1", POOL_PREFIX):  # the default pool's routes, and every pool's
        _add_assign_route(app, gw, prefix)
        _add_touch_route(app, gw, prefix)
        _add_release_route(app, gw, prefix)
    _add_flower_route(app, gw)
    _add_legacy_routes(app, gw)


def _not_assigned(project_id: str) -> JSONResponse:
    return ApiError(
        404,
        CODE_NOT_ASSIGNED,
        f"project {project_id} holds no machine",
        extra={"status": STATUS_NOT_ASSIGNED, "project_id": project_id},
    ).response()


def _add_operations_routes(app: FastAPI, gw: Gateway) -> None:
    @app.get("/livez", tags=["operations"], response_model=Health)
    async def livez() -> Response:
        """200 while this process serves HTTP: no pool call, no token (a liveness probe).

        /healthz answers for the pool worker too; a liveness probe on it would
        restart every gateway whenever the pool worker is slow or down.
        """
        return JSONResponse({"status": "ok"})

    @app.get("/healthz", tags=["operations"], response_model=Health, responses=error_responses(503))
    async def healthz() -> Response:
        """200 when a pool worker answers a status job within a couple of seconds, else 503 (readiness).

        One pool whose worker is down does not make the gateway unready for the
        others: 200 while any pool answers; ``pools`` says which do.
        """
        answered = await gw.health.check()
        pools = {name: "ok" if ok else "unavailable" for name, ok in answered.items()}
        if any(answered.values()):
            return JSONResponse({"status": "ok", "pools": pools})
        return ApiError(
            503,
            CODE_POOL_UNAVAILABLE,
            f"no pool worker answered a status job within {gw.health.timeout_s:g}s",
            extra={"pools": pools},
        ).response()

    @app.get(
        "/metrics",
        tags=["operations"],
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}}, 401: {"model": ErrorBody}},
    )
    async def metrics(request: Request) -> Response:
        """Prometheus metrics: gateway counters plus pool gauges read at scrape time."""
        for name in gw.client.pool_names():  # the gauges of every pool: read on every pool
            authorize(request, pool=name, right=Right.READ)
        statuses = await statuses_within(gw.client, gw.health.timeout_s)
        for name, status in statuses.items():
            if status is not None:
                gw.history_of(name).record(status)
        data, content_type = gw.metrics.render(statuses, request.headers.get("accept", ""))
        return Response(data, media_type=content_type)


def _add_pool_route(app: FastAPI, gw: Gateway) -> None:
    @app.get("/v1/pool", tags=["v1"], responses=error_responses(401, 504))
    async def pool_status(request: Request) -> JSONResponse:
        """The default pool's snapshot: counts by state, machines, desired/min/max, lost machines."""
        who = authorize(request, pool=gw.pool_name, right=Right.READ)
        return JSONResponse(redact_status(await gw.status(), who.scope))

    @app.get("/v1/pools", tags=["v1"], responses=error_responses(401))
    async def pools(request: Request) -> JSONResponse:
        """Every configured pool the token may read: its group, queue and region (the gateway's configuration)."""
        scope = principal_of(request).scope
        rows = [r for r in pool_rows(gw.client.deployment) if scope.allows_pool(r["name"])]
        return JSONResponse({"default_pool": gw.client.pool, "pools": rows})

    @app.get("/v1/pools/{pool}", tags=["v1"], responses=error_responses(400, 401, 404, 504))
    async def one_pool_status(request: Request, pool: str = POOL_PARAM) -> JSONResponse:
        """That pool's snapshot (as /v1/pool); 404 `unknown_pool` for a pool the configuration does not name."""
        name = gw.check_pool(pool)
        who = authorize(request, pool=name, right=Right.READ)
        return JSONResponse(redact_status(await gw.status(pool=name), who.scope))


def _pool_of(request: Request, gw: Gateway) -> str | None:
    """The pool a /v1/pools/{pool}/... route names (checked: 400 malformed, 404 unknown), None elsewhere."""
    pool = request.path_params.get("pool")
    return None if pool is None else gw.check_pool(pool)


def _add_assign_route(app: FastAPI, gw: Gateway, prefix: str) -> None:
    @app.post(
        prefix + "/projects/{project_id}/machine",
        tags=["v1"],
        response_model=AssignResult,
        responses=error_responses(400, 401, 404, 413, 500, 503, 504),
        openapi_extra={
            "requestBody": {
                "required": False,
                "content": {"application/json": {"schema": AssignRequest.model_json_schema()}},
            }
        },
    )
    async def assign(
        request: Request,
        project_id: str = PROJECT_ID_PARAM,
        wait: float | None = Query(
            None, ge=0, le=MAX_WAIT_S, description="seconds to wait for a machine (also accepted in the body)"
        ),
        lease: float | None = Query(
            None, ge=0, le=MAX_LEASE_S, description="lease length in seconds (also accepted in the body)"
        ),
    ) -> JSONResponse:
        """Assign a machine of the pool to the project (the one it holds, if any).

        503 `no_capacity` with Retry-After when no machine became idle within `wait`.
        """
        pool = _pool_of(request, gw)
        authorize(request, pool=pool or gw.pool_name, right=Right.ASSIGN, project_id=project_id)
        check_project_id(project_id)
        body = fields_from_body(await read_body(request), frozenset({"wait", "lease"}))
        wait_value = merged("wait", wait, body)
        wait_s = checked(check_wait, 0.0 if wait_value is None else wait_value)
        lease_value = merged("lease", lease, body)
        lease_s = None if lease_value is None else checked(check_lease, lease_value)
        return JSONResponse(
            await gw.assign(project_id, wait_s, lease_s, gone=disconnect_of(request.receive), pool=pool)
        )


def _add_touch_route(app: FastAPI, gw: Gateway, prefix: str) -> None:
    @app.post(
        prefix + "/projects/{project_id}/touch",
        tags=["v1"],
        response_model=TouchResult,
        responses=error_responses(400, 401, 404, 413, 500, 504),
        openapi_extra={
            "requestBody": {
                "required": False,
                "content": {"application/json": {"schema": TouchRequest.model_json_schema()}},
            }
        },
    )
    async def touch(
        request: Request,
        project_id: str = PROJECT_ID_PARAM,
        lease: float | None = Query(None, ge=0, le=MAX_LEASE_S, description="new lease length in seconds"),
    ) -> JSONResponse:
        """Renew the lease of the project's machine; 404 `not_assigned` if it holds none."""
        pool = _pool_of(request, gw)
        authorize(request, pool=pool or gw.pool_name, right=Right.ASSIGN, project_id=project_id)
        check_project_id(project_id)
        body = fields_from_body(await read_body(request), frozenset({"lease"}))
        lease_value = merged("lease", lease, body)
        lease_s = None if lease_value is None else checked(check_lease, lease_value)
        result = await gw.touch(project_id, lease_s, pool=pool)
        if result.get("status") == STATUS_NOT_ASSIGNED:
            return _not_assigned(project_id)
        return JSONResponse(result)


def _add_release_route(app: FastAPI, gw: Gateway, prefix: str) -> None:
    @app.delete(
        prefix + "/projects/{project_id}/machine",
        tags=["v1"],
        response_model=ReleaseResult,
        responses=error_responses(400, 401, 404, 500, 504),
    )
    async def release(request: Request, project_id: str = PROJECT_ID_PARAM) -> JSONResponse:
        """Release the project's machine; 404 `not_assigned` if it holds none."""
        pool = _pool_of(request, gw)
        authorize(request, pool=pool or gw.pool_name, right=Right.ASSIGN, project_id=project_id)
        check_project_id(project_id)
        result = await gw.release(project_id, pool=pool)
        if result.get("status") == STATUS_NOT_ASSIGNED:
            return _not_assigned(project_id)
        return JSONResponse(result)


def _add_flower_route(app: FastAPI, gw: Gateway) -> None:
    @app.api_route(FLOWER_PREFIX, methods=FLOWER_METHODS, include_in_schema=False)
    @app.api_route(FLOWER_PREFIX + "/{path:path}", methods=FLOWER_METHODS, include_in_schema=False)
    async def flower(request: Request) -> Response:
        if gw.flower is None:
            raise ApiError(404, CODE_NOT_FOUND, "Flower is not configured on this gateway")
        if not gw.flower.authorized(request.headers.get("authorization")):
            raise ApiError(
                401,
                CODE_UNAUTHORIZED,
                "Flower needs the Flower user name and password",
                headers={"WWW-Authenticate": 'Basic realm="flower"'},
            )
        return await gw.flower.forward(request)


def _add_legacy_routes(app: FastAPI, gw: Gateway) -> None:
    @app.get("/", include_in_schema=False)
    async def index() -> JSONResponse:
        return JSONResponse({"service": "warmpool", "docs": "/docs", "openapi": "/openapi.json"})

    @app.get(
        "/{project_id}",
        tags=["legacy"],
        response_model=LegacyMachine,
        responses={404: {"model": LegacyNoMachine}, 400: {"model": ErrorBody}, 504: {"model": ErrorBody}},
    )
    async def legacy_assign(request: Request, project_id: str = PROJECT_ID_PARAM) -> JSONResponse:
        """The original orchestrator's route: `{"ip", "instanceId"}` or 404 `No idle machine found`.

        Browser and crawler files (favicon.ico, robots.txt, ...) and the gateway's own
        paths never assign; every other name must be a valid project id.
        """
        if request.method != "GET":  # a HEAD must never take a machine
            raise ApiError(405, "method_not_allowed", "use GET", headers={"Allow": "GET"})
        if project_id.lower() in RESERVED_LEGACY_IDS:
            raise ApiError(404, CODE_NOT_FOUND, "not found")
        authorize(request, pool=gw.pool_name, right=Right.ASSIGN, project_id=project_id)
        check_project_id(project_id)
        try:
            result = await gw.assign(project_id, 0.0, gone=disconnect_of(request.receive))
        except ApiError as exc:
            if exc.code == CODE_NO_CAPACITY:
                return JSONResponse(dict(LEGACY_NO_MACHINE), status_code=404, headers=exc.headers)
            raise
        return JSONResponse({"ip": result.get("ip"), "instanceId": result.get("instance_id")})
