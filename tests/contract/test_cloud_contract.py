"""The Cloud port contract, run against FakeCloud and Boto3Cloud-on-moto alike (fixture ``cloud``).

moto 5.2.5 differs from real AWS in ways that matter here (see issue 2): it creates instances
InService at once, does not validate desired capacity against MinSize/MaxSize, keeps
terminated instances listed in EC2 and fails oddly on unknown instances. So the suite asserts
only what both backends do alike; what only real AWS does (Pending/Standby/unhealthy/
address-less instances, other groups in a response, several pages, throttling, 5xx,
validation errors) is covered below with botocore's Stubber against Boto3Cloud, and
MaxSize/MinSize rejections with FakeCloud.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.stub import Stubber

from tasks.cloud.boto3_cloud import Boto3Cloud, boto_config
from tasks.cloud.fake_cloud import FakeCloud
from tasks.contract import TAG_ASSIGNED_AT, TAG_PROJECT
from tasks.errors import (
    CapacityRejected,
    CloudError,
    CloudThrottled,
    CloudUnavailable,
    GroupNotFound,
)
from tasks.pool.model import AddressKind, CloudInstance, Readiness, classify
from tasks.pool.ports import Cloud

REGION = "ap-south-1"
NAME = "warmpool-contract-asg"
OTHER = "someone-elses-asg"


def _aws_env(mp: pytest.MonkeyPatch, tmp: Path) -> None:
    """Dummy credentials, the test region, and nothing from the developer's own AWS setup."""
    for var in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ROLE_ARN"):
        mp.delenv(var, raising=False)
    mp.setenv("AWS_ACCESS_KEY_ID", "testing")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    mp.setenv("AWS_SESSION_TOKEN", "testing")
    mp.setenv("AWS_DEFAULT_REGION", REGION)
    mp.setenv("AWS_REGION", REGION)
    mp.setenv("AWS_CONFIG_FILE", str(tmp / "aws-config"))
    mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp / "aws-credentials"))
    mp.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="module")
def aws_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        _aws_env(mp, tmp_path_factory.mktemp("aws"))
        yield


# -- the two backends --------------------------------------------------------------------------


@dataclass
class MotoWorld:
    """One moto account for the whole module (its EC2 backend takes a second to start)."""

    asg: Any
    ec2: Any
    subnet_id: str
    foreign_ids: set[str]


@pytest.fixture(scope="module")
def moto_world(aws_env: None) -> Iterator[MotoWorld]:
    """A public subnet (MapPublicIpOnLaunch), a launch template, and someone else's group."""
    from moto import mock_aws

    with mock_aws():
        ec2 = boto3.client("ec2", region_name=REGION, config=boto_config())
        asg = boto3.client("autoscaling", region_name=REGION, config=boto_config())
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/20", AvailabilityZone=f"{REGION}a")["Subnet"]
        ec2.modify_subnet_attribute(SubnetId=subnet["SubnetId"], MapPublicIpOnLaunch={"Value": True})
        ec2.create_launch_template(
            LaunchTemplateName="warmpool-contract-lt",
            LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "t3.micro"},
        )
        foreign = create_group(asg, OTHER, subnet["SubnetId"], desired=2)
        yield MotoWorld(asg, ec2, subnet["SubnetId"], foreign)


def create_group(asg: Any, name: str, subnet_id: str, *, desired: int) -> set[str]:
    asg.create_auto_scaling_group(
        AutoScalingGroupName=name,
        MinSize=1,
        MaxSize=5,
        DesiredCapacity=desired,
        LaunchTemplate={"LaunchTemplateName": "warmpool-contract-lt"},
        VPCZoneIdentifier=subnet_id,
    )
    found = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0]
    return {i["InstanceId"] for i in found["Instances"]}


@dataclass
class Backend:
    kind: str
    name: str
    cloud: Cloud
    foreign_ids: set[str] = field(default_factory=set)  # instances of another group in the region


