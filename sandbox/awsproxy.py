"""AwsFaultProxy: an HTTP proxy in front of an AWS endpoint (a moto server) that injects faults.

Workers reach AWS through it by setting ``AWS_ENDPOINT_URL`` to the proxy's
``endpoint_url``. Every request is forwarded to the upstream unchanged (the
signed ``Host`` header included) unless a fault is configured:

* ``latency_s`` (+ ``jitter_s``): sleep before answering, on every request;
* ``throttle_ratio``: that share of requests is answered with AWS's throttling
  error instead of being forwarded: ``400 <ErrorResponse><Error><Code>Throttling``
  (query protocol: Auto Scaling, STS, ...), ``503 <Response><Errors><Error><Code>
  RequestLimitExceeded`` for EC2, ``400 {"__type": "ThrottlingException"}`` for
  JSON-protocol services;
* ``error_ratio``: that share is answered ``500 InternalFailure`` / ``InternalError``;
* ``refuse``: the proxy stops listening (new connections are refused, open ones
  are closed) until ``refuse`` is turned off again or ``refuse_for_s`` has passed.

``actions`` limits the faults to some API actions (``{"CreateTags"}``); every
other request passes untouched. The proxy counts every request it receives by
action (``DescribeInstances``, ``SetDesiredCapacity``, ...), and separately what
it forwarded, throttled and failed.

In-process use (tests)::

    with AwsFaultProxy(moto.endpoint_url) as proxy:
        env["AWS_ENDPOINT_URL"] = proxy.endpoint_url
        proxy.configure(throttle_ratio=0.5, actions={"CreateTags"})
        ...
        assert proxy.counts()["CreateTags"] >= 1

Runtime control over HTTP (the proxy runs in another process, or a test flips
faults from outside): every listener answers ``/__proxy__/...``, and a second
control listener (``control_url``) keeps answering while the proxy refuses::

    GET    /__proxy__/config   current faults (JSON)
    POST   /__proxy__/config   change some of them: {"latency_s": 0.1, "refuse_for_s": 5}
    DELETE /__proxy__/config   back to no faults
    GET    /__proxy__/stats    {"requests": {action: n}, "forwarded": ..., "throttled": ..., "errors": ...}
    POST   /__proxy__/reset    zero the counters

``ProxyControl(control_url)`` is the client for that API; ``python -m
sandbox.awsproxy --upstream URL`` runs a proxy as a process.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

CONTROL_PREFIX = "/__proxy__/"
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)
_UNSET: Any = object()


@dataclass(frozen=True)
class FaultConfig:
    """What the proxy does to requests. The default forwards everything untouched."""

    latency_s: float = 0.0
    jitter_s: float = 0.0  # extra latency, uniform in [0, jitter_s]
    throttle_ratio: float = 0.0
    error_ratio: float = 0.0
    refuse: bool = False
    actions: frozenset[str] | None = None  # None: faults apply to every action

    def __post_init__(self) -> None:
        for name in ("latency_s", "jitter_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("throttle_ratio", "error_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.throttle_ratio + self.error_ratio > 1.0:
            raise ValueError("throttle_ratio + error_ratio must not exceed 1")

    def applies_to(self, action: str) -> bool:
        return self.actions is None or action in self.actions

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["actions"] = sorted(self.actions) if self.actions is not None else None
        return data


@dataclass
class _Counters:
    requests: Counter[str] = field(default_factory=Counter)
    forwarded: Counter[str] = field(default_factory=Counter)
    throttled: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    upstream_failures: Counter[str] = field(default_factory=Counter)
    dropped_connections: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "forwarded": dict(self.forwarded),
            "throttled": dict(self.throttled),
            "errors": dict(self.errors),
            "upstream_failures": dict(self.upstream_failures),
            "dropped_connections": self.dropped_connections,
        }


# -- AWS error bodies ------------------------------------------------------------
def _request_id() -> str:
    return str(uuid.uuid4())


def _query_error(code: str, message: str, *, sender: bool) -> bytes:
    kind = "Sender" if sender else "Receiver"
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<ErrorResponse><Error><Type>{kind}</Type><Code>{code}</Code><Message>{message}</Message></Error>"
        f"<RequestId>{_request_id()}</RequestId></ErrorResponse>"
    ).encode()


def _ec2_error(code: str, message: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors>"
        f"<RequestID>{_request_id()}</RequestID></Response>"
    ).encode()


def error_response(service: str, protocol: str, *, throttle: bool) -> tuple[int, str, bytes]:
    """(status, content type, body) of AWS's throttling or internal-error answer for ``service``."""
    if protocol == "json":
        code = "ThrottlingException" if throttle else "InternalFailure"
        body = json.dumps({"__type": code, "message": "Rate exceeded" if throttle else "Internal failure"})
        return (400 if throttle else 500), "application/x-amz-json-1.1", body.encode()
    if service == "ec2":
        if throttle:
            return 503, "text/xml;charset=UTF-8", _ec2_error("RequestLimitExceeded", "Request limit exceeded.")
        return 500, "text/xml;charset=UTF-8", _ec2_error("InternalError", "An internal error has occurred.")
    if throttle:
        return 400, "text/xml", _query_error("Throttling", "Rate exceeded", sender=True)
    return 500, "text/xml", _query_error("InternalFailure", "An internal error has occurred.", sender=False)


