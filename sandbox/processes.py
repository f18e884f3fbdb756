"""Child processes of a local stack: started in their own session, stopped in order, never orphaned.

Every child process is started in its own session (so a terminal's Ctrl-C
reaches only the caller, which then stops the children in order) and, on
Linux, asks the kernel to SIGTERM it when its parent dies, so a killed demo
leaves no orphaned workers behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from celery import Celery

from tasks.config import DEFAULT_REGION

DUMMY_CREDENTIAL = "testing"
_PR_SET_PDEATHSIG = 1


def _child_setup() -> None:
    """In the child before exec: new session; on Linux, SIGTERM when the parent dies."""
    os.setsid()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def popen_child(argv: list[str], *, env: Mapping[str, str] | None, out: IO[Any] | int) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a session of its own (stdout and stderr to ``out``), SIGTERMed if this process dies."""
    return subprocess.Popen(
        argv,
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        preexec_fn=_child_setup,  # setsid + prctl only
    )


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Send ``sig`` to the process group the child leads (it called setsid)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        proc.send_signal(sig)


def stop_process(proc: subprocess.Popen[bytes], *, timeout_s: float = 10.0) -> int | None:
    """Stop a child process: SIGTERM its process group, wait up to ``timeout_s``, then SIGKILL it. Its exit code."""
    _signal_group(proc, signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        return proc.wait(timeout=5)


def kill_process(proc: subprocess.Popen[bytes]) -> int | None:
    """SIGKILL a child's process group at once (a crash, for fault tests); its exit code."""
    _signal_group(proc, signal.SIGKILL)
    return proc.wait(timeout=5)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_up(check: Callable[[], bool], *, timeout_s: float, what: str, proc: subprocess.Popen[bytes]) -> None:
    """Poll ``check`` until it is true; RuntimeError if ``proc`` exits first, TimeoutError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before it answered")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} did not answer within {timeout_s:.0f}s")
        time.sleep(0.05)


_DROPPED_AWS_VARS = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


def stack_env(
    *,
    endpoint_url: str,
    broker_url: str,
    result_backend: str,
    redis_url: str,
    asg_name: str,
    idle_target: int,
    refresh_seconds: float,
    region: str = DEFAULT_REGION,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """A copy of os.environ for stack processes: WARMPOOL_* settings and moto as AWS."""
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_AWS_VARS}
    env.update(
        {
            "WARMPOOL_ASG_NAME": asg_name,
            "WARMPOOL_IDLE_TARGET": str(idle_target),
            "WARMPOOL_REFRESH_SECONDS": repr(float(refresh_seconds)),
            "WARMPOOL_BROKER_URL": broker_url,
            "WARMPOOL_RESULT_BACKEND": result_backend,
            "WARMPOOL_REDIS_URL": redis_url,
            "AWS_ENDPOINT_URL": endpoint_url,
            "AWS_REGION": region,
            "AWS_DEFAULT_REGION": region,
            "AWS_ACCESS_KEY_ID": DUMMY_CREDENTIAL,
            "AWS_SECRET_ACCESS_KEY": DUMMY_CREDENTIAL,
            "PYTHONUNBUFFERED": "1",
            # The sandbox creates the group's machines for warmpool: none to adopt at its first start.
            "WARMPOOL_ADOPT_HOLD": "0",
        }
    )
    env.update(extra or {})
    return env


class ProcessGroup:
    """Named child processes, each in its own session with its output in a log file.

    A context manager: leaving the ``with`` block stops every child still running.
    """

    def __init__(self) -> None:
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(
        self,
        name: str,
        argv: list[str],
        *,
        env: Mapping[str, str],
        log_path: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` as ``name`` (stdout and stderr to ``log_path``, else discarded)."""
        if self.alive(name):
            raise ValueError(f"a process named {name!r} is already running")
        out: IO[Any] | int = subprocess.DEVNULL
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            out = open(log_path, "ab")  # the child keeps its own copy
        try:
            proc = popen_child(argv, env=env, out=out)
        finally:
            if not isinstance(out, int):
                out.close()
        self._procs[name] = proc
        return proc

    def get(self, name: str) -> subprocess.Popen[bytes]:
        """The process started as ``name`` (KeyError if none)."""
        return self._procs[name]

    def names(self) -> list[str]:
        """Names of every process spawned and not yet stopped, in start order."""
        return list(self._procs)

    def alive(self, name: str) -> bool:
        """True while the process ``name`` runs."""
        proc = self._procs.get(name)
        return proc is not None and proc.poll() is None

    def stop(self, name: str, *, timeout_s: float = 10.0) -> int | None:
        """SIGTERM ``name`` (its whole process group), SIGKILL after ``timeout_s``; its exit code."""
        proc = self._procs.pop(name, None)
        return None if proc is None else stop_process(proc, timeout_s=timeout_s)

    def kill(self, name: str) -> int | None:
        """SIGKILL ``name`` at once (fault-injection tests); its exit code."""
        proc = self._procs.pop(name, None)
        return None if proc is None else kill_process(proc)

    def stop_all(self, *, timeout_s: float = 10.0) -> dict[str, int | None]:
        """SIGTERM every child (newest first), wait for all, SIGKILL stragglers; exit codes by name."""
        procs = list(reversed(self._procs.items()))
        self._procs.clear()
        for _, proc in procs:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        codes: dict[str, int | None] = {}
        for name, proc in procs:
            try:
                codes[name] = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                codes[name] = proc.wait(timeout=5)
        return codes

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()


def worker_argv(queue: str, *, hostname: str, concurrency: int = 1, solo: bool) -> list[str]:
    """``celery -A tasks worker`` for one queue: ``-P solo`` (the pool worker) or ``-P threads -c N``."""
    pool = ["-P", "solo"] if solo else ["-P", "threads", "-c", str(concurrency)]
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tasks",
        "worker",
        "-Q",
        queue,
        *pool,
        "-n",
        hostname,
        "--without-gossip",
        "--without-mingle",
        "-l",
        "INFO",
    ]


def beat_argv(*, schedule_path: Path | str) -> list[str]:
    """``celery -A tasks beat`` with its schedule file at ``schedule_path``."""
    return [sys.executable, "-m", "celery", "-A", "tasks", "beat", "-s", str(schedule_path), "-l", "INFO"]


def wait_for_workers(app: Celery, names: Iterable[str], timeout_s: float) -> None:
    """Return once every named worker answers a ping; TimeoutError naming the silent ones."""
    missing = set(names)
    deadline = time.monotonic() + timeout_s
    while missing:
        replies = app.control.ping(destination=sorted(missing), timeout=0.3) or []
        for reply in replies:
            missing.difference_update(reply)
        if missing and time.monotonic() >= deadline:
            raise TimeoutError(f"workers did not answer within {timeout_s:.0f}s: {', '.join(sorted(missing))}")
