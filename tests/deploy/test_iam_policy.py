"""deploy/aws/iam-policy.json grants exactly the AWS actions warmpool makes, each as narrowly as AWS allows.

The actions are not listed by hand: the cloud contract suite (Boto3Cloud against moto and
botocore's Stubber) and the CloudFormation deployment test run in a child pytest with the
plugin tests/deploy/aws_actions.py, which records every call warmpool's own code makes.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tasks.contract import TAG_ASSIGNED_AT, TAG_PROJECT

# The child pytest runs two suites against moto: minutes on a loaded machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
POLICY_FILE = ROOT / "deploy" / "aws" / "iam-policy.json"
# The suites that drive Boto3Cloud, the only code of warmpool that talks to AWS.
EXERCISING_SUITES = ("tests/contract/test_cloud_contract.py", "tests/deploy/test_cfn_template.py")

# AWS's Service Authorization Reference ("Actions, resources, and condition keys for Amazon EC2
# Auto Scaling" / "... for Amazon EC2"): the resource type each action can be scoped to, None
# where the action supports no resource-level permission and needs "*".
RESOURCE_TYPES: dict[str, str | None] = {
    "autoscaling:DescribeAutoScalingGroups": None,
    "ec2:DescribeInstances": None,
    "autoscaling:SetDesiredCapacity": "autoScalingGroup",
    "autoscaling:SetInstanceProtection": "autoScalingGroup",
    "autoscaling:TerminateInstanceInAutoScalingGroup": "autoScalingGroup",
    "ec2:CreateTags": "instance",
    "autoscaling:CreateOrUpdateTags": "autoScalingGroup",
}


def group_arn(name: str, *, region: str = "ap-south-1", account: str = "123456789012") -> str:
    """An Auto Scaling group's ARN as AWS builds it (the group id is AWS's, the name the operator's)."""
    group_id = "8f0b1c2d-3e4f-5a6b-7c8d-9e0f1a2b3c4d"
    return f"arn:aws:autoscaling:{region}:{account}:autoScalingGroup:{group_id}:autoScalingGroupName/{name}"


def load_policy() -> dict[str, Any]:
    policy: dict[str, Any] = json.loads(POLICY_FILE.read_text())
    return policy


def statements(policy: dict[str, Any]) -> list[dict[str, Any]]:
    return list(policy["Statement"])


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def granted(policy: dict[str, Any]) -> set[str]:
    return {a for s in statements(policy) if s["Effect"] == "Allow" for a in as_list(s["Action"])}


def statement_of(policy: dict[str, Any], action: str) -> dict[str, Any]:
    found = [s for s in statements(policy) if action in as_list(s["Action"])]
    assert len(found) == 1, f"{action} should be granted by exactly one statement, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def called_actions(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every AWS action warmpool's code made while the exercising suites ran (a child pytest)."""
    out = tmp_path_factory.mktemp("iam") / "actions.txt"
    env = {**os.environ, "WARMPOOL_AWS_ACTIONS_FILE": str(out)}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.deploy.aws_actions"]
        + [str(ROOT / s) for s in EXERCISING_SUITES],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=840,
    )
    assert run.returncode == 0, f"the exercising suites failed:\n{run.stdout[-4000:]}\n{run.stderr[-2000:]}"
    return set(out.read_text().split())


def test_the_policy_grants_exactly_the_actions_warmpool_calls(called_actions: set[str]) -> None:
    # given every action the suites saw warmpool make / when compared with the policy
    policy = granted(load_policy())
    # expect nothing missing (warmpool would get AccessDenied) and nothing granted that nothing calls
    assert called_actions, "the plugin recorded no AWS call at all"
    assert not called_actions - policy, f"called but not granted: {sorted(called_actions - policy)}"
    assert not policy - called_actions, f"granted but never called: {sorted(policy - called_actions)}"


def test_only_boto3_cloud_talks_to_aws() -> None:
    """The recorded set is complete only if every AWS call of the product goes through Boto3Cloud."""
    allowed = {ROOT / "tasks" / "cloud" / "boto3_cloud.py"}
    offenders = []
    for path in sorted((ROOT / "tasks").rglob("*.py")) + sorted((ROOT / "producer").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.split(".")[0] in ("boto3", "botocore") for n in names) and path not in allowed:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, f"AWS SDK imported outside tasks/cloud/boto3_cloud.py: {offenders}"


def test_every_action_is_known_to_the_resource_table_here(called_actions: set[str]) -> None:
    """A new AWS call needs its resource-level permissions looked up (and added to RESOURCE_TYPES)."""
    assert called_actions <= set(RESOURCE_TYPES), sorted(called_actions - set(RESOURCE_TYPES))


def test_the_policy_is_a_plain_allow_only_document() -> None:
    policy = load_policy()
    assert policy["Version"] == "2012-10-17"
    sids = [s["Sid"] for s in statements(policy)]
    assert len(sids) == len(set(sids))
    for s in statements(policy):
        assert s["Effect"] == "Allow" and set(s) <= {"Sid", "Effect", "Action", "Resource", "Condition"}
        assert not any("*" in a for a in as_list(s["Action"])), "no wildcard actions"


@pytest.mark.parametrize("action", sorted(RESOURCE_TYPES))
def test_each_action_is_scoped_as_narrowly_as_aws_allows(action: str) -> None:
    s = statement_of(load_policy(), action)
    resources = as_list(s["Resource"])
    if RESOURCE_TYPES[action] is None:
        assert resources == ["*"]  # AWS accepts nothing narrower for List actions
    else:
        assert "*" not in resources, f"{action} supports resource-level permissions: scope it"


def test_auto_scaling_writes_reach_the_warmpool_groups_only() -> None:
    s = statement_of(load_policy(), "autoscaling:SetDesiredCapacity")
    patterns = as_list(s["Resource"])

    def allowed(arn: str) -> bool:
        return any(fnmatch.fnmatchcase(arn, p) for p in patterns)

    assert allowed(group_arn("warmpool-pool")) and allowed(group_arn("warmpool-gpu", region="eu-west-1"))
    assert not allowed(group_arn("someone-elses-asg"))
    assert not allowed(group_arn("heavrdevs-asg"))
    assert not allowed("arn:aws:autoscaling:ap-south-1:123456789012:launchConfiguration:x:launchConfigurationName/w")


def test_create_tags_is_limited_to_warmpool_keys_on_warmpool_instances() -> None:
    s = statement_of(load_policy(), "ec2:CreateTags")
    assert as_list(s["Resource"]) == ["arn:aws:ec2:*:*:instance/*"]
    cond = s["Condition"]
    key_patterns = as_list(cond["ForAllValues:StringLike"]["aws:TagKeys"])
    # the keys warmpool writes are allowed, any other key is not
    for key in (TAG_PROJECT, TAG_ASSIGNED_AT):
        assert any(fnmatch.fnmatchcase(key, p) for p in key_patterns), key
    for key in ("Name", "aws:autoscaling:groupName", "owner", "warmpoolx"):
        assert not any(fnmatch.fnmatchcase(key, p) for p in key_patterns), key
    # ForAllValues is true for a request without tags: insist that tag keys are present
    assert cond["Null"] == {"aws:TagKeys": "false"}
    # only instances the warmpool groups launched (Auto Scaling tags them with their group)
    group_tag = as_list(cond["StringLike"]["aws:ResourceTag/aws:autoscaling:groupName"])
    assert group_tag == ["warmpool-*"]
