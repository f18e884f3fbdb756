"""``warmpool demo``: the whole stack on one machine, against a simulated Auto Scaling Group.

Starts a private redis-server on a free port (or, when WARMPOOL_BROKER_URL,
WARMPOOL_RESULT_BACKEND or WARMPOOL_REDIS_URL names one, uses that Redis and
touches only what a previous demo left there: sandbox.demo_redis), a moto
server holding the group ``heavrdevs-asg``, the pool worker, an aws worker and
beat; shows the pool, runs a few assigns and releases through
``producer.PoolClient``, then keeps showing the pool until Ctrl-C, when it
stops everything it started. Logs go to ``.demo/logs/`` in the current directory.

``python -m sandbox.demo [--once]`` runs it without the CLI.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shlex
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType

import redis
from rich.console import Console, RenderableType
from rich.live import Live
from rich.markup import escape

from producer.client import PoolClient
from producer.render import compact_status_table
from sandbox.demo_pools import (
    assign_in_other_pools,
    check_simulable,
    create_groups,
    pool_tables,
    refresh_now,
    several,
    spawn_workers,
)
from sandbox.demo_redis import (
    DemoError,
    clear_previous_demo,
    redis_is_explicit,
    refuse_foreign_workers,
    start_missing_redis,
)
from sandbox.demo_script import Clock, script, wait_for_idle
from sandbox.processes import ProcessGroup, free_port
from sandbox.stack import LocalStack, StackUrls
from tasks.config import Settings
from tasks.errors import ConfigError, WarmpoolError
from tasks.pools import Deployment, load_deployment

DEMO_DIR = Path(".demo")
GROUP_DESIRED = 3  # the environment's one pool starts with this many machines
AWS_WORKER_THREADS = 4
START_TIMEOUT_S = 30.0
STAY_INTERVAL_S = 3.0
ENV_PREFIXES = ("WARMPOOL_", "AWS_")  # what .demo/env passes on to the CLI


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
def _spawn_beat_and_extras(
    local: LocalStack, demo: DemoStack, extras: Sequence[ExtraProcess], say: Callable[[str], None]
) -> None:
    """Start beat (once the group exists: its first refresh comes at once) and the extra processes."""
    local.start_beat()
    for extra in extras:
        local.spawn(extra.name, extra.argv(demo))
        if extra.banner is not None:
            say(extra.banner(demo))


def _check_alive(procs: ProcessGroup, log_dir: Path) -> None:
    for name in procs.names():
        if not procs.alive(name):
            code = procs.get(name).returncode
            raise DemoError(f"{name} exited with code {code}; see {log_dir / (name + '.log')}")


def _current(client: PoolClient) -> RenderableType:
    try:
        return compact_status_table(client.status())
    except WarmpoolError as exc:
        return f"[yellow]status unavailable: {escape(str(exc))}[/]"


def _stay(view: Callable[[], RenderableType], console: Console, procs: ProcessGroup, log_dir: Path) -> None:
    """Show the pool(s) every few seconds (in place on a terminal) until interrupted."""
    console.rule("running: Ctrl-C stops everything")
    if not console.is_terminal:
        while True:
            time.sleep(STAY_INTERVAL_S)
            _check_alive(procs, log_dir)
            console.print(view())
    with Live(view(), console=console, auto_refresh=False) as live:
        while True:
            time.sleep(STAY_INTERVAL_S / 3)
            _check_alive(procs, log_dir)
            live.update(view(), refresh=True)


# -- entry points ------------------------------------------------------------------
def _write_env_file(env: Mapping[str, str], *, stack: contextlib.ExitStack) -> Path:
    """``.demo/env``: the stack's WARMPOOL_* and AWS_* settings, for the CLI in another terminal.

    Removed when the demo stops, so it never points at a stack that is gone.
    """
    path = (DEMO_DIR / "env").resolve()
    lines = [f"{name}={shlex.quote(value)}" for name, value in sorted(env.items()) if name.startswith(ENV_PREFIXES)]
    # It holds the Flower password: readable by its owner only.
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(
        "# warmpool demo: source it (set -a; . .demo/env; set +a), then run warmpool ...\n" + "\n".join(lines) + "\n"
    )
    stack.callback(path.unlink, missing_ok=True)
    return path


def _fresh_log_dir() -> Path:
    log_dir = (DEMO_DIR / "logs").resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.glob("*.log"):
        old.unlink()
    return log_dir


def _local_stack(
    settings: Settings,
    *,
    cleanup: contextlib.ExitStack,
    log_dir: Path,
    say: Callable[[str], None],
    config_file: str = "",
) -> LocalStack:
    """The demo's stack: on a private Redis by default, on the configured one when WARMPOOL_* names it.

    A Redis the demo did not start is someone's: there it refuses to run beside
    foreign workers and clears only what a previous demo left (sandbox.demo_redis).
    """
    explicit = redis_is_explicit()
    urls, started_all = None, False
    if explicit:
        urls = StackUrls(settings.broker_url, settings.result_backend, settings.redis_url)
        started_all = start_missing_redis(urls, cleanup=cleanup, say=say, workdir=log_dir.parent)
    local = LocalStack(
        log_dir,
        urls=urls,
        asg_name=settings.asg_name,
        region=settings.region,
        idle_target=settings.idle_target,
        refresh_s=settings.refresh_seconds,
        extra_env={**web_env(), **({"WARMPOOL_CONFIG": config_file} if config_file else {})},
        node=f"demo{os.getpid()}.{socket.gethostname()}",
        app_name="warmpool-demo",
    )
    cleanup.callback(local.stop)
    if explicit and not started_all:
        refuse_foreign_workers(local.app)
        clear_previous_demo(local.urls, asg_name=settings.asg_name, app=local.app)
    local.start()
    if local.redis_server is not None:
        say(f"private redis-server on 127.0.0.1:{local.redis_server.port} (broker db 0, results db 1, state db 2)")
    say(f"moto server (simulated AWS) at {local.moto.endpoint_url}")
    return local


def _run(
    settings: Settings,
    *,
    deployment: Deployment,
    console: Console,
    rounds: int,
    stay: bool,
    extras: Sequence[ExtraProcess],
    stack: contextlib.ExitStack,
) -> None:
    clock = Clock()
    log_dir = _fresh_log_dir()

    def say(message: str) -> None:
        console.print(f"[dim]{clock.elapsed()}[/] {message}")

    say(f"logs in {log_dir}")
    multi = several(deployment)  # WARMPOOL_CONFIG: several pools; else the environment's one
    if multi:
        say(f"pools file {deployment.source}: pools {', '.join(deployment.names())}")
        settings = replace(settings, asg_name=deployment.pool().asg_name)
    config_file = str(Path(deployment.source).resolve()) if multi else ""
    local = _local_stack(settings, cleanup=stack, log_dir=log_dir, say=say, config_file=config_file)
    urls = local.urls
    settings = replace(
        settings, broker_url=urls.broker_url, result_backend=urls.result_backend, redis_url=urls.redis_url
    )
    demo = DemoStack(
        settings=settings,
        env=local.env,
        endpoint_url=local.moto.endpoint_url,
        log_dir=log_dir,
        processes=local.processes,
    )
    if multi:
        deployment = load_deployment(local.env)  # as the workers read it (their environment, the file)
    client = PoolClient(app=local.app, deployment=deployment if multi else None)
    workers = spawn_workers(local, deployment, aws_threads=AWS_WORKER_THREADS)  # they boot while moto builds
    create_groups(local, deployment, say, desired=None if multi else GROUP_DESIRED)
    _spawn_beat_and_extras(local, demo, extras, say)
    with console.status("starting the pool worker, an aws worker and beat..."):
        local.wait_for_workers(workers, timeout_s=START_TIMEOUT_S)
    say(f"workers answer: {', '.join(local.worker_name(w) for w in workers)}")
    env_file = _write_env_file(local.env, stack=stack)
    say(
        f"another terminal: set -a; . {shlex.quote(str(env_file))}; set +a"
        "   then: warmpool status, warmpool events --follow"
    )
    target = deployment.pool().settings.idle_target if multi else settings.idle_target
    refresh_now(client, deployment)  # don't wait for beat's first interval
    status = wait_for_idle(client, console, clock, target)
    say(f"pool ready: {status['counts'].get('idle', 0)} idle machines")
    console.print(compact_status_table(status))
    script(client, console, rounds=rounds, target=target)
    if multi:
        console.rule("the other pools")
        assign_in_other_pools(client, console, deployment, "demo-1")
    say("demo script done")
    if stay:
        view = (lambda: pool_tables(client, deployment)) if multi else (lambda: _current(client))
        _stay(view, console, local.processes, log_dir)


def run_demo(
    *,
    idle_target: int = 2,
    refresh_seconds: float = 2.0,
    rounds: int = 3,
    stay: bool = True,
    extra_processes: Sequence[ExtraProcess] | None = None,
    console: Console | None = None,
    config: str | None = None,
) -> int:
    """Run the local demo (``warmpool demo``); returns the process exit code.

    ``stay=False`` stops after the scripted assigns and releases. Ctrl-C or
    SIGTERM stops every process the demo started and returns 0. ``config``: a
    pools file (as ``WARMPOOL_CONFIG``): every pool's group simulated, a pool
    worker each; a bad file is exit 2, one line per problem.
    """
    console = console or Console()
    with _config_file(config):
        try:
            deployment = load_deployment()
            check_simulable(deployment, explicit_redis=redis_is_explicit())
        except ConfigError as exc:
            for line in exc.problems:
                console.print(f"[red]{escape(line)}[/]", soft_wrap=True)
            return 2
        except DemoError as exc:
            console.print(f"[red]{escape(str(exc))}[/]", soft_wrap=True)
            return 2
        return _run_checked(
            deployment,
            idle_target=idle_target,
            refresh_seconds=refresh_seconds,
            rounds=rounds,
            stay=stay,
            extra_processes=extra_processes,
            console=console,
        )


@contextlib.contextmanager
def _config_file(config: str | None) -> Iterator[None]:
    """``WARMPOOL_CONFIG`` set to ``config`` for the demo (every process it starts inherits it), then restored."""
    if not config:
        yield
        return
    before = os.environ.get("WARMPOOL_CONFIG")
    os.environ["WARMPOOL_CONFIG"] = config
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("WARMPOOL_CONFIG", None)
        else:
            os.environ["WARMPOOL_CONFIG"] = before


def _run_checked(
    deployment: Deployment,
    *,
    idle_target: int,
    refresh_seconds: float,
    rounds: int,
    stay: bool,
    extra_processes: Sequence[ExtraProcess] | None,
    console: Console,
) -> int:
    settings = replace(Settings.from_env(), idle_target=idle_target, refresh_seconds=refresh_seconds)
    extras = list(EXTRA_PROCESSES if extra_processes is None else extra_processes)
    with _interrupts() as shutting_down:
        with contextlib.ExitStack() as stack:
            stack.callback(console.print, "[dim]stopped everything the demo started[/]")
            try:
                _run(
                    settings,
                    deployment=deployment,
                    console=console,
                    rounds=max(1, rounds),
                    stay=stay,
                    extras=extras,
                    stack=stack,
                )
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
    parser.add_argument("--config", metavar="FILE", help="a pools file (WARMPOOL_CONFIG): every pool simulated")
    args = parser.parse_args(argv)
    return run_demo(
        idle_target=args.idle_target,
        refresh_seconds=args.refresh_seconds,
        rounds=args.rounds,
        stay=args.stay,
        config=args.config,
    )


if __name__ == "__main__":
    sys.exit(main())
