"""The pool client the gateway talks to: its protocol and the default implementation."""

from __future__ import annotations

from typing import Any, Protocol

from producer.aio import AsyncPoolClient
from producer.calls import Operator
from tasks.pools import Deployment


class GatewayClient(Protocol):
    """What the gateway needs from a pool client (producer.aio.AsyncPoolClient).

    ``pool`` (None: the client's default pool) names the pool of each call; the
    gateway checks the name against ``deployment`` before calling.
    """

    pool: str
    deployment: Deployment

    def pool_names(self) -> tuple[str, ...]: ...

    async def assign_result(
        self,
        project_id: str,
        *,
        wait: float,
        lease: float | None = None,
        request_id: str | None = None,
        pool: str | None = None,
    ) -> dict[str, Any]: ...

    async def withdraw_result(
        self, project_id: str, *, request_id: str, wait: float = 0.0, pool: str | None = None
    ) -> dict[str, Any]: ...

    async def touch_result(
        self, project_id: str, *, lease: float | None = None, pool: str | None = None
    ) -> dict[str, Any]: ...

    async def release_result(self, project_id: str, *, pool: str | None = None) -> dict[str, Any]: ...

    async def status(self, *, pool: str | None = None) -> dict[str, Any]: ...

    async def operate(self, call: Operator, *, pool: str | None = None) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


def default_client() -> GatewayClient:
    """producer.aio.AsyncPoolClient, configured from the environment."""
    return AsyncPoolClient()
