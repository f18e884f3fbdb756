"""Helpers of the gateway tests: an in-memory pool client and ways to call the ASGI app."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import httpx
from fastapi import FastAPI

from tasks.config import Settings
from tasks.errors import NoCapacity
from tasks.pools import Deployment, PoolSettings

TOKEN = "s3cret-token"


def fake_deployment(names: list[str]) -> Deployment:
    """A configuration of these pools (groups ``<name>-asg``), the first the default."""
    base = Settings()
    pools = tuple(
        PoolSettings(n, replace(base, asg_name=f"{n}-asg"), namespace=f"{n}-asg", job_group=f"{n}-asg") for n in names
    )
    return Deployment(base, pools, names[0], source="test")


class FakePool:
    """An in-memory GatewayClient with the result shapes of producer.aio.AsyncPoolClient."""

    def __init__(
        self, machines: Iterable[str] = ("i-0001", "i-0002"), *, max_size: int = 5, pools: Iterable[str] = ("default",)
    ) -> None:
        names = list(pools)
        self.deployment = fake_deployment(names)
        self.pool = names[0]
        self.pools_called: list[str | None] = []  # the pool of every call, in order
        self.idle = list(machines)
        self.held: dict[str, str] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.max_size = max_size
        self.capped = False
        self.fail: BaseException | None = None  # raised by every call when set
        self.raise_no_capacity = False  # NoCapacity as an exception instead of a result
        self.closed = False
        self.leases: dict[str, float | None] = {}
        self.request_ids: list[str | None] = []  # of every assign, in order
        self.withdraw_waits: list[float] = []
        self.answer_after_s: float | None = None  # assigns take this long (a caller waiting for a machine)

    def pool_names(self) -> tuple[str, ...]:
        return self.deployment.names()

    def _maybe_fail(self) -> None:
        if self.fail is not None:
            raise self.fail

    async def assign_result(
        self,
        project_id: str,
        *,
        wait: float,
        lease: float | None = None,
        request_id: str | None = None,
        pool: str | None = None,
    ) -> dict[str, Any]:
        self.pools_called.append(pool)
        self.calls.append(("assign", project_id, wait))
        self.request_ids.append(request_id)
        self._maybe_fail()
        if self.answer_after_s is not None:
            await asyncio.sleep(self.answer_after_s)
        if project_id not in self.held:
            if not self.idle:
                if self.raise_no_capacity:
                    raise NoCapacity("none idle", capped=self.capped, max_size=self.max_size)
                return {
                    "status": "failed",
                    "code": "no_capacity",
                    "message": "no idle machine in heavrdevs-asg (scale-up requested)",
                    "project_id": project_id,
                    "capped": self.capped,
                    "max_size": self.max_size,
                }
            self.held[project_id] = self.idle.pop(0)
        instance = self.held[project_id]
        return {
            "status": "assigned",
            "project_id": project_id,
            "instance_id": instance,
            "ip": "203.0.113." + str(int(instance[-4:], 16) % 250),
            "private_ip": "10.0.0.9",
            "assigned_at": "2026-01-01T00:00:00.000Z",
        }

    async def touch_result(
        self, project_id: str, *, lease: float | None = None, pool: str | None = None
    ) -> dict[str, Any]:
        self.pools_called.append(pool)
        self.calls.append(("touch", project_id, lease))
        self._maybe_fail()
        if project_id not in self.held:
            return {"status": "not_assigned", "project_id": project_id}
        if lease is not None:
            self.leases[project_id] = lease
        if not self.leases.get(project_id):
            return {"status": "no_lease", "project_id": project_id, "instance_id": self.held[project_id]}
        return {
            "status": "touched",
            "project_id": project_id,
            "instance_id": self.held[project_id],
            "lease_expires_at": "2026-01-01T01:00:00.000Z",
        }

    async def withdraw_result(
        self, project_id: str, *, request_id: str, wait: float = 0.0, pool: str | None = None
    ) -> dict[str, Any]:
        self.pools_called.append(pool)
        self.calls.append(("withdraw", project_id, request_id))
        self.withdraw_waits.append(wait)
        self._maybe_fail()
        return {"status": "withdrawn", "project_id": project_id, "request_id": request_id, "released": None}

    async def release_result(self, project_id: str, *, pool: str | None = None) -> dict[str, Any]:
        self.pools_called.append(pool)
        self.calls.append(("release", project_id))
        self._maybe_fail()
        instance = self.held.pop(project_id, None)
        if instance is None:
            return {"status": "not_assigned", "project_id": project_id}
        return {"status": "released", "project_id": project_id, "instance_id": instance}

    async def status(self, *, pool: str | None = None) -> dict[str, Any]:
        self.pools_called.append(pool)
        self.calls.append(("status",))
        self._maybe_fail()
        return {
            "asg_name": "heavrdevs-asg",
            "idle_target": 2,
            "address": "public",
            "counts": {
                "pending": 1,
                "idle": len(self.idle),
                "assigned": len(self.held),
                "releasing": 0,
                "quarantined": 0,
                "foreign": 0,
            },
            "group": {
                "min_size": 0,
                "max_size": self.max_size,
                "desired_capacity": 3,
                "wanted": 4,
                "capped": self.capped,
            },
            "refreshed_at": "2026-01-01T00:00:00.000Z",
            "refresh_age_s": 2.5,
            "refresh_error": None,
            "lost_total": 1,
            "lost": [],
            "waiting": [{"project_id": "w1", "since": "2026-01-01T00:00:00Z", "deadline": "2026-01-01T00:00:30Z"}],
            "machines": [],
        }

    async def operate(self, call: Any, *, pool: str | None = None) -> dict[str, Any]:
        self.pools_called.append(pool)
        self.calls.append(("operate", call.task, call.args, dict(call.kwargs)))
        self._maybe_fail()
        return {"status": "ok", "command": call.task, "pool": pool}

    async def aclose(self) -> None:
        self.closed = True

    @property
    def assigns(self) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == "assign"]

    @property
    def pool_calls(self) -> list[tuple[Any, ...]]:
        """Calls that would enqueue an assign or release job."""
        return [c for c in self.calls if c[0] in ("assign", "release")]


def call(app: FastAPI, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One request through httpx's ASGI transport, inside the app's lifespan (app exceptions are re-raised).

    The lifespan closes what the app opened on this event loop (the Flower
    proxy's connections), so nothing is left for the garbage collector.
    """

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
                return await client.request(method, url, **kwargs)

    return asyncio.run(go())


