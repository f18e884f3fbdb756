"""The economics benchmark's demand trace: 14 days of a class-based platform (docs/economics.md).

- Background: a Poisson process whose rate follows the time of day and the day of the week
  (Asia/Kolkata): weekdays 150 assigns/h from 09:00 to 18:00, 50/h from 18:00 to 24:00 and
  07:00 to 09:00, 10/h at night; weekends 30 % of that. Sessions last an exponential time,
  mean 45 minutes.
- Class starts: every weekday at 08:45 (60 students) and 14:00 (40 students), each student's
  claim uniform within the first 3 minutes, the whole class shifted by up to +-2 minutes from
  day to day; a class lasts 90 minutes (each student leaves within 10 minutes of its end).

About 20,000 assigns in 14 days. Deterministic for a seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

ZONE = ZoneInfo("Asia/Kolkata")
START = datetime(2026, 11, 30, tzinfo=ZONE)  # a Monday
DAYS = 14
CLASSES = ((8, 45, 60), (14, 0, 40))  # hour, minute, students (weekdays)
SESSION_MEAN_S = 45 * 60.0
CLASS_S = 90 * 60.0


@dataclass(frozen=True)
class Row:
    at: float
    project_id: str
    event: str


def hourly_rate(moment: datetime) -> float:
    """Background assigns per hour at ``moment`` (local time)."""
    hour = moment.hour
    if 9 <= hour < 18:
        rate = 150.0
    elif hour >= 18 or 7 <= hour < 9:
        rate = 50.0
    else:
        rate = 10.0
    return rate * (0.3 if moment.weekday() >= 5 else 1.0)


def generate(*, seed: int = 11, days: int = DAYS, start: datetime = START) -> list[Row]:
    """Every assign and release of the trace, in time order."""
    rng = random.Random(seed)
    rows: list[Row] = []
    n = 0

    def session(at: float, length: float) -> None:
        nonlocal n
        n += 1
        project = f"proj-{n:06d}"
        rows.append(Row(at, project, "assign"))
        rows.append(Row(at + length, project, "release"))

    # Background: thinning of a Poisson process at the peak rate.
    peak = 150.0 / 3600
    t, end = start.timestamp(), (start + timedelta(days=days)).timestamp()
    while True:
        t += rng.expovariate(peak)
        if t >= end:
            break
        if rng.random() < hourly_rate(datetime.fromtimestamp(t, tz=ZONE)) / 3600 / peak:
            session(t, rng.expovariate(1 / SESSION_MEAN_S))
    for day in range(days):
        date = start + timedelta(days=day)
        if date.weekday() >= 5:
            continue
        for hour, minute, students in CLASSES:
            begin = date.replace(hour=hour, minute=minute).timestamp() + rng.uniform(-120, 120)
            for _ in range(students):
                session(begin + rng.uniform(0, 180), CLASS_S + rng.uniform(0, 600))
    return sorted(rows, key=lambda r: (r.at, r.event != "release"))


def write(path: Path, rows: list[Row]) -> None:
    """The trace as warmpool simulate reads it (epoch seconds)."""
    with path.open("w", encoding="utf-8") as fh:
        fh.write("at,project_id,event\n")
        for r in rows:
            fh.write(f"{r.at:.3f},{r.project_id},{r.event}\n")
