"""``warmpool demo``: the whole stack on one machine, against a simulated Auto Scaling Group.

Starts (on the embedded defaults, or whatever WARMPOOL_* says) a Redis if none
answers, a moto server holding the group ``heavrdevs-asg``, the pool worker,
an aws worker and beat; shows the pool, runs a few assigns and releases through
``producer.PoolClient``, then keeps showing the pool until Ctrl-C, when it
stops everything it started. Logs go to ``.demo/logs/`` in the current directory.

``python -m sandbox.demo [--once]`` runs it without the CLI.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

import redis
from rich.console import Console, RenderableType
from rich.live import Live
from rich.markup import escape

from producer.client import PoolClient
from producer.render import compact_status_table, status_title
from sandbox import (
    MotoServer,
    ProcessGroup,
    beat_argv,
    create_simulated_group,
    ensure_redis,
    free_port,
    stack_env,
    terminate,
    wait_for_workers,
    worker_argv,
)
from tasks.config import Settings
from tasks.contract import AWS_QUEUE, POOL_QUEUE, TASK_REFRESH
from tasks.errors import InvalidProject, WarmpoolError
from tasks.state.keys import PoolKeys

DEMO_DIR = Path(".demo")
GROUP_MIN, GROUP_MAX, GROUP_DESIRED = 0, 10, 3
AWS_WORKER_THREADS = 4
START_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 30.0
ASSIGN_WAIT_S = 20.0
STAY_INTERVAL_S = 3.0


class DemoError(Exception):
    """The demo cannot go on (a process died, the pool never became ready, ...)."""


@dataclass(frozen=True)
class DemoStack:
    """What the demo started: handed to extra processes so they join the same stack."""

    settings: Settings
    env: Mapping[str, str]
    endpoint_url: str
    log_dir: Path
    processes: ProcessGroup


@dataclass(frozen=True)
class ExtraProcess:
    """A process the demo starts after the workers (the HTTP gateway, Flower, ...).

    ``argv`` builds its command line from the running stack; ``banner`` (optional)
    is printed once it started, e.g. the URL to open.
    """

    name: str
    argv: Callable[[DemoStack], list[str]]
    banner: Callable[[DemoStack], str] | None = None


def _port(preferred: int) -> int:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", preferred))
        except OSError:
            return free_port()
    return preferred


def web_env() -> dict[str, str]:
    """Ports and Flower credentials of the demo's gateway and Flower (loopback only)."""
    settings = Settings.from_env()
    gateway_port = _port(settings.gateway_port)
    flower_port = _port(5555)
    return {
        "WARMPOOL_GATEWAY_PORT": str(gateway_port),
        "WARMPOOL_DEMO_FLOWER_PORT": str(flower_port),
        "WARMPOOL_FLOWER_URL": f"http://127.0.0.1:{flower_port}",
        "WARMPOOL_FLOWER_USER": settings.flower_user or "admin",
        "WARMPOOL_FLOWER_PASSWORD": settings.flower_password or secrets.token_urlsafe(12),
        # The password is passed on as the value itself: an inherited *_FILE beside it would be a conflict.
        "WARMPOOL_FLOWER_PASSWORD_FILE": "",
    }


def _gateway_banner(stack: DemoStack) -> str:
    url = f"http://127.0.0.1:{stack.env['WARMPOOL_GATEWAY_PORT']}"
    return f"gateway: {url}  (try: curl {url}/demo-curl ; curl {url}/v1/pool ; {url}/docs)"


def _flower_banner(stack: DemoStack) -> str:
    gateway = f"http://127.0.0.1:{stack.env['WARMPOOL_GATEWAY_PORT']}"
    user, password = stack.env["WARMPOOL_FLOWER_USER"], stack.env["WARMPOOL_FLOWER_PASSWORD"]
    return f"flower:  {gateway}/flower/  (user {user}, password {password})"


# The gateway and Flower join the demo stack (tests may pass extra_processes=[]).
EXTRA_PROCESSES: list[ExtraProcess] = [
    ExtraProcess(
        "gateway",
        lambda stack: [sys.executable, "-m", "producer.gateway", "--host", "127.0.0.1"],
        _gateway_banner,
    ),
    ExtraProcess(
        "flower",
        lambda stack: [
            sys.executable,
            "-m",
            "producer.flower_app",
            "--address",
            "127.0.0.1",
            "--port",
            stack.env["WARMPOOL_DEMO_FLOWER_PORT"],
        ],
        _flower_banner,
    ),
]


@dataclass
class _Clock:
    started: float = field(default_factory=time.monotonic)

    def elapsed(self) -> str:
        return f"{time.monotonic() - self.started:5.1f}s"


