"""Every setting of warmpool, declared once and validated once at start (docs/design.md "Configuration").

A setting is one line in :class:`Settings`: its field, environment variable,
default, kind of value (tasks/config_values.py) and a short meaning. That line
is all it takes: every command validates it at start (one line naming the
variable, the bad value and what is allowed; exit 2), ``warmpool config check``
shows it with its source, README's table is checked against it by the tests.

A secret (``mask=``) may also come from a file: ``WARMPOOL_API_TOKEN_FILE=/run/secrets/token``
holds the value (surrounding whitespace stripped); setting both the variable and
its ``_FILE`` is an error. An empty variable counts as unset.

Pure standard library: producers import this without the worker's libraries.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, TypeVar

from tasks import config_values as kind
from tasks.config_values import Parser
from tasks.config_values import mask_all as _secret
from tasks.config_values import mask_url_password as _url_secret
from tasks.contract import MAX_LEASE_S
from tasks.errors import ConfigError
from tasks.pool.model import AddressKind

T = TypeVar("T")

DEFAULT_ASG_NAME = "heavrdevs-asg"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
DEFAULT_RESULT_BACKEND = "redis://127.0.0.1:6379/1"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/2"
DEFAULT_REGION = "ap-south-1"

FILE_SUFFIX = "_FILE"
SOURCE_DEFAULT = "default"
SOURCE_ENV = "environment"
SOURCE_FILE = "file"
SOURCE_INVALID = "invalid"


@dataclass(frozen=True)
class Spec:
    """How one setting is read: its variable, kind of value, meaning, and (secrets) how it is masked."""

    env: str
    parse: Parser[Any]
    meaning: str
    mask: Callable[[str], str] | None = None
    fallback_env: tuple[str, ...] = ()  # read, in order, when ``env`` is unset

    @property
    def file_env(self) -> str | None:
        """The ``*_FILE`` variable of a secret (None: the setting is not a secret)."""
        return self.env + FILE_SUFFIX if self.mask is not None else None

    def shown(self, raw: str) -> str:
        """``raw`` as it may be printed (secrets masked)."""
        return self.mask(raw) if self.mask is not None else raw


def setting(
    env: str,
    default: T,
    parse: Parser[T],
    meaning: str,
    *,
    mask: Callable[[str], str] | None = None,
    fallback_env: tuple[str, ...] = (),
) -> T:
    """Declare a field of :class:`Settings` (its default plus how to read it)."""
    spec = Spec(env=env, parse=parse, meaning=meaning, mask=mask, fallback_env=fallback_env)
    # A secret never appears in a repr (a log line, a traceback's locals).
    return field(default=default, repr=mask is None, metadata={"spec": spec})


_GROUP_NAME = kind.text(max_chars=255, forbidden="{}", what="an Auto Scaling Group name: 1-255 characters, no { or }")
_BROKER = kind.url(example="redis://127.0.0.1:6379/0 or amqp://user:pass@host:5672//")
_STORE = kind.url(
    schemes=("redis", "rediss", "unix", "sentinel"),
    example="redis://127.0.0.1:6379/2 or sentinel://s1:26379;sentinel://s2:26379/2",
)
_SENTINEL_NAME = kind.text(max_chars=128, forbidden=" ;/", what="a Sentinel master name")
_HTTP = kind.url(schemes=("http", "https"), example="http://127.0.0.1:5555")
_TOKEN = kind.text(max_chars=4096, forbidden=" ", what="printable characters without spaces")
_USER = kind.text(max_chars=256, forbidden=":", what="printable characters without ':'")
_PASSWORD = kind.text(max_chars=4096, forbidden="", what="printable characters")
_WEBHOOK_SECRET = kind.text(max_chars=4096, forbidden=" ", what="printable characters without spaces")


@dataclass(frozen=True)
class Settings:
    """Every setting, validated once at start-up (one line each: field, variable, default, kind, meaning)."""

    # The pools: a TOML file of them (tasks/pools.py), or the one pool the settings below describe.
    config_file: str = setting("WARMPOOL_CONFIG", "", kind.readable_file(), "TOML file of pools (unset: one pool)")
    # The pool (read by the workers; the producers read the broker URLs).
    asg_name: str = setting("WARMPOOL_ASG_NAME", DEFAULT_ASG_NAME, _GROUP_NAME, "the Auto Scaling Group")
    idle_target: int = setting("WARMPOOL_IDLE_TARGET", 2, kind.integer(0, 10_000), "idle machines to keep ready")
    refresh_seconds: float = setting("WARMPOOL_REFRESH_SECONDS", 10.0, kind.number(0.1, 86_400), "beat interval")
    broker_url: str = setting("WARMPOOL_BROKER_URL", DEFAULT_BROKER_URL, _BROKER, "Celery broker", mask=_url_secret)
    result_backend: str = setting(
        "WARMPOOL_RESULT_BACKEND", DEFAULT_RESULT_BACKEND, _BROKER, "Celery result backend", mask=_url_secret
    )
    redis_url: str = setting("WARMPOOL_REDIS_URL", DEFAULT_REDIS_URL, _STORE, "pool state store", mask=_url_secret)
    sentinel_master: str = setting(
        "WARMPOOL_SENTINEL_MASTER", "mymaster", _SENTINEL_NAME, "master the Sentinels watch (sentinel:// URLs)"
    )
    address: AddressKind = setting(
        "WARMPOOL_ADDRESS", AddressKind.PUBLIC, kind.one_of(AddressKind), "address handed out"
    )
    region: str = setting(
        "AWS_REGION", DEFAULT_REGION, kind.region(), "AWS region", fallback_env=("AWS_DEFAULT_REGION",)
    )
    aws_endpoint_url: str = setting("AWS_ENDPOINT_URL", "", _HTTP, "boto3's endpoint override (moto, LocalStack)")
    visibility_timeout_s: int = setting(
        "WARMPOOL_VISIBILITY_TIMEOUT_S", 300, kind.integer(5, 86_400), "redelivery delay of an unacknowledged job"
    )
    lease_seconds: float = setting(
        "WARMPOOL_LEASE_SECONDS", 0.0, kind.number(0.0, MAX_LEASE_S), "lease of an assignment (0: never expires)"
    )
    ready_url: str = setting(
        "WARMPOOL_READY_URL", "", kind.ready_url(), "readiness check URL (unset: AWS state decides)"
    )
    ready_timeout_seconds: float = setting(
        "WARMPOOL_READY_TIMEOUT_SECONDS", 600.0, kind.number(0.0, 86_400), "unready this long: replaced"
    )
    # Pool economics (tasks/pool/policy.py, docs/economics.md); per pool.
    policy: str = setting("WARMPOOL_POLICY", "fixed", kind.policy(), "capacity policy: fixed[:N] | adaptive[:goal=G]")
    warm_goal: float = setting("WARMPOOL_WARM_GOAL", 0.99, kind.number(0.5, 0.9999), "adaptive: share served warm")
    idle_max: int = setting("WARMPOOL_IDLE_MAX", 0, kind.integer(0, 10_000), "idle machines at most (0: no cap)")
    schedules: str = setting("WARMPOOL_SCHEDULES", "", kind.schedules(), "JSON list of demand windows")
    scale_in_delay_s: float = setting(
        "WARMPOOL_SCALE_IN_DELAY_S", 180.0, kind.number(0.0, 86_400), "surplus idle kept this long"
    )
    scale_in_step: int = setting(
        "WARMPOOL_SCALE_IN_STEP", 5, kind.integer(0, 10_000), "surplus terminated per rebalance (0: all)"
    )
    pending_poll_s: float = setting(
        "WARMPOOL_PENDING_POLL_S", 1.0, kind.number(0.0, 60), "refresh interval while a machine launches (0: off)"
    )
    aws_worker_nice: int = setting(
        "WARMPOOL_AWS_WORKER_NICE", 10, kind.integer(0, 19), "CPU priority an aws worker gives up"
    )
    # The operator surfaces: the HTTP gateway and Flower.
    api_token: str = setting(
        "WARMPOOL_API_TOKEN", "", _TOKEN, "gateway bearer token (unset: loopback only)", mask=_secret
    )
    gateway_host: str = setting("WARMPOOL_GATEWAY_HOST", "127.0.0.1", kind.host(), "gateway bind address")
    gateway_port: int = setting("WARMPOOL_GATEWAY_PORT", 8080, kind.integer(1, 65_535), "gateway port")
    gateway_header_timeout_s: float = setting(
        "WARMPOOL_GATEWAY_HEADER_TIMEOUT_S", 10.0, kind.number(0.01, 3_600), "time a request has to arrive"
    )
    gateway_idle_timeout_s: int = setting(
        "WARMPOOL_GATEWAY_IDLE_TIMEOUT_S", 5, kind.integer(1, 3_600), "keep-alive of an idle connection (whole s)"
    )
    gateway_max_connections: int = setting(
        "WARMPOOL_GATEWAY_MAX_CONNECTIONS", 1000, kind.integer(1, 1_000_000), "open connections at most"
    )
    gateway_token_cache_s: float = setting(
        "WARMPOOL_GATEWAY_TOKEN_CACHE_S", 2.0, kind.number(0.0, 300), "scoped tokens re-read (revocation delay)"
    )
    gateway_rate_per_s: float = setting(
        "WARMPOOL_GATEWAY_RATE_PER_S", 0.0, kind.number(0.0, 1_000_000), "requests per second per token (0: no limit)"
    )
    gateway_rate_burst: int = setting(
        "WARMPOOL_GATEWAY_RATE_BURST", 20, kind.integer(1, 1_000_000), "requests a token may send at once"
    )
    flower_url: str = setting("WARMPOOL_FLOWER_URL", "", _HTTP, "where Flower listens (turns on /flower)")
    flower_user: str = setting("WARMPOOL_FLOWER_USER", "", _USER, "Flower user")
    flower_password: str = setting("WARMPOOL_FLOWER_PASSWORD", "", _PASSWORD, "Flower password", mask=_secret)
    # Operating it (docs/operations.md): one webhook from the environment, and the dry run.
    webhook_url: str = setting("WARMPOOL_WEBHOOK_URL", "", _HTTP, "a webhook receiving every event (POST)")
    webhook_secret: str = setting(
        "WARMPOOL_WEBHOOK_SECRET", "", _WEBHOOK_SECRET, "HMAC secret of WARMPOOL_WEBHOOK_URL", mask=_secret
    )
    dry_run: int = setting("WARMPOOL_DRY_RUN", 0, kind.integer(0, 1), "1: plan and log, change nothing in AWS")
    adopt_hold: int = setting(
        "WARMPOOL_ADOPT_HOLD", 1, kind.integer(0, 1), "1: first start keeps found machines until adopt"
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings of ``env`` (default: os.environ); ConfigError naming every bad one."""
        report = load(env)
        if report.problems:
            raise ConfigError("; ".join(report.problems), problems=report.problems)
        assert report.settings is not None  # no problems: every value parsed
        return report.settings


