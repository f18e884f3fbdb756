"""The cloud port (Auto Scaling + EC2) and its boto3 implementation.

Every method is idempotent: calling it twice has the effect of calling it once,
so side-effect jobs can be redelivered and retried freely. AWS errors are mapped
onto tasks.errors.CloudError subclasses; "already done" answers (instance gone,
already terminating) are success.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import boto3
import botocore.exceptions
import botocore.session
from botocore.config import Config
from botocore.credentials import AssumeRoleCredentialFetcher, DeferredRefreshableCredentials

from tasks.contract import TAG_ASSIGNED_AT, TAG_EPOCH, TAG_PROJECT
from tasks.errors import (
    CapacityRejected,
    CloudError,
    CloudThrottled,
    CloudUnavailable,
    GroupNotFound,
)
from tasks.pool.model import CloudInstance, GroupSnapshot
from tasks.pool.ports import PROTECT_BATCH

_THROTTLE_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "SlowDown",
    }
)
_GONE_MARKERS = (
    "not found",
    "does not exist",
    "notfound",
    "terminated",
    "not part of",
    "invalid instance",
)
_ASG_INSTANCE_PAGE = 100  # DescribeAutoScalingGroups returns every instance of a group
_EC2_PAGE = 1000  # DescribeInstances' largest page


# A page of DescribeInstances carries up to 1,000 instances and can take AWS
# (or a loaded simulator) well over the 10 s a small mutating call gets.
READ_TIMEOUT_S = 10
DESCRIBE_READ_TIMEOUT_S = 60


# Assumed-role credentials last an hour by default; botocore refreshes them this
# long before they expire, in whichever thread needs them first.
ROLE_SESSION_PREFIX = "warmpool-"


def pool_session(
    *, region: str, endpoint_url: str = "", role_arn: str = "", external_id: str = "", pool: str = ""
) -> boto3.session.Session:
    """A session for one pool's AWS calls: default credentials, or ``role_arn`` assumed (and renewed) via STS."""
    if not role_arn:
        return boto3.session.Session(region_name=region)
    source = boto3.session.Session(region_name=region)
    extra: dict[str, Any] = {"RoleSessionName": (ROLE_SESSION_PREFIX + (pool or "pool"))[:64]}
    if external_id:
        extra["ExternalId"] = external_id
    sts_options: dict[str, Any] = {"region_name": region}
    if endpoint_url:
        sts_options["endpoint_url"] = endpoint_url
    fetcher = AssumeRoleCredentialFetcher(
        client_creator=functools.partial(source._session.create_client, **sts_options),
        source_credentials=source._session.get_credentials(),
        role_arn=role_arn,
        extra_args=extra,
    )
    core = botocore.session.Session()
    # Renewed on use before expiry: a worker that runs for days keeps valid credentials.
    credentials = DeferredRefreshableCredentials(method="assume-role", refresh_using=fetcher.fetch_credentials)
    core._credentials = credentials  # type: ignore[attr-defined]
    return boto3.session.Session(botocore_session=core, region_name=region)


def boto_config(*, max_attempts: int = 5, read_timeout_s: float = READ_TIMEOUT_S) -> Config:
    """botocore settings: standard retry mode (throttling and 5xx with backoff), short timeouts."""
    return Config(
        retries={"mode": "standard", "max_attempts": max_attempts},
        connect_timeout=3,
        read_timeout=read_timeout_s,
        max_pool_connections=20,
    )


def _map_error(exc: Exception, action: str) -> CloudError:
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        message = str(err.get("Message", "")) or str(exc)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _THROTTLE_CODES:
            return CloudThrottled(f"{action}: throttled ({code})", action=action, aws_code=code)
        if status >= 500:
            return CloudUnavailable(f"{action}: AWS error {status} {code}", action=action, aws_code=code)
        return CloudError(f"{action}: {code}: {message}", action=action, aws_code=code)
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return CloudUnavailable(f"{action}: {type(exc).__name__}: {exc}", action=action)
    return CloudError(f"{action}: {exc}", action=action)


def _below_min_size(exc: Exception) -> bool:
    """AWS's refusal to decrement below MinSize (judged on AWS's message alone)."""
    response = getattr(exc, "response", {}) or {}
    message = str(response.get("Error", {}).get("Message", "")).lower().replace(" ", "")
    return "minsize" in message or "minimumsize" in message or "mingroupsize" in message


def _is_gone(err: CloudError) -> bool:
    text = str(err).lower()
    return err.aws_code.startswith("InvalidInstanceID") or any(m in text for m in _GONE_MARKERS)


