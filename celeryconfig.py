"""Every Celery setting of warmpool, read from the environment (docs/design.md).

Imported by the worker app (tasks) and the producers alike, so both sides
agree on broker, backend, serializer and routing.
"""

from __future__ import annotations

from tasks.pools import load_deployment
from tasks.routing import job_router

# A bad setting raises ConfigError here, one line per problem. Under
# `celery -A tasks ...` the check in tasks/__init__.py has already turned it
# into those lines and exit 2; a producer (PoolClient) gets the exception.
_deployment = load_deployment()
_settings = _deployment.settings

broker_url = _settings.broker_url
result_backend = _settings.result_backend

# JSON only: a pickle payload on the queue is refused, never deserialized.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# Each pool's jobs go to its own queue (pool.<name>), consumed by that pool's
# single serialized worker; AWS side effects (and the refresh, which reads AWS)
# go to "aws", where any number of workers serve every pool (tasks/routing.py).
task_default_queue = "pool"
task_routes = (job_router(_deployment),)

# A job is acknowledged only after it ran: a killed worker's job is delivered
# again (every job is idempotent), never lost.
# Each worker also consumes a queue of its own (<name>.dq2): the liveness probe
# (python -m producer.probe --worker NAME) sends a job there, which proves the
# worker still consumes, not merely that it answers broadcast pings.
worker_direct = True

task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 4
broker_transport_options = {
    "visibility_timeout": _settings.visibility_timeout_s,
    # kombu looks for jobs of dead workers only every ~100 s by default; look
    # often enough that a killed worker's job returns close to the timeout.
    "unacked_restore_interval": max(1, _settings.visibility_timeout_s // 4),
    "unacked_restore_throttle": 1,
    # The restore scan holds a Redis lock for milliseconds; kombu lets it live
    # 300 s, so a worker killed while holding it stopped every redelivery for
    # five minutes. Let it expire after one restore interval.
    "unacked_mutex_expire": max(1, _settings.visibility_timeout_s // 4),
}
# A sentinel:// broker or result backend (Redis with Sentinel failover) names the master the Sentinels watch.
if _settings.broker_url.startswith("sentinel://"):
    broker_transport_options["master_name"] = _settings.sentinel_master
if _settings.result_backend.startswith("sentinel://"):
    result_backend_transport_options = {"master_name": _settings.sentinel_master}
broker_connection_retry_on_startup = True
broker_connection_max_retries = None  # keep reconnecting after a broker restart
result_expires = 3600
# A result the worker cannot store (the result Redis restarting) is retried, at most 0.5 s
# apart, for about a minute: once Redis is back the waiting caller gets its answer within
# half a second. Celery's default back-off grows to 10 s between tries, which let an answer
# land after its caller's deadline although Redis had been back for seconds.
result_backend_always_retry = True
result_backend_base_sleep_between_retries_ms = 10
result_backend_max_sleep_between_retries_ms = 500
result_backend_max_retries = 120
redis_backend_health_check_interval = 30
worker_cancel_long_running_tasks_on_connection_loss = True
task_time_limit = 120
task_soft_time_limit = 100

timezone = "UTC"
enable_utc = True

# One refresh per pool, each on its own interval; a worker of another group refuses it.
beat_schedule = {
    f"refresh:{pool.name}": {
        "task": "warmpool.refresh",
        "schedule": pool.settings.refresh_seconds,
        "kwargs": pool.job_kwargs(),
        # A refresh that waited longer than one interval is superseded by the next.
        "options": {"queue": pool.aws_queue, "expires": max(1.0, pool.settings.refresh_seconds)},
    }
    for pool in _deployment
}
