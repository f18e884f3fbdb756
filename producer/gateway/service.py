"""The state behind the routes: Gateway (assign/touch/release/status, logged and counted) and the health probe."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from producer.client import raise_for_failure
from producer.gateway.asgi import Receive
from producer.gateway.clients import GatewayClient
from producer.gateway.constants import CODE_CALLER_GONE
from producer.gateway.errors import ApiError, error_for, outcome_of
from producer.gateway.flower_proxy import FlowerProxy
from producer.gateway.history import CountsHistory
from producer.gateway.logs import log
from producer.gateway.metrics import GatewayMetrics
from tasks.contract import (
    CODE_NO_CAPACITY,
    STATUS_ASSIGNED,
    STATUS_NO_LEASE,
    STATUS_NOT_ASSIGNED,
    STATUS_RELEASED,
    STATUS_TOUCHED,
    STATUS_WITHDRAWN,
)
from tasks.errors import JobFailed, NoCapacity, WarmpoolError


class HealthProbe:
    """Asks the pool for a status within ``timeout_s``; answers are cached ``cache_s``.

    /healthz is unauthenticated, so the cache keeps a flood of probes from
    becoming a flood of pool jobs.
    """

    def __init__(self, client: GatewayClient, *, timeout_s: float, cache_s: float) -> None:
        self.client = client
        self.timeout_s = timeout_s
        self.cache_s = cache_s
        self._lock = asyncio.Lock()
        self._at = -math.inf
        self._ok = False

    async def check(self) -> bool:
        """Whether a pool worker answered a status job within ``timeout_s`` (cached ``cache_s``)."""
        async with self._lock:
            if time.monotonic() - self._at < self.cache_s:
                return self._ok
            self._ok = await status_within(self.client, self.timeout_s) is not None
            self._at = time.monotonic()
            return self._ok


async def status_within(client: GatewayClient, timeout_s: float) -> dict[str, Any] | None:
    """The pool status, or None when no worker answered within ``timeout_s``."""
    try:
        return await asyncio.wait_for(client.status(), timeout_s)
    except (TimeoutError, WarmpoolError):
        return None
    except Exception:
        log.exception("status job failed")
        return None


Gone = Callable[[], Awaitable[None]]


def disconnect_of(receive: Receive) -> Gone:
    """A wait that returns when the HTTP caller of ``receive`` has gone (ASGI ``http.disconnect``).

    Call it once the request body has been read (or for a request without one):
    the server then delivers nothing but the disconnect.
    """

    async def gone() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    return gone


@dataclass
class Gateway:
    """The state behind the routes (the pool client, metrics, Flower proxy)."""

    client: GatewayClient
    metrics: GatewayMetrics
    health: HealthProbe
    flower: FlowerProxy | None
    retry_after_s: int
    pool_name: str = ""  # the pool of the routes without one in their path (token scopes name it)
    history: CountsHistory = field(default_factory=CountsHistory)  # the dashboard's chart

    async def assign(
        self, project_id: str, wait: float, lease: float | None = None, *, gone: Gone | None = None
    ) -> dict[str, Any]:
        """The assigned result; ApiError for every failure (no capacity included).

        ``gone`` (disconnect_of(request.receive)) races the assign: when the
        caller leaves first, the assign is withdrawn (its place in the queue, or
        the machine it was just handed, given back) and ApiError 499 is raised.
        """
        started = time.perf_counter()
        outcome = "error"
        instance_id = None
        try:
            request_id = str(uuid.uuid4())
            call = self.client.assign_result(project_id, wait=wait, lease=lease, request_id=request_id)
            result = await self._unless_gone(call, gone, project_id=project_id, request_id=request_id, wait=wait)
            if isinstance(result, Mapping) and result.get("status") == STATUS_ASSIGNED:
                outcome, instance_id = STATUS_ASSIGNED, result.get("instance_id")
                return dict(result)
            if isinstance(result, Mapping) and result.get("code") == CODE_NO_CAPACITY:
                raise NoCapacity(
                    str(result.get("message", "")),
                    capped=bool(result.get("capped")),
                    max_size=result.get("max_size"),
                )
            raise_for_failure(result)
            raise JobFailed(f"unexpected assign result {result!r:.200}")
        except ApiError as exc:
            outcome = exc.code
            raise
        except Exception as exc:
            outcome = outcome_of(exc)
            if not isinstance(exc, WarmpoolError) or isinstance(exc, JobFailed):
                log.error("assign failed", extra={"project_id": project_id, "error": repr(exc)[:500]})
            raise error_for(exc, retry_after_s=self.retry_after_s) from None
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.observe_assign(outcome, elapsed)
            log.info(
                "assign",
                extra={
                    "project_id": project_id,
                    "instance_id": instance_id,
                    "outcome": outcome,
                    "duration_ms": round(elapsed * 1000, 3),
                },
            )

    async def _unless_gone(
        self,
        call: Coroutine[Any, Any, dict[str, Any]],
        gone: Gone | None,
        *,
        project_id: str,
        request_id: str,
        wait: float,
    ) -> dict[str, Any]:
        """The result of ``call``, unless ``gone`` returns first: then the assign is withdrawn."""
        if gone is None:
            return await call
        assign = asyncio.ensure_future(call)
        left = asyncio.ensure_future(gone())
        try:
            await asyncio.wait({assign, left}, return_when=asyncio.FIRST_COMPLETED)
            if assign.done() and not left.done():
                # A disconnect already seen by the server wakes ``left`` only on
                # its next turn: give it that turn before answering nobody.
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            assign.cancel()
            raise
        finally:
            caller_left = left.done() and not left.cancelled() and left.exception() is None
            left.cancel()
        if not caller_left:
            return await assign
        # The caller left: whether the assign still waits, is queued, or has just
        # been answered, withdraw it; the pool worker gives back only what this
        # request got.
        assign.cancel()
        await asyncio.gather(assign, return_exceptions=True)
        await self._withdraw(project_id, request_id, wait=wait)
        raise ApiError(499, CODE_CALLER_GONE, "the caller disconnected before the answer: the assign was withdrawn")

    async def _withdraw(self, project_id: str, request_id: str, *, wait: float) -> None:
        try:
            # As long-lived in the queue as the assign it withdraws: expiring first
            # would leave that assign to hand a machine to nobody.
            result = await self.client.withdraw_result(project_id, request_id=request_id, wait=wait)
            if result.get("status") != STATUS_WITHDRAWN:
                raise JobFailed(f"unexpected withdraw result {result!r:.200}")
        except Exception as exc:
            # Nobody to answer: say so loudly, the machine may stay assigned to a caller who left.
            log.error(
                "withdraw failed", extra={"project_id": project_id, "request_id": request_id, "error": repr(exc)[:500]}
            )
            return
        log.info(
            "assign withdrawn: the caller disconnected",
            extra={
                "project_id": project_id,
                "request_id": request_id,
                "was_waiting": result.get("waiting"),
                "released": result.get("released"),
            },
        )

    async def release(self, project_id: str) -> dict[str, Any]:
        """The release result (released or not_assigned); ApiError for every failure."""
        started = time.perf_counter()
        outcome = "error"
        try:
            result = await self.client.release_result(project_id)
            status = result.get("status") if isinstance(result, Mapping) else None
            if status not in (STATUS_RELEASED, STATUS_NOT_ASSIGNED):
                raise JobFailed(f"unexpected release result {result!r:.200}")
            outcome = str(status)
            return dict(result)
        except Exception as exc:
            outcome = outcome_of(exc)
            if not isinstance(exc, WarmpoolError) or isinstance(exc, JobFailed):
                log.error("release failed", extra={"project_id": project_id, "error": repr(exc)[:500]})
            raise error_for(exc, retry_after_s=self.retry_after_s) from None
        finally:
            self.metrics.observe_release(outcome)
            log.info(
                "release",
                extra={
                    "project_id": project_id,
                    "outcome": outcome,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                },
            )

    async def touch(self, project_id: str, lease: float | None) -> dict[str, Any]:
        """The touch result (touched, no_lease or not_assigned); ApiError for every failure."""
        outcome = "error"
        try:
            result = await self.client.touch_result(project_id, lease=lease)
            status = result.get("status") if isinstance(result, Mapping) else None
            if status not in (STATUS_TOUCHED, STATUS_NO_LEASE, STATUS_NOT_ASSIGNED):
                raise JobFailed(f"unexpected touch result {result!r:.200}")
            outcome = str(status)
            return dict(result)
        except Exception as exc:
            outcome = outcome_of(exc)
            if not isinstance(exc, WarmpoolError) or isinstance(exc, JobFailed):
                log.error("touch failed", extra={"project_id": project_id, "error": repr(exc)[:500]})
            raise error_for(exc, retry_after_s=self.retry_after_s) from None
        finally:
            self.metrics.observe_touch(outcome)

    async def status(self) -> dict[str, Any]:
        """The pool snapshot (a sample of the counts history); ApiError for every failure."""
        try:
            status = await self.client.status()
            self.history.record(status)
            return status
        except Exception as exc:
            if not isinstance(exc, WarmpoolError):
                log.exception("status failed")
            raise error_for(exc, retry_after_s=self.retry_after_s) from None
