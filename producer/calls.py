"""The client core: every pool call as data, shared by PoolClient and AsyncPoolClient.

A client method is "build the call, send its job, map the reply" (as httpx
builds ``Client`` and ``AsyncClient`` on one base): this module holds
everything but the transport, so the sync client (producer.client) and the
async one (producer.aio) differ only in how they send a job and wait for its
result.

- ``Assign``, ``Touch``, ``Release``, ``Status``: one frozen dataclass per call.
  ``build`` validates the caller's arguments (InvalidProject, InvalidRequest,
  before anything is sent); ``job`` is what goes on the ``pool`` queue;
  ``result`` maps the job's raw result onto the ``*_result`` dict or an error;
  ``value`` onto the convenience method's value (a machine, a bool).
- ``Job``: one pool job (task name, args, kwargs, how long its caller waits);
  ``Reply``: what the transport saw of its result by that time; ``outcome``
  turns a Reply into the raw result or PoolUnavailable / JobFailed, including
  the waiting state (a caller queued for a machine whose deadline passed).
- ``publish``: sends a Job, bounded, without Celery's own result subscription.
- ``BaseClient``: the configuration both clients share and the building of
  each call from a method's arguments.

Time bound: every call ends within its wait (assign with ``wait > 0``) or the
client's reply timeout, plus ``CLIENT_MARGIN_S``; a pool that cannot be reached
in that time (broker or result backend down, no worker) is PoolUnavailable.
"""

from __future__ import annotations

import functools
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

from celery import Celery

from tasks.contract import (
    CODE_BAD_REQUEST,
    CODE_INVALID_PROJECT,
    CODE_NO_CAPACITY,
    CODE_STORE_UNAVAILABLE,
    CODE_UNKNOWN_POOL,
    MAX_LEASE_S,
    MAX_WAIT_S,
    POOL_QUEUE,
    STATE_WAITING,
    STATUS_ASSIGNED,
    STATUS_FAILED,
    STATUS_NOT_ASSIGNED,
    STATUS_RELEASED,
    TASK_ADOPT,
    TASK_ASSIGN,
    TASK_FORCE_RELEASE,
    TASK_PAUSE,
    TASK_RECYCLE,
    TASK_RELEASE,
    TASK_RELEASE_QUARANTINED,
    TASK_RESUME,
    TASK_STATUS,
    TASK_TOUCH,
    TASK_WITHDRAW,
    AssignedMachine,
    check_seconds,
    failure,
    is_instance_id,
    validate_project_id,
)
from tasks.errors import InvalidProject, InvalidRequest, JobFailed, NoCapacity, PoolUnavailable, UnknownPool
from tasks.pools import Deployment, load_deployment

DEFAULT_REPLY_TIMEOUT_S: Final = 10.0
# How far past its wait (or reply timeout) a call may end: sending the job
# (PUBLISH_RETRY_POLICY), one round trip to the result backend after the
# deadline (a result stored just before it), and closing the subscription.
CLIENT_MARGIN_S: Final = 2.0
# Every Redis operation of the result listeners gives up after this long, so a
# Redis that hangs (not only one that refuses) cannot hold a call past its margin.
REDIS_IO_TIMEOUT_S: Final = 1.0
# A refused broker connection is retried twice, 0.2 s apart, then the call
# fails: well inside CLIENT_MARGIN_S (Celery's default retries for ~1 s more).
PUBLISH_RETRY_POLICY: Final = {"max_retries": 2, "interval_start": 0.0, "interval_step": 0.2, "interval_max": 0.2}
FINAL_STATES: Final = frozenset({"SUCCESS", "FAILURE", "REVOKED"})


def make_app() -> Celery:
    """A Celery app configured like the workers (celeryconfig), used only to send."""
    app = Celery("warmpool-producer")
    app.config_from_object("celeryconfig")
    return app


def check_wait(wait: Any) -> float:
    """Validate a caller's wait in seconds: a finite number in [0, MAX_WAIT_S]."""
    return check_seconds(wait, "wait", high=MAX_WAIT_S)


def check_lease(lease: Any) -> float:
    """Validate a lease length in seconds: a finite number in [0, MAX_LEASE_S] (0: no lease)."""
    return check_seconds(lease, "lease", high=MAX_LEASE_S)


def _optional_lease(lease: Any) -> float | None:
    return None if lease is None else check_lease(lease)


