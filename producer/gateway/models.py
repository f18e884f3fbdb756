"""Response and request models of the OpenAPI document (the routes answer plain JSON)."""

from __future__ import annotations

from typing import Any

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field

from tasks.contract import (
    MAX_LEASE_S,
    MAX_WAIT_S,
    PROJECT_ID_PATTERN,
    STATUS_ASSIGNED,
    STATUS_NO_LEASE,
    STATUS_RELEASED,
    STATUS_TOUCHED,
)

# No class docstrings here: pydantic would put them into the OpenAPI document.


class ErrorBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    code: str = Field(description="stable machine-readable error code")
    message: str


class LegacyMachine(BaseModel):
    ip: str | None
    instanceId: str  # noqa: N815 - the original orchestrator's key


class LegacyNoMachine(BaseModel):
    error: str = Field(examples=["No idle machine found"])


class AssignResult(BaseModel):
    model_config = ConfigDict(extra="allow")
    status: str = Field(examples=[STATUS_ASSIGNED])
    project_id: str
    instance_id: str
    ip: str | None
    private_ip: str | None
    assigned_at: str


class ReleaseResult(BaseModel):
    model_config = ConfigDict(extra="allow")
    status: str = Field(examples=[STATUS_RELEASED])
    project_id: str
    instance_id: str | None = None


class AssignRequest(BaseModel):
    wait: float = Field(0.0, ge=0, le=MAX_WAIT_S, description="seconds to wait for a machine")
    lease: float | None = Field(
        None, ge=0, le=MAX_LEASE_S, description="lease length in seconds (renew with /touch); 0: no lease"
    )


class TouchRequest(BaseModel):
    lease: float | None = Field(None, ge=0, le=MAX_LEASE_S, description="new lease length in seconds")


class TouchResult(BaseModel):
    model_config = ConfigDict(extra="allow")
    status: str = Field(examples=[STATUS_TOUCHED, STATUS_NO_LEASE])
    project_id: str
    instance_id: str
    lease_expires_at: str | None = None


class Health(BaseModel):
    status: str


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route that can answer these error statuses."""
    return {code: {"model": ErrorBody} for code in codes}


PROJECT_ID_PARAM = Path(
    description="project id: " + PROJECT_ID_PATTERN.pattern,
    json_schema_extra={"pattern": "^" + PROJECT_ID_PATTERN.pattern + "$"},
)
