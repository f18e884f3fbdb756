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
        self._answered: dict[str, bool] = {}

    async def check(self) -> dict[str, bool]:
        """Pool -> whether its worker answered a status job within ``timeout_s`` (cached ``cache_s``)."""
        async with self._lock:
            if time.monotonic() - self._at < self.cache_s:
                return self._answered
            statuses = await statuses_within(self.client, self.timeout_s)
            self._answered = {pool: status is not None for pool, status in statuses.items()}
            self._at = time.monotonic()
            return self._answered


async def status_within(client: GatewayClient, timeout_s: float, *, pool: str | None = None) -> dict[str, Any] | None:
    """The pool's status, or None when its worker did not answer within ``timeout_s``."""
    try:
        return await asyncio.wait_for(client.status(pool=pool), timeout_s)
    except (TimeoutError, WarmpoolError):
        return None
    except Exception:
        log.exception("status job failed", extra={"pool": pool})
        return None


async def statuses_within(client: GatewayClient, timeout_s: float) -> dict[str, dict[str, Any] | None]:
    """Every pool's status at once (None for a pool whose worker did not answer within ``timeout_s``)."""
    names = list(client.pool_names())
    found = await asyncio.gather(*(status_within(client, timeout_s, pool=name) for name in names))
    return dict(zip(names, found, strict=True))


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
    histories: dict[str, CountsHistory] = field(default_factory=dict)  # pool -> the dashboard's chart

    @property
    def pool_name(self) -> str:
        """The default pool: that of the routes without a pool in their path (token scopes name it)."""
        return self.client.pool

    def history_of(self, pool: str | None) -> CountsHistory:
        """The counts history of ``pool`` (None: the default pool)."""
        return self.histories.setdefault(pool or self.pool_name, CountsHistory())

    def check_pool(self, pool: str | None) -> str:
        """The pool a request names (None: the default pool); ApiError 400 malformed, 404 unknown_pool."""
        try:
            return self.client.deployment.pool(pool).name
        except WarmpoolError as exc:
            raise error_for(exc, retry_after_s=self.retry_after_s) from None

    async def assign(
        self,
        project_id: str,
        wait: float,
        lease: float | None = None,
        *,
        gone: Gone | None = None,
        pool: str | None = None,
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
            call = self.client.assign_result(project_id, wait=wait, lease=lease, request_id=request_id, pool=pool)
            result = await self._unless_gone(
                call, gone, project_id=project_id, request_id=request_id, wait=wait, pool=pool
            )
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
            self.metrics.observe_assign(outcome, elapsed, pool=pool or self.client.pool)
            log.info(
                "assign",
                extra={
                    "pool": pool or self.client.pool,
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
        pool: str | None,
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
        await self._withdraw(project_id, request_id, wait=wait, pool=pool)
        raise ApiError(499, CODE_CALLER_GONE, "the caller disconnected before the answer: the assign was withdrawn")

    async def _withdraw(self, project_id: str, request_id: str, *, wait: float, pool: str | None) -> None:
        try:
            # As long-lived in the queue as the assign it withdraws: expiring first
            # would leave that assign to hand a machine to nobody.
            result = await self.client.withdraw_result(project_id, request_id=request_id, wait=wait, pool=pool)
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

    async def release(self, project_id: str, *, pool: str | None = None) -> dict[str, Any]:
        """The release result (released or not_assigned); ApiError for every failure."""
        started = time.perf_counter()
        outcome = "error"
        try:
            result = await self.client.release_result(project_id, pool=pool)
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
            self.metrics.observe_release(outcome, pool=pool or self.client.pool)
            log.info(
                "release",
                extra={
                    "project_id": project_id,
                    "outcome": outcome,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                },
            )

    async def touch(self, project_id: str, lease: float | None, *, pool: str | None = None) -> dict[str, Any]:
        """The touch result (touched, no_lease or not_assigned); ApiError for every failure."""
        outcome = "error"
        try:
            result = await self.client.touch_result(project_id, lease=lease, pool=pool)
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
            self.metrics.observe_touch(outcome, pool=pool or self.client.pool)

    async def status(self, *, pool: str | None = None) -> dict[str, Any]:
        """The pool snapshot (a sample of that pool's counts history); ApiError for every failure."""
        try:
            status = await self.client.status(pool=pool)
            self.history_of(pool).record(status)
            return status
        except Exception as exc:
            if not isinstance(exc, WarmpoolError):
                log.exception("status failed")
            raise error_for(exc, retry_after_s=self.retry_after_s) from None
