"""The gateway's logger and log setup: JSON lines off a terminal (tasks.worker.logs.JsonFormatter)."""

from __future__ import annotations

import json
import logging
import sys

from tasks.worker import logs as task_logs

log = logging.getLogger("warmpool.gateway")


class JsonFormatter(task_logs.JsonFormatter):
    """The workers' JSON lines in the gateway's shape.

    The gateway's lines have always named the text ``message`` (the workers':
    ``msg``) and carried no ``Z`` on the timestamp; uvicorn's ``color_message``
    (the message again, with terminal colours) is left out.
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as one JSON object."""
        if "color_message" in vars(record):
            record = logging.makeLogRecord({k: v for k, v in vars(record).items() if k != "color_message"})
        line = json.loads(super().format(record))
        line["ts"] = line["ts"].removesuffix("Z")
        return json.dumps({("message" if key == "msg" else key): value for key, value in line.items()})


def configure_logging(level: str = "info") -> None:
    """JSON lines when stderr is not a terminal, plain text on a terminal."""
    handler = logging.StreamHandler(sys.stderr)
    if sys.stderr.isatty():
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
