"""Raw Celery protocol 2 messages for the fault suites that feed workers what no client would send."""

from __future__ import annotations

import uuid
from typing import Any

DROP = object()  # a header value that removes the header
EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def headers_for(task: Any, **changes: Any) -> dict[str, Any]:
    """Celery protocol 2 headers for ``task``; ``changes`` override them (``None``-valued keys removed)."""
    task_id = str(uuid.uuid4())
    headers: dict[str, Any] = {
        "lang": "py",
        "task": task,
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "eta": None,
        "expires": None,
        "timelimit": [None, None],
        "argsrepr": "",
        "kwargsrepr": "",
        "origin": "faults@tests",
    }
    for key, value in changes.items():
        if value is DROP:
            headers.pop(key, None)
        else:
            headers[key] = value
    return headers


DROP = object()
EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