# -- signals -------------------------------------------------------------------
@contextlib.contextmanager
def _interrupts() -> Iterator[Callable[[], None]]:
    """SIGINT and SIGTERM raise KeyboardInterrupt until the yielded ``shutting_down()`` is called."""
    stopping = False

    def handler(signum: int, frame: FrameType | None) -> None:
        if not stopping:
            raise KeyboardInterrupt

    def shutting_down() -> None:
        nonlocal stopping
        stopping = True

    if threading.current_thread() is not threading.main_thread():
        yield shutting_down  # signal handlers can only be set from the main thread
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield shutting_down
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# -- starting the stack ----------------------------------------------------------
def _redis_urls(settings: Settings) -> list[str]:
    """One URL per distinct Redis server among broker, result backend and state store."""
    seen: dict[str, str] = {}
    for url in (settings.broker_url, settings.result_backend, settings.redis_url):
        if url.startswith(("redis://", "rediss://")):
            server = url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
            seen.setdefault(server, url)
    return list(seen.values())


def _start_redis(settings: Settings, stack: contextlib.ExitStack, log_dir: Path, say: Callable[[str], None]) -> None:
    for url in _redis_urls(settings):
        proc = ensure_redis(url, log=say, log_path=log_dir / "redis.log")
        if proc is not None:
            stack.callback(terminate, proc, timeout_s=5)


def _refuse_foreign_workers(client: PoolClient) -> None:
    """Workers already on this broker would take the demo's jobs with another AWS behind them."""
    replies = client.app.control.ping(timeout=0.5) or []
    names = sorted(name for reply in replies for name in reply)
    if names:
        raise DemoError(
            f"workers are already connected to {client.app.conf.broker_url}: {', '.join(names)}. "
            "Stop them (a previous demo?) or point WARMPOOL_BROKER_URL, WARMPOOL_RESULT_BACKEND "
            "and WARMPOOL_REDIS_URL at other databases."
        )


def _forget_previous_run(settings: Settings, client: PoolClient) -> None:
    """Drop the group's pool state and the queued jobs a previous run may have left."""
    state: redis.Redis = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        state.delete(*PoolKeys.for_group(settings.asg_name).all())
    finally:
        state.close()
    if settings.broker_url.startswith(("redis://", "rediss://")):
        with client.app.connection_for_write() as conn:
            channel = conn.default_channel
            for queue in (POOL_QUEUE, AWS_QUEUE):
                channel.queue_purge(queue)
            # Jobs a killed worker held would come back after the visibility timeout.
            # No worker is connected (checked above), so nobody owns them.
            channel.client.delete(channel.unacked_key, channel.unacked_index_key)


def _spawn_workers(stack: DemoStack) -> list[str]:
    """Start the pool worker and an aws worker; return their names (to wait for)."""
    node = f"demo{os.getpid()}.{socket.gethostname()}"
    pool_name, aws_name = f"pool@{node}", f"aws@{node}"
    procs, env, logs = stack.processes, stack.env, stack.log_dir
    pool_argv = worker_argv(POOL_QUEUE, hostname=pool_name, solo=True)
    procs.spawn("pool-worker", pool_argv, env=env, log_path=logs / "pool-worker.log")
    aws_argv = worker_argv(AWS_QUEUE, hostname=aws_name, concurrency=AWS_WORKER_THREADS, solo=False)
    procs.spawn("aws-worker", aws_argv, env=env, log_path=logs / "aws-worker.log")
    return [pool_name, aws_name]


def _spawn_beat_and_extras(stack: DemoStack, extras: Sequence[ExtraProcess], say: Callable[[str], None]) -> None:
    """Start beat (once the group exists: its first refresh comes at once) and the extra processes."""
    procs, env, logs = stack.processes, stack.env, stack.log_dir
    procs.spawn("beat", beat_argv(schedule_path=logs.parent / "beat-schedule"), env=env, log_path=logs / "beat.log")
    for extra in extras:
        procs.spawn(extra.name, extra.argv(stack), env=env, log_path=logs / f"{extra.name}.log")
        if extra.banner is not None:
            say(extra.banner(stack))


def _check_alive(procs: ProcessGroup, log_dir: Path) -> None:
    for name in procs.names():
        if not procs.alive(name):
            code = procs.get(name).returncode
            raise DemoError(f"{name} exited with code {code}; see {log_dir / (name + '.log')}")


