"""Give a restarted pool worker back the jobs its killed predecessor had taken (Redis broker).

With the Redis broker a message a worker has taken but not acknowledged
(``acks_late``: every pool job until it finished) sits in kombu's ``unacked``
hash and returns to its queue only once the visibility timeout has passed
(``WARMPOOL_VISIBILITY_TIMEOUT_S``, 300 s by default). A pool worker killed
and restarted within seconds would leave its callers waiting for minutes,
past their deadlines.

A pool queue has one owner, so when a pool worker starts, every pool-queue
message that was taken before it started belongs to a worker that is gone,
or to a second pool worker started by mistake. Both are safe to deliver
again at once: every pool job is idempotent (docs/design.md, invariants 5
and 6), so a duplicate costs a little work and nothing else. Messages of other
queues (``aws``, whose workers are many) are left to the visibility timeout.

RabbitMQ needs none of this: it redelivers a dead consumer's messages itself.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from celery import Celery

log = logging.getLogger("warmpool.pool")


def restore_orphaned_jobs(app: Celery, queues: Iterable[str], *, taken_before: float) -> list[str]:
    """Put back on their queues the unacknowledged messages of ``queues`` taken before ``taken_before``.

    Returns the restored messages' task ids. A no-op on brokers other than Redis.
    """
    wanted = set(queues)
    restored: list[str] = []
    with app.connection_for_write() as conn:
        channel: Any = conn.default_channel
        qos: Any = getattr(channel, "qos", None)
        if not wanted or not hasattr(qos, "restore_by_tag") or not hasattr(channel, "unacked_index_key"):
            return restored  # not kombu's Redis transport
        client = channel.client
        for tag in client.zrangebyscore(channel.unacked_index_key, "-inf", taken_before):
            task_id = _orphan_of(client.hget(channel.unacked_key, tag), wanted)
            if task_id is None:
                continue
            # restore_by_tag moves the message back under WATCH: a worker that
            # acknowledges it meanwhile wins, and nothing is delivered twice by us.
            qos.restore_by_tag(tag, client)
            restored.append(task_id)
    if restored:
        log.warning(
            "jobs of a previous pool worker delivered again", extra={"count": len(restored), "task_ids": restored[:20]}
        )
    return restored


def _orphan_of(raw: Any, queues: set[str]) -> str | None:
    """The task id of an unacked entry whose routing key is one of ``queues`` (None otherwise)."""
    if not raw:
        return None
    try:
        payload, _exchange, routing_key = json.loads(raw)
        headers = payload.get("headers") or {}
    except (TypeError, ValueError, AttributeError):
        return None  # not a message of ours: left to the visibility timeout
    if routing_key not in queues:
        return None
    return str(headers.get("id") or "?")
