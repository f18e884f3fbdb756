"""The local stack: everything that runs warmpool on one machine without AWS.

Used by ``warmpool demo``, by ``bench/`` and by the test fixtures alike; it
never talks to real AWS (every boto3 client it makes points at a moto server
with dummy credentials).

=================  ===========================================================
module             what is inside
=================  ===========================================================
stack              LocalStack: Redis, moto, the pool worker, aws workers and
                   beat, started and stopped as one (demo, bench, tests)
processes          child processes (own session, never orphaned), their
                   environment, the celery command lines, ProcessGroup,
                   stop_process / kill_process
redis_server       RedisServer (a private redis-server on a free port,
                   restartable), ensure_redis (start one where a URL points)
moto_server        MotoServer: moto in server mode in a subprocess (the
                   simulated AWS), with its options (nice, speed patches,
                   serialised requests); ``python -m sandbox.moto_server``
moto_patches       what those options change inside the moto server process
aws_group          a simulated Auto Scaling Group in moto
awsproxy           an AWS-fidelity proxy in front of moto: latency,
                   throttling, outages, per-action call counts
demo               ``warmpool demo``: the whole stack, a scripted run, a live view
demo_redis         which Redis the demo runs on (private by default) and the
                   only state it may clear on one it did not start
mockaws            ``python -m sandbox.mockaws``: moto seeded with a group (compose)
=================  ===========================================================
"""

from __future__ import annotations

from sandbox.aws_group import create_simulated_group
from sandbox.moto_server import MotoServer
from sandbox.processes import (
    DUMMY_CREDENTIAL,
    ProcessGroup,
    beat_argv,
    free_port,
    kill_process,
    popen_child,
    stack_env,
    stop_process,
    wait_for_workers,
    wait_until_up,
    worker_argv,
)
from sandbox.redis_server import RedisServer, ensure_redis, redis_answers, redis_server_binary
from sandbox.stack import LocalStack, StackUrls, close_backend, make_client_app

__all__ = [
    "DUMMY_CREDENTIAL",
    "LocalStack",
    "MotoServer",
    "ProcessGroup",
    "RedisServer",
    "StackUrls",
    "beat_argv",
    "close_backend",
    "create_simulated_group",
    "ensure_redis",
    "free_port",
    "kill_process",
    "make_client_app",
    "popen_child",
    "redis_answers",
    "redis_server_binary",
    "stack_env",
    "stop_process",
    "wait_for_workers",
    "wait_until_up",
    "worker_argv",
]
