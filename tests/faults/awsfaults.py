"""AWS that misbehaves like AWS: sandbox.awsproxy.AwsFaultProxy plus the capacity checks moto lacks.

moto 5.2.5 accepts any desired capacity and any termination; real Auto Scaling
answers ``ValidationError`` when ``SetDesiredCapacity`` leaves [MinSize,
MaxSize] or a decrementing ``TerminateInstanceInAutoScalingGroup`` would go
below MinSize. ``CapacityProxy`` adds exactly that (with AWS's own messages)
in front of moto, on top of the fault proxy's latency, throttling, 5xx and
refusal, and records every capacity request it saw.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import boto3

from sandbox.awsproxy import AwsFaultProxy, _Handler, _query_error, _request_id, describe_request


@dataclass(frozen=True)
class CapacityRequest:
    action: str  # SetDesiredCapacity | TerminateInstanceInAutoScalingGroup
    value: str  # the desired capacity, or the instance id
    decrement: bool
    min_size: int
    max_size: int
    desired: int  # the group's desired capacity when the request arrived
    rejected: str  # AWS's ValidationError message, "" when forwarded


class CapacityProxy(AwsFaultProxy):
    """An AwsFaultProxy that validates capacity changes like Auto Scaling does, and records them."""

    def __init__(self, upstream_url: str, **kwargs: Any) -> None:
        super().__init__(upstream_url, **kwargs)
        self._asg = boto3.client(
            "autoscaling",
            endpoint_url=upstream_url,
            region_name="ap-south-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        self._capacity_lock = threading.Lock()
        self.capacity_requests: list[CapacityRequest] = []

    def stop(self) -> None:
        super().stop()
        self._asg.close()

    def _group(self, name: str) -> dict[str, Any] | None:
        groups = self._asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"]
        return dict(groups[0]) if groups else None

    def _group_of(self, instance_id: str) -> dict[str, Any] | None:
        found = self._asg.describe_auto_scaling_instances(InstanceIds=[instance_id])["AutoScalingInstances"]
        return self._group(found[0]["AutoScalingGroupName"]) if found else None

    def _rejection(self, action: str, params: dict[str, str]) -> tuple[str, CapacityRequest | None]:
        if action == "SetDesiredCapacity":
            group = self._group(params.get("AutoScalingGroupName", ""))
            value, decrement = params.get("DesiredCapacity", ""), False
        elif action == "TerminateInstanceInAutoScalingGroup":
            value = params.get("InstanceId", "")
            group = self._group_of(value)
            decrement = params.get("ShouldDecrementDesiredCapacity", "").lower() == "true"
        else:
            return "", None
        if group is None:
            return "", None
        low, high, desired = int(group["MinSize"]), int(group["MaxSize"]), int(group["DesiredCapacity"])
        message = ""
        if action == "SetDesiredCapacity" and value.isdigit() and int(value) > high:
            message = f"New SetDesiredCapacity value {value} is above max value {high} for the AutoScalingGroup."
        elif action == "SetDesiredCapacity" and value.isdigit() and int(value) < low:
            message = f"New SetDesiredCapacity value {value} is below min value {low} for the AutoScalingGroup."
        elif decrement and desired - 1 < low:
            message = (
                f"Currently, desiredSize equals minSize ({low}). Terminating instance without replacement will "
                "violate group's min size constraint. Either set shouldDecrementDesiredCapacity flag to false or "
                "lower group's min size."
            )
        return message, CapacityRequest(action, value, decrement, low, high, desired, message)

    def _proxy(self, handler: _Handler, body: bytes) -> None:
        _, _, action = describe_request(handler.headers, handler.path, body)
        if action in ("SetDesiredCapacity", "TerminateInstanceInAutoScalingGroup"):
            params = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
            # One capacity change at a time, checked against the group as it is now.
            with self._capacity_lock:
                message, request = self._rejection(action, params)
                if request is not None:
                    self.capacity_requests.append(request)
                if message:
                    payload = _query_error("ValidationError", message, sender=True)
                    handler.send(400, [("Content-Type", "text/xml"), ("x-amzn-RequestId", _request_id())], payload)
                    return
                super()._proxy(handler, body)
            return
        super()._proxy(handler, body)

    def rejected(self, action: str | None = None) -> list[CapacityRequest]:
        return [r for r in self.capacity_requests if r.rejected and (action is None or r.action == action)]
