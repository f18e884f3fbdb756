"""Builders of the contract suites (a copy of tests/unit/builders.py's, kept separate so the
two test packages import nothing from each other)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from tasks.model import CloudInstance, GroupSnapshot

ASG = "test-asg"


def iid(n: int) -> str:
    return f"i-{n:017x}"


def ready(n: int, **changes: object) -> CloudInstance:
    """An instance that classify() calls READY (both address kinds), with overrides."""
    inst = CloudInstance(
        instance_id=iid(n),
        lifecycle_state="InService",
        health_status="Healthy",
        ec2_state="running",
        private_ip=f"10.0.0.{n % 250 + 1}",
        public_ip=f"198.51.100.{n % 250 + 1}",
        availability_zone="ap-south-1a" if n % 2 else "ap-south-1b",
        launched_at=1_000.0 + n,
    )
    return replace(inst, **changes)  # type: ignore[arg-type]


def snapshot(
    instances: Iterable[CloudInstance],
    *,
    observed_at: float = 1_000.0,
    min_size: int = 0,
    max_size: int = 10,
    desired: int | None = None,
    name: str = ASG,
) -> GroupSnapshot:
    insts = tuple(instances)
    return GroupSnapshot(
        name=name,
        min_size=min_size,
        max_size=max_size,
        desired_capacity=len(insts) if desired is None else desired,
        instances=insts,
        observed_at=observed_at,
    )
