"""warmpool's caller side: the Python client, the ``warmpool`` CLI and the HTTP gateway.

from producer import PoolClient, NoCapacity, InvalidProject, PoolUnavailable
client = PoolClient()
machine = client.assign("proj-42", wait=30.0)
"""

from __future__ import annotations

from producer.client import PoolClient
from tasks.contract import AssignedMachine
from tasks.contract import AssignedMachine as Machine
from tasks.errors import (
    InvalidProject,
    InvalidRequest,
    JobFailed,
    NoCapacity,
    PoolUnavailable,
    UnknownPool,
    WarmpoolError,
)

__all__ = [
    "AssignedMachine",
    "InvalidProject",
    "InvalidRequest",
    "JobFailed",
    "Machine",
    "NoCapacity",
    "PoolClient",
    "PoolUnavailable",
    "UnknownPool",
    "WarmpoolError",
]
