"""The pool model and its use cases: pure Python, no Redis, no boto3, no Celery.

=============  ================================================================
module         what is inside
=============  ================================================================
model          machine states and transitions, what AWS reports, which idle
               machine to hand out or terminate
planner        capacity planning: desired capacity and the scale-in victims
reconcile      folding one refresh snapshot of the group into the pool state
ports          the interfaces the service uses (StateStore, Cloud,
               SideEffects) and the types that cross them
service        the use cases: assign, release, touch, refresh, rebalance
status         the pool snapshot behind ``warmpool status`` and ``GET /v1/pool``
=============  ================================================================

tests/unit/test_layers.py fails if anything here imports ``redis``,
``boto3``, ``botocore`` or ``celery``, directly or through another module.
"""