def settings_or_exit(env: Mapping[str, str] | None = None) -> Settings:
    """The settings of ``env``, the pools file they name included, or (a command's start) one stderr
    line per problem and SystemExit(2)."""
    # The pools file is a setting too; tasks.pools builds on this module, hence the late import.
    from tasks.pools import deployment_or_exit

    return deployment_or_exit(env).settings


@dataclass(frozen=True)
class Entry:
    """One setting as ``config check`` shows it: where its value came from, masked when secret."""

    name: str
    value: str
    source: str  # default | environment | file | invalid
    origin: str  # the variable that gave the value ("" for a default)
    meaning: str
    secret: bool


@dataclass(frozen=True)
class Report:
    """Every setting's entry, the problems found, and the settings when there were none."""

    entries: tuple[Entry, ...]
    problems: tuple[str, ...]
    settings: Settings | None


def specs() -> tuple[tuple[str, Spec], ...]:
    """(field name, spec) of every setting, in declaration order."""
    return tuple((f.name, f.metadata["spec"]) for f in fields(Settings))


def _raw(spec: Spec, env: Mapping[str, str]) -> tuple[str, str, str]:
    """(text, source, origin) of a setting; ValueError(problem) when its variable or file is unusable."""
    file_env = spec.file_env
    value = env.get(spec.env, "").strip()
    path = env.get(file_env, "").strip() if file_env else ""
    if value and path:
        raise ValueError(f"{spec.env} and {file_env} are both set: set one of them")
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                return fh.read().strip(), SOURCE_FILE, f"{file_env}={path}"
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ValueError(f"{file_env}={path!r}: cannot read the file ({reason})") from None
    for name in (spec.env, *spec.fallback_env):
        value = env.get(name, "").strip()
        if value:
            return value, SOURCE_ENV, name
    return "", SOURCE_DEFAULT, ""


