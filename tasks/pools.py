"""The pools one warmpool serves: read from ``WARMPOOL_CONFIG`` (TOML), or one pool from the environment.

A pool is one Auto Scaling Group with its own queue (``pool.<name>``), its own
solo worker and its own state in Redis. The file::

    default_pool = "small"          # calls without a pool name use it (default: the first pool)
    idle_target = 2                 # any setting at the top level: shared by every pool
    [defaults]                      # per-pool settings shared by every pool
    refresh_seconds = 10
    [pools.small]
    asg = "ide-small"               # required
    [pools.gpu]
    asg = "ide-gpu"
    idle_target = 1
    region = "us-east-1"
    endpoint_url = "http://127.0.0.1:5000"   # like AWS_ENDPOINT_URL, for this pool only
    role_arn = "arn:aws:iam::123456789012:role/warmpool"   # assumed with STS (another account)

A key is a per-pool setting's field name (``PER_POOL``: ``idle_target``,
``lease_seconds``, ...) or one of the short names in ``ALIASES``. Where a value
comes from, strongest first: the pool's table, ``[defaults]``, the file's top
level, the environment variable, the built-in default. What every process
shares (broker, result backend, state store, gateway, Flower, secrets) stays in
the environment: the file describes pools, not connections. Without a file, the
environment describes one pool named ``default`` (what warmpool did before it
had pools: same group, same state keys).

Pool names follow the project id rule, shorter: ``^[a-z0-9][a-z0-9-]{0,31}$``.
Each pool's state lives under ``warmpool:{<namespace>}:`` where the namespace is
its group name unless the table sets ``namespace`` (two pools whose groups share
a name in two regions or accounts): moving from environment variables to a
file, or renaming a pool, keeps the state.

Pure standard library (tomllib): producers read it without the worker's libraries.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from tasks.config import SOURCE_ENV, Settings, Spec, load, specs
from tasks.config_values import ValueProblem
from tasks.contract import AWS_QUEUE
from tasks.errors import ConfigError, InvalidRequest, UnknownPool

if TYPE_CHECKING:
    from tasks.pool.service import PoolConfig
from tasks.hooks.config import Webhook, parse_webhooks

CONFIG_ENV = "WARMPOOL_CONFIG"
DEFAULT_POOL = "default"
POOL_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
POOL_QUEUE_PREFIX = "pool."
# Pools one configuration may name: each has its own worker, queue and beat entry.
MAX_POOLS = 256

# Settings a pool may set for itself; the rest (broker, result backend, state store,
# gateway, Flower) are shared by every pool.
PER_POOL = frozenset(
    {
        "asg_name",
        "idle_target",
        "refresh_seconds",
        "address",
        "region",
        "aws_endpoint_url",
        "lease_seconds",
        "ready_url",
        "ready_timeout_seconds",
        "dry_run",
        "adopt_hold",
        # pool economics (docs/economics.md)
        "policy",
        "warm_goal",
        "idle_max",
        "schedules",
        "scale_in_delay_s",
        "scale_in_step",
        "pending_poll_s",
    }
)
ALIASES = {"asg": "asg_name", "endpoint_url": "aws_endpoint_url"}
# Keys only a pool's table has (not settings of their own).
POOL_ONLY = ("namespace", "role_arn", "role_external_id", "aws_queue", "webhooks")
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}")
_EXTERNAL_ID = re.compile(r"[\w+=,.@:/-]{2,1224}")
_NAMESPACE = re.compile(r"[^{}\s]{1,255}")
_AWS_QUEUE = re.compile(r"aws(\.[a-z0-9][a-z0-9-]{0,62})?")


@dataclass(frozen=True)
class PoolSettings:
    """One pool: its name, its settings (shared ones included) and where its state and jobs live."""

    name: str
    settings: Settings
    namespace: str  # state keys: warmpool:{<namespace>}:...
    role_arn: str = ""  # assumed with STS for this pool's AWS calls ("" = the default credentials)
    role_external_id: str = ""
    # The group jobs name (a worker of another group refuses them): None when
    # nothing named it explicitly (no file, no WARMPOOL_ASG_NAME), as before pools.
    job_group: str | None = None
    # The queue of this pool's AWS work (refresh, side effects): the shared "aws", or one of
    # its own ("aws.<region>") so that a region that hangs ties up only its own aws workers.
    aws_queue: str = AWS_QUEUE
    # Receivers of this pool's events (``webhooks = [{ url, secret }]`` in its table, else the
    # file's top-level list); () here: the environment's WARMPOOL_WEBHOOK_URL, if set (tasks.hooks).
    webhooks: tuple[Webhook, ...] = ()

    @property
    def asg_name(self) -> str:
        return self.settings.asg_name

    @property
    def queue(self) -> str:
        """The queue of this pool's jobs, consumed by its one solo worker."""
        return pool_queue(self.name)

    def job_kwargs(self) -> dict[str, Any]:
        """What every job of this pool carries: its pool and (when named) its group."""
        kwargs: dict[str, Any] = {"pool": self.name}
        if self.job_group:
            kwargs["group"] = self.job_group
        return kwargs


