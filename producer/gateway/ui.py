"""``GET /ui``: the pool dashboard, plain HTML/CSS/JS from the package (no build step, no CDN).

A browser cannot send a bearer header when it loads a page, so the dashboard
has its own session: the login form (served to GET /ui without credentials)
POSTs the token to ``/ui/session``, which checks it like any bearer token and
answers with a session cookie: random, ``HttpOnly`` (no script reads it),
``SameSite=Strict`` (no other site's page sends it), ``Secure`` behind HTTPS,
one hour long. Redis keeps only its SHA-256 and the token's SHA-256
(``warmpool:ui_session:*``), so revoking the token ends its sessions too. A
session may only read (authorize() refuses it anything above ``read``): the
dashboard can never assign or release, whatever a forged request tries.

The page polls ``GET /ui/data`` (the status, its scope applied, and the counts
history the gateway kept) and follows ``GET /v1/events`` with EventSource.
The history (idle / assigned / pending / waiting over an hour) is the
gateway's own (producer/gateway/history.py), sampled from every status it reads.
"""

from __future__ import annotations

import asyncio
import secrets
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from producer.gateway.access import (
    ANONYMOUS,
    NOBODY,
    SESSION_COOKIE,
    Access,
    authorize,
    principal_of,
    redact_status,
    session_cookie,
)
from producer.gateway.errors import ApiError
from producer.gateway.history import HISTORY_S
from producer.gateway.parsing import read_body
from producer.gateway.service import Gateway
from producer.tokens import Right
from producer.tokens import Scope as TokenScope
from tasks.state.keys import UI_SESSION_TTL_S

STATIC = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def asset(name: str) -> str:
    """A file of producer/gateway/static (package data)."""
    return resources.files("producer.gateway").joinpath("static", name).read_text(encoding="utf-8")


def _page(name: str, *, status: int = 200, message: str = "") -> HTMLResponse:
    html = asset(name).replace("{{message}}", message)
    return HTMLResponse(html, status_code=status, headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store"})


def _secure(request: Request) -> bool:
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "") == "https"


def readable(request: Request, gw: Gateway) -> list[str]:
    """The pools the caller may read, default first; ApiError 403 when there is none."""
    pools = [gw.pool_name, *(n for n in gw.client.pool_names() if n != gw.pool_name)]
    who = principal_of(request)
    names = [n for n in pools if who.scope.allows_pool(n)]
    if not names:
        authorize(request, pool=gw.pool_name, right=Right.READ)  # raises, naming the token's scope
    for name in names:
        authorize(request, pool=name, right=Right.READ)
    return names


async def pool_view(gw: Gateway, name: str, scope: TokenScope) -> dict[str, Any]:
    """One pool on the dashboard: its status (scope applied) and history; a pool that does not answer says so."""
    entry: dict[str, Any] = {"pool": name}
    try:
        entry["status"] = redact_status(await gw.status(pool=name), scope)  # also a sample of the history
    except ApiError as exc:
        entry.update(status=None, error=exc.message)
    entry["history"] = gw.history_of(name).last_hour()
    return entry


def add_ui_routes(app: FastAPI, gw: Gateway, access: Access) -> None:
    """``/ui`` (the page or its login form), ``/ui/session``, ``/ui/logout``, ``/ui/data``, ``/ui/static/*``."""

    @app.get("/ui", include_in_schema=False)
    async def dashboard(request: Request) -> Response:
        who = principal_of(request)
        if who == NOBODY:
            return _page("login.html", status=401)
        readable(request, gw)  # 403 for a token that may read no pool
        return _page("dashboard.html")

    @app.post("/ui/session", include_in_schema=False)
    async def open_session(request: Request) -> Response:
        form = parse_qs((await read_body(request)).decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0].strip()
        who = await access.from_bearer(token.encode()) if token else None
        if who is None:
            return _page("login.html", status=401, message="That token is not valid.")
        if not any(who.scope.allows_pool(name) for name in gw.client.pool_names()):
            return _page("login.html", status=403, message="That token may not read any pool of this gateway.")
        session = secrets.token_urlsafe(32)
        await access.open_session(who, session)
        answer = RedirectResponse("/ui", status_code=303)
        answer.set_cookie(
            SESSION_COOKIE,
            session,
            max_age=UI_SESSION_TTL_S,
            path="/",
            httponly=True,
            samesite="strict",
            secure=_secure(request),
        )
        return answer

    @app.post("/ui/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        await access.close_session(session_cookie(dict(request.headers)))
        answer = RedirectResponse("/ui", status_code=303)
        answer.delete_cookie(SESSION_COOKIE, path="/")
        return answer

    @app.get("/ui/data", include_in_schema=False)
    async def data(request: Request) -> JSONResponse:
        names = readable(request, gw)
        who = principal_of(request)
        pools = await asyncio.gather(*(pool_view(gw, name, who.scope) for name in names))
        body = {"who": "" if who == ANONYMOUS else who.name, "history_window_s": HISTORY_S, "pools": pools}
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    @app.get("/ui/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        kind = STATIC.get(name)
        if kind is None:
            raise ApiError(404, "not_found", "not found")
        return Response(asset(name), media_type=kind, headers={"Cache-Control": "no-cache"})
