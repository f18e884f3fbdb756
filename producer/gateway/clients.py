"""The pool client the gateway talks to: its protocol and the default implementation."""

from __future__ import annotations

from typing import Any, Protocol

from producer.aio import AsyncPoolClient


class GatewayClient(Protocol):
    """What the gateway needs from a pool client (producer.aio.AsyncPoolClient)."""

    async def assign_result(
        self, project_id: str, *, wait: float, lease: float | None = None, request_id: str | None = None
    ) -> dict[str, Any]: ...

    async def withdraw_result(self, project_id: str, *, request_id: str, wait: float = 0.0) -> dict[str, Any]: ...

    async def touch_result(self, project_id: str, *, lease: float | None = None) -> dict[str, Any]: ...

    async def release_result(self, project_id: str) -> dict[str, Any]: ...

    async def status(self) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


def default_client() -> GatewayClient:
    """producer.aio.AsyncPoolClient, configured from the environment."""
    return AsyncPoolClient()