@dataclass(frozen=True)
class Deployment:
    """Every pool of this warmpool, the default one, and the shared settings."""

    settings: Settings  # the process's shared settings (environment only: broker, state store, gateway, ...)
    pools: tuple[PoolSettings, ...]
    default_pool: str
    source: str  # the file's path, or "environment" (SOURCE_ENV)

    @property
    def from_file(self) -> bool:
        """Whether a pools file (``WARMPOOL_CONFIG``) describes these pools, not the environment."""
        return self.source != SOURCE_ENV

    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.pools)

    def aws_queues(self) -> tuple[str, ...]:
        """The queues of every pool's AWS work (``aws`` first when a pool uses it)."""
        return tuple(dict.fromkeys(sorted({p.aws_queue for p in self.pools}, key=lambda q: (q != AWS_QUEUE, q))))

    def __iter__(self) -> Iterator[PoolSettings]:
        return iter(self.pools)

    def pool(self, name: Any = None) -> PoolSettings:
        """The pool called ``name`` (None: the default pool); InvalidRequest or UnknownPool otherwise."""
        if name is None:
            name = self.default_pool
        check_pool_name(name)
        for p in self.pools:
            if p.name == name:
                return p
        raise UnknownPool(f"unknown pool {name!r}: configured pools are {', '.join(self.names())}", pool=name)


def service_config(pool: PoolSettings, **overrides: Any) -> PoolConfig:
    """The PoolConfig a PoolService of ``pool`` runs with (the workers' and the simulator's alike)."""
    # Imported here: producers read this module without the pool model's policies.
    from tasks.pool.policy import parse_schedules
    from tasks.pool.service import PoolConfig

    s = pool.settings
    config = PoolConfig(
        asg_name=s.asg_name,
        idle_target=s.idle_target,
        address=s.address,
        lease_s=s.lease_seconds,
        require_ready_check=bool(s.ready_url),
        ready_timeout_s=s.ready_timeout_seconds,
        pool=pool.name,
        dry_run=bool(s.dry_run),
        hold_unadopted=bool(s.adopt_hold),
        policy=s.policy,
        warm_goal=s.warm_goal,
        idle_max=s.idle_max,
        schedules=parse_schedules(s.schedules),
        scale_in_delay_s=s.scale_in_delay_s,
        scale_in_step=s.scale_in_step,
        pending_poll_s=s.pending_poll_s,
    )
    return replace(config, **overrides) if overrides else config


def pool_queue(name: str) -> str:
    return POOL_QUEUE_PREFIX + name


def pool_of_queue(queue: str) -> str | None:
    """The pool name of a pool queue (``pool.NAME``), None for any other queue."""
    return queue[len(POOL_QUEUE_PREFIX) :] if queue.startswith(POOL_QUEUE_PREFIX) else None


def check_pool_name(name: Any) -> str:
    """``name`` if it is a well-formed pool name; InvalidRequest naming the rule otherwise."""
    if not isinstance(name, str) or POOL_NAME_PATTERN.fullmatch(name) is None:
        shown = repr(name[:40]) if isinstance(name, str) else type(name).__name__
        raise InvalidRequest(f"malformed pool name {shown}: expected ^[a-z0-9][a-z0-9-]{{0,31}}$")
    return name