def describe_request(headers: Any, path: str, body: bytes) -> tuple[str, str, str]:
    """(service, protocol, action) of a signed AWS request; "unknown" where it cannot tell."""
    auth = headers.get("Authorization", "") or ""
    service = "unknown"
    if "Credential=" in auth:
        scope = auth.split("Credential=", 1)[1].split(",", 1)[0].split("/")
        if len(scope) >= 4:
            service = scope[3]
    target = headers.get("X-Amz-Target")
    if target:
        return service, "json", target.rsplit(".", 1)[-1]
    params = parse_qs(urlsplit(path).query)
    ctype = headers.get("Content-Type", "") or ""
    if body and "x-www-form-urlencoded" in ctype:
        params.update(parse_qs(body.decode("utf-8", "replace")))
    action = (params.get("Action") or ["unknown"])[0]
    return service, "query", action


# -- the HTTP side ---------------------------------------------------------------
class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], proxy: AwsFaultProxy, *, control_only: bool) -> None:
        self.proxy = proxy
        self.control_only = control_only
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # small writes must not wait for a delayed ACK (+40 ms)
    server: _Server

    def setup(self) -> None:
        super().setup()
        if not self.server.control_only:
            self.server.proxy._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if not self.server.control_only:
                self.server.proxy._track(self.connection, add=False)
                self.server.proxy._close_upstream()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        pass

    def _body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        self.server.proxy._local.client = self.connection
        body = self._body()
        try:
            if self.path.startswith(CONTROL_PREFIX):
                status, ctype, payload = self.server.proxy._handle_control(self.command, self.path, body)
                self.send(status, [("Content-Type", ctype)], payload)
            elif self.server.control_only:
                self.send(404, [("Content-Type", "text/plain")], b"control listener: use /__proxy__/\n")
            else:
                self.server.proxy._proxy(self, body)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, OSError):
            self.close_connection = True

    def send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response_only(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Date", self.date_time_string())
        # Status line, headers and body in one write.
        buffer: list[bytes] = self._headers_buffer  # type: ignore[attr-defined]  # set by send_header()
        buffer.append(b"\r\n")
        if self.command != "HEAD":
            buffer.append(body)
        self.wfile.write(b"".join(buffer))
        buffer.clear()
        self.wfile.flush()

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _handle


class AwsFaultProxy:
    """A threaded proxy to ``upstream_url`` with injectable latency, throttling, 500s and refusal.

    ``port=None`` picks a free port; ``control_port=None`` another one for the
    control listener. ``seed`` makes the random fault choice reproducible.
    """

    def __init__(
        self,
        upstream_url: str,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        control_port: int | None = None,
        seed: int | None = None,
        upstream_timeout_s: float = 120.0,
    ) -> None:
        parts = urlsplit(upstream_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be an http:// URL, got {upstream_url!r}")
        self.upstream_url = upstream_url.rstrip("/")
        self._upstream = (parts.hostname, parts.port or 80)
        self.host = host
        self.port = port or 0
        self.control_port = control_port or 0
        self.upstream_timeout_s = upstream_timeout_s
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._config = FaultConfig()
        self._counters = _Counters()
        self._conns: set[socket.socket] = set()
        self._local = threading.local()
        self._server: _Server | None = None
        self._control_server: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._resume_timer: threading.Timer | None = None
        self._listen_lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------
    @property
    def endpoint_url(self) -> str:
        """The URL to give boto3 / ``AWS_ENDPOINT_URL``."""
        return f"http://{self.host}:{self.port}"

    @property
    def control_url(self) -> str:
        """The control listener (answers even while the proxy refuses connections)."""
        return f"http://{self.host}:{self.control_port}"

    def start(self) -> AwsFaultProxy:
        """Start listening (both listeners); returns self."""
        if self._control_server is not None:
            return self
        self._control_server = self._serve(self.control_port, control_only=True)
        self.control_port = self._control_server.server_address[1]
        self._listen(True)
        return self

    def stop(self) -> None:
        """Stop both listeners and close every open connection."""
        if self._resume_timer is not None:
            self._resume_timer.cancel()
        self._listen(False)
        if self._control_server is not None:
            self._control_server.shutdown()
            self._control_server.server_close()
            self._control_server = None

    def __enter__(self) -> AwsFaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self, port: int, *, control_only: bool) -> _Server:
        server = _Server((self.host, port), self, control_only=control_only)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        self._threads.append(thread)
        return server

    def _listen(self, on: bool) -> None:
        with self._listen_lock:
            if on and self._server is None:
                self._server = self._serve(self.port, control_only=False)
                self.port = self._server.server_address[1]
            elif not on and self._server is not None:
                server, self._server = self._server, None
                server.shutdown()
                server.server_close()
                self._drop_connections()

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def _drop_connections(self) -> None:
        current = getattr(self._local, "client", None)
        with self._lock:
            conns = [c for c in self._conns if c is not current]
            self._counters.dropped_connections += len(conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # -- configuration and counters -----------------------------------------------
    @property
    def config(self) -> FaultConfig:
        return self._config

    def configure(
        self,
        *,
        latency_s: float = _UNSET,
        jitter_s: float = _UNSET,
        throttle_ratio: float = _UNSET,
        error_ratio: float = _UNSET,
        refuse: bool = _UNSET,
        refuse_for_s: float | None = None,
        actions: Any = _UNSET,
    ) -> FaultConfig:
        """Change the given faults (the others stay); returns the new configuration.

        ``refuse=True`` stops listening until ``configure(refuse=False)``;
        ``refuse_for_s=S`` refuses for S seconds, then listens again by itself.
        ``actions`` is an iterable of action names, or None for all actions.
        """
        changes: dict[str, Any] = {
            k: v
            for k, v in {
                "latency_s": latency_s,
                "jitter_s": jitter_s,
                "throttle_ratio": throttle_ratio,
                "error_ratio": error_ratio,
                "refuse": refuse,
            }.items()
            if v is not _UNSET
        }
        if actions is not _UNSET:
            changes["actions"] = None if actions is None else frozenset(str(a) for a in actions)
        if refuse_for_s is not None:
            changes["refuse"] = True
        for name in ("latency_s", "jitter_s", "throttle_ratio", "error_ratio"):
            if name in changes:
                changes[name] = float(changes[name])
        with self._lock:
            self._config = new = replace(self._config, **changes)
        if self._resume_timer is not None:
            self._resume_timer.cancel()
            self._resume_timer = None
        if self._control_server is not None:  # started: apply the listening state now
            self._listen(not new.refuse)
        if refuse_for_s is not None:
            self._resume_timer = threading.Timer(float(refuse_for_s), self._resume)
            self._resume_timer.daemon = True
            self._resume_timer.start()
        return new

    def _resume(self) -> None:
        with self._lock:
            self._config = replace(self._config, refuse=False)
        self._listen(True)

    def reset_faults(self) -> FaultConfig:
        """No faults: forward everything untouched (and listen again)."""
        return self.configure(
            latency_s=0.0, jitter_s=0.0, throttle_ratio=0.0, error_ratio=0.0, refuse=False, actions=None
        )

    def counts(self) -> dict[str, int]:
        """Requests received by action (faulted ones included)."""
        with self._lock:
            return dict(self._counters.requests)

    def stats(self) -> dict[str, Any]:
        """Every counter: requests, forwarded, throttled, errors, upstream_failures by action."""
        with self._lock:
            return self._counters.to_json()

    def reset_counts(self) -> None:
        with self._lock:
            self._counters = _Counters()

    # -- request handling ---------------------------------------------------------
    def _decide(self, action: str) -> tuple[float, str | None]:
        """(delay, fault) for one request: fault is "throttle", "error" or None."""
        with self._lock:
            cfg = self._config
            self._counters.requests[action] += 1
            if not cfg.applies_to(action):
                return 0.0, None
            delay = cfg.latency_s + (self._random.uniform(0, cfg.jitter_s) if cfg.jitter_s else 0.0)
            roll = self._random.random()
            fault = None
            if roll < cfg.throttle_ratio:
                fault = "throttle"
                self._counters.throttled[action] += 1
            elif roll < cfg.throttle_ratio + cfg.error_ratio:
                fault = "error"
                self._counters.errors[action] += 1
            return delay, fault

    def _proxy(self, handler: _Handler, body: bytes) -> None:
        service, protocol, action = describe_request(handler.headers, handler.path, body)
        delay, fault = self._decide(action)
        if delay > 0:
            time.sleep(delay)
        if fault is not None:
            status, ctype, payload = error_response(service, protocol, throttle=fault == "throttle")
            handler.send(status, [("Content-Type", ctype), ("x-amzn-RequestId", _request_id())], payload)
            return
        try:
            status, headers, payload = self._forward(handler, body)
        except (OSError, http.client.HTTPException) as exc:
            with self._lock:
                self._counters.upstream_failures[action] += 1
            message = f"upstream {self.upstream_url} failed: {type(exc).__name__}: {exc}".encode()
            handler.send(502, [("Content-Type", "text/plain")], message)
            return
        with self._lock:
            self._counters.forwarded[action] += 1
        handler.send(status, headers, payload)

    def _close_upstream(self) -> None:
        """Close this handler thread's upstream connection (its client connection ended)."""
        conn: http.client.HTTPConnection | None = getattr(self._local, "upstream", None)
        if conn is not None:
            conn.close()
            self._local.upstream = None

    def _upstream_conn(self, *, fresh: bool) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "upstream", None)
        if conn is None or fresh:
            if conn is not None:
                conn.close()
            conn = http.client.HTTPConnection(*self._upstream, timeout=self.upstream_timeout_s)
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._local.upstream = conn
        return conn

    def _forward(self, handler: _Handler, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers["Content-Length"] = str(len(body))
        for attempt in (0, 1):
            conn = self._upstream_conn(fresh=attempt > 0)
            try:
                conn.request(handler.command, handler.path, body=body, headers=headers)
                response = conn.getresponse()
                payload = response.read()
            except (ConnectionError, http.client.RemoteDisconnected, http.client.CannotSendRequest):
                if attempt:
                    raise
                continue  # a kept-alive upstream connection went stale: once more on a new one
            out = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP and k.lower() != "date"]
            return response.status, out, payload
        raise AssertionError("unreachable")

    def _handle_control(self, method: str, path: str, body: bytes) -> tuple[int, str, bytes]:
        route = path[len(CONTROL_PREFIX) :].split("?", 1)[0].strip("/")
        try:
            if route == "config" and method == "GET":
                result: Any = self.config.to_json()
            elif route == "config" and method == "POST":
                result = self.configure(**_config_args(json.loads(body or b"{}"))).to_json()
            elif route == "config" and method == "DELETE":
                result = self.reset_faults().to_json()
            elif route == "stats" and method == "GET":
                result = self.stats()
            elif route == "reset" and method == "POST":
                self.reset_counts()
                result = {"reset": True}
            else:
                return 404, "application/json", b'{"error": "unknown control route"}'
        except (ValueError, TypeError) as exc:
            return 400, "application/json", json.dumps({"error": str(exc)}).encode()
        return 200, "application/json", json.dumps(result).encode()


_CONFIG_KEYS = frozenset(
    {"latency_s", "jitter_s", "throttle_ratio", "error_ratio", "refuse", "refuse_for_s", "actions"}
)


def _config_args(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError("config must be a JSON object")
    unknown = set(data) - _CONFIG_KEYS
    if unknown:
        raise ValueError(f"unknown config keys: {', '.join(sorted(unknown))}")
    return dict(data)


class ProxyControl:
    """Client of a proxy's control API (``AwsFaultProxy.control_url``, or its ``endpoint_url``).

    A rejected change (unknown key, ratio out of range) raises ValueError.
    """

    def __init__(self, url: str, *, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def _call(self, method: str, route: str, payload: Any = None) -> Any:
        data = json.dumps(payload).encode() if payload is not None else (b"" if method != "GET" else None)
        request = urllib.request.Request(
            self.url + CONTROL_PREFIX + route,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                detail = exc.read().decode("utf-8", "replace")
            raise ValueError(f"proxy control {method} {route}: {exc.code} {detail}") from None

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Same keywords as AwsFaultProxy.configure; returns the new configuration."""
        if "actions" in changes and changes["actions"] is not None:
            changes["actions"] = sorted(changes["actions"])
        result: dict[str, Any] = self._call("POST", "config", changes)
        return result

    def config(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "config")
        return result

    def reset_faults(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("DELETE", "config")
        return result

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "stats")
        return result

    def counts(self) -> dict[str, int]:
        return dict(self.stats()["requests"])

    def reset_counts(self) -> None:
        self._call("POST", "reset")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox.awsproxy", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--upstream", required=True, help="the AWS endpoint to forward to (a moto server)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--control-port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    proxy = AwsFaultProxy(
        args.upstream, host=args.host, port=args.port, control_port=args.control_port, seed=args.seed
    ).start()
    proxy.configure(latency_s=args.latency)
    print(json.dumps({"endpoint_url": proxy.endpoint_url, "control_url": proxy.control_url}), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    proxy.stop()


if __name__ == "__main__":
    main()
