"""The demo's script: wait for the pool, assign and release through PoolClient, show what happened."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.markup import escape

from producer.client import PoolClient
from producer.render import compact_status_table, status_title
from sandbox.demo_redis import DemoError
from tasks.errors import InvalidProject

READY_TIMEOUT_S = 30.0
ASSIGN_WAIT_S = 20.0


@dataclass
class Clock:
    started: float = field(default_factory=time.monotonic)

    def elapsed(self) -> str:
        return f"{time.monotonic() - self.started:5.1f}s"


# -- showing the pool ----------------------------------------------------------------
def poll(
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


def wait_for_idle(client: PoolClient, console: Console, clock: Clock, target: int) -> Mapping[str, Any]:
    with console.status("waiting for the first refresh...") as spinner:

        def progress(status: Mapping[str, Any]) -> None:
            idle = status["counts"].get("idle", 0)
            spinner.update(f"waiting for the first refresh: {idle}/{target} idle ({clock.elapsed()})")

        return poll(client, lambda s: s["counts"].get("idle", 0) >= target, timeout_s=READY_TIMEOUT_S, on_wait=progress)


def settled(released: set[str], target: int) -> Callable[[Mapping[str, Any]], bool]:
    """Buffer back at target, released machines gone, every assignment tagged and protected in AWS."""

    def check(status: Mapping[str, Any]) -> bool:
        machines = status["machines"]
        if status["counts"].get("idle", 0) < target or any(m["instance_id"] in released for m in machines):
            return False
        return all(m["tagged"] and m["protected"] for m in machines if m["state"] == "assigned")

    return check


# -- the scripted part ----------------------------------------------------------------
def assign(client: PoolClient, console: Console, project: str) -> str:
    started = time.perf_counter()
    machine = client.assign(project, wait=ASSIGN_WAIT_S)
    ms = (time.perf_counter() - started) * 1000
    console.print(f"  assign {project:<8} -> {machine.instance_id}  ip {machine.ip}  ({ms:.0f} ms)")
    return machine.instance_id


def script(client: PoolClient, console: Console, *, rounds: int, target: int) -> None:
    projects = [f"demo-{n}" for n in range(1, rounds + 1)]
    console.rule("assign")
    held = {p: assign(client, console, p) for p in projects}
    again = assign(client, console, projects[0])
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
        status = poll(client, settled({held[victim]}, target), timeout_s=READY_TIMEOUT_S, on_wait=lambda s: None)
    console.print(compact_status_table(status))
