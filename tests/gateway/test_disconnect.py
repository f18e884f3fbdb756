"""A caller that disconnects while its assign is pending: the gateway withdraws that very assign."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from producer.gateway import create_app
from tests.gateway.gwfakes import FakePool

pytestmark = pytest.mark.timeout(30)


def scope_of(method: str, path: str, query: bytes = b"") -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query,
        "headers": [(b"host", b"gateway.test")],
        "client": ("127.0.0.1", 50000),
        "server": ("gateway.test", 80),
    }


def run(app: Any, scope: dict[str, Any], *, leave_after_s: float | None) -> tuple[int, dict[str, Any]]:
    """Drive the app like a server whose client leaves ``leave_after_s`` after sending (None: stays)."""
    sent: list[dict[str, Any]] = []

    async def go() -> None:
        answered = asyncio.Event()
        requested = False

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            if leave_after_s is None:
                await answered.wait()
            else:
                await asyncio.sleep(leave_after_s)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                answered.set()

        async with app.router.lifespan_context(app):
            await app(scope, receive, send)

    asyncio.run(go())
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body)


@pytest.mark.parametrize(
    ("method", "path", "query"),
    [("POST", "/v1/projects/gone/machine", b"wait=20"), ("GET", "/gone", b"")],
)
def test_a_caller_who_leaves_while_waiting_has_its_assign_withdrawn(method: str, path: str, query: bytes) -> None:
    # given an assign that takes long (the caller waits for a machine)
    pool = FakePool()
    pool.answer_after_s = 5.0
    app = create_app(pool)
    # when the caller disconnects after 0.2 s
    status, body = run(app, scope_of(method, path, query), leave_after_s=0.2)
    # expect the very assign it started withdrawn, well before the assign would have answered
    (request_id,) = pool.request_ids
    assert request_id and ("withdraw", "gone", request_id) in pool.calls
    # and the withdraw told the assign's wait, so it outlives that assign in the queue
    assert pool.withdraw_waits == [20.0 if method == "POST" else 0.0]
    assert status == 499 and body["code"] == "client_closed_request"


def test_a_caller_who_stays_is_answered_and_nothing_is_withdrawn() -> None:
    pool = FakePool()
    pool.answer_after_s = 0.2
    status, body = run(create_app(pool), scope_of("POST", "/v1/projects/p1/machine", b"wait=20"), leave_after_s=None)
    assert status == 200 and body["status"] == "assigned"
    assert [c for c in pool.calls if c[0] == "withdraw"] == []


def test_a_failed_withdraw_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    pool = FakePool()
    pool.answer_after_s = 5.0

    async def broken(project_id: str, *, request_id: str, wait: float = 0.0) -> dict[str, Any]:
        raise ConnectionError("broker down")

    pool.withdraw_result = broken  # type: ignore[method-assign]
    with caplog.at_level("ERROR", logger="warmpool.gateway"):
        status, _ = run(create_app(pool), scope_of("POST", "/v1/projects/gone/machine", b"wait=20"), leave_after_s=0.1)
    assert status == 499
    assert any(r.getMessage() == "withdraw failed" for r in caplog.records)
