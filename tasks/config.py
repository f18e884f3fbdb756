"""Settings from the environment (docs/design.md "Configuration"); pure standard library."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from tasks.contract import MAX_LEASE_S
from tasks.errors import ConfigError
from tasks.pool.model import AddressKind

DEFAULT_ASG_NAME = "heavrdevs-asg"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
DEFAULT_RESULT_BACKEND = "redis://127.0.0.1:6379/1"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/2"
DEFAULT_REGION = "ap-south-1"


def _int(env: Mapping[str, str], name: str, default: int, *, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is outside {low}..{high}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, *, low: float, high: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is outside {low}..{high}")
    return value


@dataclass(frozen=True)
class Settings:
    """Every WARMPOOL_* setting, validated once at start-up."""

    asg_name: str = DEFAULT_ASG_NAME
    idle_target: int = 2
    refresh_seconds: float = 10.0
    broker_url: str = DEFAULT_BROKER_URL
    result_backend: str = DEFAULT_RESULT_BACKEND
    redis_url: str = DEFAULT_REDIS_URL
    address: AddressKind = AddressKind.PUBLIC
    region: str = DEFAULT_REGION
    visibility_timeout_s: int = 300
    lease_seconds: float = 0.0  # 0: assignments never expire
    ready_url: str = ""  # readiness check URL template; "" = AWS state alone decides
    ready_timeout_seconds: float = 600.0
    aws_worker_nice: int = 10  # CPU priority an aws-only worker gives up (0: none)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        address = env.get("WARMPOOL_ADDRESS", "public").strip().lower() or "public"
        if address not in ("public", "private"):
            raise ConfigError(f"WARMPOOL_ADDRESS={address!r}: use 'public' or 'private'")
        asg_name = env.get("WARMPOOL_ASG_NAME", "").strip() or DEFAULT_ASG_NAME
        if len(asg_name) > 255 or any(c in asg_name for c in "{}\n\r\0"):
            raise ConfigError(f"WARMPOOL_ASG_NAME={asg_name!r} is not a valid group name")
        region = (env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or DEFAULT_REGION).strip()
        return cls(
            asg_name=asg_name,
            idle_target=_int(env, "WARMPOOL_IDLE_TARGET", 2, low=0, high=10_000),
            refresh_seconds=_float(env, "WARMPOOL_REFRESH_SECONDS", 10.0, low=0.1, high=86_400),
            broker_url=env.get("WARMPOOL_BROKER_URL", "").strip() or DEFAULT_BROKER_URL,
            result_backend=env.get("WARMPOOL_RESULT_BACKEND", "").strip() or DEFAULT_RESULT_BACKEND,
            redis_url=env.get("WARMPOOL_REDIS_URL", "").strip() or DEFAULT_REDIS_URL,
            address=AddressKind(address),
            region=region,
            visibility_timeout_s=_int(env, "WARMPOOL_VISIBILITY_TIMEOUT_S", 300, low=5, high=86_400),
            lease_seconds=_float(env, "WARMPOOL_LEASE_SECONDS", 0.0, low=0.0, high=MAX_LEASE_S),
            ready_url=_ready_url(env.get("WARMPOOL_READY_URL", "").strip()),
            ready_timeout_seconds=_float(env, "WARMPOOL_READY_TIMEOUT_SECONDS", 600.0, low=0.0, high=86_400),
            aws_worker_nice=_int(env, "WARMPOOL_AWS_WORKER_NICE", 10, low=0, high=19),
        )


def _ready_url(template: str) -> str:
    if not template:
        return ""
    if not template.startswith(("http://", "https://")) or "{address}" not in template:
        raise ConfigError(
            f"WARMPOOL_READY_URL={template!r}: use an http(s) URL template containing {{address}}, "
            "e.g. http://{address}:8080/healthz"
        )
    try:
        template.format(address="192.0.2.1", instance_id="i-0", private_ip="10.0.0.1", public_ip="192.0.2.1")
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"WARMPOOL_READY_URL={template!r}: bad placeholder {exc}") from None
    return template


def int_setting(env: Mapping[str, str], name: str, default: int, *, low: int, high: int) -> int:
    """The integer setting ``name`` of ``env`` (``default`` when unset); ConfigError outside [low, high]."""
    return _int(env, name, default, low=low, high=high)


def float_setting(env: Mapping[str, str], name: str, default: float, *, low: float, high: float) -> float:
    """The number setting ``name`` of ``env`` (``default`` when unset); ConfigError outside [low, high] or NaN."""
    return _float(env, name, default, low=low, high=high)
