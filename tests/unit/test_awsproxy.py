"""sandbox.awsproxy.AwsFaultProxy: forwarding, injected AWS errors as botocore sees them, refusal, control API."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from sandbox.awsproxy import AwsFaultProxy, FaultConfig, ProxyControl
from tasks.cloud.boto3_cloud import _map_error
from tasks.errors import CloudThrottled, CloudUnavailable

_ASG_OK = (
    '<DescribeAutoScalingGroupsResponse xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/">'
    "<DescribeAutoScalingGroupsResult><AutoScalingGroups/></DescribeAutoScalingGroupsResult>"
    "<ResponseMetadata><RequestId>r-1</RequestId></ResponseMetadata></DescribeAutoScalingGroupsResponse>"
)
_EC2_OK = {
    "DescribeInstances": '<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
    "<requestId>r-2</requestId><reservationSet/></DescribeInstancesResponse>",
    "CreateTags": '<CreateTagsResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
    "<requestId>r-3</requestId><return>true</return></CreateTagsResponse>",
}


class _Upstream(ThreadingHTTPServer):
    """A stand-in for moto: answers a few query-protocol actions and records what it received."""

    daemon_threads = True

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        super().__init__(("127.0.0.1", 0), _UpstreamHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _UpstreamHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Upstream

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        action = parse_qs(body).get("Action", ["?"])[0]
        self.server.received.append({"action": action, "host": self.headers.get("Host"), "path": self.path})
        payload = (_ASG_OK if action == "DescribeAutoScalingGroups" else _EC2_OK.get(action, "<x/>")).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def upstream() -> Iterator[_Upstream]:
    server = _Upstream()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(upstream: _Upstream) -> Iterator[AwsFaultProxy]:
    with AwsFaultProxy(upstream.url, seed=7) as p:
        yield p


_clients: list[Any] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def client(service: str, proxy: AwsFaultProxy) -> Any:
    c = boto3.client(
        service,
        endpoint_url=proxy.endpoint_url,
        region_name="ap-south-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}, connect_timeout=2, read_timeout=5),
    )
    _clients.append(c)
    return c


def aws_error(call: Any, **kwargs: Any) -> botocore.exceptions.ClientError:
    with pytest.raises(botocore.exceptions.ClientError) as info:
        call(**kwargs)
    return info.value


def raw_post(proxy: AwsFaultProxy, action: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    try:
        conn.request(
            "POST", "/", body=f"Action={action}", headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_forwards_requests_unchanged_and_counts_them_by_action(proxy: AwsFaultProxy, upstream: _Upstream) -> None:
    asg, ec2 = client("autoscaling", proxy), client("ec2", proxy)
    assert asg.describe_auto_scaling_groups(AutoScalingGroupNames=["g"])["AutoScalingGroups"] == []
    assert ec2.describe_instances()["Reservations"] == []
    assert ec2.describe_instances()["Reservations"] == []
    assert [r["action"] for r in upstream.received] == [
        "DescribeAutoScalingGroups",
        "DescribeInstances",
        "DescribeInstances",
    ]
    # The signed Host header reaches the upstream as the client sent it.
    assert {r["host"] for r in upstream.received} == {f"127.0.0.1:{proxy.port}"}
    assert proxy.counts() == {"DescribeAutoScalingGroups": 1, "DescribeInstances": 2}
    assert proxy.stats()["forwarded"] == proxy.counts()
    proxy.reset_counts()
    assert proxy.counts() == {}


def test_throttling_is_what_botocore_and_the_cloud_adapter_call_throttling(
    proxy: AwsFaultProxy, upstream: _Upstream
) -> None:
    proxy.configure(throttle_ratio=1.0)
    err = aws_error(client("autoscaling", proxy).describe_auto_scaling_groups)
    assert err.response["Error"]["Code"] == "Throttling"
    assert err.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert isinstance(_map_error(err, "DescribeAutoScalingGroups"), CloudThrottled)
    err = aws_error(client("ec2", proxy).describe_instances)
    assert err.response["Error"]["Code"] == "RequestLimitExceeded"
    assert isinstance(_map_error(err, "DescribeInstances"), CloudThrottled)
    assert upstream.received == []
    assert proxy.stats()["throttled"] == {"DescribeAutoScalingGroups": 1, "DescribeInstances": 1}


def test_server_errors_are_500s_in_each_services_format(proxy: AwsFaultProxy) -> None:
    proxy.configure(error_ratio=1.0)
    err = aws_error(client("autoscaling", proxy).describe_auto_scaling_groups)
    assert (err.response["Error"]["Code"], err.response["ResponseMetadata"]["HTTPStatusCode"]) == (
        "InternalFailure",
        500,
    )
    err = aws_error(client("ec2", proxy).describe_instances)
    assert err.response["Error"]["Code"] == "InternalError"
    assert isinstance(_map_error(err, "DescribeInstances"), CloudUnavailable)


def test_faults_can_target_some_actions_only(proxy: AwsFaultProxy, upstream: _Upstream) -> None:
    proxy.configure(throttle_ratio=1.0, actions={"CreateTags"})
    ec2 = client("ec2", proxy)
    ec2.describe_instances()
    err = aws_error(ec2.create_tags, Resources=["i-1"], Tags=[{"Key": "k", "Value": "v"}])
    assert err.response["Error"]["Code"] == "RequestLimitExceeded"
    assert [r["action"] for r in upstream.received] == ["DescribeInstances"]
    assert proxy.counts() == {"DescribeInstances": 1, "CreateTags": 1}


def test_latency_is_added_to_every_request(proxy: AwsFaultProxy) -> None:
    ec2 = client("ec2", proxy)
    ec2.describe_instances()  # connection set up
    proxy.configure(latency_s=0.2)
    started = time.monotonic()
    ec2.describe_instances()
    assert time.monotonic() - started >= 0.2
    proxy.configure(latency_s=0.0)
    started = time.monotonic()
    ec2.describe_instances()
    assert time.monotonic() - started < 0.2


def test_ratios_are_shares_of_requests(proxy: AwsFaultProxy) -> None:
    proxy.configure(throttle_ratio=0.3, error_ratio=0.2)
    statuses = [raw_post(proxy, "DescribeInstances") for _ in range(300)]
    throttled, failed, ok = statuses.count(400), statuses.count(500), statuses.count(200)
    assert throttled + failed + ok == 300
    assert 60 <= throttled <= 120 and 30 <= failed <= 90 and 105 <= ok <= 195
    stats = proxy.stats()
    assert stats["throttled"]["DescribeInstances"] == throttled
    assert stats["errors"]["DescribeInstances"] == failed


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_refusing_stops_listening_closes_open_connections_and_resumes_on_the_same_port(
    proxy: AwsFaultProxy,
) -> None:
    ec2 = client("ec2", proxy)
    ec2.describe_instances()  # leaves a kept-alive connection open
    port = proxy.port
    proxy.configure(refuse=True)
    assert _refused(port)
    with pytest.raises(botocore.exceptions.BotoCoreError):  # the kept-alive connection was closed too
        ec2.describe_instances()
    assert ProxyControl(proxy.control_url).config()["refuse"] is True  # control still answers
    proxy.configure(refuse=False)
    assert proxy.port == port and not _refused(port)
    ec2.describe_instances()
    assert proxy.stats()["dropped_connections"] >= 1


def test_refusing_for_a_period_resumes_by_itself(proxy: AwsFaultProxy) -> None:
    proxy.configure(refuse_for_s=0.3)
    assert _refused(proxy.port)
    deadline = time.monotonic() + 5
    while _refused(proxy.port):
        assert time.monotonic() < deadline, "the proxy did not listen again"
        time.sleep(0.05)
    assert proxy.config.refuse is False
    assert raw_post(proxy, "DescribeInstances") == 200


def test_control_api_changes_faults_at_runtime(proxy: AwsFaultProxy) -> None:
    control = ProxyControl(proxy.control_url)
    config = control.configure(latency_s=0.05, throttle_ratio=0.5, actions=["CreateTags"])
    assert config["actions"] == ["CreateTags"]
    assert proxy.config == FaultConfig(latency_s=0.05, throttle_ratio=0.5, actions=frozenset({"CreateTags"}))
    raw_post(proxy, "DescribeInstances")
    assert control.counts() == {"DescribeInstances": 1}
    # The data listener answers the control API too.
    assert ProxyControl(proxy.endpoint_url).stats()["forwarded"] == {"DescribeInstances": 1}
    control.reset_counts()
    assert control.counts() == {}
    assert control.reset_faults() == FaultConfig().to_json()
    with pytest.raises(ValueError, match="400.*unknown config keys: latency"):
        control.configure(latency=1)
    with pytest.raises(ValueError, match="throttle_ratio must be between 0 and 1"):
        control.configure(throttle_ratio=2)
    assert json.loads(json.dumps(control.config())) == FaultConfig().to_json()


def test_upstream_down_is_a_502_that_botocore_retries(upstream: _Upstream) -> None:
    url = upstream.url
    upstream.shutdown()
    upstream.server_close()
    with AwsFaultProxy(url) as p:
        assert raw_post(p, "DescribeInstances") == 502
        assert p.stats()["upstream_failures"] == {"DescribeInstances": 1}


def test_forwarding_adds_little_latency(proxy: AwsFaultProxy) -> None:
    # Responses go out in one write with TCP_NODELAY: no 40 ms Nagle/delayed-ACK stall per call.
    ec2 = client("ec2", proxy)
    ec2.describe_instances()
    timings = []
    for _ in range(15):
        started = time.monotonic()
        ec2.describe_instances()
        timings.append(time.monotonic() - started)
    assert sorted(timings)[len(timings) // 2] < 0.03
