"""sandbox.moto_patches' speed patches change how fast moto answers, never what it answers."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("moto")


def test_dispatch_patch_keeps_moto_s_answers() -> None:
    # given moto's own answers
    from moto import backends
    from moto.core import responses
    from moto.ec2.responses import EC2Response

    modules = list(backends.list_of_moto_modules())
    methods = responses.method_names_from_class(EC2Response)
    from sandbox.moto_patches import patch_dispatch

    # when patched
    patch_dispatch()
    # expect the same module list (every time) and the same method names, now cached
    assert list(backends.list_of_moto_modules()) == modules == list(backends.list_of_moto_modules())
    assert "ec2" in modules
    assert responses.method_names_from_class(EC2Response) == methods
    assert responses.method_names_from_class(EC2Response) is responses.method_names_from_class(EC2Response)


def _tags_by_instance(ec2: Any) -> dict[str, dict[str, str]]:
    found = {}
    for reservation in ec2.describe_instances()["Reservations"]:
        for inst in reservation["Instances"]:
            found[inst["InstanceId"]] = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
    return found


def test_tag_lookup_patch_keeps_moto_s_answers() -> None:
    import boto3
    from moto import mock_aws
    from moto.ec2.models.core import TaggedEC2Resource

    from sandbox.moto_patches import patch_tag_lookup

    original = TaggedEC2Resource.get_tags
    with mock_aws():
        # given three instances: two tagged differently, one untagged
        ec2 = boto3.client("ec2", region_name="ap-south-1")
        ids = [i["InstanceId"] for i in ec2.run_instances(ImageId="ami-12c6146b", MinCount=3, MaxCount=3)["Instances"]]
        ec2.create_tags(Resources=ids[:2], Tags=[{"Key": "warmpool:project", "Value": "p"}])
        ec2.create_tags(Resources=ids[1:2], Tags=[{"Key": "other", "Value": "x"}])
        before = _tags_by_instance(ec2)
        try:
            # when tag lookups are patched
            patch_tag_lookup()
            after = _tags_by_instance(ec2)
        finally:
            TaggedEC2Resource.get_tags = original  # type: ignore[method-assign]
        ec2.close()
    # expect the same tags for every instance
    assert after == before
    assert before[ids[1]] == {"warmpool:project": "p", "other": "x"} and before[ids[2]] == {}


def test_serialized_applies_one_request_at_a_time() -> None:
    import threading
    import time

    from sandbox.moto_patches import Serialized

    # given a WSGI app that records how many requests it is inside at once
    inside, most = 0, 0
    lock = threading.Lock()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        time.sleep(0.02)
        with lock:
            inside -= 1
        start_response("200 OK", [])
        return [b"ok"]

    serialized = Serialized(app)
    # when eight threads call it at once
    bodies: list[list[bytes]] = []
    threads = [threading.Thread(target=lambda: bodies.append(serialized({}, lambda *a: None))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # expect every request answered, never two inside the app together
    assert bodies == [[b"ok"]] * 8
    assert most == 1
