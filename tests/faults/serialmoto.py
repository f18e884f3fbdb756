"""A moto server that applies one request at a time: ``python tests/faults/serialmoto.py -H HOST -p PORT``.

moto's in-memory Auto Scaling model is not thread-safe. Under concurrent
``TerminateInstanceInAutoScalingGroup`` / ``SetDesiredCapacity`` calls (several
aws worker threads) two requests rebuild a group's instance list from the same
old copy; moto then "repairs" the count by terminating unprotected instances
of its choosing, which looks exactly like warmpool terminating assigned
machines. Real Auto Scaling is consistent per group, so the fault suite runs
moto behind one lock: connections are still served by many threads, requests
are applied in turn.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple


class Serialized:
    """A WSGI app that runs ``app`` under one lock, response body included."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with self.lock:
            return list(self.app(environ, start_response))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    args = parser.parse_args()
    os.environ.setdefault("MOTO_PORT", str(args.port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(args.host, args.port, Serialized(app), threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
