"""Helpers of the event tests: a gateway app served by a real uvicorn in a thread, and events written per the contract.

httpx's ASGI transport waits for a whole response, so an endless Server-Sent
Events stream needs a real server; the app is built inside the server's own
event loop (its redis.asyncio clients belong to that loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
import uvicorn
from fastapi import FastAPI

from sandbox import free_port


@contextlib.contextmanager
def served(make_app: Callable[[], FastAPI]) -> Iterator[tuple[str, FastAPI]]:
    """``make_app()`` served on a free loopback port until the block ends; yields (base URL, app)."""
    port = free_port()
    made: dict[str, Any] = {}
    ready = threading.Event()

    def run() -> None:
        async def main() -> None:
            app = make_app()
            made["app"] = app
            config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on", ws="none")
            server = uvicorn.Server(config)
            made["server"] = server
            task = asyncio.ensure_future(server.serve())
            while not server.started and not task.done():
                await asyncio.sleep(0.01)
            ready.set()
            await task

        asyncio.run(main())

    thread = threading.Thread(target=run, name=f"gateway-{port}", daemon=True)
    thread.start()
    if not ready.wait(20):
        raise RuntimeError("the test gateway did not start within 20 s")
    try:
        yield f"http://127.0.0.1:{port}", made["app"]
    finally:
        made["server"].should_exit = True
        thread.join(20)


def write_event(client: redis.Redis, key: str, kind: str, **fields: Any) -> str:
    """XADD one event as the pool worker does (docs: the event stream contract); its id."""
    millis = time.time()
    at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(millis)) + f".{int(millis * 1000) % 1000:03d}Z"
    event = {"at": at, "type": kind, "project_id": None, "instance_id": None, "reason": None, **fields}
    entry = client.xadd(key, {"event": json.dumps(event)}, maxlen=10_000, approximate=True)
    return entry.decode() if isinstance(entry, bytes) else str(entry)
