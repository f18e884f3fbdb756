"""The client library stays light: a backend importing ``producer`` gets no AWS SDK and no worker.

Each check runs in a fresh interpreter, so what another test imported cannot hide a dependency.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

WORKER_ONLY = ("boto3", "botocore", "moto", "fastapi", "uvicorn", "flower")


def _loaded_after(code: str) -> set[str]:
    script = code + "\nimport json, sys\nprint(json.dumps(sorted({n.split('.')[0] for n in sys.modules})))\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60)
    return set(json.loads(out.stdout.splitlines()[-1]))


@pytest.mark.parametrize(
    "code",
    [
        "import producer",
        "from producer import PoolClient",
        "import producer.aio, producer.cli, producer.render, producer.probe",
        # a client that is built and configured (celeryconfig loaded) still needs no AWS SDK
        "from producer import PoolClient\nc = PoolClient()\nc.app.conf.broker_url",
    ],
)
def test_the_client_imports_no_worker_only_library(code: str) -> None:
    # given a backend's use of the client library, when run in a fresh interpreter
    loaded = _loaded_after(code)
    # expect none of the worker's (or the optional extras') libraries to be imported
    assert not loaded & set(WORKER_ONLY), f"{code!r} pulls in {sorted(loaded & set(WORKER_ONLY))}"


def test_the_check_sees_an_aws_import() -> None:
    # given the worker's cloud adapter, expect the check to notice boto3 (so the test above can fail)
    assert "boto3" in _loaded_after("import tasks.cloud.boto3_cloud")
