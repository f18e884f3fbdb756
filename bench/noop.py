"""The floor: a no-op Celery task on warmpool's broker and result backend.

Same settings as the pool worker (``celeryconfig``: JSON, acks late, prefetch,
result backend; ``tasks.worker.logs``: one JSON log line per job), its own queue, run
by its own solo worker::

    celery -A bench.noop worker -Q bench-noop -P solo

Whatever a round trip of this task costs is the least a pool job can cost.
"""

from __future__ import annotations

from celery import Celery

NOOP_QUEUE = "bench-noop"
NOOP_TASK = "bench.noop"

app = Celery("bench-noop")
app.config_from_object("celeryconfig")
app.conf.task_default_queue = NOOP_QUEUE
app.conf.task_routes = {NOOP_TASK: {"queue": NOOP_QUEUE}}
app.conf.beat_schedule = {}
app.conf.include = ["tasks.worker.logs"]  # the pool worker's logging: one "job done" line per job


@app.task(name=NOOP_TASK)
def noop(**_: object) -> None:
    """Does nothing (the pool and group every client job names included); its result (None) is stored."""
    return None
