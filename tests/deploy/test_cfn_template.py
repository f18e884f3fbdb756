"""deploy/aws/warmpool-group.yaml: linted with cfn-lint, deployed on moto, and warmpool runs on what it made.

moto's CloudFormation (in-process ``mock_aws``) creates the launch template, the group, the
worker role, its policy and instance profile; then Boto3Cloud (warmpool's own adapter) sizes,
reads, tags, protects and terminates in that group, warmpool's use cases (PoolService) keep a
second stack's group at its idle target through an assign and a release, and the deployed
policy is compared with deploy/aws/iam-policy.json.
"""

from __future__ import annotations

import json
import shlex
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from cfnlint import api as cfn_lint
from cfnlint.decode.cfn_yaml import loads as load_cfn_yaml

from tasks.cloud.boto3_cloud import Boto3Cloud, boto_config
from tasks.contract import TAG_PROJECT
from tasks.pool.model import AddressKind, Readiness, classify
from tests.contract.test_cloud_contract import _aws_env
from tests.unit.test_service import Clock, Harness

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_FILE = ROOT / "deploy" / "aws" / "warmpool-group.yaml"
POLICY_FILE = ROOT / "deploy" / "aws" / "iam-policy.json"
REGION = "ap-south-1"
GROUP = "warmpool-test-pool"
# Processes that would fight warmpool: suspended by the command the stack prints.
MUST_SUSPEND = {"AZRebalance", "AlarmNotification", "ScheduledActions"}


def template() -> dict[str, Any]:
    parsed: dict[str, Any] = load_cfn_yaml(TEMPLATE_FILE.read_text(), str(TEMPLATE_FILE))
    return parsed


def plain(value: Any) -> Any:
    """cfn-lint's YAML nodes as plain dicts/lists/strings (for comparisons)."""
    return json.loads(json.dumps(value))


def lint(text: str) -> list[str]:
    return [str(m) for m in cfn_lint.lint(text, regions=[REGION, "us-east-1"])]


# -- lint ------------------------------------------------------------------------------------------
def test_cfn_lint_finds_nothing() -> None:
    assert lint(TEMPLATE_FILE.read_text()) == []


def test_cfn_lint_is_really_linting() -> None:
    """A broken copy (a group without MaxSize, an unknown property) is reported."""
    broken = TEMPLATE_FILE.read_text().replace("      MaxSize: !Ref MaxSize\n", "      MaxSise: 3\n")
    assert broken != TEMPLATE_FILE.read_text()
    problems = "\n".join(lint(broken))
    assert "MaxSize" in problems and "MaxSise" in problems


# -- what the template says ------------------------------------------------------------------------
def test_the_workers_policy_is_the_policy_file() -> None:
    doc = plain(template()["Resources"]["WorkerPolicy"]["Properties"]["PolicyDocument"])
    assert doc == json.loads(POLICY_FILE.read_text())


def test_the_group_leaves_capacity_to_warmpool_and_has_nothing_that_replaces_machines() -> None:
    props = plain(template()["Resources"]["Group"]["Properties"])
    assert "DesiredCapacity" not in props  # a stack update would reset warmpool's capacity
    assert props["NewInstancesProtectedFromScaleIn"] is False
    assert props["CapacityRebalance"] is False
    for replacing in ("MaxInstanceLifetime", "LifecycleHookSpecificationList", "MixedInstancesPolicy"):
        assert replacing not in props
    kinds = {r["Type"] for r in template()["Resources"].values()}
    assert "AWS::AutoScaling::WarmPool" not in kinds and "AWS::AutoScaling::ScalingPolicy" not in kinds


def test_the_group_name_must_be_covered_by_the_policy() -> None:
    import re

    pattern = template()["Parameters"]["GroupName"]["AllowedPattern"]
    assert re.fullmatch(pattern, "warmpool-pool") and re.fullmatch(pattern, GROUP)
    assert not re.fullmatch(pattern, "heavrdevs-asg")