def _parse(spec: Spec, raw: str, origin: str) -> Any:
    try:
        return spec.parse(raw)
    except ValueError as exc:
        where = f" (from {origin})" if origin and origin != spec.env else ""
        detail = f" ({exc})" if isinstance(exc, kind.ValueProblem) else ""
        raise ValueError(f"{spec.env}={spec.shown(raw)!r}{where}: expected {spec.parse.allowed}{detail}") from None


def load(env: Mapping[str, str] | None = None) -> Report:
    """Read and check every setting of ``env`` (default: os.environ), collecting every problem."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    entries: list[Entry] = []
    problems: list[str] = []
    for name, spec in specs():
        raw, source, origin = "", SOURCE_DEFAULT, ""
        default = Settings.__dataclass_fields__[name].default
        try:
            raw, source, origin = _raw(spec, env)
            if raw:
                values[name] = _parse(spec, raw, origin)
        except ValueError as exc:
            problems.append(str(exc))
            source = SOURCE_INVALID
        shown = spec.shown(raw) if raw else _default_text(default)
        entries.append(Entry(spec.env, shown, source, origin, spec.meaning, spec.mask is not None))
    settings = None if problems else Settings(**values)
    return Report(tuple(entries), tuple(problems), settings)


def _default_text(default: Any) -> str:
    if isinstance(default, Enum):
        return str(default.value)
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)
