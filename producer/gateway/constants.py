"""The gateway's settings names, defaults, error codes and reserved paths."""

from __future__ import annotations

from collections.abc import Mapping

from tasks.contract import STATUS_NOT_ASSIGNED

ENV_TOKEN = "WARMPOOL_API_TOKEN"
ENV_HOST = "WARMPOOL_GATEWAY_HOST"
ENV_PORT = "WARMPOOL_GATEWAY_PORT"
ENV_FLOWER_URL = "WARMPOOL_FLOWER_URL"
ENV_FLOWER_USER = "WARMPOOL_FLOWER_USER"
ENV_FLOWER_PASSWORD = "WARMPOOL_FLOWER_PASSWORD"
ENV_HEADER_TIMEOUT_S = "WARMPOOL_GATEWAY_HEADER_TIMEOUT_S"
ENV_IDLE_TIMEOUT_S = "WARMPOOL_GATEWAY_IDLE_TIMEOUT_S"
ENV_MAX_CONNECTIONS = "WARMPOOL_GATEWAY_MAX_CONNECTIONS"

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost"})
# Connection limits (producer.gateway.connections): a request must arrive within
# the header timeout, an idle keep-alive connection closes after the idle one.
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_IDLE_TIMEOUT_S = 5  # uvicorn's keep-alive timer takes whole seconds
DEFAULT_MAX_CONNECTIONS = 1000
MAX_TIMEOUT_S = 3600.0
# The request line and headers together (h11's incomplete-event bound): larger is a 400.
MAX_HEADER_BYTES = 16 * 1024

CODE_POOL_UNAVAILABLE = "pool_unavailable"
CODE_NOT_ASSIGNED = STATUS_NOT_ASSIGNED
CODE_NOT_FOUND = "not_found"
CODE_UNAUTHORIZED = "unauthorized"
CODE_PAYLOAD_TOO_LARGE = "payload_too_large"
CODE_FLOWER_UNAVAILABLE = "flower_unavailable"
# The caller disconnected while its assign was pending (nginx's 499; nobody reads it).
CODE_CALLER_GONE = "client_closed_request"

LEGACY_NO_MACHINE: Mapping[str, str] = {"error": "No idle machine found"}
INVALID_ID_MESSAGE = "invalid project id: use 1-128 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit"

# Names a browser, crawler or this gateway itself asks for: the seed-compatible
# GET /{project_id} route never assigns a machine to them (they remain usable
# as project ids through the v1 API).
RESERVED_LEGACY_IDS = frozenset(
    {
        "favicon.ico",
        "robots.txt",
        "sitemap.xml",
        "humans.txt",
        "ads.txt",
        "security.txt",
        "apple-touch-icon.png",
        "apple-touch-icon-precomposed.png",
        "browserconfig.xml",
        "manifest.json",
        "site.webmanifest",
        "index.html",
        "healthz",
        "livez",
        "metrics",
        "docs",
        "redoc",
        "openapi.json",
        "flower",
        "ui",
        "v1",
    }
)

# Paths that stay open when a token is configured (the documentation carries
# no pool data; /livez and /healthz say only ok/not ok). /flower has its own basic auth.
OPEN_PATHS = frozenset({"/livez", "/healthz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
FLOWER_PREFIX = "/flower"

MAX_BODY_BYTES = 16 * 1024
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
