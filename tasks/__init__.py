"""warmpool's worker side: the pool model (pool/), state store (state/), cloud (cloud/) and Celery jobs (worker/).

``celery -A tasks worker -Q pool -P solo`` finds the app as ``tasks.app``. The
app is loaded lazily so that producers can import the pure modules
(tasks.contract, tasks.config) without pulling in the worker.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "app":
        from tasks.worker.app import app

        return app
    raise AttributeError(name)
