"""screen(): what a worker refuses before Celery builds a job, and what it lets through."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kombu.message import Message

import tasks.worker.aws_jobs  # noqa: F401  (registers the jobs)
import tasks.worker.pool_jobs  # noqa: F401
from tasks.contract import (
    REFUSED_BAD_BODY,
    REFUSED_BAD_HEADERS,
    REFUSED_CONTENT_TYPE,
    REFUSED_TOO_LARGE,
    REFUSED_UNKNOWN_TASK,
    TASK_ASSIGN,
)
from tasks.worker.app import app
from tasks.worker.screening import MAX_MESSAGE_BYTES, Refusal, dead_letter, screen

EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def message(
    body: Any = None, *, content_type: str = "application/json", raw: bytes | None = None, **headers: Any
) -> Message:
    base: dict[str, Any] = {"task": TASK_ASSIGN, "id": str(uuid.uuid4()), "timelimit": [None, None], "retries": 0}
    base.update(headers)
    payload = raw if raw is not None else json.dumps([["p-1"], {}, EMBED] if body is None else body).encode()
    msg = Message(
        body=payload,
        content_type=content_type,
        content_encoding="utf-8",
        headers={k: v for k, v in base.items() if v is not DROP},
        delivery_info={"routing_key": "pool"},
    )
    msg.accept = {"application/json"}
    return msg


DROP = object()


def refusal(msg: Message) -> Refusal | None:
    return screen(msg, known=app.tasks, tasks=app.tasks)


def test_a_well_formed_job_passes() -> None:
    eta = (datetime.now(UTC) + timedelta(seconds=30)).isoformat()
    assert refusal(message()) is None
    assert refusal(message(eta=eta, expires=eta, root_id="r", parent_id=None)) is None
    assert refusal(message([["p-1"], {"wait_s": 5, "lease_s": None}, None])) is None


@pytest.mark.parametrize(
    ("msg", "reason", "words"),
    [
        (message(task="warmpool.nope", id=DROP), REFUSED_UNKNOWN_TASK, "unknown task"),
        (message(id=DROP), REFUSED_BAD_HEADERS, "'id'"),
        (message(id=7), REFUSED_BAD_HEADERS, "'id'"),
        (message(id="x" * 256), REFUSED_BAD_HEADERS, "'id'"),
        (message(task=DROP), REFUSED_BAD_HEADERS, "protocol 2"),
        (message(task=["x"]), REFUSED_BAD_HEADERS, "'task'"),
        (message(timelimit="soon"), REFUSED_BAD_HEADERS, "timelimit"),
        (message(timelimit=[1, 2, 3]), REFUSED_BAD_HEADERS, "timelimit"),
        (message(timelimit=[float("nan"), None]), REFUSED_BAD_HEADERS, "timelimit"),
        (message(retries=-1), REFUSED_BAD_HEADERS, "retries"),
        (message(retries=True), REFUSED_BAD_HEADERS, "retries"),
        (message(eta="yesterday"), REFUSED_BAD_HEADERS, "eta"),
        (message(eta="2999-01-01T00:00:00"), REFUSED_BAD_HEADERS, "ahead"),
        (message(expires=5), REFUSED_BAD_HEADERS, "expires"),
        (message(shadow={"x": 1}), REFUSED_BAD_HEADERS, "shadow"),
        (message(stamps=[1]), REFUSED_BAD_HEADERS, "stamps"),
        (message(content_type="application/x-python-serialize"), REFUSED_CONTENT_TYPE, "Refusing to deserialize"),
        (message(raw=b"x" * (MAX_MESSAGE_BYTES + 1)), REFUSED_TOO_LARGE, "limit"),
        (message(raw=b"\xff{not json"), REFUSED_BAD_BODY, "undecodable"),
        (message({"args": []}), REFUSED_BAD_BODY, "[args, kwargs, embed]"),
        (message([["p-1"], {}]), REFUSED_BAD_BODY, "[args, kwargs, embed]"),
        (message(["p-1", {}, None]), REFUSED_BAD_BODY, "args"),
        (message([[], ["p-1"], None]), REFUSED_BAD_BODY, "kwargs"),
        (message([[], {}, None]), REFUSED_BAD_BODY, "arguments do not fit"),
        (message([["a", 1, 2, 3, 4, 5]], raw=None), REFUSED_BAD_BODY, "[args, kwargs, embed]"),
        (message([["p-1"], {"nope": 1}, None]), REFUSED_BAD_BODY, "arguments do not fit"),
        (message([["p-1"], {}, {**EMBED, "chain": [{"task": "x"}]}]), REFUSED_BAD_BODY, "workflow"),
    ],
)
def test_each_malformed_message_is_refused_with_its_reason(msg: Message, reason: str, words: str) -> None:
    found = refusal(msg)
    assert found is not None and found.reason == reason, found
    assert words in found.detail


def test_a_dead_letter_keeps_excerpts_only() -> None:
    msg = message(raw=b"y" * (MAX_MESSAGE_BYTES + 1))
    found = refusal(msg)
    assert found is not None
    letter = dead_letter(msg, found, worker="pool@test", now=1.0)
    assert letter.queue == "pool" and letter.task == TASK_ASSIGN and letter.size_bytes == MAX_MESSAGE_BYTES + 1
    assert len(letter.body) <= 1000 and len(letter.headers) <= 1000
