"""Bearer-token authentication of every route but the open ones (ASGI middleware)."""

from __future__ import annotations

import hmac

from producer.gateway.asgi import ASGIApp, Receive, Scope, Send, send_json
from producer.gateway.constants import CODE_UNAUTHORIZED, FLOWER_PREFIX, OPEN_PATHS


class BearerAuth:
    """Requires ``Authorization: Bearer <token>`` (constant-time compare) on protected paths."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token.encode() if token else None

    @staticmethod
    def is_open(path: str) -> bool:
        """Whether ``path`` needs no token (/healthz, the docs; /flower checks its own basic auth)."""
        return path in OPEN_PATHS or path == FLOWER_PREFIX or path.startswith(FLOWER_PREFIX + "/")

    def authorized(self, scope: Scope) -> bool | None:
        """True: valid token; None: no credentials given; False: wrong credentials."""
        assert self.token is not None
        values = [v for k, v in scope.get("headers", []) if k.lower() == b"authorization"]
        if not values:
            return None
        scheme, _, credential = bytes(values[0]).partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(credential.strip(), self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.token is None or self.is_open(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        ok = self.authorized(scope)
        if ok:
            await self.app(scope, receive, send)
            return
        challenge = 'Bearer realm="warmpool"' + ("" if ok is None else ', error="invalid_token"')
        message = "a bearer token is required" if ok is None else "the bearer token is not valid"
        await send_json(
            send,
            401,
            {"code": CODE_UNAUTHORIZED, "message": message},
            [("WWW-Authenticate", challenge)],
        )
