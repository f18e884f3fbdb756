"""Flower runs with authentication on every route, /metrics and /healthcheck included.

Stock Flower 2.2 answers /metrics and /healthcheck without credentials even
with basic auth on; producer.flower_app closes that. These tests start the real
Flower (a subprocess, in-memory broker) and scrape it directly and through the
gateway's /flower proxy.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from producer import flower_app
from producer.gateway import FlowerProxy, create_app
from tests.gateway.gwfakes import FakePool, call

USER, PASSWORD = "admin", "correct horse, battery:staple"
BASIC = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
WRONG = {"Authorization": "Basic " + base64.b64encode(f"{USER}:nope".encode()).decode()}
ROUTES = ["/flower/metrics", "/flower/healthcheck", "/flower/", "/flower/workers", "/flower/api/workers"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flower_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WARMPOOL_", "FLOWER_"))}
    env.update(
        WARMPOOL_BROKER_URL="memory://",
        WARMPOOL_RESULT_BACKEND="cache+memory://",
        **extra,
    )
    return env


def wait_until_up(port: int, proc: subprocess.Popen[str], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read()[-3000:] if proc.stderr is not None else ""
            raise AssertionError(f"Flower exited with {proc.returncode}: {err.replace(PASSWORD, '***')}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/flower/healthcheck", timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError("Flower did not start")


@pytest.fixture(scope="module")
def flower() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "producer.flower_app", "--port", str(port)],
        env=flower_env(
            WARMPOOL_FLOWER_USER=USER,
            WARMPOOL_FLOWER_PASSWORD=PASSWORD,
            # set on purpose: it must not open Flower's API or replace the credentials
            FLOWER_UNAUTHENTICATED_API="true",
            FLOWER_BASIC_AUTH="intruder:intruder",
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_up(port, proc)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        log = proc.stderr.read()
        proc.stderr.close()
        assert PASSWORD not in log


@pytest.mark.slow
@pytest.mark.parametrize("route", ROUTES)
def test_flower_requires_credentials_on_every_route(flower: int, route: str) -> None:
    url = f"http://127.0.0.1:{flower}{route}"
    anonymous = httpx.get(url, timeout=10)
    assert anonymous.status_code == 401
    if "/api/" not in route:  # Flower's API handlers answer 401 without a challenge
        assert anonymous.headers["WWW-Authenticate"].startswith("Basic")
    assert httpx.get(url, headers=WRONG, timeout=10).status_code == 401
    intruder = {"Authorization": "Basic " + base64.b64encode(b"intruder:intruder").decode()}
    assert httpx.get(url, headers=intruder, timeout=10).status_code == 401
    assert httpx.get(url, headers=BASIC, timeout=10).status_code == 200


@pytest.mark.slow
def test_flower_metrics_with_credentials_are_prometheus_text(flower: int) -> None:
    r = httpx.get(f"http://127.0.0.1:{flower}/flower/metrics", headers=BASIC, timeout=10)
    assert r.status_code == 200 and "flower_" in r.text


@pytest.mark.slow
def test_flower_binds_loopback_only(flower: int) -> None:
    conns = [c for c in _listening_sockets() if c[1] == flower]
    assert conns and all(addr.startswith("127.") for addr, _ in conns), conns


def _listening_sockets() -> list[tuple[str, int]]:
    out = []
    with open("/proc/net/tcp", encoding="ascii") as fh:
        for line in fh.readlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A":  # LISTEN
                hex_ip, hex_port = local.split(":")
                ip = ".".join(str(int(hex_ip[i : i + 2], 16)) for i in (6, 4, 2, 0))
                out.append((ip, int(hex_port, 16)))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("route", ROUTES)
def test_flower_through_the_gateway_proxy(flower: int, route: str) -> None:
    proxy = FlowerProxy(url=f"http://127.0.0.1:{flower}", user=USER, password=PASSWORD)
    app = create_app(FakePool(), token="api-token", flower=proxy)
    assert call(app, "GET", route).status_code == 401
    assert call(app, "GET", route, headers=WRONG).status_code == 401
    assert call(app, "GET", route, headers={"Authorization": "Bearer api-token"}).status_code == 401
    assert call(app, "GET", route, headers=BASIC).status_code == 200


# -- command line ------------------------------------------------------------------
def run_module(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "producer.flower_app", *args],
        env=flower_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_flower_refuses_to_start_without_credentials() -> None:
    r = run_module("--port", str(free_port()))
    assert r.returncode != 0
    assert "WARMPOOL_FLOWER_USER" in r.stderr and "--no-auth" in r.stderr


def test_flower_refuses_no_auth_on_a_public_address() -> None:
    r = run_module("--no-auth", "--address", "0.0.0.0", "--port", str(free_port()))
    assert r.returncode != 0 and "loopback" in r.stderr


def test_print_command_never_shows_the_password() -> None:
    r = run_module("--print-command", WARMPOOL_FLOWER_USER=USER, WARMPOOL_FLOWER_PASSWORD=PASSWORD)
    assert r.returncode == 0
    assert r.stdout.split()[:4] == ["celery", "-A", "tasks", "flower"]
    assert "--address=127.0.0.1" in r.stdout and "--url_prefix=flower" in r.stdout
    assert "staple" not in r.stdout and USER not in r.stdout


def test_flower_command_defaults() -> None:
    assert flower_app.flower_command() == [
        "celery",
        "-A",
        "tasks",
        "flower",
        "--address=127.0.0.1",
        "--port=5555",
        "--url_prefix=flower",
    ]


@pytest.mark.parametrize(
    ("env", "ok"),
    [
        ({}, None),
        ({"WARMPOOL_FLOWER_USER": "a", "WARMPOOL_FLOWER_PASSWORD": "b"}, True),
        ({"WARMPOOL_FLOWER_USER": "a"}, False),
        ({"WARMPOOL_FLOWER_PASSWORD": "b"}, False),
        ({"WARMPOOL_FLOWER_USER": "a:b", "WARMPOOL_FLOWER_PASSWORD": "c"}, False),
        ({"WARMPOOL_FLOWER_USER": "a", "WARMPOOL_FLOWER_PASSWORD": "b\nc"}, False),
    ],
)
def test_credentials_from_env(env: dict[str, str], ok: Any) -> None:
    if ok is False:
        with pytest.raises(SystemExit):
            flower_app.Credentials.from_env(env)
    elif ok is None:
        assert flower_app.Credentials.from_env(env) is None
    else:
        assert flower_app.Credentials.from_env(env) == flower_app.Credentials("a", "b")


def test_harden_flower_patches_the_handlers_that_skip_authentication() -> None:
    """In-process: the patch reaches Flower's Metrics and Healthcheck handlers (and is idempotent)."""
    code = (
        "from producer.flower_app import harden_flower;"
        "first = harden_flower(); second = harden_flower();"
        "from flower.views.monitor import Metrics, Healthcheck;"
        "from flower.api import BaseApiHandler;"
        "classes = (Metrics, Healthcheck, BaseApiHandler);"
        "assert all(getattr(c.prepare, '_warmpool_requires_auth', False) for c in classes);"
        "assert second == [], second;"
        "print(len(first))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=flower_env())
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) >= 2


@pytest.mark.slow
def test_stock_flower_has_the_gap_that_flower_app_closes() -> None:
    """Why producer.flower_app exists: plain ``celery flower --basic_auth`` serves /metrics to anyone."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tasks",
            "flower",
            "--address=127.0.0.1",
            f"--port={port}",
            "--url_prefix=flower",
            "--basic_auth=admin:pw",
        ],
        env=flower_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_up(port, proc)
        metrics = httpx.get(f"http://127.0.0.1:{port}/flower/metrics", timeout=10).status_code
        workers = httpx.get(f"http://127.0.0.1:{port}/flower/workers", timeout=10).status_code
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
    assert workers == 401
    if metrics != 200:
        pytest.skip("this Flower version protects /metrics itself; the hardening is now only a second layer")
    assert metrics == 200
