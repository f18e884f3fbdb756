#!/usr/bin/env python3
"""Make sure a Redis answers at 127.0.0.1:6379 (used by ``make test`` and ``.ci/run``).

If none answers, start ``redis-server`` daemonized, without persistence. If
redis-server is missing and we run as root with apt-get, install it first
(saying so); otherwise exit non-zero explaining how to install it.

Exit codes: 0 Redis answers, 1 it could not be made to answer.
Standard library plus redis-py (the project's venv has it).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time

import redis

INSTALL_HINT = (
    "Install Redis and run this again:\n"
    "  Debian/Ubuntu: sudo apt-get install redis-server\n"
    "  macOS:         brew install redis\n"
    "or start one with Docker: docker run -d -p 6379:6379 redis:7"
)


def say(message: str) -> None:
    print(f"ensure_redis: {message}", flush=True)


def answers(host: str, port: int, *, timeout_s: float = 0.5) -> bool:
    """True when a Redis server answers PING at host:port."""
    client = redis.Redis(host=host, port=port, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def run(argv: list[str], *, env: dict[str, str] | None = None) -> bool:
    """Run a command, echoing it; True when it succeeded."""
    say("$ " + shlex.join(argv))
    return subprocess.run(argv, check=False, env=env).returncode == 0


def install_with_apt() -> bool:
    """apt-get install redis-server (root only); True when redis-server is on PATH afterwards."""
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    say("redis-server is missing; installing it with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "redis-server"]
    if not run(install, env=env):
        run(["apt-get", "update"], env=env)
        run(install, env=env)
    return shutil.which("redis-server") is not None


def start(host: str, port: int) -> bool:
    """Start redis-server daemonized on host:port; True when it was launched."""
    server = shutil.which("redis-server")
    if server is None and install_with_apt():
        if answers(host, port):  # the package's service may already run
            return True
        server = shutil.which("redis-server")
    if server is None:
        say(f"no Redis answers at {host}:{port} and redis-server is not installed.\n{INSTALL_HINT}")
        return False
    argv = [server, "--daemonize", "yes", "--port", str(port), "--bind", host, "--save", "", "--appendonly", "no"]
    return run(argv)


def wait_until_answers(host: str, port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if answers(host, port):
            return True
        time.sleep(0.1)
    return answers(host, port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6379)
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for it to answer [15]")
    args = parser.parse_args(argv)
    if answers(args.host, args.port):
        say(f"Redis answers at {args.host}:{args.port}")
        return 0
    if not start(args.host, args.port):
        return 1
    if wait_until_answers(args.host, args.port, args.timeout):
        say(f"Redis answers at {args.host}:{args.port}")
        return 0
    say(f"redis-server was started but does not answer at {args.host}:{args.port} after {args.timeout:.0f}s")
    return 1


if __name__ == "__main__":
    sys.exit(main())
