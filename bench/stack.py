"""The benchmark stack: a private Redis, a moto server behind the fault proxy, the floor worker, warmpool's processes.

Everything runs on ports picked at start, so a benchmark never meets the
Redis on 127.0.0.1:6379 that tests and demos use: broker, result backend and
pool state are databases 0, 1 and 2 of a redis-server started for the run.

``Infra`` lives for a whole run (Redis, moto, proxy, floor worker, a client
app); ``Warmpool`` starts one scenario's pool worker, aws worker and beat
against a freshly created Auto Scaling Group, and stops them afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
import urllib.error
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import redis
from celery import Celery

from bench.noop import NOOP_QUEUE, NOOP_TASK
from bench.stats import say, wait_until
from sandbox import (
    DUMMY_CREDENTIAL,
    LocalStack,
    MotoServer,
    ProcessGroup,
    create_simulated_group,
    free_port,
    wait_for_workers,
    worker_argv,
)
from sandbox.awsproxy import ProxyControl
from tasks.cloud.boto3_cloud import Boto3Cloud
from tasks.contract import POOL_QUEUE, TASK_REFRESH
from tasks.pool.model import snapshot_to_json
from tasks.state.keys import PoolKeys

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
ASG = "bench-asg"
REGION = "ap-south-1"
HOST = "bench"
NICE = 19  # CPU priority of the simulated AWS (moto, the proxy) while it is off the measured path


class BenchApp(Celery):
    """The benchmark's client app: ``bench.noop`` goes to the floor worker's queue, all else as configured.

    PoolClient/AsyncPoolClient send every job to the ``pool`` queue; with this
    app, ``client.call("bench.noop", ...)`` goes through exactly the same client
    code as an assign, only to the no-op worker.
    """

    def send_task(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if name == NOOP_TASK:
            kwargs["queue"] = NOOP_QUEUE
        return super().send_task(name, *args, **kwargs)


def make_app(broker_url: str, backend_url: str) -> BenchApp:
    app = BenchApp("warmpool-bench")
    app.config_from_object("celeryconfig")
    # The clients route like Celery does: the no-op goes to the floor worker's queue.
    routes = app.conf.task_routes or ()
    app.conf.task_routes = (
        {NOOP_TASK: {"queue": NOOP_QUEUE}},
        *(routes if isinstance(routes, tuple | list) else (routes,)),
    )
    app.conf.update(broker_url=broker_url, result_backend=backend_url)
    return app


def noop_worker_argv() -> list[str]:
    """The floor worker: like the pool worker (worker_argv) but ``-A bench.noop -Q bench-noop``."""
    argv = worker_argv(NOOP_QUEUE, hostname=f"noop@{HOST}", solo=True)
    argv[argv.index("tasks")] = "bench.noop"
    return argv


_SUCCEEDED = re.compile(r"Task ([\w.]+)\[([0-9a-f-]+)\] succeeded in ([0-9.eE+-]+)s")


def task_runtimes(log_path: Path, task: str, *, since_offset: int = 0) -> list[float]:
    """Seconds each run of ``task`` took inside the worker.

    From tasks.worker.logs' ``{"msg": "job done", "task": ..., "duration_ms": ...}``
    lines (prerun to postrun), or Celery's own "succeeded in" lines.
    """
    if not log_path.exists():
        return []
    with open(log_path, "rb") as fh:
        fh.seek(since_offset)
        text = fh.read().decode("utf-8", "replace")
    found = []
    for line in text.splitlines():
        if line.startswith("{") and '"job done"' in line:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("task") == task and "duration_ms" in entry:
                found.append(float(entry["duration_ms"]) / 1000.0)
        elif (m := _SUCCEEDED.search(line)) is not None and m.group(1) == task:
            found.append(float(m.group(3)))
    return found


def log_lines(log_path: Path, *, since_offset: int = 0) -> list[dict[str, Any]]:
    """The JSON log lines a worker wrote since ``since_offset``."""
    if not log_path.exists():
        return []
    with open(log_path, "rb") as fh:
        fh.seek(since_offset)
        text = fh.read().decode("utf-8", "replace")
    entries = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                entries.append(json.loads(line))
            except ValueError:
                pass
    return entries


def log_offset(log_path: Path) -> int:
    return log_path.stat().st_size if log_path.exists() else 0


@dataclass
class Infra:
    """What one benchmark run shares: Redis, moto, the fault proxy, the floor worker, a client app.

    A ``sandbox.LocalStack`` on a private Redis, with the benchmarks' moto
    server (speed patches, ``nice`` NICE) and the fault proxy between the
    workers and moto.
    """

    run_dir: Path
    local: LocalStack | None = None
    moto: MotoServer | None = None
    proxy_url: str = ""
    control: ProxyControl | None = None
    app: BenchApp | None = None

    # -- urls ---------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self.local is not None and self.local.redis_server is not None
        return self.local.redis_server.port

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    @property
    def broker_url(self) -> str:
        return self.url(0)

    @property
    def backend_url(self) -> str:
        return self.url(1)

    @property
    def state_url(self) -> str:
        return self.url(2)

    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"

    @property
    def procs(self) -> ProcessGroup:
        assert self.local is not None
        return self.local.processes

    @property
    def env(self) -> dict[str, str]:
        assert self.local is not None
        return self.local.env

    def redis(self, db: int) -> redis.Redis:
        return redis.Redis.from_url(self.url(db), decode_responses=True)

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> Infra:
        self.logs.mkdir(parents=True, exist_ok=True)
        # Simulated AWS is off the measured path: it gets only the CPU the measured processes leave.
        self.moto = MotoServer(log_path=self.logs / "moto.log", nice=NICE, speed_patches=True)
        proxy_port, control_port = free_port(), free_port()
        self.proxy_url = f"http://127.0.0.1:{proxy_port}"
        self.local = LocalStack(
            self.logs,
            moto=self.moto,
            aws_endpoint_url=self.proxy_url,
            asg_name=ASG,
            region=REGION,
            idle_target=2,
            refresh_s=10.0,
            extra_env={"PYTHONPATH": str(REPO)},
            node=HOST,
        ).start()
        say(f"[stack] private redis-server on 127.0.0.1:{self.port} (broker db 0, results db 1, state db 2)")
        self._start_proxy(proxy_port, control_port)
        say(f"[stack] moto {self.moto.endpoint_url} (nice {NICE}) behind the fault proxy {self.proxy_url}")
        self.app = make_app(self.broker_url, self.backend_url)
        self.local.spawn("noop", noop_worker_argv())
        wait_for_workers(self.app, [f"noop@{HOST}"], timeout_s=60)
        say("[stack] floor worker (no-op task, solo) is up")
        return self

    def _start_proxy(self, port: int, control_port: int) -> None:
        assert self.local is not None and self.moto is not None
        argv = ["nice", "-n", str(NICE), sys.executable, "-m", "sandbox.awsproxy", "--upstream", self.moto.endpoint_url]
        argv += ["--port", str(port), "--control-port", str(control_port)]
        self.local.spawn("awsproxy", argv, env={"PYTHONPATH": str(REPO)})
        self.control = ProxyControl(f"http://127.0.0.1:{control_port}")
        wait_until(self._proxy_answers, timeout_s=30, what="the AWS fault proxy")

    def _proxy_answers(self) -> bool:
        assert self.control is not None
        try:
            self.control.config()
            return True
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def set_aws_priority(self, nice: int) -> None:
        """Renice the simulated AWS (moto and the proxy, every thread) to ``nice``.

        Scenarios 2-5 run it at NICE (AWS is off the measured path and must not
        steal CPU from it); the orchestrator comparison runs it at 0, since both
        designs wait for AWS there.
        """
        pids = [self.procs.get("awsproxy").pid]
        if self.moto is not None and self.moto.pid is not None:
            pids.append(self.moto.pid)
        for pid in pids:
            for tid in os.listdir(f"/proc/{pid}/task"):
                try:
                    os.setpriority(os.PRIO_PROCESS, int(tid), nice)
                except (ProcessLookupError, PermissionError):
                    pass

    def stop(self) -> None:
        if self.local is not None:
            self.local.stop(timeout_s=15)
        if self.moto is not None:
            self.moto.stop()

    def __enter__(self) -> Infra:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers ------------------------------------------------------------------
    def aws(self, service: str, *, via_proxy: bool = False) -> Any:
        assert self.moto is not None
        return boto3.client(
            service,
            endpoint_url=self.proxy_url if via_proxy else self.moto.endpoint_url,
            region_name=REGION,
            aws_access_key_id=DUMMY_CREDENTIAL,
            aws_secret_access_key=DUMMY_CREDENTIAL,
        )

    def queue_length(self, queue: str) -> int:
        """Messages waiting in a broker queue (kombu's Redis transport keeps each queue in a list)."""
        return int(self.redis(0).llen(queue))

    def snapshot_payload(self) -> dict[str, Any]:
        """The group as the refresh job would send it to the pool worker (read straight from moto)."""
        cloud = Boto3Cloud(ASG, region=REGION, autoscaling=self.aws("autoscaling"), ec2=self.aws("ec2"))
        return snapshot_to_json(cloud.describe_group())

    def purge_pool_queues(self) -> None:
        """Drop every queued or unacknowledged pool/aws message (not the floor queue)."""
        r = self.redis(0)
        keys = [k for pattern in (POOL_QUEUE + "*", "aws*") for k in r.scan_iter(match=pattern)]
        keys += ["unacked", "unacked_index", "unacked_mutex"]
        r.delete(*keys)

    def create_group(self, steps: Iterable[int], *, max_size: int) -> list[str]:
        """A fresh ASG grown through ``steps`` (one SetDesiredCapacity, so one moto reservation, per step)."""
        assert self.moto is not None
        self.moto.reset()
        steps = list(steps)
        ids = create_simulated_group(
            self.moto.endpoint_url, name=ASG, region=REGION, min_size=0, max_size=max_size, desired=steps[0]
        )
        asg = self.aws("autoscaling")
        for desired in steps[1:]:
            asg.set_desired_capacity(AutoScalingGroupName=ASG, DesiredCapacity=desired, HonorCooldown=False)
        if len(steps) > 1:
            group = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[ASG])["AutoScalingGroups"][0]
            ids["instance_ids"] = [i["InstanceId"] for i in group["Instances"]]
        instance_ids: list[str] = ids["instance_ids"]
        return instance_ids


