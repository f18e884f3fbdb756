"""A simulated Auto Scaling Group in moto: VPC, subnet, launch template and group."""

from __future__ import annotations

from typing import Any

import boto3
import botocore.exceptions

from sandbox.processes import DUMMY_CREDENTIAL
from tasks.config import DEFAULT_ASG_NAME, DEFAULT_REGION

FALLBACK_AMI_ID = "ami-12c6146b"  # one of the AMIs moto ships in every region
SANDBOX_TAG = "warmpool:sandbox"


def _session(endpoint_url: str, region: str) -> tuple[Any, Any]:
    session = boto3.session.Session(
        aws_access_key_id=DUMMY_CREDENTIAL,
        aws_secret_access_key=DUMMY_CREDENTIAL,
        region_name=region,
    )
    return session.client("ec2", endpoint_url=endpoint_url), session.client("autoscaling", endpoint_url=endpoint_url)


def _pick_image(ec2: Any) -> str:
    """An AMI id moto knows in this region (moto ships a catalogue of Amazon AMIs)."""
    try:  # asking for one known id is fast; listing the whole catalogue takes ~0.7 s
        if ec2.describe_images(ImageIds=[FALLBACK_AMI_ID]).get("Images"):
            return FALLBACK_AMI_ID
    except botocore.exceptions.ClientError:
        pass
    images = ec2.describe_images(Owners=["amazon"]).get("Images", [])
    ids = sorted(str(i["ImageId"]) for i in images if i.get("ImageId"))
    return ids[0] if ids else FALLBACK_AMI_ID


def _tagged_vpc(ec2: Any, name: str) -> tuple[str, str] | None:
    vpcs = ec2.describe_vpcs(Filters=[{"Name": f"tag:{SANDBOX_TAG}", "Values": [name]}]).get("Vpcs", [])
    if not vpcs:
        return None
    vpc_id = str(vpcs[0]["VpcId"])
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}]).get("Subnets", [])
    return (vpc_id, str(subnets[0]["SubnetId"])) if subnets else None


def _network(ec2: Any, name: str, region: str, *, public_ips: bool) -> tuple[str, str]:
    """A VPC and one subnet for the group (reused when a previous call made them)."""
    found = _tagged_vpc(ec2, name)
    if found is not None:
        return found
    tags = [{"ResourceType": "vpc", "Tags": [{"Key": SANDBOX_TAG, "Value": name}]}]
    vpc_id = str(ec2.create_vpc(CidrBlock="10.0.0.0/16", TagSpecifications=tags)["Vpc"]["VpcId"])
    subnet_id = str(
        ec2.create_subnet(VpcId=vpc_id, CidrBlock="10.0.0.0/17", AvailabilityZone=f"{region}a")["Subnet"]["SubnetId"]
    )
    if public_ips:
        # moto hands out public IPs only in subnets that map them on launch.
        ec2.modify_subnet_attribute(SubnetId=subnet_id, MapPublicIpOnLaunch={"Value": True})
    return vpc_id, subnet_id


def _launch_template(ec2: Any, name: str) -> tuple[str, str]:
    lt_name = f"{name}-lt"
    try:
        found = ec2.describe_launch_templates(LaunchTemplateNames=[lt_name])["LaunchTemplates"]
    except botocore.exceptions.ClientError:  # an unknown name is an error, in moto as in AWS
        found = []
    if found:
        lt_id = str(found[0]["LaunchTemplateId"])
        version = ec2.describe_launch_template_versions(LaunchTemplateId=lt_id)["LaunchTemplateVersions"]
        return lt_id, str(version[0]["LaunchTemplateData"].get("ImageId", FALLBACK_AMI_ID))
    image_id = _pick_image(ec2)
    created = ec2.create_launch_template(
        LaunchTemplateName=lt_name,
        LaunchTemplateData={"ImageId": image_id, "InstanceType": "t3.medium"},
    )
    return str(created["LaunchTemplate"]["LaunchTemplateId"]), image_id


def create_simulated_group(
    endpoint_url: str,
    *,
    name: str = DEFAULT_ASG_NAME,
    region: str = DEFAULT_REGION,
    min_size: int = 0,
    max_size: int = 10,
    desired: int = 3,
    public_ips: bool = True,
) -> dict[str, Any]:
    """Create a VPC, a subnet, a launch template and the Auto Scaling Group ``name`` in moto.

    Idempotent: resources a previous call made (and no reset removed) are
    reused, and an existing group is left as it is. Returns the ids:
    ``asg_name, region, vpc_id, subnet_id, launch_template_id, image_id, instance_ids``.
    """
    ec2, asg = _session(endpoint_url, region)
    vpc_id, subnet_id = _network(ec2, name, region, public_ips=public_ips)
    lt_id, image_id = _launch_template(ec2, name)
    existing = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"]
    if not existing:
        asg.create_auto_scaling_group(
            AutoScalingGroupName=name,
            LaunchTemplate={"LaunchTemplateId": lt_id, "Version": "$Latest"},
            MinSize=min_size,
            MaxSize=max_size,
            DesiredCapacity=desired,
            VPCZoneIdentifier=subnet_id,
        )
        existing = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"]
    return {
        "asg_name": name,
        "region": region,
        "vpc_id": vpc_id,
        "subnet_id": subnet_id,
        "launch_template_id": lt_id,
        "image_id": image_id,
        "instance_ids": [str(i["InstanceId"]) for i in existing[0].get("Instances", [])],
    }
