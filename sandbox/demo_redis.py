"""Which Redis ``warmpool demo`` runs on, and what it may clear there.

By default (none of WARMPOOL_BROKER_URL, WARMPOOL_RESULT_BACKEND and
WARMPOOL_REDIS_URL set) the demo runs on a private redis-server of its own on
a free port, so it never meets the Redis on 127.0.0.1:6379 or anyone's data,
and has nothing to clear. Pointed at Redis explicitly, it starts a server
where none answers; a Redis that already answers is someone's, and there the
demo:

* refuses to run while workers are connected to that broker (they would take
  the demo's jobs with another AWS behind them);
* clears the group's pool state and the ``pool``/``aws`` queues only when a
  previous demo left them (the ``demo`` key of tasks/state/keys.py says so),
  and refuses to touch them otherwise. It never flushes a database.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import redis
from celery import Celery

from sandbox.redis_server import ensure_redis
from sandbox.stack import StackUrls
from tasks.contract import AWS_QUEUE, POOL_QUEUE
from tasks.state.keys import PoolKeys, demo_owner_key

REDIS_URL_VARIABLES = ("WARMPOOL_BROKER_URL", "WARMPOOL_RESULT_BACKEND", "WARMPOOL_REDIS_URL")
DEMO_OWNER = "warmpool demo"


class DemoError(Exception):
    """The demo cannot go on (a process died, the pool never became ready, foreign state, ...)."""


def redis_is_explicit(environ: Mapping[str, str] | None = None) -> bool:
    """True when the environment names a broker, result backend or state URL (else the demo's Redis is private)."""
    env = os.environ if environ is None else environ
    return any(env.get(name, "").strip() for name in REDIS_URL_VARIABLES)


def _is_redis(url: str) -> bool:
    return url.startswith(("redis://", "rediss://"))


def redis_servers(urls: StackUrls) -> list[str]:
    """One URL per distinct Redis server among broker, result backend and state store."""
    seen: dict[str, str] = {}
    for url in (urls.broker_url, urls.result_backend, urls.redis_url):
        if _is_redis(url):
            server = url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
            seen.setdefault(server, url)
    return list(seen.values())


def start_missing_redis(
    urls: StackUrls, *, cleanup: contextlib.ExitStack, say: Callable[[str], None], workdir: Path
) -> bool:
    """Start a redis-server wherever a configured URL finds none; True if every Redis in use was started here.

    Each one started is stopped when ``cleanup`` closes.
    """
    started_all = _is_redis(urls.broker_url)
    for url in redis_servers(urls):
        server = ensure_redis(url, log=say, workdir=workdir)
        if server is None:
            started_all = False
        else:
            cleanup.callback(server.close)
    return started_all


def refuse_foreign_workers(app: Celery) -> None:
    """Workers already on this broker would take the demo's jobs with another AWS behind them."""
    replies = app.control.ping(timeout=0.5) or []
    names = sorted(name for reply in replies for name in reply)
    if names:
        raise DemoError(
            f"workers are already connected to {app.conf.broker_url}: {', '.join(names)}. "
            "Stop them (a previous demo?) or point WARMPOOL_BROKER_URL, WARMPOOL_RESULT_BACKEND "
            "and WARMPOOL_REDIS_URL at other databases."
        )


def _queue_keys(app: Celery) -> list[str]:
    """The broker keys that hold the pool and aws queues' jobs, queued and unacknowledged."""
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        # kombu keeps one list per priority step (_q_for_pri names them) and one
        # hash + zset of the jobs delivered but not yet acknowledged.
        keys = [channel._q_for_pri(queue, pri) for queue in (POOL_QUEUE, AWS_QUEUE) for pri in channel.priority_steps]
        return [*dict.fromkeys(keys), channel.unacked_key, channel.unacked_index_key]


def _clear_if_ours(
    client: redis.Redis,
    keys: Iterable[str],
    *,
    ours: bool,
    what: str,
    claim: tuple[str, str] | None = None,
) -> None:
    """Delete ``keys`` if none exists or they are a demo's (``ours``); DemoError naming ``what`` otherwise.

    Race: someone (a worker started after the ping, a producer) writes one of
    them between the check and the delete. The keys are WATCHed, so the
    delete then does not happen and the demo refuses instead of clearing
    another pool's fresh state. ``claim`` (key, value) is set in the same
    transaction.
    """
    keys = list(keys)
    with client.pipeline() as pipe:
        try:
            pipe.watch(*keys, *([claim[0]] if claim else []))  # type: ignore[no-untyped-call]
            found = [key for key in keys if pipe.exists(key)]
            if found and not ours:
                raise DemoError(
                    f"{what} holds data no demo made ({', '.join(found[:5])}); the demo leaves it alone. "
                    "Point WARMPOOL_BROKER_URL, WARMPOOL_RESULT_BACKEND and WARMPOOL_REDIS_URL at other "
                    "databases, set another WARMPOOL_ASG_NAME, or unset them to run on a private Redis."
                )
            pipe.multi()
            if found:
                pipe.delete(*found)
            if claim is not None:
                pipe.set(*claim)
            pipe.execute()
        except redis.WatchError:
            raise DemoError(f"{what} changed while the demo checked it: someone else is using it") from None


def clear_previous_demo(urls: StackUrls, *, asg_name: str, app: Celery) -> None:
    """On a Redis the demo did not start: clear what a previous demo left, refuse to touch anything else."""
    marker = demo_owner_key(asg_name)
    state: redis.Redis = redis.Redis.from_url(urls.redis_url, decode_responses=True)
    try:
        ours = state.get(marker) is not None
        if _is_redis(urls.broker_url):
            broker: redis.Redis = redis.Redis.from_url(urls.broker_url)
            try:
                _clear_if_ours(broker, _queue_keys(app), ours=ours, what=f"the broker's queues at {urls.broker_url}")
            finally:
                broker.close()
        _clear_if_ours(
            state,
            PoolKeys.for_group(asg_name).all(),
            ours=ours,
            what=f"the pool state of group {asg_name} at {urls.redis_url}",
            claim=(marker, DEMO_OWNER),
        )
    finally:
        state.close()