def load_deployment(env: Mapping[str, str] | None = None) -> Deployment:
    """The pools of ``env`` (default: os.environ): its ``WARMPOOL_CONFIG`` file, or one pool; ConfigError."""
    env = os.environ if env is None else env
    report = load(env)
    if report.problems:
        raise ConfigError("; ".join(report.problems), problems=report.problems)
    assert report.settings is not None
    path = report.settings.config_file
    if not path:
        explicit = env.get("WARMPOOL_ASG_NAME", "").strip() or None
        base = report.settings
        pool = PoolSettings(DEFAULT_POOL, base, namespace=base.asg_name, job_group=explicit and base.asg_name)
        return Deployment(base, (pool,), DEFAULT_POOL, source=SOURCE_ENV)
    return _from_file(path, report.settings)


def deployment_or_exit(env: Mapping[str, str] | None = None) -> Deployment:
    """The deployment of ``env``, or (a command's start) one stderr line per problem and SystemExit(2)."""
    try:
        return load_deployment(env)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"warmpool: {problem}", file=sys.stderr)
        raise SystemExit(2) from None


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{CONFIG_ENV}={path!r}: cannot read the file ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{CONFIG_ENV}={path!r}: not valid TOML: {exc}") from None


class _Problems:
    def __init__(self, path: str) -> None:
        self.path = path
        self.lines: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.lines.append(f"{self.path}: {where}{': ' if where else ''}{message}")

    def raise_any(self) -> None:
        if self.lines:
            raise ConfigError("; ".join(self.lines), problems=tuple(self.lines))


def _from_file(path: str, env_settings: Settings) -> Deployment:
    doc = _read_toml(path)
    problems = _Problems(path)
    default_name = doc.pop("default_pool", None)
    defaults = doc.pop("defaults", {})
    pool_tables = doc.pop("pools", None)
    shared_hooks = _webhooks(doc.pop("webhooks", None), "top level webhooks", "", problems)
    if not isinstance(defaults, dict):
        problems.add("defaults", "must be a table ([defaults])")
        defaults = {}
    top = _apply(env_settings, doc, where="top level", problems=problems, allowed=PER_POOL)
    per_pool_base = _apply(top, defaults, where="[defaults]", problems=problems, allowed=PER_POOL)
    pools = [replace(p, webhooks=p.webhooks or shared_hooks) for p in _pools(pool_tables, per_pool_base, problems)]
    problems.raise_any()
    names = [p.name for p in pools]
    if default_name is None:
        default_name = names[0]
    elif default_name not in names:
        problems.add("default_pool", f"{default_name!r} is not one of the pools ({', '.join(names)})")
    problems.raise_any()
    return Deployment(env_settings, tuple(pools), str(default_name), source=path)


def _pools(tables: Any, base: Settings, problems: _Problems) -> list[PoolSettings]:
    if not isinstance(tables, dict) or not tables:
        problems.add("pools", 'no pool: add at least one [pools.NAME] table with asg = "<group name>"')
        return []
    if len(tables) > MAX_POOLS:
        problems.add("pools", f"{len(tables)} pools: at most {MAX_POOLS}")
        return []
    pools: list[PoolSettings] = []
    for name, table in tables.items():
        where = f"[pools.{name}]"
        if POOL_NAME_PATTERN.fullmatch(name) is None:
            problems.add(where, "pool names match ^[a-z0-9][a-z0-9-]{0,31}$")
            continue
        if not isinstance(table, dict):
            problems.add(where, "must be a table")
            continue
        pool = _pool(name, dict(table), base, where=where, problems=problems)
        if pool is not None:
            pools.append(pool)
    _check_distinct(pools, problems)
    return pools


