"""Demand traces: CSV ``at,project_id,event`` (``at`` ISO 8601 with an offset, or epoch seconds)."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tasks.contract import validate_project_id
from tasks.errors import InvalidProject

ASSIGN, RELEASE = "assign", "release"
HEADER = ("at", "project_id", "event")


class TraceError(ValueError):
    """A trace that cannot be replayed: the line number and what is wrong."""


@dataclass(frozen=True, order=True)
class TraceEvent:
    at: float  # epoch seconds
    line: int  # in the file (ties keep file order)
    project_id: str
    event: str


def parse_time(raw: str) -> float:
    """ISO 8601 with an offset (``Z`` allowed) or epoch seconds; ValueError otherwise."""
    text = raw.strip()
    try:
        value = float(text)
    except ValueError:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            raise ValueError("an ISO 8601 time needs an offset (e.g. +05:30 or Z)") from None
        return moment.timestamp()
    if not math.isfinite(value) or value < 0:
        raise ValueError("epoch seconds must be a finite number >= 0")
    return value


def _row(number: int, row: list[str]) -> TraceEvent:
    if len(row) != 3:
        raise TraceError(f"line {number}: expected 3 fields at,project_id,event, got {len(row)}")
    at, project, event = (x.strip() for x in row)
    try:
        when = parse_time(at)
    except ValueError as exc:
        raise TraceError(f"line {number}: at {at!r:.60}: {exc}") from None
    try:
        validate_project_id(project)
    except InvalidProject as exc:
        raise TraceError(f"line {number}: project_id {project!r:.60}: {exc}") from None
    if event not in (ASSIGN, RELEASE):
        raise TraceError(f"line {number}: event {event!r:.40}: expected assign or release")
    return TraceEvent(when, number, project, event)


def parse_rows(lines: Iterable[str]) -> list[TraceEvent]:
    """The events of a trace's lines, sorted by time (rows may come in any order)."""
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None or tuple(h.strip() for h in header) != HEADER:
        raise TraceError(f"line 1: expected the header {','.join(HEADER)}")
    events = [_row(reader.line_num, row) for row in reader if row]
    if not any(e.event == ASSIGN for e in events):
        raise TraceError("the trace has no assign")
    return sorted(events)


def read_trace(path: str | Path) -> list[TraceEvent]:
    """The events of the CSV file at ``path``; TraceError naming the line otherwise."""
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            return parse_rows(fh)
    except OSError as exc:
        raise TraceError(f"{path}: cannot read the trace ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise TraceError(f"{path}: not UTF-8 text") from None
