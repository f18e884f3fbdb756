"""Building blocks of a local warmpool stack: Redis, a moto server, a simulated ASG, processes.

Used by ``warmpool demo`` (producer.demo), the integration tests and the
benchmarks. Nothing here talks to real AWS: every boto3 client is pointed at a
moto server with dummy credentials.

Every child process is started in its own session (so a terminal's Ctrl-C
reaches only the caller, which then stops the children in order) and, on
Linux, asks the kernel to SIGTERM it when its parent dies, so a killed demo
leaves no orphaned workers behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import urlsplit

import boto3
import botocore.exceptions
import redis
from celery import Celery

from tasks.config import DEFAULT_ASG_NAME, DEFAULT_REGION

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
DUMMY_CREDENTIAL = "testing"
FALLBACK_AMI_ID = "ami-12c6146b"  # one of the AMIs moto ships in every region
SANDBOX_TAG = "warmpool:sandbox"
INSTALL_REDIS_HINT = (
    "redis-server is not on PATH. Install Redis first:\n"
    "  Debian/Ubuntu: sudo apt-get install redis-server\n"
    "  macOS:         brew install redis\n"
    "or point WARMPOOL_BROKER_URL / WARMPOOL_RESULT_BACKEND / WARMPOOL_REDIS_URL at a running Redis."
)

_PR_SET_PDEATHSIG = 1


# -- child processes ----------------------------------------------------------
def _child_setup() -> None:
    """In the child before exec: new session; on Linux, SIGTERM when the parent dies."""
    os.setsid()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _popen(argv: list[str], *, env: Mapping[str, str] | None, out: IO[Any] | int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv,
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        preexec_fn=_child_setup,  # setsid + prctl only
    )


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Send ``sig`` to the process group the child leads (it called setsid)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        proc.send_signal(sig)


def terminate(proc: subprocess.Popen[bytes], *, timeout_s: float = 10.0) -> int | None:
    """SIGTERM a child's process group, wait up to ``timeout_s``, then SIGKILL it. Returns its exit code."""
    _signal_group(proc, signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        return proc.wait(timeout=5)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_until(check: Callable[[], bool], *, timeout_s: float, what: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before it answered")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} did not answer within {timeout_s:.0f}s")
        time.sleep(0.05)


# -- Redis --------------------------------------------------------------------
def redis_answers(url: str, *, timeout_s: float = 0.5) -> bool:
    """True when a Redis server answers PING at ``url`` within ``timeout_s``."""
    client: redis.Redis = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 6379


def ensure_redis(
    url: str,
    *,
    log: Callable[[str], None] = print,
    log_path: Path | None = None,
    timeout_s: float = 10.0,
) -> subprocess.Popen[bytes] | None:
    """Make sure a Redis answers at ``url``; start ``redis-server`` there if none does.

    Returns the started server (the caller stops it, e.g. with ``terminate``) or
    None when one was already answering. Raises SystemExit with instructions when
    Redis cannot be started: redis-server missing, or the URL names a remote host.
    """
    if redis_answers(url):
        return None
    host, port = _host_port(url)
    if host not in LOCAL_HOSTS:
        raise SystemExit(f"No Redis answers at {host}:{port} ({url}); start it or fix the URL.")
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit(f"No Redis answers at {host}:{port}, and {INSTALL_REDIS_HINT}")
    bind = "127.0.0.1" if host == "localhost" else host
    argv = [server, "--port", str(port), "--bind", bind, "--save", "", "--appendonly", "no"]
    log(f"starting redis-server on {bind}:{port} (no persistence)")
    out: IO[Any] | int = open(log_path, "ab") if log_path is not None else subprocess.DEVNULL
    try:
        proc = _popen(argv, env=None, out=out)
    finally:
        if not isinstance(out, int):
            out.close()
    try:
        _wait_until(lambda: redis_answers(url), timeout_s=timeout_s, what="redis-server", proc=proc)
    except (RuntimeError, TimeoutError) as exc:
        terminate(proc, timeout_s=2)
        raise SystemExit(f"could not start redis-server on {bind}:{port}: {exc}") from None
    return proc


# -- moto ---------------------------------------------------------------------
def _http(url: str, *, method: str = "GET", timeout_s: float = 2.0) -> int:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        status: int = response.status
        return status


class MotoServer:
    """moto in server mode, in a subprocess (workers in other processes reach it by URL).

    ``with MotoServer() as moto: ... moto.endpoint_url ...``; ``reset()`` clears
    every simulated resource (``POST /moto-api/reset``).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        log_path: Path | None = None,
        start_timeout_s: float = 30.0,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        """The URL to give boto3 (``endpoint_url=``) or ``AWS_ENDPOINT_URL``."""
        return f"http://{self.host}:{self.port}"

    def answers(self) -> bool:
        """True when the server answers HTTP."""
        try:
            return _http(self.endpoint_url + "/moto-api/data.json", timeout_s=1.0) == 200
        except (OSError, urllib.error.URLError):
            return False

    def start(self) -> MotoServer:
        """Start the server and wait until it answers."""
        if self._proc is not None:
            return self
        argv = [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": DUMMY_CREDENTIAL, "AWS_SECRET_ACCESS_KEY": DUMMY_CREDENTIAL}
        out: IO[Any] | int = open(self.log_path, "ab") if self.log_path is not None else subprocess.DEVNULL
        try:
            self._proc = _popen(argv, env=env, out=out)
        finally:
            if not isinstance(out, int):
                out.close()
        try:
            _wait_until(self.answers, timeout_s=self.start_timeout_s, what="moto server", proc=self._proc)
        except BaseException:
            self.stop()
            raise
        return self

    def reset(self) -> None:
        """Forget every simulated resource (all services, all regions)."""
        _http(self.endpoint_url + "/moto-api/reset", method="POST", timeout_s=10.0)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s)."""
        if self._proc is not None:
            terminate(self._proc, timeout_s=5)
            self._proc = None

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# -- a simulated Auto Scaling Group ---------------------------------------------
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


# -- environment and processes -------------------------------------------------
_DROPPED_AWS_VARS = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


def stack_env(
    *,
    endpoint_url: str,
    broker_url: str,
    result_backend: str,
    redis_url: str,
    asg_name: str,
    idle_target: int,
    refresh_seconds: float,
    region: str = DEFAULT_REGION,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """A copy of os.environ for stack processes: WARMPOOL_* settings and moto as AWS."""
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_AWS_VARS}
    env.update(
        {
            "WARMPOOL_ASG_NAME": asg_name,
            "WARMPOOL_IDLE_TARGET": str(idle_target),
            "WARMPOOL_REFRESH_SECONDS": repr(float(refresh_seconds)),
            "WARMPOOL_BROKER_URL": broker_url,
            "WARMPOOL_RESULT_BACKEND": result_backend,
            "WARMPOOL_REDIS_URL": redis_url,
            "AWS_ENDPOINT_URL": endpoint_url,
            "AWS_REGION": region,
            "AWS_DEFAULT_REGION": region,
            "AWS_ACCESS_KEY_ID": DUMMY_CREDENTIAL,
            "AWS_SECRET_ACCESS_KEY": DUMMY_CREDENTIAL,
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


class ProcessGroup:
    """Named child processes, each in its own session with its output in a log file.

    A context manager: leaving the ``with`` block stops every child still running.
    """

    def __init__(self) -> None:
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(
        self,
        name: str,
        argv: list[str],
        *,
        env: Mapping[str, str],
        log_path: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` as ``name`` (stdout and stderr to ``log_path``, else discarded)."""
        if self.alive(name):
            raise ValueError(f"a process named {name!r} is already running")
        out: IO[Any] | int = subprocess.DEVNULL
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            out = open(log_path, "ab")  # the child keeps its own copy
        try:
            proc = _popen(argv, env=env, out=out)
        finally:
            if not isinstance(out, int):
                out.close()
        self._procs[name] = proc
        return proc

    def get(self, name: str) -> subprocess.Popen[bytes]:
        """The process started as ``name`` (KeyError if none)."""
        return self._procs[name]

    def names(self) -> list[str]:
        """Names of every process spawned and not yet stopped, in start order."""
        return list(self._procs)

    def alive(self, name: str) -> bool:
        """True while the process ``name`` runs."""
        proc = self._procs.get(name)
        return proc is not None and proc.poll() is None

    def stop(self, name: str, *, timeout_s: float = 10.0) -> int | None:
        """SIGTERM ``name`` (its whole process group), SIGKILL after ``timeout_s``; its exit code."""
        proc = self._procs.pop(name, None)
        return None if proc is None else terminate(proc, timeout_s=timeout_s)

    def kill(self, name: str) -> int | None:
        """SIGKILL ``name`` at once (fault-injection tests); its exit code."""
        proc = self._procs.pop(name, None)
        if proc is None:
            return None
        _signal_group(proc, signal.SIGKILL)
        return proc.wait(timeout=5)

    def stop_all(self, *, timeout_s: float = 10.0) -> dict[str, int | None]:
        """SIGTERM every child (newest first), wait for all, SIGKILL stragglers; exit codes by name."""
        procs = list(reversed(self._procs.items()))
        self._procs.clear()
        for _, proc in procs:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        codes: dict[str, int | None] = {}
        for name, proc in procs:
            try:
                codes[name] = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                codes[name] = proc.wait(timeout=5)
        return codes

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()


# -- celery command lines ---------------------------------------------------------
def worker_argv(queue: str, *, hostname: str, concurrency: int = 1, solo: bool) -> list[str]:
    """``celery -A tasks worker`` for one queue: ``-P solo`` (the pool worker) or ``-P threads -c N``."""
    pool = ["-P", "solo"] if solo else ["-P", "threads", "-c", str(concurrency)]
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tasks",
        "worker",
        "-Q",
        queue,
        *pool,
        "-n",
        hostname,
        "--without-gossip",
        "--without-mingle",
        "-l",
        "INFO",
    ]


def beat_argv(*, schedule_path: Path | str) -> list[str]:
    """``celery -A tasks beat`` with its schedule file at ``schedule_path``."""
    return [sys.executable, "-m", "celery", "-A", "tasks", "beat", "-s", str(schedule_path), "-l", "INFO"]


def wait_for_workers(app: Celery, names: Iterable[str], timeout_s: float) -> None:
    """Return once every named worker answers a ping; TimeoutError naming the silent ones."""
    missing = set(names)
    deadline = time.monotonic() + timeout_s
    while missing:
        replies = app.control.ping(destination=sorted(missing), timeout=0.3) or []
        for reply in replies:
            missing.difference_update(reply)
        if missing and time.monotonic() >= deadline:
            raise TimeoutError(f"workers did not answer within {timeout_s:.0f}s: {', '.join(sorted(missing))}")
