"""A simulated AWS for the compose stack: a moto server seeded with the pools' Auto Scaling Groups.

    python -m sandbox.mockaws --host 0.0.0.0 --port 5000 --instances 4 --max-size 10 [--group NAME]...

Starts moto in server mode in this process, creates each ``--group`` (default
``WARMPOOL_ASG_NAME``) in ``AWS_REGION`` with sandbox.aws_group's
``create_simulated_group`` (idempotent: a VPC, a subnet that maps public IPs, a
launch template, the group), and serves until SIGTERM or Ctrl-C. Workers reach
it through ``AWS_ENDPOINT_URL``. It only ever talks to its own server, with
dummy credentials: it cannot touch a real AWS account.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from collections.abc import Sequence

from tasks.config import DEFAULT_ASG_NAME, DEFAULT_REGION


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sandbox.mockaws", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind [127.0.0.1]")
    parser.add_argument("--port", type=int, default=5000, help="port [5000]")
    parser.add_argument("--instances", type=int, default=4, help="initial desired capacity [4]")
    parser.add_argument("--min-size", type=int, default=0, help="MinSize [0]")
    parser.add_argument("--max-size", type=int, default=10, help="MaxSize [10]")
    parser.add_argument(
        "--group",
        action="append",
        metavar="NAME",
        help="a group to create, each alike (repeatable; one pool's each) [WARMPOOL_ASG_NAME]",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if not 0 <= args.min_size <= args.instances <= args.max_size:
        raise SystemExit("need 0 <= --min-size <= --instances <= --max-size")
    from moto.server import ThreadedMotoServer

    from sandbox.aws_group import create_simulated_group

    server = ThreadedMotoServer(ip_address=args.host, port=args.port, verbose=False)
    server.start()
    local = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    try:
        region = (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION).strip()
        names = args.group or [os.environ.get("WARMPOOL_ASG_NAME", "").strip() or DEFAULT_ASG_NAME]
        for name in dict.fromkeys(names):
            group = create_simulated_group(
                f"http://{local}:{args.port}",
                name=name,
                region=region,
                min_size=args.min_size,
                max_size=args.max_size,
                desired=args.instances,
            )
            print(
                f"moto serving on {args.host}:{args.port}: group {group['asg_name']} in {group['region']} "
                f"with {len(group['instance_ids'])} instances",
                flush=True,
            )
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
