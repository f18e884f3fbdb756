"""moto in server mode in a subprocess: the simulated AWS of every local stack.

``MotoServer`` is the one starter the demo, the benchmarks and the test
fixtures use. It runs ``python -m sandbox.moto_server``, which is moto's own
server (``python -m moto.server``: the same WSGI app, werkzeug, one thread per
connection) with what a caller asks for on top, all keyword-only:

* ``nice=N``: the server lowers its own CPU priority before it starts (the
  benchmarks: on a 2-core machine the simulated AWS must not take the CPUs the
  measured processes need; real AWS runs elsewhere);
* ``speed_patches=True``: O(1) EC2 tag lookups and a cached request dispatch
  (``sandbox.moto_patches``: same answers, far less CPU on large groups);
* ``serialize_requests=True``: requests are applied one at a time, because
  moto's Auto Scaling model is not thread-safe and otherwise terminates
  instances on its own under concurrent calls (the fault suite relies on it);
* ``log_path``: where its output goes (discarded by default).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from sandbox.processes import DUMMY_CREDENTIAL, free_port, popen_child, stop_process, wait_until_up


def _http(url: str, *, method: str = "GET", timeout_s: float = 2.0) -> int:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        status: int = response.status
        return status


class MotoServer:
    """moto in server mode, in a subprocess (workers in other processes reach it by URL).

    ``with MotoServer() as moto: ... moto.endpoint_url ...``; ``reset()`` clears
    every simulated resource (``POST /moto-api/reset``). The options are listed
    in the module docstring.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        log_path: Path | None = None,
        nice: int = 0,
        speed_patches: bool = False,
        serialize_requests: bool = False,
        start_timeout_s: float = 30.0,
    ) -> None:
        if not 0 <= nice <= 19:
            raise ValueError(f"nice must be 0..19 (a CPU priority the server gives up), got {nice}")
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        self.nice = nice
        self.speed_patches = speed_patches
        self.serialize_requests = serialize_requests
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        """The URL to give boto3 (``endpoint_url=``) or ``AWS_ENDPOINT_URL``."""
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (e.g. to renice it), else None."""
        return None if self._proc is None else self._proc.pid

    def argv(self) -> list[str]:
        """The server's command line."""
        argv = [sys.executable, "-m", "sandbox.moto_server", "-H", self.host, "-p", str(self.port)]
        if self.nice:
            argv += ["--nice", str(self.nice)]
        if self.speed_patches:
            argv.append("--speed-patches")
        if self.serialize_requests:
            argv.append("--serialize-requests")
        return argv

    def answers(self) -> bool:
        """True when the server answers HTTP."""
        try:
            return _http(self.endpoint_url + "/moto-api/data.json", timeout_s=1.0) == 200
        except (OSError, urllib.error.URLError):
            return False

    def start(self) -> MotoServer:
        """Start the server and wait until it answers."""
        if self._proc is not None:
            return self
        env = {**os.environ, "AWS_ACCESS_KEY_ID": DUMMY_CREDENTIAL, "AWS_SECRET_ACCESS_KEY": DUMMY_CREDENTIAL}
        out: IO[Any] | int = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            out = open(self.log_path, "ab")  # the child keeps its own copy
        try:
            self._proc = popen_child(self.argv(), env=env, out=out)
        finally:
            if not isinstance(out, int):
                out.close()
        try:
            wait_until_up(self.answers, timeout_s=self.start_timeout_s, what="moto server", proc=self._proc)
        except BaseException:
            self.stop()
            raise
        return self

    def reset(self) -> None:
        """Forget every simulated resource (all services, all regions)."""
        _http(self.endpoint_url + "/moto-api/reset", method="POST", timeout_s=10.0)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s)."""
        if self._proc is not None:
            stop_process(self._proc, timeout_s=5)
            self._proc = None

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sandbox.moto_server", description=__doc__.splitlines()[0])
    parser.add_argument("-H", "--host", default="127.0.0.1", help="address to bind [127.0.0.1]")
    parser.add_argument("-p", "--port", type=int, required=True, help="port")
    parser.add_argument("--nice", type=int, default=0, choices=range(20), metavar="0..19", help="CPU priority [0]")
    parser.add_argument("--speed-patches", action="store_true", help="O(1) tag lookups, cached dispatch")
    parser.add_argument("--serialize-requests", action="store_true", help="apply one request at a time")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m sandbox.moto_server -p PORT [--nice N] [--speed-patches] [--serialize-requests]``."""
    args = build_parser().parse_args(argv)
    if args.nice:
        os.nice(args.nice)  # before moto starts a thread: every thread inherits it
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import run_simple

    from sandbox import moto_patches

    if args.speed_patches:
        moto_patches.patch_tag_lookup()
        moto_patches.patch_dispatch()
    os.environ.setdefault("MOTO_PORT", str(args.port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app: Any = DomainDispatcherApplication(create_backend_app)
    app.debug = True  # as moto.server's main does
    if args.serialize_requests:
        app = moto_patches.Serialized(app)
    run_simple(args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
