"""The Celery side: the app, the thin jobs, and the sink that turns side effects into messages.

==============  ===============================================================
module          what is inside
==============  ===============================================================
app             the Celery app (``celery -A tasks``) and the per-process
                runtime: settings, store, cloud, service
pool_jobs       jobs of the ``pool`` queue (assign, release, touch, status,
                rebalance, mark_ready, apply_snapshot): decode, call the
                service, map errors to results
aws_jobs        jobs of the ``aws`` queue (refresh, tag, terminate,
                set_desired, probe): idempotent, retried on throttling
side_effects    CelerySideEffects (messages, held until a job's answer is
                stored) and RecordingSideEffects (tests)
batching        sharing one AWS call between concurrent jobs; one refresh at
                a time per group
logs            JSON log lines of the workers
==============  ===============================================================
"""
