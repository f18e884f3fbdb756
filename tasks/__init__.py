"""warmpool's worker side: the pool model (pool/), state store (state/), cloud (cloud/) and Celery jobs (worker/).

``celery -A tasks worker -Q pool -P solo`` finds the app as ``tasks.app``. The
app is loaded lazily so that producers can import the pure modules
(tasks.contract, tasks.config) without pulling in the worker.
"""

from __future__ import annotations

from typing import Any


def _exit_on_bad_settings() -> None:
    """Before the app loads: bad settings end ``celery -A tasks ...`` with one line each and exit 2.

    Celery imports celeryconfig lazily, deep inside its own option parsing, so a
    ConfigError raised there would surface as a traceback; this check runs first.
    SystemExit is not an Exception: Celery's app loader lets it through.
    """
    from tasks.pools import deployment_or_exit

    deployment_or_exit()


def __getattr__(name: str) -> Any:
    if name == "app":
        _exit_on_bad_settings()
        from tasks.worker.app import app

        return app
    raise AttributeError(name)