def raw_get(app: FastAPI, path: str, *, headers: list[tuple[bytes, bytes]] | None = None) -> tuple[int, bytes]:
    """GET with an arbitrary already-decoded ``path``, straight into the ASGI app (no URL normalization)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8", "surrogateescape"),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"gateway.test"), *(headers or [])],
        "client": ("127.0.0.1", 50000),
        "server": ("gateway.test", 80),
    }
    status = 0
    body = b""
    requested = False
    answered: asyncio.Event | None = None

    async def receive() -> dict[str, Any]:
        # Like a server: the (empty) body once, then nothing until the caller leaves,
        # which it does once it has the whole answer.
        nonlocal requested, answered
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        answered = answered or asyncio.Event()
        await answered.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, body, answered
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            body += message.get("body", b"")
            if not message.get("more_body", False):
                answered = answered or asyncio.Event()
                answered.set()

    asyncio.run(app(scope, receive, send))
    return status, body


class LeasingPool(FakePool):
    """FakePool that also records each assign's lease in its call log."""

    async def assign_result(
        self,
        project_id: str,
        *,
        wait: float,
        lease: float | None = None,
        request_id: str | None = None,
        pool: str | None = None,
    ) -> dict[str, Any]:
        result = await super().assign_result(project_id, wait=wait, request_id=request_id, pool=pool)
        self.calls[-1] = ("assign", project_id, wait, lease)
        if result["status"] == "assigned":
            self.leases[project_id] = lease
        return result
