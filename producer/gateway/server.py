"""Serving the gateway: binding rules (no token, loopback only), serve() and the command line."""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Mapping, Sequence

import redis

from producer.gateway import app as app_module
from producer.gateway.access import Access, RateLimiter
from producer.gateway.app import create_app
from producer.gateway.connections import ConnectionLimits, guarded_protocol, warn_if_above_file_limit
from producer.gateway.constants import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    ENV_HOST,
    ENV_PORT,
    ENV_TOKEN,
    LOOPBACK_NAMES,
    MAX_HEADER_BYTES,
)
from producer.gateway.flower_proxy import FlowerProxy
from producer.gateway.logs import configure_logging, log
from producer.gateway.sse import EventFeed
from tasks.config import Settings, settings_or_exit
from tasks.state.connect import async_state_client, state_client
from tasks.state.keys import TOKENS_KEY


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback name or address (``[::1]`` included)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def env_port(env: Mapping[str, str] | None = None) -> int:
    """The port of WARMPOOL_GATEWAY_PORT (8080 when unset); SystemExit(2) when a setting is bad."""
    return settings_or_exit(env).gateway_port


def scoped_tokens(settings: Settings) -> int:
    """How many scoped tokens the state Redis holds (0 when it does not answer: loopback rules apply)."""
    client = state_client(
        settings.redis_url, master_name=settings.sentinel_master, socket_timeout=2, socket_connect_timeout=2
    )
    try:
        return int(client.hlen(TOKENS_KEY))
    except redis.RedisError as exc:
        log.warning("cannot count the scoped tokens in the state Redis", extra={"error": repr(exc)[:300]})
        return 0
    finally:
        client.close()


def serve(
    *,
    host: str | None,
    port: int,
    token: str | None,
    log_level: str = "info",
    limits: ConnectionLimits | None = None,
) -> None:
    """Run the gateway with uvicorn until interrupted.

    ``host`` None: ``WARMPOOL_GATEWAY_HOST``, else 127.0.0.1. ``token`` None:
    ``WARMPOOL_API_TOKEN``. Without a token only a loopback address is accepted.
    ``limits`` None: the WARMPOOL_GATEWAY_* connection limits of the settings
    (tasks.config), enforced by producer.gateway.connections.
    """
    import uvicorn

    settings = Settings.from_env()
    limits = ConnectionLimits.from_settings(settings) if limits is None else limits
    host = host or settings.gateway_host
    if token is None:
        token = settings.api_token or None
    configure_logging(log_level)
    scoped = scoped_tokens(settings)
    if token is None and not scoped:
        if not is_loopback(host):
            raise SystemExit(
                f"refusing to bind {host} without {ENV_TOKEN} or a scoped token (warmpool token create): "
                "set one, or bind 127.0.0.1 (the default)"
            )
        log.warning(
            "%s is not set and there is no scoped token: the gateway accepts unauthenticated requests, "
            "so it binds %s (loopback) only (the first `warmpool token create` turns authentication on)",
            ENV_TOKEN,
            host,
        )
    warn_if_above_file_limit(limits)
    access = Access(
        api_token=token,
        client=async_state_client(
            settings.redis_url, master_name=settings.sentinel_master, socket_timeout=2, socket_connect_timeout=2
        ),
        token_cache_s=settings.gateway_token_cache_s,
        limiter=RateLimiter(settings.gateway_rate_per_s, settings.gateway_rate_burst),
    )
    client = app_module.default_client()  # looked up at call time: tests replace it
    events = EventFeed.for_deployment(client.deployment)
    app = create_app(client, token=token, flower=FlowerProxy.from_env(), access=access, events=events)
    log.info(
        "gateway listening on http://%s:%d (auth: %s; header timeout %gs, idle timeout %ds, max connections %d)",
        host,
        port,
        ", ".join(k for k, on in (("admin token", token), (f"{scoped} scoped token(s)", scoped)) if on) or "none",
        limits.header_timeout_s,
        limits.idle_timeout_s,
        limits.max_connections,
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_config=None,
        log_level=log_level,
        server_header=False,
        # Always h11 with the connection limits (never httptools, which has none of them).
        http=guarded_protocol(limits),
        ws="none",  # no route speaks WebSocket
        timeout_keep_alive=limits.idle_timeout_s,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
    )


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m producer.gateway``."""
    parser = argparse.ArgumentParser(
        prog="python -m producer.gateway",
        description=(
            "Run the warmpool HTTP gateway. Environment: WARMPOOL_API_TOKEN (bearer token; without it "
            "only a loopback address may be bound), WARMPOOL_GATEWAY_HOST, WARMPOOL_GATEWAY_PORT, "
            "WARMPOOL_FLOWER_URL with WARMPOOL_FLOWER_USER/WARMPOOL_FLOWER_PASSWORD (the /flower proxy), "
            "WARMPOOL_GATEWAY_HEADER_TIMEOUT_S, WARMPOOL_GATEWAY_IDLE_TIMEOUT_S and "
            "WARMPOOL_GATEWAY_MAX_CONNECTIONS (connection limits), "
            "and the WARMPOOL_* broker settings of docs/design.md."
        ),
    )
    parser.add_argument("--host", default=None, help=f"address to bind [${ENV_HOST} or {DEFAULT_HOST}]")
    parser.add_argument("--port", type=int, default=None, help=f"port [${ENV_PORT} or {DEFAULT_PORT}]")
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"], help="[info]"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m producer.gateway``: parse the command line and serve."""
    settings_or_exit()  # every setting, before anything starts
    args = build_parser().parse_args(argv)
    port = args.port if args.port is not None else env_port()
    serve(host=args.host, port=port, token=None, log_level=args.log_level)
