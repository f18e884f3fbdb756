"""JSON errors: ApiError, the mapping of the client's exceptions, and the app's error handlers."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from producer.gateway.constants import (
    CODE_NOT_FOUND,
    CODE_PAYLOAD_TOO_LARGE,
    CODE_POOL_UNAVAILABLE,
    INVALID_ID_MESSAGE,
)
from tasks.contract import (
    CODE_BAD_REQUEST,
    CODE_INTERNAL,
    CODE_INVALID_PROJECT,
    CODE_NO_CAPACITY,
    PROJECT_ID_PATTERN,
)
from tasks.errors import InvalidProject, InvalidRequest, NoCapacity, PoolUnavailable, UnknownPool, WarmpoolError


class ApiError(Exception):
    """An error answered as JSON ``{"code", "message", ...}``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def body(self) -> dict[str, Any]:
        """The JSON body: code, message and the extra fields."""
        return {"code": self.code, "message": self.message, **self.extra}

    def response(self) -> JSONResponse:
        """The error as a response, with its status and headers."""
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_for(exc: BaseException, *, retry_after_s: int) -> ApiError:
    """Map the client's exceptions onto HTTP status codes and stable codes."""
    if isinstance(exc, InvalidProject):
        return ApiError(400, CODE_INVALID_PROJECT, INVALID_ID_MESSAGE)
    if isinstance(exc, UnknownPool):
        return ApiError(404, UnknownPool.code, clean_message(str(exc)), extra={"pool": exc.pool})
    if isinstance(exc, InvalidRequest):
        return ApiError(400, CODE_BAD_REQUEST, clean_message(str(exc)))
    if isinstance(exc, NoCapacity):
        why = f"the pool is capped by MaxSize={exc.max_size}" if exc.capped else "a scale-up was requested"
        return ApiError(
            503,
            CODE_NO_CAPACITY,
            f"no idle machine became available in time ({why}); retry later",
            headers={"Retry-After": str(retry_after_s)},
            extra={"capped": exc.capped, "max_size": exc.max_size},
        )
    if isinstance(exc, PoolUnavailable):
        return ApiError(504, CODE_POOL_UNAVAILABLE, "no pool worker answered in time; retry later")
    return ApiError(500, CODE_INTERNAL, "the pool failed the request; see the gateway and worker logs")


def clean_message(message: str, limit: int = 200) -> str:
    """A message safe to show: one line, bounded, printable."""
    first = message.splitlines()[0] if message else ""
    return "".join(ch if ch.isprintable() else "?" for ch in first)[:limit]


def outcome_of(exc: BaseException) -> str:
    """The outcome logged and counted for a failed request: its stable code, else ``error``."""
    return exc.code if isinstance(exc, WarmpoolError | ApiError) else "error"


def valid_project_id(project_id: str) -> bool:
    """Whether ``project_id`` matches the contract's project id pattern."""
    return PROJECT_ID_PATTERN.fullmatch(project_id) is not None


def check_project_id(project_id: str) -> str:
    """``project_id`` itself, or ApiError 400 ``invalid_project``."""
    if not valid_project_id(project_id):
        raise ApiError(400, CODE_INVALID_PROJECT, INVALID_ID_MESSAGE)
    return project_id


def validation_message(exc: RequestValidationError) -> str:
    """A short description of the first validation error, without echoing the input."""
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ())]
        where = f"{loc[0]} parameter {'.'.join(loc[1:])!r}" if len(loc) > 1 else "request"
        return clean_message(f"invalid {where}: {err.get('msg', 'invalid value')}")
    return "invalid request"


async def _on_api_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _on_validation(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return ApiError(400, CODE_BAD_REQUEST, validation_message(exc)).response()


async def _on_http(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    codes = {404: CODE_NOT_FOUND, 405: "method_not_allowed", 413: CODE_PAYLOAD_TOO_LARGE}
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "error"
    code = codes.get(status, "bad_request" if 400 <= status < 500 else CODE_INTERNAL)
    return ApiError(status, code, phrase.lower(), headers=exc.headers).response()


def install_error_handlers(app: FastAPI) -> None:
    """Answer ApiError, validation errors and Starlette's HTTP errors as JSON ``{"code", "message"}``."""
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