# -- showing the pool ----------------------------------------------------------------
def _poll(
    client: PoolClient,
    ready: Callable[[Mapping[str, Any]], bool],
    *,
    timeout_s: float,
    on_wait: Callable[[Mapping[str, Any]], None],
) -> Mapping[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        status = client.status()
        if ready(status):
            return status
        if time.monotonic() >= deadline:
            raise DemoError(f"the pool did not get ready within {timeout_s:.0f}s:\n{status_title(status)}")
        on_wait(status)
        time.sleep(0.2)


def _wait_for_idle(client: PoolClient, console: Console, clock: _Clock, target: int) -> Mapping[str, Any]:
    with console.status("waiting for the first refresh...") as spinner:

        def progress(status: Mapping[str, Any]) -> None:
            idle = status["counts"].get("idle", 0)
            spinner.update(f"waiting for the first refresh: {idle}/{target} idle ({clock.elapsed()})")

        return _poll(
            client, lambda s: s["counts"].get("idle", 0) >= target, timeout_s=READY_TIMEOUT_S, on_wait=progress
        )


def _settled(released: set[str], target: int) -> Callable[[Mapping[str, Any]], bool]:
    """Buffer back at target, released machines gone, every assignment tagged and protected in AWS."""

    def check(status: Mapping[str, Any]) -> bool:
        machines = status["machines"]
        if status["counts"].get("idle", 0) < target or any(m["instance_id"] in released for m in machines):
            return False
        return all(m["tagged"] and m["protected"] for m in machines if m["state"] == "assigned")

    return check


# -- the scripted part ----------------------------------------------------------------
def _assign(client: PoolClient, console: Console, project: str) -> str:
    started = time.perf_counter()
    machine = client.assign(project, wait=ASSIGN_WAIT_S)
    ms = (time.perf_counter() - started) * 1000
    console.print(f"  assign {project:<8} -> {machine.instance_id}  ip {machine.ip}  ({ms:.0f} ms)")
    return machine.instance_id


def _script(client: PoolClient, console: Console, *, rounds: int, target: int) -> None:
    projects = [f"demo-{n}" for n in range(1, rounds + 1)]
    console.rule("assign")
    held = {p: _assign(client, console, p) for p in projects}
    again = _assign(client, console, projects[0])
    same = "[green]same machine[/]" if again == held[projects[0]] else "[red]A DIFFERENT MACHINE[/]"
    console.print(f"  {projects[0]} asked again: {same}")
    if again != held[projects[0]]:
        raise DemoError(f"{projects[0]} got {again}, held {held[projects[0]]}")
    try:
        client.assign("not a valid id!")
    except InvalidProject as exc:
        console.print(f"  assign 'not a valid id!' -> rejected: {escape(str(exc))}")
    console.print(compact_status_table(client.status()))
    console.rule("release")
    victim = projects[-1]
    console.print(f"  release {victim:<8} -> {client.release(victim)}  (terminates {held[victim]})")
    console.print(f"  release {'nobody':<8} -> {client.release('nobody')}  (held nothing: harmless)")
    with console.status("waiting for the buffer to refill and AWS to show the tags..."):
        status = _poll(client, _settled({held[victim]}, target), timeout_s=READY_TIMEOUT_S, on_wait=lambda s: None)
    console.print(compact_status_table(status))


def _current(client: PoolClient) -> RenderableType:
    try:
        return compact_status_table(client.status())
    except WarmpoolError as exc:
        return f"[yellow]status unavailable: {escape(str(exc))}[/]"


def _stay(client: PoolClient, console: Console, procs: ProcessGroup, log_dir: Path) -> None:
    """Show the pool every few seconds (in place on a terminal) until interrupted."""
    console.rule("running: Ctrl-C stops everything")
    if not console.is_terminal:
        while True:
            time.sleep(STAY_INTERVAL_S)
            _check_alive(procs, log_dir)
            console.print(_current(client))
    with Live(_current(client), console=console, auto_refresh=False) as live:
        while True:
            time.sleep(STAY_INTERVAL_S / 3)
            _check_alive(procs, log_dir)
            live.update(_current(client), refresh=True)


# -- entry points ------------------------------------------------------------------
def _create_group(settings: Settings, endpoint_url: str, say: Callable[[str], None]) -> None:
    group = create_simulated_group(
        endpoint_url,
        name=settings.asg_name,
        region=settings.region,
        min_size=GROUP_MIN,
        max_size=GROUP_MAX,
        desired=GROUP_DESIRED,
    )
    say(
        f"simulated group {group['asg_name']}: {len(group['instance_ids'])} instances, min {GROUP_MIN}, max {GROUP_MAX}"
    )


def _demo_stack(settings: Settings, endpoint_url: str, *, stack: contextlib.ExitStack, log_dir: Path) -> DemoStack:
    env = stack_env(
        endpoint_url=endpoint_url,
        broker_url=settings.broker_url,
        result_backend=settings.result_backend,
        redis_url=settings.redis_url,
        asg_name=settings.asg_name,
        idle_target=settings.idle_target,
        refresh_seconds=settings.refresh_seconds,
        region=settings.region,
        extra=web_env(),
    )
    procs = stack.enter_context(ProcessGroup())
    return DemoStack(settings=settings, env=env, endpoint_url=endpoint_url, log_dir=log_dir, processes=procs)


def _fresh_log_dir() -> Path:
    log_dir = (DEMO_DIR / "logs").resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.glob("*.log"):
        old.unlink()
    return log_dir


def _run(
    settings: Settings,
    *,
    console: Console,
    rounds: int,
    stay: bool,
    extras: Sequence[ExtraProcess],
    stack: contextlib.ExitStack,
) -> None:
    clock = _Clock()
    log_dir = _fresh_log_dir()

    def say(message: str) -> None:
        console.print(f"[dim]{clock.elapsed()}[/] {message}")

    say(f"logs in {log_dir}")
    _start_redis(settings, stack, log_dir, say)
    client = PoolClient()
    _refuse_foreign_workers(client)
    _forget_previous_run(settings, client)
    moto = stack.enter_context(MotoServer(log_path=log_dir / "moto.log"))
    say(f"moto server (simulated AWS) at {moto.endpoint_url}")
    demo = _demo_stack(settings, moto.endpoint_url, stack=stack, log_dir=log_dir)
    workers = _spawn_workers(demo)  # they boot while moto builds the group
    _create_group(settings, moto.endpoint_url, say)
    _spawn_beat_and_extras(demo, extras, say)
    with console.status("starting the pool worker, an aws worker and beat..."):
        wait_for_workers(client.app, workers, START_TIMEOUT_S)
    say(f"workers answer: {', '.join(workers)}")
    client.app.send_task(TASK_REFRESH, queue=AWS_QUEUE)  # don't wait for beat's first interval
    status = _wait_for_idle(client, console, clock, settings.idle_target)
    say(f"pool ready: {status['counts'].get('idle', 0)} idle machines")
    console.print(compact_status_table(status))
    _script(client, console, rounds=rounds, target=settings.idle_target)
    say("demo script done")
    if stay:
        _stay(client, console, demo.processes, log_dir)


def run_demo(
    *,
    idle_target: int = 2,
    refresh_seconds: float = 2.0,
    rounds: int = 3,
    stay: bool = True,
    extra_processes: Sequence[ExtraProcess] | None = None,
    console: Console | None = None,
) -> int:
    """Run the local demo (``warmpool demo``); returns the process exit code.

    ``stay=False`` stops after the scripted assigns and releases. Ctrl-C or
    SIGTERM stops every process the demo started and returns 0.
    """
    console = console or Console()
    settings = replace(Settings.from_env(), idle_target=idle_target, refresh_seconds=refresh_seconds)
    extras = list(EXTRA_PROCESSES if extra_processes is None else extra_processes)
    with _interrupts() as shutting_down:
        with contextlib.ExitStack() as stack:
            stack.callback(console.print, "[dim]stopped everything the demo started[/]")
            try:
                _run(settings, console=console, rounds=max(1, rounds), stay=stay, extras=extras, stack=stack)
            except KeyboardInterrupt:
                console.print("\ninterrupted")
            except SystemExit as exc:  # ensure_redis explains what to install
                console.print(f"[red]{escape(str(exc))}[/]")
                return 1
            except (DemoError, WarmpoolError, TimeoutError, RuntimeError, OSError, redis.RedisError) as exc:
                console.print(f"[red]demo failed: {escape(str(exc))}[/]")
                console.print(f"[dim]logs: {(DEMO_DIR / 'logs').resolve()}[/]")
                return 1
            finally:
                shutting_down()  # from here on Ctrl-C must not break the cleanup
                console.print("stopping workers, beat, moto and any Redis the demo started...")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sandbox.demo``."""
    parser = argparse.ArgumentParser(prog="python -m sandbox.demo", description="Run warmpool's local demo stack.")
    parser.add_argument("--idle-target", type=int, default=2, help="idle machines to keep ready [2]")
    parser.add_argument("--refresh-seconds", type=float, default=2.0, help="beat interval [2.0]")
    parser.add_argument("--rounds", type=int, default=3, help="projects to assign (demo-1..demo-N) [3]")
    parser.add_argument("--once", "--no-stay", dest="stay", action="store_false", help="stop after the scripted part")
    args = parser.parse_args(argv)
    return run_demo(
        idle_target=args.idle_target, refresh_seconds=args.refresh_seconds, rounds=args.rounds, stay=args.stay
    )


if __name__ == "__main__":
    sys.exit(main())