# -- one job and its reply -----------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """One pool job as sent: task name, arguments, and how long its caller waits for the result.

    ``timeout_s`` is also the job's expiry: a job still queued when its caller
    gave up is discarded by the worker instead of handing a machine to nobody.
    """

    task: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    timeout_s: float = DEFAULT_REPLY_TIMEOUT_S
    task_id: str | None = None  # the job's id (an assign's request id); None: a new one

    def named(self) -> tuple[Job, str]:
        """This job with its id fixed, and that id."""
        task_id = self.task_id or str(uuid.uuid4())
        return replace(self, task_id=task_id), task_id


@functools.cache
def configured_deployment() -> Deployment:
    """The pools of this process's configuration (WARMPOOL_CONFIG, or one pool from the environment)."""
    return load_deployment()


@dataclass(frozen=True)
class Reply:
    """What the transport saw of a job's result by the caller's deadline.

    ``state`` is a Celery state (SUCCESS, FAILURE, REVOKED), ``WAITING`` (the
    worker queued the caller for a machine; ``result`` is its waiting note), or
    None (nothing stored: no worker took the job in time).
    """

    state: str | None
    result: Any = None


def reply_from_meta(raw: bytes | str | None) -> Reply:
    """The Reply of a Celery result-backend record (JSON), None meaning no record."""
    if not raw:
        return Reply(None)
    meta = json.loads(raw)
    if not isinstance(meta, Mapping):
        return Reply("FAILURE", meta)
    return Reply(meta.get("status"), meta.get("result"))


def outcome(job: Job, reply: Reply) -> Any:
    """The job's raw result; PoolUnavailable when no worker answered, JobFailed when it raised.

    A caller queued for a machine (WAITING) whose deadline passed gets a
    ``no_capacity`` result, the same shape the worker itself answers.
    """
    if reply.state == "SUCCESS":
        return reply.result
    if reply.state == STATE_WAITING:
        return timed_out_waiting(job.args, job.timeout_s, reply.result)
    if reply.state == "REVOKED":
        raise PoolUnavailable("the job expired in the queue before a pool worker took it")
    if reply.state == "FAILURE":
        raise JobFailed(f"the pool worker failed the job: {_failure_text(reply.result)}")
    raise PoolUnavailable(f"no pool worker answered within {job.timeout_s:.1f}s")


def _failure_text(result: Any) -> str:
    if isinstance(result, BaseException):
        return f"{type(result).__name__}: {result}"
    if isinstance(result, Mapping) and "exc_type" in result:
        return f"{result.get('exc_type')}: {result.get('exc_message')!r:.300}"
    return f"{result!r:.300}"


def timed_out_waiting(args: tuple[Any, ...], timeout_s: float, waiting: Any = None) -> dict[str, Any]:
    """The result of a caller that waited in the queue until its deadline.

    ``waiting`` is the worker's waiting-state record: why no machine was free
    (capped by MaxSize, scale-up paused) when the caller was queued.
    """
    project_id = args[0] if args else None
    note = waiting if isinstance(waiting, Mapping) else {}
    reason = f" ({note['reason']})" if note.get("reason") else ""
    return failure(
        CODE_NO_CAPACITY,
        f"no machine became available within {timeout_s:.1f}s{reason}",
        project_id=project_id,
        capped=bool(note.get("capped")),
        max_size=note.get("max_size"),
    )


def publish(app: Celery, job: Job, *, task_id: str) -> None:
    """Send ``job`` to the pool queue under ``task_id``; PoolUnavailable if the broker refuses.

    Not ``app.send_task``: that also subscribes Celery's own (blocking) result
    consumer to the job's result, a Redis round trip that Celery retries for
    ~20 s while the result backend is down, and that the clients, which wait
    for results themselves, do not need.
    """
    message = app.amqp.create_task_message(
        task_id,
        job.task,
        list(job.args),
        dict(job.kwargs),
        expires=job.timeout_s,
        reply_to=app.thread_oid,
    )
    # Routed as app.send_task would (tasks/routing.py): pool jobs to their pool's queue (the
    # benchmark's app routes its no-op task to the floor worker's queue the same way).
    options = app.amqp.router.route({}, job.task, list(job.args), dict(job.kwargs)) or {"queue": POOL_QUEUE}
    try:
        with app.producer_or_acquire() as producer:
            app.amqp.send_task_message(
                producer,
                job.task,
                message,
                retry=True,
                retry_policy=dict(PUBLISH_RETRY_POLICY),
                expiration=job.timeout_s,
                **options,
            )
    except Exception as exc:  # kombu raises many types for an unreachable broker
        raise PoolUnavailable(f"broker unreachable: {exc}") from exc


