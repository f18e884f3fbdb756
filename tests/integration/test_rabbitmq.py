"""RabbitMQ as the broker (Redis stays result backend and state store).

Runs in a virtual host of its own, so concurrent runs never share queues.
Skipped where no RabbitMQ answers on 127.0.0.1:5672 or rabbitmqctl is
missing: Redis is the default broker and the rest of the suite covers it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from tests.integration.conftest import IDLE_TARGET, Stack, running_stack, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(120)]


def rabbitmq_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def vhost() -> Iterator[str]:
    if not (rabbitmq_answers() and shutil.which("rabbitmqctl")):
        pytest.skip("no RabbitMQ on 127.0.0.1:5672 (or no rabbitmqctl to make a vhost)")
    name = f"warmpool-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["rabbitmqctl", "add_vhost", name], check=True, capture_output=True, timeout=60)
    subprocess.run(
        ["rabbitmqctl", "set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    yield name
    subprocess.run(["rabbitmqctl", "delete_vhost", name], capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory, vhost: str) -> Iterator[Stack]:
    broker = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    with running_stack(tmp_path_factory.mktemp("rabbit-logs"), broker_url=broker) as stack:
        wait_for(lambda: stack.idle_count() == IDLE_TARGET, what="the idle buffer to fill")
        yield stack


def test_assign_wait_and_release_work_over_rabbitmq(rabbit: Stack) -> None:
    # given the stack on a RabbitMQ broker, with IDLE_TARGET idle machines
    projects = [f"rmq-{i}" for i in range(IDLE_TARGET + 1)]

    # when more projects ask than are idle, the last one willing to wait
    machines = [rabbit.client.assign(p, wait=20) for p in projects]

    # expect distinct machines (the last one after a scale-up), the same one again, and releases
    assert len({m.instance_id for m in machines}) == len(projects)
    assert rabbit.client.assign(projects[0]).instance_id == machines[0].instance_id
    assert rabbit.client.release(projects[0]) is True
    assert rabbit.client.release(projects[0]) is False
    wait_for(lambda: rabbit.idle_count() == IDLE_TARGET, what="the buffer to refill")
