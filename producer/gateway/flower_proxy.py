"""The ``/flower`` proxy: forwards to a Flower bound on loopback, behind HTTP basic auth."""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request
from fastapi.responses import Response

from producer.gateway.constants import (
    CODE_FLOWER_UNAVAILABLE,
    ENV_FLOWER_PASSWORD,
    ENV_FLOWER_URL,
    ENV_FLOWER_USER,
    HOP_BY_HOP,
)
from producer.gateway.errors import ApiError
from producer.gateway.logs import log
from tasks.config import Settings

if TYPE_CHECKING:
    import httpx


@dataclass
class FlowerProxy:
    """Forwards ``/flower/...`` to a Flower bound on loopback, behind basic auth."""

    url: str
    user: str
    password: str
    transport: httpx.AsyncBaseTransport | None = None
    timeout_s: float = 30.0
    _client: httpx.AsyncClient | None = field(default=None, init=False, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> FlowerProxy | None:
        """The proxy configured by WARMPOOL_FLOWER_URL/_USER/_PASSWORD, or None when off."""
        settings = Settings.from_env(env)  # *_FILE secrets included
        url = settings.flower_url
        if not url:
            return None
        user, password = settings.flower_user, settings.flower_password
        if not user or not password:
            log.warning(
                "%s is set but %s/%s are not: the /flower proxy stays off",
                ENV_FLOWER_URL,
                ENV_FLOWER_USER,
                ENV_FLOWER_PASSWORD,
            )
            return None
        return cls(url=url, user=user, password=password)

    def authorized(self, header: str | None) -> bool:
        """Constant-time check of an ``Authorization: Basic`` header."""
        if not header:
            return False
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user, sep, password = decoded.partition(b":")
        user_ok = hmac.compare_digest(user, self.user.encode())
        password_ok = hmac.compare_digest(password, self.password.encode())
        return bool(sep) and user_ok and password_ok

    @property
    def client(self) -> httpx.AsyncClient:
        """The upstream HTTP client, created on first use."""
        import httpx  # only the Flower proxy needs it

        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.url, transport=self.transport, timeout=self.timeout_s, follow_redirects=False
            )
        return self._client

    async def forward(self, request: Request) -> Response:
        """Send the request to Flower and answer with Flower's response (ApiError 502 if it is down)."""
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        query = request.scope.get("query_string") or b""
        target = raw_path.decode("latin-1") + (("?" + query.decode("latin-1")) if query else "")
        headers = [
            (k, v)
            for k, v in request.headers.items()
            if k.lower() not in HOP_BY_HOP and k.lower() not in ("content-length", "accept-encoding")
        ]
        body = await request.body()
        import httpx

        try:
            upstream = await self.client.request(request.method, target, headers=headers, content=body)
        except httpx.HTTPError:
            log.warning("flower proxy: upstream %s did not answer", self.url)
            raise ApiError(502, CODE_FLOWER_UNAVAILABLE, "Flower did not answer") from None
        response = Response(upstream.content, status_code=upstream.status_code)
        # multi_items keeps repeated headers (Set-Cookie) apart.
        for key, value in upstream.headers.multi_items():
            if key.lower() not in HOP_BY_HOP and key.lower() not in ("content-length", "content-encoding"):
                response.raw_headers.append((key.lower().encode("latin-1"), value.encode("latin-1")))
        return response

    async def aclose(self) -> None:
        """Close the upstream client, if one was opened."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None