# -- mapping results onto values and errors -------------------------------------------
def raise_for_failure(result: Any) -> Mapping[str, Any]:
    """Map a job result onto the contract's exceptions; return it when it is a success."""
    if not isinstance(result, Mapping) or "status" not in result:
        raise JobFailed(f"unexpected result from the pool worker: {result!r:.200}")
    if result["status"] != STATUS_FAILED:
        return result
    code, message = result.get("code"), str(result.get("message", ""))
    if code == CODE_INVALID_PROJECT:
        raise InvalidProject(message)
    if code == CODE_NO_CAPACITY:
        raise NoCapacity(message, capped=bool(result.get("capped")), max_size=result.get("max_size"))
    if code == CODE_STORE_UNAVAILABLE:
        raise PoolUnavailable(message)
    if code == CODE_UNKNOWN_POOL:  # a worker configured without this pool (configurations differ)
        raise UnknownPool(message, pool=result.get("pool"))
    raise JobFailed(f"{code}: {message}")


def raise_for_failure_except_capacity(result: Any) -> None:
    """raise_for_failure, except that no_capacity is left to the caller (it is data there)."""
    if isinstance(result, Mapping) and result.get("code") == CODE_NO_CAPACITY:
        return
    raise_for_failure(result)


# -- the calls ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Assign:
    """assign(project_id, wait, lease): the project's machine, waiting up to ``wait_s`` for one."""

    project_id: str
    wait_s: float
    lease_s: float | None
    timeout_s: float  # the wait, or the reply timeout for an assign that does not wait
    deadline: float  # wall clock: the worker refuses to serve a caller past it

    @classmethod
    def build(cls, project_id: Any, *, wait: Any, lease: Any, reply_timeout_s: float) -> Assign:
        """The call, its arguments validated (InvalidProject, InvalidRequest)."""
        validate_project_id(project_id)
        wait_s, lease_s = check_wait(wait), _optional_lease(lease)
        # The absolute deadline lets the worker refuse to serve a caller that gave up,
        # even when the job sat in a backed-up queue (clocks of producer and worker hosts
        # are assumed NTP-synchronized).
        timeout_s = wait_s if wait_s > 0 else reply_timeout_s
        return cls(project_id, wait_s, lease_s, timeout_s, time.time() + wait_s)

    @property
    def job(self) -> Job:
        """The warmpool.assign job."""
        kwargs = {"wait_s": self.wait_s, "lease_s": self.lease_s, "deadline": self.deadline}
        return Job(TASK_ASSIGN, (self.project_id,), kwargs, self.timeout_s)

    @staticmethod
    def result(raw: Any) -> dict[str, Any]:
        """The raw result dict (``no_capacity`` is a result here, not an exception)."""
        raise_for_failure_except_capacity(raw)
        return dict(raw)

    @staticmethod
    def value(result: Mapping[str, Any]) -> AssignedMachine:
        """The machine; NoCapacity (and every other failure) raised."""
        assigned = raise_for_failure(result)
        if assigned.get("status") != STATUS_ASSIGNED:
            raise JobFailed(f"unexpected assign result {result!r:.200}")
        return AssignedMachine.from_result(assigned)


@dataclass(frozen=True)
class Touch:
    """touch(project_id, lease): renew the lease of the project's machine."""

    project_id: str
    lease_s: float | None
    timeout_s: float

    @classmethod
    def build(cls, project_id: Any, *, lease: Any, reply_timeout_s: float) -> Touch:
        """The call, its arguments validated."""
        validate_project_id(project_id)
        return cls(project_id, _optional_lease(lease), reply_timeout_s)

    @property
    def job(self) -> Job:
        """The warmpool.touch job."""
        return Job(TASK_TOUCH, (self.project_id,), {"lease_s": self.lease_s}, self.timeout_s)

    @staticmethod
    def result(raw: Any) -> dict[str, Any]:
        """The raw result dict (touched, no_lease, not_assigned)."""
        return dict(raise_for_failure(raw))

    @staticmethod
    def value(result: Mapping[str, Any]) -> bool:
        """False if the project holds no machine."""
        return bool(result["status"] != STATUS_NOT_ASSIGNED)