@pytest.fixture
def group_name() -> str:
    return f"warmpool-contract-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def moto_backend(moto_world: MotoWorld, group_name: str) -> Iterator[Backend]:
    """A fresh moto ASG (MinSize 1, MaxSize 5, desired 3) for each test."""
    create_group(moto_world.asg, group_name, moto_world.subnet_id, desired=3)
    cloud = Boto3Cloud(group_name, region=REGION, autoscaling=moto_world.asg, ec2=moto_world.ec2)
    yield Backend("moto", group_name, cloud, moto_world.foreign_ids)
    moto_world.asg.delete_auto_scaling_group(AutoScalingGroupName=group_name, ForceDelete=True)


@pytest.fixture
def fake_cloud(group_name: str) -> FakeCloud:
    return FakeCloud(group_name, min_size=1, max_size=5, desired=3)


@pytest.fixture(params=["fake", "moto"])
def backend(request: pytest.FixtureRequest, group_name: str) -> Backend:
    if request.param == "fake":
        return Backend("fake", group_name, request.getfixturevalue("fake_cloud"))
    backend: Backend = request.getfixturevalue("moto_backend")
    return backend


def by_id(cloud: Cloud) -> dict[str, CloudInstance]:
    return {i.instance_id: i for i in cloud.describe_group().instances}


class TestCloudContract:
    def test_describe_group_returns_instances_addresses_and_bounds(self, backend: Backend) -> None:
        # given a group of 3 ready instances (MinSize 1, MaxSize 5)
        before = time.time()
        # when described
        snap = backend.cloud.describe_group()
        # expect the group's bounds, and every instance ready with both addresses
        assert snap.name == backend.name
        assert (snap.min_size, snap.max_size, snap.desired_capacity) == (1, 5, 3)
        assert len(snap.instances) == 3
        assert len({i.instance_id for i in snap.instances}) == 3
        for inst in snap.instances:
            assert inst.instance_id.startswith("i-")
            assert inst.private_ip and inst.public_ip and inst.availability_zone
            assert classify(inst, AddressKind.PUBLIC)[0] is Readiness.READY
            assert classify(inst, AddressKind.PRIVATE)[0] is Readiness.READY
            assert inst.project_tag is None and not inst.protected_from_scale_in
        assert before - 1 <= snap.observed_at <= time.time() + 1

    def test_default_clients_from_the_environment(self, moto_world: MotoWorld, group_name: str) -> None:
        # given only a group name and a region (clients built by Boto3Cloud itself, as in production)
        create_group(moto_world.asg, group_name, moto_world.subnet_id, desired=2)
        cloud = Boto3Cloud(group_name, region=REGION)
        # expect the same reading as with injected clients
        snap = cloud.describe_group()
        assert len(snap.instances) == 2 and snap.name == group_name
        assert cloud.api_calls().get("DescribeAutoScalingGroups") == 1

    def test_other_groups_are_never_mixed_in(self, backend: Backend) -> None:
        ids = set(by_id(backend.cloud))
        assert len(ids) == 3
        assert not ids & backend.foreign_ids

    def test_tag_and_protect_tags_and_protects_idempotently(self, backend: Backend) -> None:
        # given an instance of the group
        target = sorted(by_id(backend.cloud))[0]
        # when tagged as assigned, twice (a redelivered side effect)
        assert backend.cloud.tag_and_protect(target, project_id="proj-1", assigned_at="2026-01-01T00:00:00.000Z")
        assert backend.cloud.tag_and_protect(target, project_id="proj-1", assigned_at="2026-01-01T00:00:00.000Z")
        # expect the tags and scale-in protection on it, and on no other instance
        insts = by_id(backend.cloud)
        assert insts[target].project_tag == "proj-1"
        assert insts[target].assigned_at_tag == "2026-01-01T00:00:00.000Z"
        assert insts[target].protected_from_scale_in
        for other in set(insts) - {target}:
            assert insts[other].project_tag is None and not insts[other].protected_from_scale_in
        assert len(insts) == 3

    def test_protect_and_tag_project_separately(self, backend: Backend) -> None:
        # given the group's instances and one id that is not (or no longer) in it
        ids = sorted(by_id(backend.cloud))
        # when two are protected in one call and one of them tagged
        assert backend.cloud.protect(ids[:2]) == ids[:2]
        assert backend.cloud.tag_project(ids[0], project_id="proj-1", assigned_at="t0")
        # expect exactly that, and nothing on the third
        insts = by_id(backend.cloud)
        assert insts[ids[0]].project_tag == "proj-1" and insts[ids[0]].protected_from_scale_in
        assert insts[ids[1]].project_tag is None and insts[ids[1]].protected_from_scale_in
        assert insts[ids[2]].project_tag is None and not insts[ids[2]].protected_from_scale_in

    def test_the_group_carries_the_epoch_it_was_tagged_with(self, backend: Backend) -> None:
        # given a group no warmpool has tagged
        assert backend.cloud.describe_group().epoch_tag is None
        # when tagged twice (the second epoch wins: it is one tag, created or updated)
        backend.cloud.tag_group("first")
        backend.cloud.tag_group("0123456789abcdef")
        # expect the snapshot to carry it, and the instances not to (it is not propagated)
        snap = backend.cloud.describe_group()
        assert snap.epoch_tag == "0123456789abcdef"
        assert all(i.project_tag is None for i in snap.instances)

    def test_protect_of_nothing_calls_nothing(self, backend: Backend) -> None:
        before = backend.cloud.api_calls().get("SetInstanceProtection", 0)
        assert backend.cloud.protect([]) == []
        assert backend.cloud.api_calls().get("SetInstanceProtection", 0) == before

    def test_terminate_with_decrement_shrinks_the_group(self, backend: Backend) -> None:
        target = sorted(by_id(backend.cloud))[0]
        assert backend.cloud.terminate_instance(target, decrement=True) is True
        snap = backend.cloud.describe_group()
        assert target not in {i.instance_id for i in snap.instances}
        assert snap.desired_capacity == 2 and len(snap.instances) == 2

    def test_terminate_without_decrement_gets_replaced(self, backend: Backend) -> None:
        target = sorted(by_id(backend.cloud))[0]
        assert backend.cloud.terminate_instance(target, decrement=False) is True
        snap = backend.cloud.describe_group()
        assert target not in {i.instance_id for i in snap.instances}
        assert snap.desired_capacity == 3 and len(snap.instances) == 3

    def test_set_desired_capacity_within_bounds(self, backend: Backend) -> None:
        backend.cloud.set_desired_capacity(5)
        snap = backend.cloud.describe_group()
        assert snap.desired_capacity == 5 and len(snap.instances) == 5
        backend.cloud.set_desired_capacity(5)  # idempotent
        assert backend.cloud.describe_group().desired_capacity == 5

    def test_api_calls_are_counted_by_action(self, backend: Backend) -> None:
        # given a fresh adapter / when the group is described once
        before = backend.cloud.api_calls()
        backend.cloud.describe_group()
        after = backend.cloud.api_calls()
        # expect one more DescribeAutoScalingGroups and DescribeInstances call, named by action
        assert after.get("DescribeAutoScalingGroups", 0) - before.get("DescribeAutoScalingGroups", 0) >= 1
        assert after.get("DescribeInstances", 0) - before.get("DescribeInstances", 0) >= 1
        assert "unknown" not in after