class Boto3Cloud:
    """Cloud on boto3, scoped to one Auto Scaling Group.

    Reads only the configured group (never lists other groups of the region)
    and follows every page of every listing.
    """

    def __init__(
        self,
        asg_name: str,
        *,
        region: str,
        autoscaling: Any = None,
        ec2: Any = None,
        session: boto3.session.Session | None = None,
        endpoint_url: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.asg_name = asg_name
        if session is None and (autoscaling is None or ec2 is None):
            session = boto3.session.Session(region_name=region)
        # A pool's own endpoint (moto, LocalStack) wins over AWS_ENDPOINT_URL, which boto3 reads itself.
        where = endpoint_url or None
        self._asg = autoscaling or session.client("autoscaling", config=boto_config(), endpoint_url=where)  # type: ignore[union-attr]
        self._ec2 = ec2 or session.client("ec2", config=boto_config(), endpoint_url=where)  # type: ignore[union-attr]
        # The refresh's reads get their own clients with a longer read timeout
        # (injected clients, as in tests, serve both).
        reads = boto_config(read_timeout_s=DESCRIBE_READ_TIMEOUT_S)
        self._asg_reads = autoscaling or session.client("autoscaling", config=reads, endpoint_url=where)  # type: ignore[union-attr]
        self._ec2_reads = ec2 or session.client("ec2", config=reads, endpoint_url=where)  # type: ignore[union-attr]
        self._clock = clock
        self._calls: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._lock = threading.Lock()
        for client in {id(c): c for c in (self._asg, self._ec2, self._asg_reads, self._ec2_reads)}.values():
            # Counts every HTTP attempt, retries included: what AWS bills and throttles.
            client.meta.events.register("before-send", self._count)
            client.meta.events.register("response-received", self._count_error)

    def _count(self, request: Any = None, **_: Any) -> None:
        body = getattr(request, "body", b"") or b""
        text = body.decode("ascii", "replace") if isinstance(body, bytes | bytearray) else str(body)
        action = next((p[7:] for p in text.split("&") if p.startswith("Action=")), "unknown")
        with self._lock:
            self._calls[action] += 1

    def _count_error(self, event_name: str = "", response_dict: Any = None, exception: Any = None, **_: Any) -> None:
        # Every attempt's answer, retries included: throttles botocore absorbed count too.
        status = int((response_dict or {}).get("status_code") or 0)
        if exception is not None or status >= 400:
            with self._lock:
                self._errors[event_name.rsplit(".", 1)[-1] or "unknown"] += 1

    def api_calls(self) -> dict[str, int]:
        with self._lock:
            return dict(self._calls)

    def api_errors(self) -> dict[str, int]:
        with self._lock:
            return dict(self._errors)

    def describe_group(self) -> GroupSnapshot:
        observed_at = self._clock()
        group = self._read_group()
        ec2_view = self._read_instances([i["InstanceId"] for i in group.get("Instances", [])])
        instances = tuple(_join(i, ec2_view.get(i["InstanceId"])) for i in group.get("Instances", []))
        return GroupSnapshot(
            name=self.asg_name,
            min_size=int(group["MinSize"]),
            max_size=int(group["MaxSize"]),
            desired_capacity=int(group["DesiredCapacity"]),
            instances=instances,
            observed_at=observed_at,
            epoch_tag=next((str(t.get("Value")) for t in group.get("Tags", []) if t.get("Key") == TAG_EPOCH), None),
        )

    def _read_group(self) -> dict[str, Any]:
        action = "DescribeAutoScalingGroups"
        try:
            pages = self._asg_reads.get_paginator("describe_auto_scaling_groups").paginate(
                AutoScalingGroupNames=[self.asg_name],
                PaginationConfig={"PageSize": _ASG_INSTANCE_PAGE},
            )
            groups = [g for page in pages for g in page.get("AutoScalingGroups", [])]
        except Exception as exc:
            raise _map_error(exc, action) from exc
        for g in groups:
            if g.get("AutoScalingGroupName") == self.asg_name:
                return dict(g)
        raise GroupNotFound(f"Auto Scaling Group {self.asg_name!r} not found", action=action)

    def _read_instances(self, instance_ids: list[str]) -> dict[str, dict[str, Any]]:
        if not instance_ids:
            return {}
        wanted = set(instance_ids)
        found: dict[str, Any] = {}
        try:
            # Filter by the group's own tag rather than by ids: one call per
            # 1000 instances, and MaxResults is allowed with filters.
            pages = self._ec2_reads.get_paginator("describe_instances").paginate(
                Filters=[{"Name": "tag:aws:autoscaling:groupName", "Values": [self.asg_name]}],
                PaginationConfig={"PageSize": _EC2_PAGE},
            )
            for page in pages:
                for reservation in page.get("Reservations", []):
                    for inst in reservation.get("Instances", []):
                        if inst.get("InstanceId") in wanted:
                            found[inst["InstanceId"]] = inst
        except Exception as exc:
            raise _map_error(exc, "DescribeInstances") from exc
        return found

    def set_desired_capacity(self, desired: int) -> None:
        action = "SetDesiredCapacity"
        try:
            self._asg.set_desired_capacity(
                AutoScalingGroupName=self.asg_name,
                DesiredCapacity=desired,
                HonorCooldown=False,
            )
        except Exception as exc:
            err = _map_error(exc, action)
            if err.aws_code == "ValidationError":
                raise CapacityRejected(str(err), action=action, aws_code=err.aws_code) from exc
            raise err from exc

    def raise_desired_capacity(self, desired: int) -> bool:
        """Set desired capacity to ``desired`` only if that raises it; False when it is already there.

        Capacity requests from successive rebalances can land out of order; a
        lower value would let AWS choose victims, possibly assigned machines
        not protected yet. Shrinking is done by terminating named idle machines.
        """
        if desired <= int(self._read_group()["DesiredCapacity"]):
            return False
        self.set_desired_capacity(desired)
        return True

    def terminate_instance(self, instance_id: str, *, decrement: bool) -> bool:
        """Terminate one instance; False when it was already gone."""
        action = "TerminateInstanceInAutoScalingGroup"
        try:
            self._asg.terminate_instance_in_auto_scaling_group(
                InstanceId=instance_id, ShouldDecrementDesiredCapacity=decrement
            )
            return True
        except Exception as exc:
            err = _map_error(exc, action)
            if err.aws_code == "ValidationError" and _is_gone(err):
                return False
            if err.aws_code == "ValidationError" and decrement and _below_min_size(exc):
                # Decrementing would go below MinSize: let AWS replace it instead.
                return self.terminate_instance(instance_id, decrement=False)
            raise err from exc

    def tag_group(self, epoch: str) -> None:
        """Tag the group itself with the pool state's epoch (not propagated to instances)."""
        tag: Any = {
            "ResourceId": self.asg_name,
            "ResourceType": "auto-scaling-group",
            "Key": TAG_EPOCH,
            "Value": epoch,
            "PropagateAtLaunch": False,
        }
        try:
            self._asg.create_or_update_tags(Tags=[tag])
        except Exception as exc:
            raise _map_error(exc, "CreateOrUpdateTags") from exc

    def tag_and_protect(self, instance_id: str, *, project_id: str, assigned_at: str) -> bool:
        """Tag and protect an assigned instance; False when it is already gone."""
        return self.tag_project(instance_id, project_id=project_id, assigned_at=assigned_at) and bool(
            self.protect([instance_id])
        )

    def tag_project(self, instance_id: str, *, project_id: str, assigned_at: str) -> bool:
        """Tag an instance with its project (CreateTags); False when it is already gone."""
        try:
            self._ec2.create_tags(
                Resources=[instance_id],
                Tags=[
                    {"Key": TAG_PROJECT, "Value": project_id},
                    {"Key": TAG_ASSIGNED_AT, "Value": assigned_at},
                ],
            )
        except Exception as exc:
            err = _map_error(exc, "CreateTags")
            if _is_gone(err):
                return False
            raise err from exc
        return True

    def protect(self, instance_ids: Sequence[str]) -> list[str]:
        """Protect instances from scale-in, 50 per call; returns those still in the group."""
        protected: list[str] = []
        for start in range(0, len(instance_ids), PROTECT_BATCH):
            chunk = list(instance_ids[start : start + PROTECT_BATCH])
            if self._protect_chunk(chunk):
                protected.extend(chunk)
            elif len(chunk) > 1:
                # AWS refuses the whole call when one instance left the group:
                # find which, one call each (rare: a machine lost while assigned).
                protected.extend(i for i in chunk if self._protect_chunk([i]))
        return protected

    def _protect_chunk(self, instance_ids: list[str]) -> bool:
        try:
            self._asg.set_instance_protection(
                InstanceIds=instance_ids,
                AutoScalingGroupName=self.asg_name,
                ProtectedFromScaleIn=True,
            )
        except Exception as exc:
            err = _map_error(exc, "SetInstanceProtection")
            if err.aws_code == "ValidationError" and _is_gone(err):
                return False
            raise err from exc
        return True


def _join(asg_inst: Any, ec2_view: Any) -> CloudInstance:
    ec2_inst: dict[str, Any] = dict(ec2_view or {})
    tags = {t.get("Key"): t.get("Value") for t in ec2_inst.get("Tags", []) or []}
    launched = ec2_inst.get("LaunchTime")
    return CloudInstance(
        instance_id=asg_inst["InstanceId"],
        lifecycle_state=str(asg_inst.get("LifecycleState", "")),
        health_status=str(asg_inst.get("HealthStatus", "")),
        ec2_state=str((ec2_inst.get("State") or {}).get("Name", "")),
        private_ip=ec2_inst.get("PrivateIpAddress") or None,
        public_ip=ec2_inst.get("PublicIpAddress") or None,
        availability_zone=str(asg_inst.get("AvailabilityZone", "")),
        protected_from_scale_in=bool(asg_inst.get("ProtectedFromScaleIn", False)),
        project_tag=tags.get(TAG_PROJECT),
        assigned_at_tag=tags.get(TAG_ASSIGNED_AT),
        launched_at=float(launched.timestamp()) if launched is not None else 0.0,
        template_version=str((asg_inst.get("LaunchTemplate") or {}).get("Version") or ""),
    )