@dataclass(frozen=True)
class Release:
    """release(project_id): give the project's machine back (it is terminated)."""

    project_id: str
    timeout_s: float

    @classmethod
    def build(cls, project_id: Any, *, reply_timeout_s: float) -> Release:
        """The call, its argument validated."""
        validate_project_id(project_id)
        return cls(project_id, reply_timeout_s)

    @property
    def job(self) -> Job:
        """The warmpool.release job."""
        return Job(TASK_RELEASE, (self.project_id,), {}, self.timeout_s)

    @staticmethod
    def result(raw: Any) -> dict[str, Any]:
        """The raw result dict (released, not_assigned)."""
        return dict(raise_for_failure(raw))

    @staticmethod
    def value(result: Mapping[str, Any]) -> bool:
        """True if a machine was released, False if none was held."""
        if result["status"] not in (STATUS_RELEASED, STATUS_NOT_ASSIGNED):
            raise JobFailed(f"unexpected release result {result!r:.200}")
        return bool(result["status"] == STATUS_RELEASED)


@dataclass(frozen=True)
class Status:
    """status(): the pool snapshot."""

    timeout_s: float

    @property
    def job(self) -> Job:
        """The warmpool.status job."""
        return Job(TASK_STATUS, (), {}, self.timeout_s)

    @staticmethod
    def result(raw: Any) -> dict[str, Any]:
        """The snapshot: counts by state, machines, desired/min/max, lost machines."""
        if not isinstance(raw, dict) or "counts" not in raw:
            raise JobFailed(f"unexpected status result {raw!r:.200}")
        return raw


# -- what both clients share ------------------------------------------------------------
@dataclass(frozen=True)
class Withdraw:
    """withdraw(request_id, project_id): the caller of assign ``request_id`` left; give back what it got."""

    request_id: str
    project_id: str
    timeout_s: float

    @classmethod
    def build(cls, project_id: Any, *, request_id: Any, wait: Any, reply_timeout_s: float) -> Withdraw:
        """The call, its arguments validated; it lives in the queue at least as long as the assign could."""
        validate_project_id(project_id)
        if not isinstance(request_id, str) or not 0 < len(request_id) <= 200:
            raise InvalidRequest("request_id must be the assign's job id (a string of at most 200 characters)")
        return cls(request_id, project_id, max(reply_timeout_s, check_wait(wait)))

    @property
    def job(self) -> Job:
        """The warmpool.withdraw job."""
        return Job(TASK_WITHDRAW, (self.request_id, self.project_id), {}, self.timeout_s)

    @staticmethod
    def result(raw: Any) -> dict[str, Any]:
        """The raw result dict."""
        return dict(raise_for_failure(raw))


@dataclass(frozen=True)
class ReleaseQuarantined:
    """release_quarantined(ids): an operator's word that quarantined machines (None: all) are in nobody's use."""

    instance_ids: tuple[str, ...] | None
    timeout_s: float

    @classmethod
    def build(cls, instance_ids: Sequence[str] | None, *, reply_timeout_s: float) -> ReleaseQuarantined:
        """The call, its instance ids validated (None: every quarantined machine)."""
        if instance_ids is None:
            return cls(None, reply_timeout_s)
        ids = tuple(instance_ids)
        bad = [i for i in ids if not isinstance(i, str) or not is_instance_id(i)]
        if bad or not ids:
            raise InvalidRequest(f"not instance ids (i-...): {bad[:5]!r}" if bad else "name at least one instance id")
        return cls(ids, reply_timeout_s)

    @property
    def job(self) -> Job:
        """The warmpool.release_quarantined job."""
        args = () if self.instance_ids is None else (list(self.instance_ids),)
        return Job(TASK_RELEASE_QUARANTINED, args, {}, self.timeout_s)

    @staticmethod
    def result(raw: Any) -> dict[str, Any]:
        """The raw result dict (the instance ids released)."""
        return dict(raise_for_failure(raw))


