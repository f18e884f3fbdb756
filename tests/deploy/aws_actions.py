"""pytest plugin: records every AWS action that warmpool's own code makes, for the IAM policy test.

    WARMPOOL_AWS_ACTIONS_FILE=/tmp/actions.txt python -m pytest -p tests.deploy.aws_actions tests/contract

Every ``Boto3Cloud`` built during the session gets a botocore ``before-parameter-build``
hook on its clients (an event every handler sees, so a botocore Stubber answering the call
does not hide it). A call counts only when a frame of the product's own packages (``tasks/``,
``producer/``) is on the stack: tests hand Boto3Cloud the clients they also use to build
groups in moto, and those set-up calls are not warmpool's. At the end of the session the
actions (``service:Action``, IAM's spelling) are written to ``WARMPOOL_AWS_ACTIONS_FILE``,
one per line, sorted.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tasks.cloud import boto3_cloud

ROOT = Path(__file__).resolve().parents[2]
PRODUCT_DIRS = tuple(str(ROOT / name) + os.sep for name in ("tasks", "producer"))
ENV_FILE = "WARMPOOL_AWS_ACTIONS_FILE"

_seen: set[str] = set()
_lock = threading.Lock()


def called_from_product() -> bool:
    """Whether a frame of warmpool's own code (not a test, not botocore) is on the stack."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename.startswith(PRODUCT_DIRS):
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def _record(model: Any = None, **_: Any) -> None:
    if model is None or not called_from_product():
        return
    action = f"{model.service_model.signing_name}:{model.name}"
    with _lock:
        _seen.add(action)


def _hooked(init: Callable[..., None]) -> Callable[..., None]:
    def __init__(self: boto3_cloud.Boto3Cloud, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        clients = (self._asg, self._ec2, self._asg_reads, self._ec2_reads)
        for client in {id(c): c for c in clients}.values():
            # unique_id: a client shared by several Boto3Clouds records each call once
            client.meta.events.register("before-parameter-build", _record, unique_id="warmpool-iam-actions")

    return __init__


def pytest_configure(config: pytest.Config) -> None:
    original = boto3_cloud.Boto3Cloud.__init__
    boto3_cloud.Boto3Cloud.__init__ = _hooked(original)  # type: ignore[method-assign]
    config.stash[_ORIGINAL] = original


def pytest_unconfigure(config: pytest.Config) -> None:
    boto3_cloud.Boto3Cloud.__init__ = config.stash[_ORIGINAL]  # type: ignore[method-assign]
    target = os.environ.get(ENV_FILE)
    if target:
        with _lock:
            Path(target).write_text("".join(f"{a}\n" for a in sorted(_seen)))


_ORIGINAL = pytest.StashKey[Callable[..., None]]()
