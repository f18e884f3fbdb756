"""The HTTP gateway: warmpool for backends in any language (FastAPI).

Routes (docs/gateway.md has the full reference):

* ``GET /{project_id}``: the original orchestrator's route, unchanged:
  ``200 {"ip", "instanceId"}`` or ``404 {"error": "No idle machine found"}``.
* ``POST /v1/projects/{id}/machine`` (assign, optional ``wait`` seconds),
  ``DELETE /v1/projects/{id}/machine`` (release), ``GET /v1/pool`` (status).
* ``GET /healthz`` (a pool worker answers a status job quickly), ``GET /metrics``
  (Prometheus), ``/openapi.json`` and ``/docs``.
* ``/flower/...``: Flower, proxied behind HTTP basic auth (producer.flower_app).

Every error is JSON ``{"code", "message"}`` with a stable code; nothing ever
answers with a stack trace. With ``WARMPOOL_API_TOKEN`` set, or a scoped token
(``warmpool token create``), every route except ``/livez``, ``/healthz`` and the
API documentation needs ``Authorization: Bearer <token>`` and is authorized by
the token's scope; without either the gateway only binds a loopback address.

Run it: ``python -m producer.gateway`` (``--help`` for options).

Modules: ``app`` (create_app and the routes), ``service`` (the state behind
the routes, the health probe), ``clients`` (the pool client protocol),
``errors`` (JSON errors and their handlers), ``access`` (tokens, scopes,
rate limits, authorize()), ``sse`` (GET /v1/events), ``ui`` (the dashboard),
``asgi`` (ErrorShield), ``parsing`` (request bodies), ``models`` (the OpenAPI
models), ``flower_proxy``, ``logs``, ``constants``, ``connections`` (header and
idle timeouts, the connection cap) and ``server`` (serve, main, binding rules).

A caller that disconnects while its assign is pending has that assign withdrawn
(``warmpool.withdraw``): it never keeps a machine nobody received.
"""

import sys

from producer.extras import missing_extra

if (_need := missing_extra("gateway", command="python -m producer.gateway")) is not None:
    # While `python -m` locates its module, sys.argv[0] is "-m" (Python's documented behaviour):
    # run as a command, say which extra to install; imported by a program, raise.
    if sys.argv[:1] == ["-m"]:
        print(f"warmpool: {_need}", file=sys.stderr)
        raise SystemExit(1)
    raise ModuleNotFoundError(_need)

from producer.gateway.access import Access, AccessControl, Principal, RateLimiter, authorize
from producer.gateway.app import add_routes, create_app, install_openapi
from producer.gateway.asgi import ErrorShield
from producer.gateway.clients import GatewayClient, default_client
from producer.gateway.constants import (
    CODE_CALLER_GONE,
    CODE_FLOWER_UNAVAILABLE,
    CODE_NOT_ASSIGNED,
    CODE_NOT_FOUND,
    CODE_PAYLOAD_TOO_LARGE,
    CODE_POOL_UNAVAILABLE,
    CODE_UNAUTHORIZED,
    DEFAULT_HOST,
    DEFAULT_PORT,
    ENV_FLOWER_PASSWORD,
    ENV_FLOWER_URL,
    ENV_FLOWER_USER,
    ENV_HOST,
    ENV_PORT,
    ENV_TOKEN,
    FLOWER_PREFIX,
    INVALID_ID_MESSAGE,
    LEGACY_NO_MACHINE,
    MAX_BODY_BYTES,
    OPEN_PATHS,
    RESERVED_LEGACY_IDS,
)
from producer.gateway.errors import ApiError, check_project_id, error_for, install_error_handlers, valid_project_id
from producer.gateway.flower_proxy import FlowerProxy
from producer.gateway.logs import JsonFormatter, configure_logging, log
from producer.gateway.models import (
    AssignRequest,
    AssignResult,
    ErrorBody,
    Health,
    LegacyMachine,
    LegacyNoMachine,
    ReleaseResult,
    TouchRequest,
    TouchResult,
)
from producer.gateway.server import build_parser, env_port, is_loopback, main, serve
from producer.gateway.service import Gateway, HealthProbe, status_within

__all__ = [
    "CODE_CALLER_GONE",
    "CODE_FLOWER_UNAVAILABLE",
    "CODE_NOT_ASSIGNED",
    "CODE_NOT_FOUND",
    "CODE_PAYLOAD_TOO_LARGE",
    "CODE_POOL_UNAVAILABLE",
    "CODE_UNAUTHORIZED",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "ENV_FLOWER_PASSWORD",
    "ENV_FLOWER_URL",
    "ENV_FLOWER_USER",
    "ENV_HOST",
    "ENV_PORT",
    "ENV_TOKEN",
    "FLOWER_PREFIX",
    "INVALID_ID_MESSAGE",
    "LEGACY_NO_MACHINE",
    "MAX_BODY_BYTES",
    "OPEN_PATHS",
    "RESERVED_LEGACY_IDS",
    "ApiError",
    "AssignRequest",
    "AssignResult",
    "Access",
    "AccessControl",
    "Principal",
    "RateLimiter",
    "authorize",
    "ErrorBody",
    "ErrorShield",
    "FlowerProxy",
    "Gateway",
    "GatewayClient",
    "Health",
    "HealthProbe",
    "JsonFormatter",
    "LegacyMachine",
    "LegacyNoMachine",
    "ReleaseResult",
    "TouchRequest",
    "TouchResult",
    "add_routes",
    "build_parser",
    "check_project_id",
    "configure_logging",
    "create_app",
    "default_client",
    "env_port",
    "error_for",
    "install_error_handlers",
    "install_openapi",
    "is_loopback",
    "log",
    "main",
    "serve",
    "status_within",
    "valid_project_id",
]