class TestFakeCloudLikeAws:
    """What real AWS does and moto does not; FakeCloud must (the service tests rely on it)."""

    def test_desired_above_max_or_below_min_is_rejected(self, fake_cloud: FakeCloud) -> None:
        # moto 5.2.5 accepts any desired capacity, so this is asserted for the fake only.
        with pytest.raises(CapacityRejected):
            fake_cloud.set_desired_capacity(6)
        with pytest.raises(CapacityRejected):
            fake_cloud.set_desired_capacity(0)
        assert fake_cloud.describe_group().desired_capacity == 3

    def test_unknown_instance_counts_as_already_done(self, fake_cloud: FakeCloud) -> None:
        assert fake_cloud.terminate_instance("i-00000000000000dead", decrement=True) is False
        assert fake_cloud.tag_and_protect("i-00000000000000dead", project_id="p", assigned_at="x") is False
        assert len(fake_cloud.describe_group().instances) == 3

    def test_decrement_below_min_size_terminates_without_decrement(self) -> None:
        cloud = FakeCloud(NAME, min_size=2, max_size=5, desired=2)
        target = sorted(cloud.instances())[0]
        assert cloud.terminate_instance(target, decrement=True) is True
        snap = cloud.describe_group()
        assert snap.desired_capacity == 2 and target not in {i.instance_id for i in snap.instances}

    def test_launches_are_pending_until_ready(self) -> None:
        now = [1_000.0]
        cloud = FakeCloud(NAME, max_size=5, desired=1, launch_delay_s=30, clock=lambda: now[0])
        inst = next(iter(cloud.describe_group().instances))
        assert classify(inst, AddressKind.PUBLIC)[0] is Readiness.NOT_READY
        now[0] += 31
        inst = next(iter(cloud.describe_group().instances))
        assert classify(inst, AddressKind.PUBLIC)[0] is Readiness.READY


