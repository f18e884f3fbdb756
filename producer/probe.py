"""Container healthchecks that need nothing but Python (the image has no curl).

    python -m producer.probe http://127.0.0.1:8000/healthz
    python -m producer.probe --flower-auth http://127.0.0.1:5555/flower/healthcheck
    python -m producer.probe --pidfile /tmp/celerybeat.pid

Exit status 0 when healthy (an HTTP 2xx answer within the timeout, or the
pidfile's process is alive), 1 otherwise, with one line on stderr saying why.
Credentials come from the environment, never from the command line.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

from tasks.config import Settings
from tasks.errors import ConfigError


def check_http(url: str, *, timeout_s: float, flower_auth: bool) -> str | None:
    """None when ``url`` answers 2xx, else the reason."""
    if not url.startswith(("http://", "https://")):
        return f"not an http(s) URL: {url}"
    request = urllib.request.Request(url)  # noqa: S310 - scheme checked above
    if flower_auth:
        try:
            settings = Settings.from_env()  # the password may come from WARMPOOL_FLOWER_PASSWORD_FILE
        except ConfigError as exc:
            return f"bad settings: {exc}"
        user, password = settings.flower_user, settings.flower_password
        if user and password:
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        return f"{url} answered {exc.code}"
    except (OSError, ValueError) as exc:
        return f"{url} did not answer: {exc}"
    return None if 200 <= status < 300 else f"{url} answered {status}"


def check_pidfile(path: str) -> str | None:
    """None when the process named in ``path`` is alive."""
    try:
        with open(path, encoding="ascii") as fh:
            pid = int(fh.read().strip())
    except (OSError, ValueError) as exc:
        return f"no usable pidfile {path}: {exc}"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"process {pid} from {path} is gone"
    except PermissionError:
        return None  # alive, owned by someone else
    return None


def check_worker(name: str, *, timeout_s: float) -> str | None:
    """None when worker ``name`` runs a job sent to its own queue within ``timeout_s``."""
    from celery.utils.nodenames import worker_direct

    from producer.client import make_app
    from tasks.contract import TASK_PING

    app = make_app()
    try:
        result = app.send_task(TASK_PING, queue=worker_direct(name), expires=timeout_s)
        answer = result.get(timeout=timeout_s)
    except Exception as exc:  # timeout, broker or backend down: all mean "not live"
        return f"worker {name} did not run a job within {timeout_s:.1f}s ({type(exc).__name__}: {exc})"
    return None if answer == "pong" else f"worker {name} answered {answer!r}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m producer.probe", description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", help="URL that must answer 2xx")
    parser.add_argument("--pidfile", help="pidfile whose process must be alive")
    parser.add_argument("--worker", help="Celery worker name (pool@host) that must run a job from its own queue")
    parser.add_argument("--timeout", type=float, default=5.0, help="HTTP timeout in seconds [5]")
    parser.add_argument(
        "--flower-auth",
        action="store_true",
        help="send basic auth from the WARMPOOL_FLOWER_* settings",
    )
    args = parser.parse_args(argv)
    if not args.url and not args.pidfile and not args.worker:
        parser.error("give a URL, --pidfile or --worker")
    problems = []
    if args.url:
        problems.append(check_http(args.url, timeout_s=args.timeout, flower_auth=args.flower_auth))
    if args.pidfile:
        problems.append(check_pidfile(args.pidfile))
    if args.worker:
        problems.append(check_worker(args.worker, timeout_s=args.timeout))
    failed = [p for p in problems if p]
    for problem in failed:
        print(problem, file=sys.stderr)
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
