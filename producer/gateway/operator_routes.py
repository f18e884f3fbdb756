"""The operator routes: pause, resume, recycle, force-release and adopt a pool (an ``admin`` token).

The same commands as ``warmpool pause|resume|recycle|force-release|adopt``
(producer/cli_ops.py), each a job on the pool's queue (producer.calls.Operator);
an argument that is wrong is 400 before anything is enqueued, as is a token
without ``admin`` on the pool (403).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Path, Request
from fastapi.responses import JSONResponse

from producer.calls import Operator
from producer.cli_ops import parse_duration
from producer.gateway.access import authorize
from producer.gateway.errors import ApiError, check_project_id, clean_message, error_for
from producer.gateway.models import PROJECT_ID_PARAM, error_responses
from producer.gateway.parsing import fields_from_body, read_body
from producer.gateway.service import Gateway
from producer.tokens import Right
from tasks.contract import CODE_BAD_REQUEST
from tasks.errors import InvalidRequest, WarmpoolError

# An adopt body lists assignments (project -> instance): larger than the other routes' bodies.
ADOPT_BODY_BYTES = 1 << 20
POOL = Path(description="a configured pool's name (GET /v1/pools lists them)")


def _bad(exc: InvalidRequest) -> ApiError:
    return ApiError(400, CODE_BAD_REQUEST, clean_message(str(exc)))


async def _run(gw: Gateway, build: Any, pool: str) -> JSONResponse:
    """Build the command (400 for a bad argument, nothing sent), send it to ``pool``, map failures."""
    try:
        call: Operator = build()
    except InvalidRequest as exc:
        raise _bad(exc) from None
    try:
        return JSONResponse(await gw.client.operate(call, pool=pool))
    except WarmpoolError as exc:
        raise error_for(exc, retry_after_s=gw.retry_after_s) from None


def _recycle(body: Mapping[str, Any], timeout_s: float) -> Operator:
    older, version = body.get("older_than"), body.get("not_template_version")
    older_s = None
    if older is not None:
        if isinstance(older, bool) or not isinstance(older, str | int | float):
            raise InvalidRequest('older_than takes a duration such as "2h" or a number of seconds')
        older_s = parse_duration(str(older), option="older_than")
    return Operator.recycle(older_than_s=older_s, template_version=version, reply_timeout_s=timeout_s)


def _adopt(body: Mapping[str, Any], timeout_s: float) -> Operator:
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise InvalidRequest("dry_run takes true or false")
    if body.get("none") is True:
        if "assignments" in body:
            raise InvalidRequest('give "assignments" or "none": true, not both')
        return Operator.adopt(None, reply_timeout_s=timeout_s)
    assignments = body.get("assignments")
    if not isinstance(assignments, dict):
        raise InvalidRequest('adopt takes {"assignments": {"<project>": "<instance id>", ...}} or {"none": true}')
    return Operator.adopt(assignments, dry_run=dry_run, reply_timeout_s=timeout_s)


def add_operator_routes(app: FastAPI, gw: Gateway) -> None:
    """``POST /v1/pools/{pool}/pause|resume|recycle|adopt`` and ``.../projects/{id}/force-release``."""
    responses = error_responses(400, 401, 403, 404, 413, 500, 504)
    timeout_s = 10.0

    @app.post("/v1/pools/{pool}/pause", tags=["operators"], responses=responses)
    async def pause(request: Request, pool: str = POOL) -> JSONResponse:
        """Stop every AWS change of the pool (no launch, termination or capacity change); assigns go on."""
        name = gw.check_pool(pool)
        authorize(request, pool=name, right=Right.ADMIN)
        return await _run(gw, lambda: Operator.pause(reply_timeout_s=timeout_s), name)

    @app.post("/v1/pools/{pool}/resume", tags=["operators"], responses=responses)
    async def resume(request: Request, pool: str = POOL) -> JSONResponse:
        """Resume AWS changes; machines released while paused are terminated now."""
        name = gw.check_pool(pool)
        authorize(request, pool=name, right=Right.ADMIN)
        return await _run(gw, lambda: Operator.resume(reply_timeout_s=timeout_s), name)

    @app.post("/v1/pools/{pool}/recycle", tags=["operators"], responses=responses)
    async def recycle(request: Request, pool: str = POOL) -> JSONResponse:
        """Replace idle machines gradually: body `{"older_than": "2h"}` or `{"not_template_version": "3"}`."""
        name = gw.check_pool(pool)
        authorize(request, pool=name, right=Right.ADMIN)
        body = fields_from_body(await read_body(request), frozenset({"older_than", "not_template_version"}))
        return await _run(gw, lambda: _recycle(body, timeout_s), name)

    @app.post("/v1/pools/{pool}/adopt", tags=["operators"], responses=responses)
    async def adopt(request: Request, pool: str = POOL) -> JSONResponse:
        """Import assignments made outside warmpool (`{"assignments": {...}, "dry_run": false}`) or `{"none": true}`."""
        name = gw.check_pool(pool)
        authorize(request, pool=name, right=Right.ADMIN)
        raw = await read_body(request, limit=ADOPT_BODY_BYTES)
        body = fields_from_body(raw, frozenset({"assignments", "dry_run", "none"}))
        return await _run(gw, lambda: _adopt(body, timeout_s), name)

    @app.post("/v1/pools/{pool}/projects/{project_id}/force-release", tags=["operators"], responses=responses)
    async def force_release(request: Request, pool: str = POOL, project_id: str = PROJECT_ID_PARAM) -> JSONResponse:
        """An operator takes the project's machine back (recorded as an event, reason `force_release`)."""
        name = gw.check_pool(pool)
        check_project_id(project_id)
        authorize(request, pool=name, right=Right.ADMIN, project_id=project_id)
        return await _run(gw, lambda: Operator.force_release(project_id, reply_timeout_s=timeout_s), name)
