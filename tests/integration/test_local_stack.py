"""sandbox's local-stack pieces as the demo, bench and fixtures use them: real redis-server and moto processes."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from sandbox import LocalStack, MotoServer, RedisServer, create_simulated_group, redis_answers
from tests.stacks import require_redis_server

pytestmark = [pytest.mark.integration]


def test_a_moto_server_with_every_option_serves_and_gives_up_cpu(tmp_path: Path) -> None:
    # given the benchmarks' and the fault suite's options together
    with MotoServer(log_path=tmp_path / "moto.log", nice=7, speed_patches=True, serialize_requests=True) as moto:
        assert moto.pid is not None
        # expect it to run at the priority asked for, and to serve a simulated group
        assert os.getpriority(os.PRIO_PROCESS, moto.pid) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 7)
        group = create_simulated_group(moto.endpoint_url, name="options-asg", desired=2)
        assert len(group["instance_ids"]) == 2
        moto.reset()
        assert create_simulated_group(moto.endpoint_url, name="options-asg", desired=0)["instance_ids"] == []
    assert not moto.answers()


def test_a_moto_server_refuses_a_priority_it_cannot_take() -> None:
    with pytest.raises(ValueError, match="nice must be 0..19"):
        MotoServer(nice=20)


def test_a_persistent_redis_server_keeps_its_data_over_a_crash_and_a_plain_one_does_not(tmp_path: Path) -> None:
    require_redis_server()
    with RedisServer(workdir=tmp_path, name="kept", persistent=True) as kept, RedisServer(name="lost") as lost:
        for server in (kept, lost):
            with contextlib.closing(server.client()) as r:
                r.set("k", "v")
        ports = kept.port, lost.port
        # when both crash (SIGKILL) and start again
        kept.restart(kill=True)
        lost.restart(kill=True)
        # expect the same ports, the data only where it was persisted
        assert (kept.port, lost.port) == ports and kept.restarts == lost.restarts == 1
        with contextlib.closing(kept.client()) as r1, contextlib.closing(lost.client()) as r2:
            assert r1.get("k") == b"v" and r2.get("k") is None
        assert (tmp_path / "kept" / "redis.log").exists()
    assert not kept.answers() and not lost.answers()


def test_a_local_stack_stops_what_it_started_and_leaves_what_it_was_given(tmp_path: Path) -> None:
    require_redis_server()
    with MotoServer() as shared:
        # given a stack that starts its own Redis, and is given a moto server
        with LocalStack(tmp_path, moto=shared, asg_name="stack-asg", node="t") as stack:
            own_redis = stack.urls.redis_url
            assert redis_answers(own_redis) and stack.env["AWS_ENDPOINT_URL"] == shared.endpoint_url
            assert stack.env["WARMPOOL_REDIS_URL"] == own_redis and stack.worker_name("pool") == "pool@t"
            stack.create_group(min_size=0, max_size=3, desired=1)
            stack.start_pool_worker()
            assert stack.processes.alive("pool") and "pool@t" in stack.log_text("pool")
        # expect its worker and its Redis stopped, the moto server it was given still serving its group
        assert not redis_answers(own_redis)
        assert len(create_simulated_group(shared.endpoint_url, name="stack-asg")["instance_ids"]) == 1
