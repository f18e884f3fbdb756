"""Run Flower (Celery's web monitor) with authentication on by default, and closed.

Flower 2.2 checks basic-auth credentials only on the handlers decorated with
``@tornado.web.authenticated``: ``/metrics`` and ``/healthcheck`` answer anyone,
even with ``--basic_auth``. warmpool closes that gap twice:

1. **In Flower itself**: before Flower starts, :func:`harden_flower` wraps the
   ``prepare`` hook of every Flower request handler so that, when basic auth is
   configured, *every* route (metrics and healthcheck included) needs the
   credentials; a request without them gets ``401`` + ``WWW-Authenticate``.
2. **On the network**: Flower binds ``127.0.0.1`` by default, under the URL
   prefix ``/flower``, and is reached through the gateway's ``/flower/...``
   route, which checks the same credentials before forwarding
   (producer.gateway.FlowerProxy). In docker-compose Flower shares the
   gateway's network namespace, so its port is never reachable from outside.

Credentials come from ``WARMPOOL_FLOWER_USER`` / ``WARMPOOL_FLOWER_PASSWORD``;
without them Flower refuses to start unless ``--no-auth`` is given (which is
allowed on a loopback address only). They are handed to Flower in-process,
never on a command line (``ps`` would show them).

    python -m producer.flower_app                 # 127.0.0.1:5555/flower/, auth on
    python -m producer.flower_app --print-command # the equivalent celery command line
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from producer.extras import missing_extra
from tasks.config import settings_or_exit

ENV_USER = "WARMPOOL_FLOWER_USER"
ENV_PASSWORD = "WARMPOOL_FLOWER_PASSWORD"
DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_PORT = 5555
DEFAULT_URL_PREFIX = "flower"
DEFAULT_CELERY_APP = "tasks"

# Flower reads these from the environment after our options are set; they
# could replace our credentials or open the API, so they are dropped.
OVERRIDING_ENV = ("FLOWER_BASIC_AUTH", "FLOWER_UNAUTHENTICATED_API", "FLOWER_AUTH")

_HARDENED_MARK = "_warmpool_requires_auth"


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Credentials | None:
        # Values checked (no ':' in the user, printable) and *_FILE read by tasks.config.
        settings = settings_or_exit(env)
        user, password = settings.flower_user, settings.flower_password
        if not user and not password:
            return None
        if not user or not password:
            raise SystemExit(f"set both {ENV_USER} and {ENV_PASSWORD} (or neither, with --no-auth)")
        return cls(user, password)

    def basic_auth_option(self) -> str:
        return f"{self.user}:{self.password}"


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def flower_command(
    *,
    address: str = DEFAULT_ADDRESS,
    port: int = DEFAULT_PORT,
    url_prefix: str = DEFAULT_URL_PREFIX,
    celery_app: str = DEFAULT_CELERY_APP,
    extra: Sequence[str] = (),
) -> list[str]:
    """The ``celery ... flower`` command line this module runs (credentials are never part of it)."""
    argv = ["celery", "-A", celery_app, "flower", f"--address={address}", f"--port={port}"]
    if url_prefix:
        argv.append(f"--url_prefix={url_prefix.strip('/')}")
    return argv + list(extra)


def _require_auth(original: Any) -> Any:
    def prepare(self: Any) -> Any:
        result = original(self)
        if self.application.options.basic_auth and not self.current_user:
            # current_user raises 401 itself on missing or wrong credentials.
            import tornado.web

            raise tornado.web.HTTPError(401)
        return result

    setattr(prepare, _HARDENED_MARK, True)
    return prepare


def _handler_classes(base: type) -> list[type]:
    seen: list[type] = []
    stack = [base]
    while stack:
        cls = stack.pop()
        if cls not in seen:
            seen.append(cls)
            stack.extend(cls.__subclasses__())
    return seen


def harden_flower() -> list[str]:
    """Make every Flower handler require the configured credentials; return the patched class names.

    Idempotent. Patches each class that defines its own ``prepare`` (Flower's
    BaseHandler and BaseApiHandler in 2.2), so subclasses added by later Flower
    versions inherit the check.
    """
    import flower.urls  # noqa: F401 - imports every view, so all handler classes exist
    from flower.views import BaseHandler

    patched: list[str] = []
    for cls in _handler_classes(BaseHandler):
        prepare = cls.__dict__.get("prepare")
        if cls is not BaseHandler and prepare is None:
            continue
        if prepare is None:
            prepare = BaseHandler.prepare
        if getattr(prepare, _HARDENED_MARK, False):
            continue
        setattr(cls, "prepare", _require_auth(prepare))  # noqa: B010 - monkeypatching on purpose
        patched.append(f"{cls.__module__}.{cls.__qualname__}")
    return patched


def configure_flower_auth(credentials: Credentials | None) -> None:
    """Hand the credentials to Flower's options in-process and drop env overrides."""
    from flower.options import options  # defines Flower's options on tornado's registry

    for name in OVERRIDING_ENV:
        os.environ.pop(name, None)
    options.basic_auth = [credentials.basic_auth_option()] if credentials else []


def run(argv: Sequence[str], credentials: Credentials | None) -> None:
    """Run Flower in this process (celery's own CLI), hardened, until interrupted."""
    configure_flower_auth(credentials)
    if credentials is not None:
        harden_flower()
    from celery.bin.celery import main as celery_main

    sys.argv = list(argv)
    celery_main()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m producer.flower_app",
        description=(
            f"Run Flower for warmpool with HTTP basic auth ({ENV_USER}/{ENV_PASSWORD}) on every route, "
            "/metrics and /healthcheck included. Expose it through the gateway's /flower/ route."
        ),
    )
    parser.add_argument("--address", default=DEFAULT_ADDRESS, help=f"address to bind [{DEFAULT_ADDRESS}]")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port [{DEFAULT_PORT}]")
    parser.add_argument(
        "--url-prefix",
        default=DEFAULT_URL_PREFIX,
        help=f"URL prefix, matching the gateway's /flower route [{DEFAULT_URL_PREFIX}]",
    )
    parser.add_argument("--app", default=DEFAULT_CELERY_APP, help=f"Celery app [{DEFAULT_CELERY_APP}]")
    parser.add_argument(
        "--no-auth",
        action="store_true",
        help="run without credentials (loopback addresses only; anyone on this host can then use Flower)",
    )
    parser.add_argument("--print-command", action="store_true", help="print the celery command line and exit")
    parser.add_argument("extra", nargs="*", help="further Flower options, after --")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run Flower (or print its command line); returns an exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    settings_or_exit()  # every setting, before anything starts
    if (need := missing_extra("flower", command="Flower")) is not None:
        print(f"warmpool: {need}", file=sys.stderr)
        return 1
    if argv[:1] == ["--"]:  # `warmpool flower -- --no-auth`: argparse REMAINDER keeps the "--"
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    command = flower_command(
        address=args.address, port=args.port, url_prefix=args.url_prefix, celery_app=args.app, extra=args.extra
    )
    if args.print_command:
        print(shlex.join(command))
        return 0
    credentials = None if args.no_auth else Credentials.from_env()
    if credentials is None and not args.no_auth:
        raise SystemExit(
            f"Flower needs credentials: set {ENV_USER} and {ENV_PASSWORD}, "
            "or pass --no-auth to run it unauthenticated on a loopback address"
        )
    if credentials is None and not is_loopback(args.address):
        raise SystemExit(f"refusing --no-auth on {args.address}: without credentials Flower binds loopback only")
    run(command, credentials)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