# -- Boto3Cloud against botocore's Stubber: what only real AWS does ---------------------------

NO_RETRY = Config(retries={"max_attempts": 1, "mode": "standard"})
CREATED = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@dataclass
class Stubbed:
    cloud: Boto3Cloud
    asg: Stubber
    ec2: Stubber
    calls: list[tuple[str, dict[str, Any]]]  # (operation, params) of every call made, in order


@dataclass
class StubClients:
    asg: Any
    ec2: Any
    calls: list[tuple[str, dict[str, Any]]]


@pytest.fixture(scope="module")
def stub_clients(aws_env: None) -> StubClients:
    """Clients without retries (botocore would re-call on throttling), recording every call's params."""
    asg_client = boto3.client("autoscaling", region_name=REGION, config=NO_RETRY)
    ec2_client = boto3.client("ec2", region_name=REGION, config=NO_RETRY)
    calls: list[tuple[str, dict[str, Any]]] = []

    def record(params: dict[str, Any], model: Any, **_: Any) -> None:
        calls.append((model.name, dict(params)))

    for client in (asg_client, ec2_client):
        client.meta.events.register("before-parameter-build", record)
    return StubClients(asg_client, ec2_client, calls)


@pytest.fixture
def stubbed(stub_clients: StubClients) -> Iterator[Stubbed]:
    stub_clients.calls.clear()
    asg_stub, ec2_stub = Stubber(stub_clients.asg), Stubber(stub_clients.ec2)
    with asg_stub, ec2_stub:
        cloud = Boto3Cloud(
            NAME, region=REGION, autoscaling=stub_clients.asg, ec2=stub_clients.ec2, clock=lambda: 1234.5
        )
        yield Stubbed(cloud, asg_stub, ec2_stub, stub_clients.calls)
        asg_stub.assert_no_pending_responses()
        ec2_stub.assert_no_pending_responses()


def asg_instance(iid: str, lifecycle: str = "InService", health: str = "Healthy", **extra: Any) -> dict[str, Any]:
    return {
        "InstanceId": iid,
        "AvailabilityZone": f"{REGION}a",
        "LifecycleState": lifecycle,
        "HealthStatus": health,
        "ProtectedFromScaleIn": False,
        **extra,
    }


def group(name: str, instances: list[dict[str, Any]], *, min_size: int = 1, max_size: int = 9) -> dict[str, Any]:
    return {
        "AutoScalingGroupName": name,
        "MinSize": min_size,
        "MaxSize": max_size,
        "DesiredCapacity": len(instances),
        "DefaultCooldown": 300,
        "AvailabilityZones": [f"{REGION}a"],
        "HealthCheckType": "EC2",
        "CreatedTime": CREATED,
        "Instances": instances,
    }


def ec2_instance(
    iid: str, state: str = "running", *, public: bool = True, tags: dict[str, str] | None = None
) -> dict[str, Any]:
    n = int(iid.rsplit("-", 1)[1], 16) % 250 + 1
    inst: dict[str, Any] = {
        "InstanceId": iid,
        "State": {"Name": state, "Code": 16},
        "PrivateIpAddress": f"10.0.0.{n}",
        "LaunchTime": CREATED,
        "Tags": [{"Key": "aws:autoscaling:groupName", "Value": NAME}]
        + [{"Key": k, "Value": v} for k, v in (tags or {}).items()],
    }
    if public:
        inst["PublicIpAddress"] = f"198.51.100.{n}"
    return inst


def reservations(*instances: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"ReservationId": f"r-{i}", "Instances": [inst]} for i, inst in enumerate(instances)]


def ops(s: Stubbed, name: str) -> list[dict[str, Any]]:
    return [params for op, params in s.calls if op == name]