class Warmpool:
    """One scenario's warmpool processes (pool worker, aws worker, optionally beat) on a fresh group.

    A ``sandbox.LocalStack`` of its own on the run's Redis, moto and proxy; its
    logs are ``<label>-pool.log``, ``<label>-aws.log``, ``<label>-beat.log``.
    """

    def __init__(
        self,
        infra: Infra,
        label: str,
        *,
        idle_target: int,
        refresh_s: float = 10.0,
        aws_concurrency: int = 4,
    ) -> None:
        assert infra.local is not None
        self.infra = infra
        self.label = label
        self.idle_target = idle_target
        self.refresh_s = refresh_s
        self.aws_concurrency = aws_concurrency
        self.local = LocalStack(
            infra.logs,
            urls=infra.local.urls,
            moto=infra.moto,
            aws_endpoint_url=infra.proxy_url,
            asg_name=ASG,
            region=REGION,
            idle_target=idle_target,
            refresh_s=refresh_s,
            extra_env={"PYTHONPATH": str(REPO)},
            node=HOST,
            log_prefix=f"{label}-",
        ).start()
        self.env = self.local.env
        # The pool worker reads WARMPOOL_REFRESH_SECONDS only to size its recovery grace
        # (2 intervals during which a freshly flushed state hands nothing out, waiting for
        # in-flight tags). Every scenario starts from a flushed state; 1 s of grace instead
        # of 20 keeps start-up short. Beat still refreshes every ``refresh_s``.
        self.pool_env = {"WARMPOOL_REFRESH_SECONDS": "0.5"}
        self.keys = PoolKeys.for_group(ASG)
        self.state = infra.redis(2)
        self.instance_ids: list[str] = []

    def log(self, name: str) -> Path:
        return self.local.log_path(name)

    def start(self, *, group_steps: Iterable[int], max_size: int, beat: bool = True, timeout_s: float = 240) -> None:
        """Create the group, start the workers (and beat), refresh once and wait for every machine to be idle."""
        infra = self.infra
        infra.purge_pool_queues()
        infra.redis(1).flushdb()
        self.state.flushdb()
        steps = list(group_steps)
        say(f"[{self.label}] creating a group of {steps[-1]} instances in {len(steps)} step(s)")
        started = time.monotonic()
        self.instance_ids = infra.create_group(steps, max_size=max_size)
        say(f"[{self.label}] group ready in {time.monotonic() - started:.1f}s; starting pool worker, aws worker")
        self.local.start_aws_worker("aws", concurrency=self.aws_concurrency, wait=False)
        self.local.start_pool_worker("pool", env=self.pool_env, wait=False)
        assert infra.app is not None
        wait_for_workers(infra.app, [f"pool@{HOST}", f"aws@{HOST}"], timeout_s=60)
        if beat:
            self.start_beat()
        self.wait_all_idle(timeout_s=timeout_s)
        say(f"[{self.label}] {len(self.instance_ids)} machines idle after {time.monotonic() - started:.1f}s")

    def wait_all_idle(self, *, timeout_s: float) -> None:
        """Refresh (again and again, each once the previous one was applied) until every machine is idle.

        A flushed state holds machines back for the pool worker's recovery
        grace, so the first refresh may leave them pending; the next one after
        the grace hands them out.
        """
        want = len(self.instance_ids)
        deadline = time.monotonic() + timeout_s
        while self.idle_count() < want:
            before = self.refreshed_at()
            self.refresh_now()
            wait_until(
                lambda b=before: self.refreshed_at() > b,
                timeout_s=max(1.0, deadline - time.monotonic()),
                what=f"{want} idle machines (a refresh to be applied)",
                interval_s=0.1,
            )
            time.sleep(0.3)  # the rebalance after the apply, and the grace

    def start_beat(self) -> None:
        self.local.start_beat("beat")

    def refresh_now(self) -> str:
        """Ask for a refresh now (what beat sends every WARMPOOL_REFRESH_SECONDS); its task id."""
        assert self.infra.app is not None
        result = self.infra.app.send_task(TASK_REFRESH, queue="aws", ignore_result=True)
        return str(result.id)

    def idle_count(self) -> int:
        return int(self.state.zcard(self.keys.idle))

    def refreshed_at(self) -> float:
        return float(self.state.hget(self.keys.group, "refreshed_at") or 0.0)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for raw in self.state.hvals(self.keys.machines):
            state = json.loads(raw)["state"]
            counts[state] = counts.get(state, 0) + 1
        return counts

    def pid(self, name: str) -> int:
        return self.local.pid(name)

    @contextlib.contextmanager
    def side_effects_queued(self) -> Iterator[None]:
        """The aws worker stops taking jobs: side effects (and refreshes) wait in the broker until the block ends.

        Isolates the assign path from the CPU the AWS side effects (botocore in
        the aws worker, moto and the proxy) use on this machine. Nothing is
        lost: the jobs are durable in the broker and run when it resumes.
        """
        assert self.infra.app is not None
        destination = [f"aws@{HOST}"]
        control = self.infra.app.control
        control.cancel_consumer("aws", destination=destination, reply=True, timeout=5)

        def busy() -> bool:
            inspect = control.inspect(destination=destination, timeout=2)
            jobs = [*(inspect.active() or {}).values(), *(inspect.reserved() or {}).values()]
            return any(jobs)

        # Jobs it had already taken (prefetched tag batches) run to the end first.
        wait_until(lambda: not busy(), timeout_s=300, what="the aws worker to finish the jobs it holds")
        try:
            yield
        finally:
            self.infra.app.control.add_consumer("aws", destination=destination, reply=True, timeout=5)

    def stop(self) -> None:
        started = time.monotonic()
        for name in ("beat", "pool", "aws"):
            self.local.processes.stop(name, timeout_s=10)
        self.local.stop()
        self.state.close()
        say(f"[{self.label}] stopped in {time.monotonic() - started:.1f}s")

    def __enter__(self) -> Warmpool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
