"""The local stack: everything that runs warmpool on one machine without AWS.

Used by ``warmpool demo``, by ``bench/`` and by the test fixtures alike; it
never talks to real AWS (every boto3 client it makes points at a moto server
with dummy credentials).

=================  ===========================================================
module             what is inside
=================  ===========================================================
processes          child processes (own session, never orphaned), their
                   environment, the celery command lines, ProcessGroup
redis_server       a Redis for the stack: the one that answers, or a
                   redis-server started on a free port
moto_server        moto in server mode in a subprocess (the simulated AWS)
aws_group          a simulated Auto Scaling Group in moto
awsproxy           an AWS-fidelity proxy in front of moto: latency,
                   throttling, outages, per-action call counts
demo               ``warmpool demo``: the whole stack, a scripted run, a live view
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
    popen_child,
    stack_env,
    terminate,
    wait_for_workers,
    wait_until_up,
    worker_argv,
)
from sandbox.redis_server import ensure_redis, redis_answers

__all__ = [
    "DUMMY_CREDENTIAL",
    "MotoServer",
    "ProcessGroup",
    "beat_argv",
    "create_simulated_group",
    "ensure_redis",
    "free_port",
    "popen_child",
    "redis_answers",
    "stack_env",
    "terminate",
    "wait_for_workers",
    "wait_until_up",
    "worker_argv",
]