# -- deployed on moto --------------------------------------------------------------------------------
@dataclass
class Stack:
    outputs: dict[str, str]
    asg: Any
    ec2: Any
    iam: Any
    deploy: Callable[[str], dict[str, str]]  # another stack of the template, in the same account


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The template deployed on moto, into a VPC with one public subnet."""
    from moto import mock_aws

    with pytest.MonkeyPatch.context() as mp:
        _aws_env(mp, tmp_path_factory.mktemp("aws"))
        with mock_aws():
            ec2 = boto3.client("ec2", region_name=REGION, config=boto_config())
            vpc = ec2.create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]["VpcId"]
            subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.1.0.0/20", AvailabilityZone=f"{REGION}a")
            subnet_id = subnet["Subnet"]["SubnetId"]
            ec2.modify_subnet_attribute(SubnetId=subnet_id, MapPublicIpOnLaunch={"Value": True})
            sg = ec2.create_security_group(GroupName="warmpool-pool", Description="pool", VpcId=vpc)["GroupId"]
            cfn = boto3.client("cloudformation", region_name=REGION)

            def deploy(group: str) -> dict[str, str]:
                params = {
                    "GroupName": group,
                    "ImageId": "ami-12c6146b",
                    "SubnetIds": subnet_id,
                    "SecurityGroupIds": sg,
                    "MaxSize": "5",
                }
                cfn.create_stack(
                    StackName=group,
                    TemplateBody=TEMPLATE_FILE.read_text(),
                    Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
                    Capabilities=["CAPABILITY_IAM"],
                )
                described = cfn.describe_stacks(StackName=group)["Stacks"][0]
                assert described["StackStatus"] == "CREATE_COMPLETE", described.get("StackStatusReason")
                return {o["OutputKey"]: o["OutputValue"] for o in described["Outputs"]}

            asg = boto3.client("autoscaling", region_name=REGION, config=boto_config())
            yield Stack(deploy(GROUP), asg, ec2, boto3.client("iam", region_name=REGION), deploy)


def test_the_stack_creates_the_group_empty_at_min_size(stack: Stack) -> None:
    assert stack.outputs["GroupName"] == GROUP
    group = stack.asg.describe_auto_scaling_groups(AutoScalingGroupNames=[GROUP])["AutoScalingGroups"][0]
    assert (group["MinSize"], group["MaxSize"], group["DesiredCapacity"]) == (0, 5, 0)
    assert group["LaunchTemplate"]["LaunchTemplateId"] == stack.outputs["LaunchTemplateId"]
    assert group["HealthCheckType"] == "EC2"
    assert group["NewInstancesProtectedFromScaleIn"] is False


def test_warmpool_runs_on_the_group_the_stack_made(stack: Stack) -> None:
    # given warmpool's adapter on the new group (clients built from the environment, as in production)
    cloud = Boto3Cloud(GROUP, region=REGION)
    # when it raises the capacity / expect machines that warmpool may hand out
    assert cloud.raise_desired_capacity(3) is True
    snap = cloud.describe_group()
    assert (snap.min_size, snap.max_size, snap.desired_capacity) == (0, 5, 3)
    assert len(snap.instances) == 3
    assert all(classify(i, AddressKind.PUBLIC)[0] is Readiness.READY for i in snap.instances)
    # when one is assigned (tag + protect) and another released (terminate, decrement)
    first, second, _ = sorted(i.instance_id for i in snap.instances)
    assert cloud.tag_and_protect(first, project_id="proj-1", assigned_at="2026-01-01T00:00:00.000Z")
    assert cloud.terminate_instance(second, decrement=True) is True
    # expect AWS to show exactly that
    after = {i.instance_id: i for i in cloud.describe_group().instances}
    assert second not in after and len(after) == 2
    assert after[first].project_tag == "proj-1" and after[first].protected_from_scale_in
    assert cloud.describe_group().desired_capacity == 2


def test_the_pool_service_keeps_its_idle_target_assigns_and_releases_on_a_fresh_stack(stack: Stack) -> None:
    # given a second stack (an empty group), and warmpool's use cases over Boto3Cloud on it, with the
    # other processes played by the service tests' harness (aws side effects run, refreshes fed back)
    group = "warmpool-service-pool"
    assert stack.deploy(group)["GroupName"] == group
    clock = Clock()
    pool = Harness(idle_target=2, cloud=Boto3Cloud(group, region=REGION, clock=clock), clock=clock, asg_name=group)
    # when the pool settles / expect the idle target reached by warmpool raising the desired capacity
    pool.settle()
    assert pool.counts()["idle"] == 2
    assert cloud_group(stack, group)["DesiredCapacity"] == 2
    # when a project is assigned a machine and the side effects run
    machine = pool.service.assign("proj-1")["instance_id"]
    pool.settle()
    # expect the machine tagged and protected in AWS, and the idle target topped up beside it
    instances = {i["InstanceId"]: i for i in cloud_group(stack, group)["Instances"]}
    assert instances[machine]["ProtectedFromScaleIn"] is True
    tags = stack.ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [machine]}])["Tags"]
    assert {t["Key"]: t["Value"] for t in tags}[TAG_PROJECT] == "proj-1"
    assert pool.counts()["assigned"] == 1 and pool.counts()["idle"] == 2
    # when released / expect that machine terminated and the pool back to its idle target
    assert pool.service.release("proj-1")["status"] == "released"
    pool.settle()
    assert machine in pool.terminated
    assert machine not in {i["InstanceId"] for i in cloud_group(stack, group)["Instances"]}
    assert pool.counts()["idle"] == 2 and pool.counts()["assigned"] == 0


def cloud_group(stack: Stack, name: str) -> dict[str, Any]:
    group: dict[str, Any] = stack.asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0]
    return group


def test_the_printed_command_suspends_the_processes_that_fight_warmpool(stack: Stack) -> None:
    # given the command the stack prints / when run (as the AWS CLI would send it)
    argv = shlex.split(stack.outputs["SuspendProcessesCommand"])
    assert argv[:3] == ["aws", "autoscaling", "suspend-processes"]
    name = argv[argv.index("--auto-scaling-group-name") + 1]
    processes = argv[argv.index("--scaling-processes") + 1 :]
    assert set(processes) == MUST_SUSPEND
    stack.asg.suspend_processes(AutoScalingGroupName=name, ScalingProcesses=processes)
    # expect those processes suspended on the stack's group, and nothing else
    group = stack.asg.describe_auto_scaling_groups(AutoScalingGroupNames=[GROUP])["AutoScalingGroups"][0]
    assert {p["ProcessName"] for p in group["SuspendedProcesses"]} == MUST_SUSPEND


def test_the_deployed_worker_role_carries_the_policy_file(stack: Stack) -> None:
    arn = stack.outputs["WorkerPolicyArn"]
    policy = stack.iam.get_policy(PolicyArn=arn)["Policy"]
    version = stack.iam.get_policy_version(PolicyArn=arn, VersionId=policy["DefaultVersionId"])
    document = version["PolicyVersion"]["Document"]
    if isinstance(document, str):
        document = json.loads(urllib.parse.unquote(document))
    assert document == json.loads(POLICY_FILE.read_text())
    role_name = stack.outputs["WorkerRoleArn"].rsplit("/", 1)[-1]
    attached = stack.iam.list_attached_role_policies(RoleName=role_name)["AttachedPolicies"]
    assert [p["PolicyArn"] for p in attached] == [arn]
    profile_name = stack.outputs["WorkerInstanceProfileArn"].rsplit("/", 1)[-1]
    profile = stack.iam.get_instance_profile(InstanceProfileName=profile_name)["InstanceProfile"]
    assert [r["RoleName"] for r in profile["Roles"]] == [role_name]
