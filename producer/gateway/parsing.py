"""Request parsing of the v1 routes: a bounded body, its JSON fields, query/body merging."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import Request

from producer.gateway.constants import CODE_PAYLOAD_TOO_LARGE, MAX_BODY_BYTES
from producer.gateway.errors import ApiError, clean_message
from tasks.contract import CODE_BAD_REQUEST
from tasks.errors import InvalidRequest


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body; ApiError 413 as soon as it (or its Content-Length) exceeds ``limit``."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, CODE_PAYLOAD_TOO_LARGE, f"request body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, CODE_PAYLOAD_TOO_LARGE, f"request body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def fields_from_body(body: bytes, allowed: frozenset[str]) -> dict[str, Any]:
    """The fields of an optional JSON object body ({} when the body is empty)."""
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise ApiError(400, CODE_BAD_REQUEST, "the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, CODE_BAD_REQUEST, 'the request body must be a JSON object like {"wait": 30}')
    if set(data) - allowed:
        names = ", ".join(f'"{name}"' for name in sorted(allowed))
        raise ApiError(400, CODE_BAD_REQUEST, f"unknown field in the request body (allowed: {names})")
    return data


def merged(name: str, query_value: float | None, body: Mapping[str, Any]) -> Any:
    """One parameter given in the query or the body (both only if equal)."""
    body_value = body.get(name)
    if query_value is not None and body_value is not None and query_value != body_value:
        raise ApiError(400, CODE_BAD_REQUEST, f"give {name} in the query or in the body, not both")
    return query_value if query_value is not None else body_value


def checked(check: Callable[[Any], float], value: Any) -> float:
    """``check(value)``, its InvalidRequest turned into ApiError 400 ``bad_request``."""
    try:
        return check(value)
    except InvalidRequest as exc:
        raise ApiError(400, CODE_BAD_REQUEST, clean_message(str(exc))) from None
