"""Profile the pool worker with py-spy and say where an assign's time goes.

``record(pid, path)`` samples a running worker (``py-spy record --idle
--format raw``: collapsed stacks, idle samples included, so time spent
waiting for Redis shows up); ``summarize(path)`` splits the samples into
categories (first match wins, checked from the most specific).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RATE_HZ = 1000

# (category, substrings: a sample belongs to the first category one of whose
# substrings occurs in its stack). Order matters: specific before general.
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("assign: Lua script round trip (RedisStore.assign)", ("assign (tasks/state/redis_store.py",)),
    ("after the answer: send the job's side effects (tag, rebalance)", ("send_held (tasks/worker/side_effects.py",)),
    ("rebalance job (reads the whole pool)", ("rebalance (tasks/pool/service.py",)),
    ("top-up job (counters only)", ("top_up (tasks/pool/service.py",)),
    ("apply_snapshot job", ("apply_snapshot (tasks/pool/service.py",)),
    ("assign: rest of PoolService.assign", ("assign (tasks/pool/service.py",)),
    ("store the result (backend SET + PUBLISH)", ("store_result", "mark_as_done", "_store_result")),
    ("per-job logging (tasks/worker/logs.py, logging)", ("tasks/worker/logs.py", "logging/__init__.py")),
    ("other work inside the task (Celery trace)", ("celery/app/trace.py",)),
    ("receive + decode the message (kombu/celery)", ("on_message", "_receive", "on_task_received", "loads")),
    ("idle: waiting for the next message", ("poll (", "epoll", "select (", "_poll", "hub.py")),
]
OTHER = "other (worker loop, ack, prefetch, heartbeats)"


def _pyspy() -> str:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        raise SystemExit("py-spy is not installed: pip install -e '.[bench]'")
    return exe


@contextlib.contextmanager
def record(pid: int, out_path: Path, *, rate_hz: int = RATE_HZ) -> Iterator[None]:
    """Sample ``pid`` with py-spy while the ``with`` block runs; collapsed stacks land in ``out_path``."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [_pyspy(), "record", "--pid", str(pid), "--rate", str(rate_hz), "--format", "raw"]
    argv += ["--idle", "--nonblocking", "--output", str(out_path)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # attach
    if proc.poll() is not None:
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise RuntimeError(f"py-spy could not attach to {pid}: {err.strip()}")
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def categorize(stack: str) -> str:
    for name, needles in CATEGORIES:
        if any(n in stack for n in needles):
            return name
    return OTHER


def summarize(path: Path, *, top: int = 15) -> dict[str, Any]:
    """Sample shares by category, busy vs idle, and the hottest leaf functions while busy."""
    by_category: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = background = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        if stack.startswith("Thread._bootstrap"):
            # Not the worker's main thread (the tag linger timer, waiting): not the job's time.
            background += count
            continue
        total += count
        category = categorize(stack)
        by_category[category] += count
        if not category.startswith("idle"):
            leaves[stack.rsplit(";", 1)[-1]] += count
    busy = total - sum(v for k, v in by_category.items() if k.startswith("idle"))
    return {
        "samples": total,
        "background_thread_samples": background,
        "rate_hz": RATE_HZ,
        "busy_share": round(busy / total, 3) if total else 0.0,
        "categories": {k: round(v / total, 4) for k, v in by_category.most_common()},
        "busy_categories": {
            k: round(v / busy, 4) for k, v in by_category.most_common() if not k.startswith("idle") and busy
        },
        "hot_leaves_busy": [{"frame": f, "share_of_busy": round(c / busy, 4)} for f, c in leaves.most_common(top)]
        if busy
        else [],
    }


if __name__ == "__main__":
    import json

    print(json.dumps(summarize(Path(sys.argv[1])), indent=2))
