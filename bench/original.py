"""A faithful minimal model of the orchestrator warmpool replaces, and the side-by-side benchmark.

The original design, as its users saw it:

* ``GET /{project_id}`` answers ``200 {"ip", "instanceId"}`` with a free
  instance, or ``404 {"error": "No idle machine found"}``;
* it knows the group's instances only from a poll every 10 s
  (``DescribeAutoScalingGroups`` + ``DescribeInstances``);
* every request it serves calls ``SetDesiredCapacity`` synchronously (one more
  instance to replace the one handed out) before answering.

So under sustained demand it serves at most the idle buffer per poll interval
(2 per 10 s = 0.2 assigns/s with a buffer of 2), and each assign costs one
synchronous AWS call. ``python -m bench.original --endpoint URL --asg NAME``
serves it on a port; ``orchestrator_scenario`` runs it and warmpool on the
same demand, one after the other, in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3

from bench.measure import warm_client
from bench.stack import ASG, NICE, REGION, REPO, Infra, Warmpool
from bench.stats import Progress, raw_ms, say, summary_ms, wait_until
from producer.aio import AsyncPoolClient
from sandbox import DUMMY_CREDENTIAL, free_port
from tasks.errors import NoCapacity, PoolUnavailable

POLL_S = 10.0
RETRY_S = 0.25  # a client retries a 404 this often (warmpool's clients wait server-side instead)


class OriginalOrchestrator:
    """The original: a poll-fed instance list and a synchronous SetDesiredCapacity per served request."""

    def __init__(self, endpoint_url: str, asg_name: str, *, region: str = REGION, poll_s: float = POLL_S) -> None:
        session = boto3.session.Session(
            aws_access_key_id=DUMMY_CREDENTIAL, aws_secret_access_key=DUMMY_CREDENTIAL, region_name=region
        )
        self.asg = session.client("autoscaling", endpoint_url=endpoint_url)
        self.ec2 = session.client("ec2", endpoint_url=endpoint_url)
        self.asg_name = asg_name
        self.poll_s = poll_s
        self.lock = threading.Lock()
        self.instances: list[tuple[str, str]] = []  # (instance id, public ip) InService at the last poll
        self.assigned: dict[str, str] = {}  # project -> instance id
        self.ips: dict[str, str] = {}
        self.desired = 0
        self.stopped = threading.Event()

    def poll(self) -> None:
        group = self.asg.describe_auto_scaling_groups(AutoScalingGroupNames=[self.asg_name])["AutoScalingGroups"][0]
        in_service = [i["InstanceId"] for i in group["Instances"] if i["LifecycleState"] == "InService"]
        ips: dict[str, str] = {}
        if in_service:
            for page in self.ec2.get_paginator("describe_instances").paginate(InstanceIds=in_service):
                for reservation in page["Reservations"]:
                    for inst in reservation["Instances"]:
                        if inst["State"]["Name"] == "running" and inst.get("PublicIpAddress"):
                            ips[inst["InstanceId"]] = inst["PublicIpAddress"]
        with self.lock:
            self.instances = [(i, ips[i]) for i in in_service if i in ips]
            self.ips.update(ips)
            self.desired = max(self.desired, int(group["DesiredCapacity"]))

    def poll_forever(self) -> None:
        while not self.stopped.wait(self.poll_s):
            try:
                self.poll()
            except Exception as exc:  # the original logged and carried on
                print(f"poll failed: {exc}", file=sys.stderr, flush=True)

    def handle(self, project_id: str) -> tuple[int, dict[str, str]]:
        with self.lock:
            held = self.assigned.get(project_id)
            if held is not None:
                return 200, {"ip": self.ips[held], "instanceId": held}
            taken = set(self.assigned.values())
            free = next(((i, ip) for i, ip in self.instances if i not in taken), None)
            if free is None:
                return 404, {"error": "No idle machine found"}
            self.assigned[project_id] = free[0]
            self.desired += 1
            desired = self.desired
        # One synchronous AWS call per request, on the request's path.
        self.asg.set_desired_capacity(AutoScalingGroupName=self.asg_name, DesiredCapacity=desired, HonorCooldown=False)
        return 200, {"ip": free[1], "instanceId": free[0]}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no delayed-ACK stall
    orchestrator: OriginalOrchestrator

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:
        status, body = self.orchestrator.handle(self.path.strip("/"))
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def serve(endpoint_url: str, asg_name: str, port: int, poll_s: float) -> None:
    orchestrator = OriginalOrchestrator(endpoint_url, asg_name, poll_s=poll_s)
    orchestrator.poll()
    threading.Thread(target=orchestrator.poll_forever, daemon=True).start()
    handler = type("Handler", (_Handler,), {"orchestrator": orchestrator})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(json.dumps({"url": f"http://127.0.0.1:{port}"}), flush=True)
    server.serve_forever(poll_interval=0.1)
    orchestrator.stopped.set()


# -- the benchmark -------------------------------------------------------------------------
def _get(conn: http.client.HTTPConnection, project: str) -> tuple[int, dict[str, Any]]:
    conn.request("GET", f"/{project}")
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def _start_original(infra: Infra, label: str, group_size: int, max_size: int) -> tuple[str, str]:
    infra.create_group([group_size], max_size=max_size)
    port = free_port()
    argv = [sys.executable, "-m", "bench.original", "--endpoint", infra.proxy_url, "--asg", ASG]
    argv += ["--port", str(port), "--poll", str(POLL_S)]
    name = f"original-{label}"
    infra.procs.spawn(name, argv, env={**infra.env, "PYTHONPATH": str(REPO)}, log_path=infra.logs / f"{name}.log")
    url = f"127.0.0.1:{port}"

    def answers() -> bool:
        try:
            conn = http.client.HTTPConnection(url, timeout=2)
            conn.connect()
            conn.close()
            return True
        except OSError:
            return False

    wait_until(answers, timeout_s=30, what="the original orchestrator")
    return name, url


def original_latency(infra: Infra, n: int) -> dict[str, Any]:
    """The original with idle machines: ``n`` sequential GETs (each a SetDesiredCapacity)."""
    name, url = _start_original(infra, "latency", n + 20, 4 * n + 100)
    try:
        conn = http.client.HTTPConnection(url, timeout=30)
        for i in range(10):
            _get(conn, f"warm-{i}")
        lat = []
        with Progress("original: assign with idle machines", n) as progress:
            for i in range(n):
                t = time.perf_counter()
                status, _ = _get(conn, f"olat-{i}")
                lat.append(time.perf_counter() - t)
                if status != 200:
                    raise RuntimeError(f"the original answered {status} with idle machines")
                progress.advance()
        conn.close()
    finally:
        infra.procs.stop(name)
    return {**summary_ms(lat), "raw_ms": raw_ms(lat)}


def _original_client(url: str, idx: int, stop_at: float, served: list[float], start: float) -> None:
    conn = http.client.HTTPConnection(url, timeout=30)
    i = 0
    while time.monotonic() < stop_at:
        status, _ = _get(conn, f"osus-{idx}-{i}")
        if status == 200:
            served.append(time.monotonic() - start)
            i += 1
        else:
            time.sleep(RETRY_S)
    conn.close()


def original_sustained(infra: Infra, duration_s: float, clients: int, buffer: int = 2) -> dict[str, Any]:
    """Sustained demand: ``clients`` users who each want a machine, again and again, for ``duration_s``."""
    assert infra.control is not None
    name, url = _start_original(infra, "sustained", buffer, 100_000)
    infra.control.reset_counts()
    served: list[float] = []
    start = time.monotonic()
    stop_at = start + duration_s
    threads = [
        threading.Thread(target=_original_client, args=(url, k, stop_at, served, start), daemon=True)
        for k in range(clients)
    ]
    for t in threads:
        t.start()
    with Progress(f"original: sustained demand, {clients} clients", None) as progress:
        while time.monotonic() < stop_at:
            time.sleep(1.0)
            progress.advance(0, note=f"{len(served)} served")
    for t in threads:
        t.join(timeout=40)
    infra.procs.stop(name)
    calls = infra.control.counts()
    return _sustained_result(served, duration_s, clients, calls)


def _sustained_result(served: list[float], duration_s: float, clients: int, calls: dict[str, int]) -> dict[str, Any]:
    return {
        "duration_s": duration_s,
        "clients": clients,
        "served": len(served),
        "served_per_s": round(len(served) / duration_s, 3),
        "served_at_s": [round(x, 3) for x in sorted(served)],
        "aws_calls": calls,
    }


async def _warmpool_client(
    client: AsyncPoolClient, idx: int, stop_at: float, served: list[float], start: float, waits: list[float]
) -> None:
    i = 0
    while time.monotonic() < stop_at:
        wait = max(0.5, min(30.0, stop_at - time.monotonic()))
        t = time.monotonic()
        try:
            await client.assign(f"wsus-{idx}-{i}", wait=wait)
        except (NoCapacity, PoolUnavailable):
            continue
        served.append(time.monotonic() - start)
        waits.append(time.monotonic() - t)
        i += 1


def warmpool_sustained(infra: Infra, duration_s: float, clients: int, buffer: int = 2) -> dict[str, Any]:
    """The same demand against warmpool (idle target 2, machines launching through moto)."""
    assert infra.control is not None and infra.app is not None
    with Warmpool(infra, "sustained", idle_target=buffer, refresh_s=POLL_S) as wp:
        wp.start(group_steps=[buffer], max_size=100_000)
        infra.control.reset_counts()
        served: list[float] = []
        waits: list[float] = []

        async def run() -> None:
            async with warm_client(infra.app) as client:
                start = time.monotonic()
                stop_at = start + duration_s
                tasks = [
                    asyncio.create_task(_warmpool_client(client, k, stop_at, served, start, waits))
                    for k in range(clients)
                ]
                progress = Progress(f"warmpool: sustained demand, {clients} clients", None)
                while time.monotonic() < stop_at:
                    await asyncio.sleep(1.0)
                    progress.advance(0, note=f"{len(served)} served")
                progress.close()
                await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run(run())
        calls = infra.control.counts()
        result = _sustained_result(served, duration_s, clients, calls)
        result["wait_s"] = summary_ms(waits)
        result["final_counts"] = wp.counts()
        return result


def orchestrator_scenario(infra: Infra, *, duration_s: float, clients: int, seq_n: int) -> dict[str, Any]:
    say(f"[orchestrator] the original design and warmpool under the same demand ({duration_s:.0f}s each)")
    result: dict[str, Any] = {"poll_s": POLL_S, "buffer": 2, "aws_nice": 0}
    infra.set_aws_priority(0)  # AWS is on both designs' capacity path here: full speed
    try:
        if seq_n:
            result["original_latency"] = original_latency(infra, seq_n)
        if duration_s > 0:
            result["original_sustained"] = original_sustained(infra, duration_s, clients)
            result["warmpool_sustained"] = warmpool_sustained(infra, duration_s, clients)
    finally:
        infra.set_aws_priority(NICE)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.original", description="serve the original orchestrator")
    parser.add_argument("--endpoint", required=True, help="AWS endpoint (moto server or the fault proxy)")
    parser.add_argument("--asg", required=True)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--poll", type=float, default=POLL_S)
    args = parser.parse_args(argv)
    serve(args.endpoint, args.asg, args.port, args.poll)


if __name__ == "__main__":
    main()
