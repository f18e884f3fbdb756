"""The gateway as a real process of the test stack (``python -m producer.gateway``)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import httpx

from sandbox import free_port
from tests.integration.conftest import Stack, wait_for


@contextlib.contextmanager
def running_gateway(stack: Stack, *, name: str, token: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """A gateway named ``name`` in front of ``stack`` on a free loopback port; yields its URL once healthy."""
    port = free_port()
    full_env = {**stack.env, "WARMPOOL_API_TOKEN": token, "WARMPOOL_GATEWAY_PORT": str(port), **(env or {})}
    argv = [sys.executable, "-m", "producer.gateway", "--host", "127.0.0.1"]
    stack.procs.spawn(name, argv, env=full_env, log_path=stack.logs / f"{name}.log")
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, timeout_s=30, what=f"the gateway {name} to answer /healthz")
        yield url
    finally:
        stack.procs.stop(name)