class TestBoto3CloudAgainstAwsBehaviour:
    def test_every_page_of_both_listings_is_followed(self, stubbed: Stubbed) -> None:
        # given AWS answering in pages: the group on the second page, its instances over three pages
        ids = [f"i-{n:017x}" for n in range(1, 6)]
        stubbed.asg.add_response("describe_auto_scaling_groups", {"AutoScalingGroups": [], "NextToken": "g1"})
        stubbed.asg.add_response(
            "describe_auto_scaling_groups",
            {"AutoScalingGroups": [group(NAME, [asg_instance(i) for i in ids])], "NextToken": "g2"},
        )
        stubbed.asg.add_response("describe_auto_scaling_groups", {"AutoScalingGroups": []})
        stubbed.ec2.add_response(
            "describe_instances", {"Reservations": reservations(*map(ec2_instance, ids[:2])), "NextToken": "e1"}
        )
        stubbed.ec2.add_response(
            "describe_instances", {"Reservations": reservations(ec2_instance(ids[2])), "NextToken": "e2"}
        )
        stubbed.ec2.add_response("describe_instances", {"Reservations": reservations(*map(ec2_instance, ids[3:]))})
        # when described
        snap = stubbed.cloud.describe_group()
        # expect all five instances joined with their EC2 view, every page read, only our group asked for
        assert [i.instance_id for i in snap.instances] == ids
        assert all(classify(i, AddressKind.PUBLIC)[0] is Readiness.READY for i in snap.instances)
        assert snap.observed_at == 1234.5
        groups_asked = ops(stubbed, "DescribeAutoScalingGroups")
        assert [p.get("NextToken") for p in groups_asked] == [None, "g1", "g2"]
        assert all(p["AutoScalingGroupNames"] == [NAME] for p in groups_asked)
        assert [p.get("NextToken") for p in ops(stubbed, "DescribeInstances")] == [None, "e1", "e2"]

    def test_other_groups_in_the_same_response_are_never_mixed_in(self, stubbed: Stubbed) -> None:
        # given a response that also carries another group, and EC2 listing that group's instances
        stubbed.asg.add_response(
            "describe_auto_scaling_groups",
            {
                "AutoScalingGroups": [
                    group(OTHER, [asg_instance("i-00000000000000099")], min_size=7, max_size=70),
                    group(NAME, [asg_instance("i-00000000000000001")], min_size=1, max_size=9),
                ]
            },
        )
        foreign = ec2_instance("i-00000000000000099", tags={TAG_PROJECT: "intruder"})
        stubbed.ec2.add_response(
            "describe_instances", {"Reservations": reservations(foreign, ec2_instance("i-00000000000000001"))}
        )
        snap = stubbed.cloud.describe_group()
        # expect our group's bounds and instance only
        assert (snap.name, snap.min_size, snap.max_size) == (NAME, 1, 9)
        assert [i.instance_id for i in snap.instances] == ["i-00000000000000001"]
        assert snap.instances[0].project_tag is None

    def test_group_missing_is_group_not_found(self, stubbed: Stubbed) -> None:
        stubbed.asg.add_response("describe_auto_scaling_groups", {"AutoScalingGroups": [group(OTHER, [])]})
        with pytest.raises(GroupNotFound):
            stubbed.cloud.describe_group()

    def test_not_ready_instances_are_reported_with_their_states(self, stubbed: Stubbed) -> None:
        # given one ready instance and one of each kind AWS reports while an instance is not usable
        rows = {
            "i-00000000000000001": (asg_instance("i-00000000000000001"), ec2_instance("i-00000000000000001")),
            "i-00000000000000002": (
                asg_instance("i-00000000000000002", "Pending"),
                ec2_instance("i-00000000000000002", "pending"),
            ),
            "i-00000000000000003": (
                asg_instance("i-00000000000000003", "Pending:Wait"),
                ec2_instance("i-00000000000000003"),
            ),
            "i-00000000000000004": (
                asg_instance("i-00000000000000004", "Standby"),
                ec2_instance("i-00000000000000004"),
            ),
            "i-00000000000000005": (
                asg_instance("i-00000000000000005", health="Unhealthy"),
                ec2_instance("i-00000000000000005"),
            ),
            "i-00000000000000006": (
                asg_instance("i-00000000000000006"),
                ec2_instance("i-00000000000000006", public=False),
            ),
            "i-00000000000000007": (
                asg_instance("i-00000000000000007"),
                ec2_instance("i-00000000000000007", "stopped"),
            ),
            "i-00000000000000008": (asg_instance("i-00000000000000008"), None),  # not in EC2's answer yet
            "i-00000000000000009": (
                asg_instance("i-00000000000000009", "Terminating"),
                ec2_instance("i-00000000000000009", "shutting-down"),
            ),
        }
        stubbed.asg.add_response(
            "describe_auto_scaling_groups", {"AutoScalingGroups": [group(NAME, [a for a, _ in rows.values()])]}
        )
        stubbed.ec2.add_response(
            "describe_instances", {"Reservations": reservations(*[e for _, e in rows.values() if e])}
        )
        # when described
        insts = {i.instance_id: i for i in stubbed.cloud.describe_group().instances}
        # expect every instance reported with what AWS said, so that only the first is ready
        assert set(insts) == set(rows)
        assert insts["i-00000000000000002"].lifecycle_state == "Pending"
        assert insts["i-00000000000000002"].ec2_state == "pending"
        assert insts["i-00000000000000004"].lifecycle_state == "Standby"
        assert insts["i-00000000000000005"].health_status == "Unhealthy"
        assert insts["i-00000000000000006"].public_ip is None and insts["i-00000000000000006"].private_ip
        assert insts["i-00000000000000007"].ec2_state == "stopped"
        assert insts["i-00000000000000008"].ec2_state == ""
        readiness = {iid: classify(i, AddressKind.PUBLIC)[0] for iid, i in insts.items()}
        assert readiness.pop("i-00000000000000001") is Readiness.READY
        assert readiness.pop("i-00000000000000009") is Readiness.GONE
        assert set(readiness.values()) == {Readiness.NOT_READY}
        # (with private addresses handed out, the address-less one is ready)
        assert classify(insts["i-00000000000000006"], AddressKind.PRIVATE)[0] is Readiness.READY

    def test_tags_and_protection_are_read(self, stubbed: Stubbed) -> None:
        iid = "i-00000000000000001"
        stubbed.asg.add_response(
            "describe_auto_scaling_groups",
            {"AutoScalingGroups": [group(NAME, [asg_instance(iid, ProtectedFromScaleIn=True)])]},
        )
        tags = {TAG_PROJECT: "proj-1", TAG_ASSIGNED_AT: "2026-01-01T00:00:00.000Z"}
        stubbed.ec2.add_response("describe_instances", {"Reservations": reservations(ec2_instance(iid, tags=tags))})
        inst = stubbed.cloud.describe_group().instances[0]
        assert inst.project_tag == "proj-1" and inst.assigned_at_tag == "2026-01-01T00:00:00.000Z"
        assert inst.protected_from_scale_in
        assert inst.launched_at == CREATED.timestamp()

    @pytest.mark.parametrize(
        ("service", "code", "status", "expected"),
        [
            ("autoscaling", "Throttling", 400, CloudThrottled),
            ("autoscaling", "InternalFailure", 500, CloudUnavailable),
            ("ec2", "RequestLimitExceeded", 503, CloudThrottled),
            ("ec2", "Unavailable", 503, CloudUnavailable),
        ],
    )
    def test_describe_errors_are_mapped(
        self, stubbed: Stubbed, service: str, code: str, status: int, expected: type[CloudError]
    ) -> None:
        if service == "autoscaling":
            stubbed.asg.add_client_error("describe_auto_scaling_groups", code, "nope", http_status_code=status)
        else:
            stubbed.asg.add_response(
                "describe_auto_scaling_groups",
                {"AutoScalingGroups": [group(NAME, [asg_instance("i-00000000000000001")])]},
            )
            stubbed.ec2.add_client_error("describe_instances", code, "nope", http_status_code=status)
        with pytest.raises(expected) as info:
            stubbed.cloud.describe_group()
        assert info.value.aws_code == code

    def test_set_desired_capacity_validation_error_is_capacity_rejected(self, stubbed: Stubbed) -> None:
        stubbed.asg.add_client_error(
            "set_desired_capacity",
            "ValidationError",
            "New SetDesiredCapacity value 12 is above max value 9 for the AutoScalingGroup.",
            http_status_code=400,
        )
        with pytest.raises(CapacityRejected):
            stubbed.cloud.set_desired_capacity(12)
        assert ops(stubbed, "SetDesiredCapacity") == [
            {"AutoScalingGroupName": NAME, "DesiredCapacity": 12, "HonorCooldown": False}
        ]

    @pytest.mark.parametrize(
        ("code", "status", "expected"),
        [("Throttling", 400, CloudThrottled), ("InternalFailure", 500, CloudUnavailable)],
    )
    def test_set_desired_capacity_transient_errors(
        self, stubbed: Stubbed, code: str, status: int, expected: type[CloudError]
    ) -> None:
        stubbed.asg.add_client_error("set_desired_capacity", code, "nope", http_status_code=status)
        with pytest.raises(expected):
            stubbed.cloud.set_desired_capacity(3)

    def test_terminate_with_decrement_below_min_size_retries_without(self, stubbed: Stubbed) -> None:
        # given AWS refusing to go below MinSize
        iid = "i-00000000000000001"
        stubbed.asg.add_client_error(
            "terminate_instance_in_auto_scaling_group",
            "ValidationError",
            "Currently, desiredSize equals minSize (1). Terminating instance without replacement will violate "
            "group's min size constraint. Either set shouldDecrementDesiredCapacity flag to false or lower "
            "group's min size.",
            http_status_code=400,
        )
        stubbed.asg.add_response("terminate_instance_in_auto_scaling_group", {})
        # when terminating with decrement / expect it terminated, the second time without decrement
        assert stubbed.cloud.terminate_instance(iid, decrement=True) is True
        assert [p["ShouldDecrementDesiredCapacity"] for p in ops(stubbed, "TerminateInstanceInAutoScalingGroup")] == [
            True,
            False,
        ]

    def test_terminate_sends_the_decrement_flag(self, stubbed: Stubbed) -> None:
        stubbed.asg.add_response("terminate_instance_in_auto_scaling_group", {})
        assert stubbed.cloud.terminate_instance("i-00000000000000001", decrement=True) is True
        assert ops(stubbed, "TerminateInstanceInAutoScalingGroup") == [
            {"InstanceId": "i-00000000000000001", "ShouldDecrementDesiredCapacity": True}
        ]

    @pytest.mark.parametrize("decrement", [False, True])
    def test_terminate_of_an_instance_already_gone_is_done(self, stubbed: Stubbed, decrement: bool) -> None:
        # given AWS no longer knowing the instance (a redelivered terminate)
        stubbed.asg.add_client_error(
            "terminate_instance_in_auto_scaling_group",
            "ValidationError",
            "Instance Id not found - No managed instance found for instance ID: i-00000000000000001",
            http_status_code=400,
        )
        # expect "already done" (False), after that one call
        assert stubbed.cloud.terminate_instance("i-00000000000000001", decrement=decrement) is False
        assert len(ops(stubbed, "TerminateInstanceInAutoScalingGroup")) == 1

    def test_terminate_throttled(self, stubbed: Stubbed) -> None:
        stubbed.asg.add_client_error(
            "terminate_instance_in_auto_scaling_group", "Throttling", "slow down", http_status_code=400
        )
        with pytest.raises(CloudThrottled):
            stubbed.cloud.terminate_instance("i-00000000000000001", decrement=False)

    def test_tag_and_protect_tags_then_protects(self, stubbed: Stubbed) -> None:
        stubbed.ec2.add_response("create_tags", {})
        stubbed.asg.add_response("set_instance_protection", {})
        assert stubbed.cloud.tag_and_protect("i-00000000000000001", project_id="proj-1", assigned_at="t0") is True
        assert stubbed.calls == [
            (
                "CreateTags",
                {
                    "Resources": ["i-00000000000000001"],
                    "Tags": [{"Key": TAG_PROJECT, "Value": "proj-1"}, {"Key": TAG_ASSIGNED_AT, "Value": "t0"}],
                },
            ),
            (
                "SetInstanceProtection",
                {"InstanceIds": ["i-00000000000000001"], "AutoScalingGroupName": NAME, "ProtectedFromScaleIn": True},
            ),
        ]

    def test_tag_of_an_instance_already_gone_is_done(self, stubbed: Stubbed) -> None:
        stubbed.ec2.add_client_error(
            "create_tags",
            "InvalidInstanceID.NotFound",
            "The instance ID 'i-00000000000000001' does not exist",
            http_status_code=400,
        )
        assert stubbed.cloud.tag_and_protect("i-00000000000000001", project_id="p", assigned_at="t") is False
        assert [op for op, _ in stubbed.calls] == ["CreateTags"]

    def test_protect_of_an_instance_no_longer_in_the_group_is_done(self, stubbed: Stubbed) -> None:
        stubbed.ec2.add_response("create_tags", {})
        stubbed.asg.add_client_error(
            "set_instance_protection",
            "ValidationError",
            f"The instance i-00000000000000001 is not part of Auto Scaling group {NAME}.",
            http_status_code=400,
        )
        assert stubbed.cloud.tag_and_protect("i-00000000000000001", project_id="p", assigned_at="t") is False

    def test_protect_sends_50_instances_per_call(self, stubbed: Stubbed) -> None:
        ids = [f"i-{n:017x}" for n in range(1, 121)]
        for _ in range(3):
            stubbed.asg.add_response("set_instance_protection", {})
        assert stubbed.cloud.protect(ids) == ids
        assert [len(p["InstanceIds"]) for p in ops(stubbed, "SetInstanceProtection")] == [50, 50, 20]

    def test_protect_batch_with_an_instance_gone_protects_the_others(self, stubbed: Stubbed) -> None:
        # given AWS refusing the batch because one instance left the group
        ids = [f"i-{n:017x}" for n in range(1, 4)]
        message = f"The instance {ids[1]} is not part of Auto Scaling group {NAME}."
        # the batch, then one call each: ok, refused (gone), ok
        for answer in ("gone", "ok", "gone", "ok"):
            if answer == "ok":
                stubbed.asg.add_response("set_instance_protection", {})
            else:
                stubbed.asg.add_client_error(
                    "set_instance_protection", "ValidationError", message, http_status_code=400
                )
        # expect the others protected one by one, and the gone one reported as not protected
        assert stubbed.cloud.protect(ids) == [ids[0], ids[2]]
        assert [p["InstanceIds"] for p in ops(stubbed, "SetInstanceProtection")] == [ids, [ids[0]], [ids[1]], [ids[2]]]

    def test_protect_throttled(self, stubbed: Stubbed) -> None:
        stubbed.asg.add_client_error("set_instance_protection", "Throttling", "Rate exceeded", http_status_code=400)
        with pytest.raises(CloudThrottled):
            stubbed.cloud.protect(["i-00000000000000001", "i-00000000000000002"])

    def test_tag_throttled(self, stubbed: Stubbed) -> None:
        stubbed.ec2.add_client_error("create_tags", "RequestLimitExceeded", "slow down", http_status_code=503)
        with pytest.raises(CloudThrottled):
            stubbed.cloud.tag_and_protect("i-00000000000000001", project_id="p", assigned_at="t")


# -- a pool in another account: its role assumed with STS -------------------------------------------
def test_a_pool_with_a_role_reads_its_group_with_credentials_assumed_from_sts(moto_world: MotoWorld) -> None:
    from tasks.cloud.boto3_cloud import pool_session

    # given a group, and a session that assumes a role (moto's STS hands out temporary credentials)
    name = f"warmpool-role-{uuid.uuid4().hex[:8]}"
    ids = create_group(moto_world.asg, name, moto_world.subnet_id, desired=2)
    role = "arn:aws:iam::123456789012:role/warmpool-pool"
    session = pool_session(region=REGION, role_arn=role, external_id="team-a", pool="gpu")
    try:
        # when the pool's cloud reads its group through that session
        cloud = Boto3Cloud(name, region=REGION, session=session)
        snapshot = cloud.describe_group()
        # expect the group read, with the assumed role's credentials (not the default ones)
        assert {i.instance_id for i in snapshot.instances} == ids
        credentials = session.get_credentials()
        assert credentials is not None and credentials.access_key != "testing"
        assert credentials.method == "assume-role"
    finally:
        moto_world.asg.delete_auto_scaling_group(AutoScalingGroupName=name, ForceDelete=True)
