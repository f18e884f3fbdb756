"""Every warmpool error, in one place.

The hierarchy::

    WarmpoolError                    base of everything raised on purpose
    ├── ConfigError                  a setting (variable or its *_FILE) has an unusable value
    ├── InvalidProject               a project id does not match PROJECT_ID_PATTERN
    ├── InvalidRequest               any other bad argument (an absurd wait, a malformed job or pool name)
    │   └── UnknownPool              a well-formed pool name that no pool of the configuration has
    ├── NoCapacity                   no machine became available within the caller's wait
    ├── PoolUnavailable              no pool worker answered in time (or its store is down)
    ├── JobFailed                    the pool worker failed the job unexpectedly (a bug)
    ├── StateError                   the state store refused or could not do a transition
    │   └── StoreUnavailable         Redis (state store) did not answer
    └── CloudError                   an AWS call failed (after botocore's own retries)
        ├── CloudThrottled           Throttling / RequestLimitExceeded: retry later
        ├── CloudUnavailable         endpoint unreachable, 5xx: retry later
        ├── GroupNotFound            the configured Auto Scaling Group does not exist
        └── CapacityRejected         AWS refused a capacity change (MaxSize/MinSize)

Producers raise the caller-facing ones (InvalidProject, InvalidRequest,
NoCapacity, PoolUnavailable, JobFailed) from the stable ``code`` of a result;
``producer`` re-exports them.
"""

from __future__ import annotations


class WarmpoolError(Exception):
    """Base class of every error warmpool raises on purpose."""

    code = "error"


class ConfigError(WarmpoolError):
    """Bad settings: ``problems`` has one line per bad setting (variable, value, what is allowed)."""

    code = "config_error"

    def __init__(self, message: str, *, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems or (message,)


class InvalidProject(WarmpoolError):
    code = "invalid_project"


class InvalidRequest(WarmpoolError):
    code = "bad_request"


class UnknownPool(InvalidRequest):
    """No configured pool has this name (refused before anything is enqueued)."""

    code = "unknown_pool"

    def __init__(self, message: str, *, pool: str | None = None) -> None:
        super().__init__(message)
        self.pool = pool


class NoCapacity(WarmpoolError):
    code = "no_capacity"

    def __init__(self, message: str, *, capped: bool = False, max_size: int | None = None) -> None:
        super().__init__(message)
        self.capped = capped
        self.max_size = max_size


class PoolUnavailable(WarmpoolError):
    code = "pool_unavailable"


class JobFailed(WarmpoolError):
    code = "internal_error"


class StateError(WarmpoolError):
    code = "state_error"


class StoreUnavailable(StateError):
    code = "store_unavailable"


class CloudError(WarmpoolError):
    code = "cloud_error"

    def __init__(self, message: str, *, action: str = "", aws_code: str = "") -> None:
        super().__init__(message)
        self.action = action
        self.aws_code = aws_code


class CloudThrottled(CloudError):
    code = "cloud_throttled"


class CloudUnavailable(CloudError):
    code = "cloud_unavailable"


class GroupNotFound(CloudError):
    code = "group_not_found"


class CapacityRejected(CloudError):
    code = "capacity_rejected"
