"""The counts of the last hour (the dashboard's chart), sampled from the status reads of the gateway.

Every pool status this gateway reads (``GET /v1/pool``, ``/metrics`` scrapes,
open dashboards) is a sample, one per SAMPLE_S at most; no status job is sent
for the history alone, so a gateway nobody asks shows gaps, and a new one
starts with none.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from typing import Any

SAMPLE_S = 5.0
HISTORY_S = 3_600.0


class CountsHistory:
    """Idle / assigned / pending / waiting over the last hour, one sample per ``sample_s`` at most."""

    def __init__(self, *, sample_s: float = SAMPLE_S, keep_s: float = HISTORY_S) -> None:
        self.sample_s = sample_s
        self.keep_s = keep_s
        self.samples: deque[dict[str, float]] = deque(maxlen=int(keep_s / sample_s) + 2)

    def record(self, status: Mapping[str, Any], *, now: float | None = None) -> None:
        """Add a sample of ``status`` unless the last one is younger than ``sample_s``."""
        now = time.time() if now is None else now
        if self.samples and now - self.samples[-1]["t"] < self.sample_s:
            return
        counts = status.get("counts") or {}
        self.samples.append(
            {
                "t": now,
                "idle": counts.get("idle", 0),
                "assigned": counts.get("assigned", 0),
                "pending": counts.get("pending", 0),
                "waiting": len(status.get("waiting") or []),
            }
        )

    def last_hour(self, *, now: float | None = None) -> list[dict[str, float]]:
        """The samples of the last ``keep_s``, oldest first."""
        now = time.time() if now is None else now
        return [s for s in self.samples if now - s["t"] <= self.keep_s]
