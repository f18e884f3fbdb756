"""Structured logs: JSON lines when not on a terminal, and one line per job.

Each job logs once when it ends: task, project, instance, outcome and
duration. Celery's own per-task lines (which print whole results) are turned
down. Nothing here logs arguments wholesale, so credentials never reach logs.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from celery.signals import after_setup_logger, task_postrun, task_prerun

# LogRecord attributes that are not "extra" fields.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_started: dict[str, float] = {}
job_log = logging.getLogger("warmpool.job")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message and the record's extra fields."""

    converter = staticmethod(time.gmtime)

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                payload[key] = value if isinstance(value, str | int | float | bool | type(None)) else str(value)
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload)


def job_fields(task_name: str, args: Any, result: Any) -> dict[str, Any]:
    """The fields of a job's log line, from its name, arguments and result."""
    fields: dict[str, Any] = {"task": task_name}
    if task_name in ("warmpool.assign", "warmpool.release", "warmpool.touch") and args:
        fields["project_id"] = str(args[0])[:130]
    if isinstance(result, dict):
        fields["outcome"] = result.get("code") or result.get("status") or ("ok" if result else "")
        if result.get("instance_id"):
            fields["instance_id"] = result["instance_id"]
    elif isinstance(result, BaseException):
        fields["outcome"] = type(result).__name__
    elif isinstance(result, bool):
        fields["outcome"] = "done" if result else "nothing to do"
    if task_name == "warmpool.aws.terminate" and args:
        fields["instance_id"] = str(args[0])[:32]
    if task_name == "warmpool.aws.tag" and args and isinstance(args[0], list):
        fields["instances"] = len(args[0])
    return fields


@task_prerun.connect
def _job_started(task_id: str | None = None, **_: Any) -> None:
    if task_id:
        _started[task_id] = time.perf_counter()


@task_postrun.connect
def _job_finished(
    task_id: str | None = None, task: Any = None, args: Any = None, retval: Any = None, state: str = "", **_: Any
) -> None:
    began = _started.pop(task_id or "", None)
    fields = job_fields(getattr(task, "name", "?"), args, retval)
    fields["state"] = state
    if began is not None:
        fields["duration_ms"] = round((time.perf_counter() - began) * 1000, 3)
    job_log.info("job done", extra=fields)


@after_setup_logger.connect
def _configure(logger: logging.Logger | None = None, **_: Any) -> None:
    if logger is not None and not sys.stderr.isatty():
        for handler in logger.handlers:
            handler.setFormatter(JsonFormatter())
    # Celery's "Task ... succeeded in ...: <whole result>" duplicates our job line.
    logging.getLogger("celery.app.trace").setLevel(logging.WARNING)
    logging.getLogger("celery.worker.strategy").setLevel(logging.WARNING)
