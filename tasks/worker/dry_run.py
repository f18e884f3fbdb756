"""WARMPOOL_DRY_RUN=1: every AWS change the pool worker plans is logged, none is sent.

``DryRunEffects`` wraps the pool worker's SideEffects: launches (desired capacity),
terminations and tags are logged as "would ..." and dropped; what changes nothing in AWS
(refreshes, readiness probes, top-ups, results to waiting callers) goes through. The plan
is visible in status (``would_launch``, ``would_terminate``: tasks.pool.operations).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from tasks.pool.model import Machine
from tasks.pool.ports import SideEffects

log = logging.getLogger("warmpool.dry_run")


class DryRunEffects:
    """SideEffects that log AWS changes instead of sending them (reads and deliveries pass)."""

    def __init__(self, inner: SideEffects) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:  # hold / send_held / flush_tags of CelerySideEffects
        return getattr(self.inner, name)

    def tag_assignments(self, machines: Sequence[Machine]) -> None:
        for m in machines:
            log.info("dry run: would tag and protect", extra={"instance_id": m.instance_id, "project_id": m.project_id})

    def terminate(self, instance_id: str, *, decrement: bool) -> None:
        log.info("dry run: would terminate", extra={"instance_id": instance_id, "decrement": decrement})

    def set_desired(self, desired: int) -> None:
        log.info("dry run: would set desired capacity", extra={"desired": desired})

    def tag_group(self, epoch: str) -> None:
        log.info("dry run: would tag the group", extra={"epoch": epoch})

    def top_up(self) -> None:
        self.inner.top_up()

    def refresh(self, *, delay_s: float) -> None:
        self.inner.refresh(delay_s=delay_s)

    def probe(self, candidates: list[tuple[str, str]]) -> None:
        self.inner.probe(candidates)

    def deliver(self, request_id: str, result: dict[str, Any]) -> None:
        self.inner.deliver(request_id, result)
