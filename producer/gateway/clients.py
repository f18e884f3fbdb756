"""The pool client the gateway talks to: its protocol and the default implementations."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol, runtime_checkable

from producer.client import PoolClient


class GatewayClient(Protocol):
    """What the gateway needs from a pool client (producer.aio.AsyncPoolClient)."""

    async def assign_result(self, project_id: str, *, wait: float) -> dict[str, Any]: ...

    async def release_result(self, project_id: str) -> dict[str, Any]: ...

    async def status(self) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class LeasingClient(Protocol):
    """A GatewayClient that also knows leases (producer.aio.AsyncPoolClient does)."""

    async def assign_result(self, project_id: str, *, wait: float, lease: float | None = None) -> dict[str, Any]: ...

    async def touch_result(self, project_id: str, *, lease: float | None = None) -> dict[str, Any]: ...


class ThreadedPoolClient:
    """The synchronous PoolClient run in worker threads (fallback without producer.aio)."""

    def __init__(self, client: PoolClient | None = None) -> None:
        self._client = client or PoolClient()

    async def assign_result(self, project_id: str, *, wait: float, lease: float | None = None) -> dict[str, Any]:
        """PoolClient.assign_result in a thread."""
        return await asyncio.to_thread(self._client.assign_result, project_id, wait=wait, lease=lease)

    async def touch_result(self, project_id: str, *, lease: float | None = None) -> dict[str, Any]:
        """PoolClient.touch_result in a thread."""
        return await asyncio.to_thread(self._client.touch_result, project_id, lease=lease)

    async def release_result(self, project_id: str) -> dict[str, Any]:
        """PoolClient.release_result in a thread."""
        return await asyncio.to_thread(self._client.release_result, project_id)

    async def status(self) -> dict[str, Any]:
        """PoolClient.status in a thread."""
        return await asyncio.to_thread(self._client.status)

    async def aclose(self) -> None:
        """Nothing to close: the sync client holds no connection of its own."""
        return None


def default_client() -> GatewayClient:
    """producer.aio.AsyncPoolClient, or the threaded sync client if it is missing."""
    try:
        from producer.aio import AsyncPoolClient
    except ImportError:  # pragma: no cover - only before producer.aio exists
        return ThreadedPoolClient()
    return AsyncPoolClient()
