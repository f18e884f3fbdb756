"""An in-memory Cloud behaving like real AWS where moto does not.

Unlike moto it launches instances as Pending and makes them InService only
after ``launch_delay_s``, rejects desired capacity outside MinSize/MaxSize,
refuses a decrementing termination below MinSize, and forgets terminated
instances. Tests and benchmarks use it behind the Cloud port.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from tasks.contract import TAG_EPOCH
from tasks.errors import CapacityRejected, CloudError
from tasks.pool.model import CloudInstance, GroupSnapshot
from tasks.pool.ports import PROTECT_BATCH


@dataclass
class _Inst:
    cloud: CloudInstance
    ready_at: float


class FakeCloud:
    """A single simulated Auto Scaling Group."""

    def __init__(
        self,
        name: str = "heavrdevs-asg",
        *,
        min_size: int = 0,
        max_size: int = 10,
        desired: int = 0,
        launch_delay_s: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.min_size = min_size
        self.max_size = max_size
        self.desired = 0
        self.launch_delay_s = launch_delay_s
        self._clock = clock
        self._ids = itertools.count(1)
        self._instances: dict[str, _Inst] = {}
        self._calls: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.fail_next: list[CloudError] = []  # raised by the next calls, in order
        self.group_tags: dict[str, str] = {}
        self.template_version = "1"  # what new launches carry (a test changes it: a new template)
        self.desired = desired
        self._fill()

    # -- test controls ----------------------------------------------------
    def instances(self) -> dict[str, CloudInstance]:
        with self._lock:
            self._settle()
            return {iid: i.cloud for iid, i in self._instances.items()}

    def vanish(self, instance_id: str) -> None:
        """The instance disappears without warmpool asking (spot interruption...)."""
        with self._lock:
            self._instances.pop(instance_id, None)

    # -- Cloud port -------------------------------------------------------
    def _call(self, action: str) -> None:
        self._calls[action] += 1
        if self.fail_next:
            self._errors[action] += 1
            raise self.fail_next.pop(0)

    def _settle(self) -> None:
        now = self._clock()
        for inst in self._instances.values():
            if inst.ready_at and now >= inst.ready_at and inst.cloud.lifecycle_state == "Pending":
                inst.cloud = replace(inst.cloud, lifecycle_state="InService", ec2_state="running")
                inst.ready_at = 0.0

    def _fill(self) -> None:
        while len(self._instances) < self.desired:
            self._launch()

    def _launch(self) -> None:
        n = next(self._ids)
        iid = f"i-{n:017x}"
        now = self._clock()
        ready = self.launch_delay_s <= 0
        self._instances[iid] = _Inst(
            cloud=CloudInstance(
                instance_id=iid,
                lifecycle_state="InService" if ready else "Pending",
                health_status="Healthy",
                ec2_state="running" if ready else "pending",
                private_ip=f"10.0.{n // 250}.{n % 250 + 1}",
                public_ip=f"198.51.{n // 250}.{n % 250 + 1}",
                availability_zone="ap-south-1a" if n % 2 else "ap-south-1b",
                launched_at=now,
                template_version=self.template_version,
            ),
            ready_at=0.0 if ready else now + self.launch_delay_s,
        )

    def describe_group(self) -> GroupSnapshot:
        with self._lock:
            self._call("DescribeAutoScalingGroups")
            if self._instances:
                self._call("DescribeInstances")
            self._settle()
            return GroupSnapshot(
                name=self.name,
                min_size=self.min_size,
                max_size=self.max_size,
                desired_capacity=self.desired,
                instances=tuple(i.cloud for i in self._instances.values()),
                observed_at=self._clock(),
                epoch_tag=self.group_tags.get(TAG_EPOCH),
            )

    def tag_group(self, epoch: str) -> None:
        with self._lock:
            self._call("CreateOrUpdateTags")
            self.group_tags[TAG_EPOCH] = epoch

    def set_desired_capacity(self, desired: int) -> None:
        with self._lock:
            self._call("SetDesiredCapacity")
            if not self.min_size <= desired <= self.max_size:
                raise CapacityRejected(
                    f"New SetDesiredCapacity value {desired} is outside {self.min_size}..{self.max_size}",
                    action="SetDesiredCapacity",
                    aws_code="ValidationError",
                )
            self.desired = desired
            self._fill()

    def raise_desired_capacity(self, desired: int) -> bool:
        with self._lock:
            self._call("DescribeAutoScalingGroups")
            current = self.desired
        if desired <= current:
            return False
        self.set_desired_capacity(desired)
        return True

    def terminate_instance(self, instance_id: str, *, decrement: bool) -> bool:
        with self._lock:
            self._call("TerminateInstanceInAutoScalingGroup")
            if instance_id not in self._instances:
                return False
            if decrement and self.desired - 1 < self.min_size:
                decrement = False  # what Boto3Cloud does after AWS refuses
            del self._instances[instance_id]
            if decrement:
                self.desired -= 1
            self._fill()
            return True

    def tag_and_protect(self, instance_id: str, *, project_id: str, assigned_at: str) -> bool:
        return self.tag_project(instance_id, project_id=project_id, assigned_at=assigned_at) and bool(
            self.protect([instance_id])
        )

    def tag_project(self, instance_id: str, *, project_id: str, assigned_at: str) -> bool:
        with self._lock:
            self._call("CreateTags")
            inst = self._instances.get(instance_id)
            if inst is None:
                return False
            inst.cloud = replace(inst.cloud, project_tag=project_id, assigned_at_tag=assigned_at)
            return True

    def protect(self, instance_ids: Sequence[str]) -> list[str]:
        protected: list[str] = []
        with self._lock:
            for start in range(0, len(instance_ids), PROTECT_BATCH):
                self._call("SetInstanceProtection")
                for iid in instance_ids[start : start + PROTECT_BATCH]:
                    inst = self._instances.get(iid)
                    if inst is not None:
                        inst.cloud = replace(inst.cloud, protected_from_scale_in=True)
                        protected.append(iid)
        return protected

    def api_calls(self) -> dict[str, int]:
        with self._lock:
            return dict(self._calls)

    def api_errors(self) -> dict[str, int]:
        with self._lock:
            return dict(self._errors)
