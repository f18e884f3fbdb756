"""Small statistics, progress lines and the results table (standard library only)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any, TextIO


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    data = sorted(values)
    pos = (len(data) - 1) * q / 100.0
    low, high = math.floor(pos), math.ceil(pos)
    return data[low] + (data[high] - data[low]) * (pos - low)


def summary_ms(latencies_s: Sequence[float]) -> dict[str, Any]:
    """p50/p90/p99/max/mean in milliseconds, and the count."""
    ms = [x * 1000.0 for x in latencies_s]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p90_ms": round(percentile(ms, 90), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "max_ms": round(max(ms), 3) if ms else math.nan,
        "mean_ms": round(sum(ms) / len(ms), 3) if ms else math.nan,
    }


def raw_ms(latencies_s: Iterable[float]) -> list[float]:
    return [round(x * 1000.0, 4) for x in latencies_s]


def ratio(value: float, floor: float) -> float:
    return round(value / floor, 3) if floor and not math.isnan(floor) and not math.isnan(value) else math.nan


class Progress:
    """One status line per task: redrawn in place on a terminal, printed every few seconds otherwise."""

    def __init__(self, label: str, total: int | None = None, *, stream: TextIO = sys.stderr) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self._last = 0.0
        self.note = ""

    def advance(self, n: int = 1, note: str = "") -> None:
        self.done += n
        if note:
            self.note = note
        now = time.monotonic()
        if now - self._last >= (0.1 if self.tty else 5.0):
            self._last = now
            self._draw()

    def _line(self) -> str:
        elapsed = time.monotonic() - self.started
        count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        note = f"  {self.note}" if self.note else ""
        return f"  {self.label}: {count}  {elapsed:5.1f}s{note}"

    def _draw(self) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + self._line())
        else:
            self.stream.write(self._line() + "\n")
        self.stream.flush()

    def close(self, note: str = "") -> None:
        if note:
            self.note = note
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(self._line() + "\n")
        self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_T0 = time.monotonic()


def say(message: str) -> None:
    """A progress message on stderr, stamped with seconds since start (the table goes to stdout)."""
    lead = message[: len(message) - len(message.lstrip("\n"))]
    print(f"{lead}[{time.monotonic() - _T0:6.1f}s] {message.lstrip()}", file=sys.stderr, flush=True)


def wait_until(check: Any, *, timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    """Poll ``check`` until it returns something truthy; TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


def format_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain aligned text table (also valid Markdown)."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)
