"""``GET /ui``: the pool dashboard, plain HTML/CSS/JS from the package (no build step, no CDN).

A browser cannot send a bearer header when it loads a page, so the dashboard
has its own session: the login form (served to GET /ui without credentials)
POSTs the token to ``/ui/session``, which checks it like any bearer token and
answers with a session cookie: random, ``HttpOnly`` (no script reads it),
``SameSite=Strict`` (no other site's page sends it), ``Secure`` behind HTTPS,
one hour long. Redis keeps only its SHA-256 and the token's name
(``warmpool:ui_session:*``), so revoking the token ends its sessions too. A
session may only read (authorize() refuses it anything above ``read``): the
dashboard can never assign or release, whatever a forged request tries.

The page polls ``GET /ui/data`` (the status, its scope applied, and the counts
history the gateway kept) and follows ``GET /v1/events`` with EventSource.
The history (idle / assigned / pending / waiting, one sample per SAMPLE_S, one
hour) is kept in this gateway process from the status reads of its dashboards.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
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
    Principal,
    authorize,
    principal_of,
    redact_status,
    session_cookie,
)
from producer.gateway.errors import ApiError
from producer.gateway.parsing import read_body
from producer.gateway.service import Gateway
from producer.tokens import Right
from tasks.state.keys import UI_SESSION_TTL_S

SAMPLE_S = 5.0
HISTORY_S = 3_600.0
STATIC = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def asset(name: str) -> str:
    """A file of producer/gateway/static (package data)."""
    return resources.files("producer.gateway").joinpath("static", name).read_text(encoding="utf-8")


class CountsHistory:
    """Idle / assigned / pending / waiting over the last hour, one sample per ``sample_s`` at most."""

    def __init__(self, *, sample_s: float = SAMPLE_S, keep_s: float = HISTORY_S) -> None:
        self.sample_s = sample_s
        self.keep_s = keep_s
        self.samples: deque[dict[str, float]] = deque(maxlen=int(keep_s / sample_s) + 2)

    def record(self, status: dict[str, Any], *, now: float | None = None) -> None:
        """Add a sample of ``status`` unless the last one is younger than ``sample_s``."""
        now = time.time() if now is None else now
        if self.samples and now - self.samples[-1]["t"] < self.sample_s:
            return
        counts = status.get("counts") or {}
        self.samples.append(
            {
                "t": now,
                "idle": counts.get("idle", 0),
                "assigned": counts.get("assigned", 0),
                "pending": counts.get("pending", 0),
                "waiting": len(status.get("waiting") or []),
            }
        )

    def last_hour(self, *, now: float | None = None) -> list[dict[str, float]]:
        """The samples of the last ``keep_s``, oldest first."""
        now = time.time() if now is None else now
        return [s for s in self.samples if now - s["t"] <= self.keep_s]


def _page(name: str, *, status: int = 200, message: str = "") -> HTMLResponse:
    html = asset(name).replace("{{message}}", message)
    return HTMLResponse(html, status_code=status, headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store"})


def _secure(request: Request) -> bool:
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "") == "https"


def add_ui_routes(app: FastAPI, gw: Gateway, access: Access) -> None:
    """``/ui`` (the page or its login form), ``/ui/session``, ``/ui/logout``, ``/ui/data``, ``/ui/static/*``."""
    history = CountsHistory()

    @app.get("/ui", include_in_schema=False)
    async def dashboard(request: Request) -> Response:
        who = principal_of(request)
        if who == NOBODY:
            return _page("login.html", status=401)
        authorize(request, pool=gw.pool_name, right=Right.READ)
        return _page("dashboard.html")

    @app.post("/ui/session", include_in_schema=False)
    async def open_session(request: Request) -> Response:
        form = parse_qs((await read_body(request)).decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0].strip()
        who = await access.from_bearer(token.encode()) if token else None
        if who is None:
            return _page("login.html", status=401, message="That token is not valid.")
        if not (who.scope.allows_pool(gw.pool_name) and who.scope.right >= Right.READ):
            return _page("login.html", status=403, message="That token may not read this pool.")
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
        who: Principal = authorize(request, pool=gw.pool_name, right=Right.READ)
        status = await gw.status()
        history.record(status)
        return JSONResponse(
            {
                "pool": gw.pool_name,
                "who": "" if who == ANONYMOUS else who.name,
                "status": redact_status(status, who.scope),
                "history": history.last_hour(),
                "history_window_s": HISTORY_S,
            },
            headers={"Cache-Control": "no-store"},
        )

    @app.get("/ui/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        kind = STATIC.get(name)
        if kind is None:
            raise ApiError(404, "not_found", "not found")
        return Response(asset(name), media_type=kind, headers={"Cache-Control": "no-cache"})
