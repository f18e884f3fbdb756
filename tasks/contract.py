"""The external contract shared by producers and the worker: ids, result shapes, codes.

This module is pure (standard library only) so producers can import it without
pulling in boto3 or the worker's Celery app.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from tasks.errors import InvalidProject, InvalidRequest

# Bounds of the durations callers may ask for (client, gateway and worker alike).
MAX_WAIT_S: Final = 3600.0
MAX_LEASE_S: Final = 30 * 86_400.0

PROJECT_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
INSTANCE_ID_PATTERN: Final = re.compile(r"i-[0-9a-f]{8,32}")
# The most instance ids one job may name (far above any group's size: AWS caps a group at thousands).
MAX_INSTANCE_IDS: Final = 10_000

# Celery task names (the wire contract between producers, beat and workers).
TASK_ASSIGN: Final = "warmpool.assign"
TASK_RELEASE: Final = "warmpool.release"
TASK_STATUS: Final = "warmpool.status"
TASK_TOP_UP: Final = "warmpool.rebalance"  # wire name of the first release: the counter-only top-up
TASK_APPLY_SNAPSHOT: Final = "warmpool.apply_snapshot"
TASK_REFRESH: Final = "warmpool.refresh"
TASK_AWS_TAG_ASSIGNMENTS: Final = "warmpool.aws.tag"
TASK_AWS_TERMINATE: Final = "warmpool.aws.terminate"
TASK_AWS_SET_DESIRED: Final = "warmpool.aws.set_desired"
TASK_AWS_PROBE: Final = "warmpool.aws.probe"
TASK_AWS_TAG_GROUP: Final = "warmpool.aws.tag_group"
TASK_RELEASE_QUARANTINED: Final = "warmpool.release_quarantined"
TASK_TOUCH: Final = "warmpool.touch"
TASK_MARK_READY: Final = "warmpool.mark_ready"
TASK_PING: Final = "warmpool.ping"
# Withdraw an assign whose caller left: args (request id of the assign, project id).
TASK_WITHDRAW: Final = "warmpool.withdraw"
# Operator commands (tasks.worker.ops_jobs; docs/operations.md).
TASK_PAUSE: Final = "warmpool.pause"
TASK_RESUME: Final = "warmpool.resume"
TASK_FORCE_RELEASE: Final = "warmpool.force_release"
TASK_ADOPT: Final = "warmpool.adopt"
TASK_RECYCLE: Final = "warmpool.recycle"

POOL_QUEUE: Final = "pool"
AWS_QUEUE: Final = "aws"

# Result statuses.
STATUS_ASSIGNED: Final = "assigned"
STATUS_RELEASED: Final = "released"
STATUS_NOT_ASSIGNED: Final = "not_assigned"
STATUS_FAILED: Final = "failed"
STATUS_WAITING: Final = "waiting"  # internal: the caller was queued; its result comes later
STATUS_TOUCHED: Final = "touched"
STATUS_NO_LEASE: Final = "no_lease"
STATUS_WITHDRAWN: Final = "withdrawn"  # the assign's caller left: its place or its new machine given back
# Celery state of an assign job whose caller waits in the queue (set before Ignore()).
STATE_WAITING: Final = "WAITING"

# Stable failure codes carried by {"status": "failed", "code": ...} results.
CODE_INVALID_PROJECT: Final = "invalid_project"
CODE_NO_CAPACITY: Final = "no_capacity"
CODE_BAD_REQUEST: Final = "bad_request"
CODE_INTERNAL: Final = "internal_error"
CODE_STORE_UNAVAILABLE: Final = "store_unavailable"
CODE_WRONG_GROUP: Final = "wrong_group"  # the job is for another group than the worker's
CODE_UNKNOWN_POOL: Final = "unknown_pool"  # no configured pool has the job's pool name
CODE_WRONG_POOL: Final = "wrong_pool"  # the job's pool is owned by another pool worker

# Why a worker set a message aside instead of running it (tasks.worker.screening):
# the dead-letter list's ``reason`` and the keys of status' ``dead_letters_by_reason``.
REFUSED_UNKNOWN_TASK: Final = "unknown_task"  # a task name no warmpool worker runs
REFUSED_BAD_HEADERS: Final = "bad_headers"  # Celery protocol 2 headers missing or of the wrong type
REFUSED_CONTENT_TYPE: Final = "bad_content_type"  # anything but JSON (pickle, yaml, none)
REFUSED_TOO_LARGE: Final = "too_large"  # a body above tasks.worker.screening.MAX_MESSAGE_BYTES
REFUSED_BAD_BODY: Final = "bad_body"  # not [args, kwargs, embed], undecodable, or a workflow to chain
REFUSED_UNHANDLED: Final = "unhandled"  # Celery failed on it in a way no check above foresaw

# Tags on EC2 instances: the durable truth of an assignment (docs/design.md invariant 7).
TAG_PROJECT: Final = "warmpool:project"
TAG_ASSIGNED_AT: Final = "warmpool:assigned-at"
# On the Auto Scaling Group itself: the identity of the pool state that manages it.
# An empty state on a group that carries it was lost (not a first start).
TAG_EPOCH: Final = "warmpool:epoch"


def validate_project_id(value: Any) -> str:
    """Return ``value`` if it is a valid project id, else raise InvalidProject."""
    if not isinstance(value, str):
        raise InvalidProject(f"project id must be a string, got {type(value).__name__}")
    if PROJECT_ID_PATTERN.fullmatch(value) is None:
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise InvalidProject(
            f"invalid project id {shown!r}: use 1-128 characters from A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit"
        )
    return value


def is_instance_id(value: str) -> bool:
    """True for an EC2 instance id (``i-`` and 8 to 32 hex digits)."""
    return INSTANCE_ID_PATTERN.fullmatch(value) is not None


def check_seconds(value: Any, name: str, *, high: float) -> float:
    """Validate a duration in seconds: a finite number in [0, ``high``]; InvalidRequest otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"{name} must be a number of seconds, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0 or value > high:
        raise InvalidRequest(f"{name} must be between 0 and {high:.0f} seconds, got {value!r}")
    return float(value)


def group_mismatch(group: Any, *, own: str) -> str | None:
    """Why a job for ``group`` is not for a worker of group ``own`` (None: it is; a job naming none is).

    Pool state is per group but queue names are not: two groups on one broker
    would consume each other's jobs. A worker refuses those instead.
    """
    if group is None or group == own:
        return None
    shown = repr(group) if not isinstance(group, str) else repr(group[:255])
    return (
        f"this job is for group {shown} but this worker serves group {own!r}: "
        "give each group its own broker (or virtual host / Redis database) so their queues never mix"
    )


def failure(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """Build a failed-job result with a stable ``code``."""
    return {"status": STATUS_FAILED, "code": code, "message": message, **extra}


@dataclass(frozen=True)
class AssignedMachine:
    """A machine handed to a project (what ``PoolClient.assign`` returns)."""

    instance_id: str
    ip: str | None
    project_id: str
    assigned_at: str
    private_ip: str | None = None
    pool: str | None = None  # the pool it came from

    @classmethod
    def from_result(cls, result: Mapping[str, Any]) -> AssignedMachine:
        return cls(
            instance_id=str(result["instance_id"]),
            ip=result.get("ip"),
            project_id=str(result["project_id"]),
            assigned_at=str(result["assigned_at"]),
            private_ip=result.get("private_ip"),
            pool=result.get("pool"),
        )