def _pool(name: str, table: dict[str, Any], base: Settings, *, where: str, problems: _Problems) -> PoolSettings | None:
    extra = {key: table.pop(key) for key in POOL_ONLY if key in table}
    if "asg" not in table and "asg_name" not in table:
        problems.add(where, 'asg is required (the Auto Scaling Group of this pool: asg = "<name>")')
        return None
    before = len(problems.lines)
    settings = _apply(base, table, where=where, problems=problems, allowed=PER_POOL)
    namespace = _checked(extra.get("namespace", settings.asg_name), _NAMESPACE, "namespace", where, problems)
    role = _checked(extra.get("role_arn", ""), _ROLE_ARN, "role_arn", where, problems, optional=True)
    external = _checked(
        extra.get("role_external_id", ""), _EXTERNAL_ID, "role_external_id", where, problems, optional=True
    )
    aws_queue = _checked(extra.get("aws_queue", AWS_QUEUE), _AWS_QUEUE, "aws_queue", where, problems)
    hooks = _webhooks(extra.get("webhooks"), "webhooks", where, problems)
    if len(problems.lines) > before:
        return None
    return PoolSettings(
        name,
        settings,
        namespace=namespace,
        role_arn=role,
        role_external_id=external,
        job_group=settings.asg_name,
        aws_queue=aws_queue,
        webhooks=hooks,
    )


def _webhooks(value: Any, key: str, where: str, problems: _Problems) -> tuple[Webhook, ...]:
    """A ``webhooks = [{ url, secret }]`` list, validated (tasks.hooks.config); () when absent or bad."""
    if value is None:
        return ()
    try:
        return parse_webhooks(value, where=key)
    except ConfigError as exc:
        problems.add(where, str(exc))
        return ()


def _checked(
    value: Any, pattern: re.Pattern[str], key: str, where: str, problems: _Problems, *, optional: bool = False
) -> str:
    """``value`` if it matches ``pattern`` ("" allowed only for an ``optional`` key); else a problem and ""."""
    if value == "" and optional:
        return ""
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        problems.add(where, f"{key} = {str(value)[:80]!r}: expected {_EXPECTED[key]}")
        return ""
    return value


_EXPECTED = {
    "namespace": "1-255 characters without braces or spaces",
    "role_arn": "an IAM role ARN (arn:aws:iam::<12-digit account>:role/<name>)",
    "role_external_id": "2-1224 characters of [A-Za-z0-9+=,.@:/_-]",
    "aws_queue": 'aws, or aws.<name> (e.g. "aws.us-east-1"): lowercase letters, digits and -',
}


def _check_distinct(pools: list[PoolSettings], problems: _Problems) -> None:
    # Two pools on one namespace would share state keys: each would hand out the other's machines.
    seen: dict[str, str] = {}
    for p in pools:
        other = seen.setdefault(p.namespace, p.name)
        if other != p.name:
            problems.add(
                f"[pools.{p.name}]",
                f"its state namespace {p.namespace!r} is also [pools.{other}]'s: two pools cannot share a group's "
                'state; set namespace = "<unique>" on one (groups of one name in two regions or accounts)',
            )


_SPECS: dict[str, Spec] = dict(specs())


def _text(value: Any) -> str:
    """A TOML value as the text its setting's parser reads (the same parser as for the variable)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value)  # tables and arrays: settings whose value is structured read JSON


def _apply(
    base: Settings, table: Mapping[str, Any], *, where: str, problems: _Problems, allowed: frozenset[str]
) -> Settings:
    changes: dict[str, Any] = {}
    for key, value in table.items():
        name = ALIASES.get(key, key)
        spec = _SPECS.get(name)
        if spec is None or name not in allowed:
            problems.add(where, _unknown(key, name, allowed))
            continue
        text = _text(value)
        try:
            changes[name] = spec.parse(text)
        except ValueError as exc:
            detail = f" ({exc})" if isinstance(exc, ValueProblem) else ""
            problems.add(where, f"{key} = {spec.shown(text)!r}: expected {spec.parse.allowed}{detail}")
    return replace(base, **changes) if changes else base


def _unknown(key: str, name: str, allowed: frozenset[str]) -> str:
    if name in _SPECS and name not in PER_POOL:
        return f"{key} is not a pool setting: set {_SPECS[name].env} in the environment"
    if key in POOL_ONLY:
        return f"{key} belongs in a [pools.NAME] table"
    known = sorted({*allowed, *(k for k, v in ALIASES.items() if v in allowed)})
    return f"unknown key {key!r} (known: {', '.join(known)})"