@dataclass(frozen=True)
class Operator:
    """An operator command (pause, resume, force_release, adopt: tasks.pool.operations), validated here."""

    task: str
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    timeout_s: float

    @classmethod
    def pause(cls, *, reply_timeout_s: float) -> Operator:
        return cls(TASK_PAUSE, (), {}, reply_timeout_s)

    @classmethod
    def resume(cls, *, reply_timeout_s: float) -> Operator:
        return cls(TASK_RESUME, (), {}, reply_timeout_s)

    @classmethod
    def force_release(cls, project_id: Any, *, reply_timeout_s: float) -> Operator:
        validate_project_id(project_id)
        return cls(TASK_FORCE_RELEASE, (project_id,), {}, reply_timeout_s)

    @classmethod
    def adopt(cls, assignments: Mapping[str, str] | None, *, dry_run: bool = False, reply_timeout_s: float) -> Operator:
        """adopt(assignments) (project -> instance), or adopt(None): no machine needs adopting."""
        if assignments is None:
            return cls(TASK_ADOPT, (), {"none": True}, reply_timeout_s)
        from tasks.pool.operations import check_assignments

        return cls(TASK_ADOPT, (check_assignments(dict(assignments)),), {"dry_run": dry_run}, reply_timeout_s)

    @classmethod
    def recycle(
        cls, *, older_than_s: float | None = None, template_version: str | None = None, reply_timeout_s: float
    ) -> Operator:
        """recycle(older_than_s=...) or recycle(template_version=...): exactly one."""
        if (older_than_s is None) == (template_version is None):
            raise InvalidRequest("recycle takes one of --older-than and --not-template-version")
        if older_than_s is not None:
            check_seconds(older_than_s, "older_than", high=366 * 86_400.0)
            return cls(TASK_RECYCLE, (), {"older_than_s": float(older_than_s)}, reply_timeout_s)
        if not isinstance(template_version, str) or not 0 < len(template_version) <= 64:
            raise InvalidRequest("--not-template-version takes a launch template version (1-64 characters)")
        return cls(TASK_RECYCLE, (), {"template_version": template_version}, reply_timeout_s)

    @property
    def job(self) -> Job:
        return Job(self.task, self.args, self.kwargs, self.timeout_s)

    @staticmethod
    def result(raw: Any) -> dict[str, Any]:
        """The result dict; a refused command (bad_request) raises InvalidRequest."""
        if isinstance(raw, Mapping) and raw.get("status") == STATUS_FAILED and raw.get("code") == CODE_BAD_REQUEST:
            raise InvalidRequest(str(raw.get("message", "")))
        return dict(raise_for_failure(raw))


class BaseClient:
    """Configuration and call building shared by PoolClient and AsyncPoolClient (the transports differ).

    ``pool``: the pool calls go to unless they name one (default: the
    configuration's default pool); an unknown or malformed name is refused
    here, before anything is sent (UnknownPool, InvalidRequest). ``group``
    overrides the Auto Scaling Group the jobs name (by default the pool's,
    when the configuration names it); a worker of another group refuses them.
    """

    def __init__(
        self,
        *,
        app: Celery | None = None,
        reply_timeout_s: float = DEFAULT_REPLY_TIMEOUT_S,
        group: str | None = None,
        pool: str | None = None,
        deployment: Deployment | None = None,
    ) -> None:
        self.deployment = deployment or configured_deployment()
        self.pool = self.deployment.pool(pool).name
        self.app = app or make_app()
        self.reply_timeout_s = reply_timeout_s
        self.backend_url = str(self.app.conf.result_backend or "")
        self.group = group
        self._open()

    def _open(self) -> None:
        """Set up the client's transport (each client's own), once its configuration is in place."""

    def pool_names(self) -> tuple[str, ...]:
        """Every configured pool, the default one first."""
        names = self.deployment.names()
        return (self.pool, *(n for n in names if n != self.pool))

    def _for_pool(self, job: Job, pool: str | None) -> Job:
        """``job`` addressed to ``pool`` (None: this client's): its kwargs name the pool and its group."""
        target = self.deployment.pool(self.pool if pool is None else pool)
        kwargs = target.job_kwargs()
        if self.group and target.name == self.pool:
            kwargs["group"] = self.group
        return replace(job, kwargs={**kwargs, **job.kwargs})  # what the job names itself wins

    @property
    def redis_backend(self) -> bool:
        """Whether results are in Redis (awaited natively over pub/sub), not another Celery backend."""
        return self.backend_url.startswith(("redis://", "rediss://", "unix://"))

    def _assign(self, project_id: Any, wait: Any, lease: Any) -> Assign:
        return Assign.build(project_id, wait=wait, lease=lease, reply_timeout_s=self.reply_timeout_s)

    def _touch(self, project_id: Any, lease: Any) -> Touch:
        return Touch.build(project_id, lease=lease, reply_timeout_s=self.reply_timeout_s)

    def _release(self, project_id: Any) -> Release:
        return Release.build(project_id, reply_timeout_s=self.reply_timeout_s)

    def _status(self) -> Status:
        return Status(self.reply_timeout_s)

    def _withdraw(self, project_id: Any, request_id: Any, wait: Any) -> Withdraw:
        return Withdraw.build(project_id, request_id=request_id, wait=wait, reply_timeout_s=self.reply_timeout_s)

    def _release_quarantined(self, instance_ids: Sequence[str] | None) -> ReleaseQuarantined:
        return ReleaseQuarantined.build(instance_ids, reply_timeout_s=self.reply_timeout_s)
