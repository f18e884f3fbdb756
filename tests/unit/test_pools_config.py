"""WARMPOOL_CONFIG: pools from a TOML file, the default pool, and one pool from the environment without it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.config import Settings
from tasks.errors import ConfigError, InvalidRequest, UnknownPool
from tasks.pools import DEFAULT_POOL, load_deployment
from tasks.routing import job_router
from tasks.worker.runtime import Runtimes

ISSUE_EXAMPLE = """
default_pool = "small"
[defaults]
idle_target = 2
refresh_seconds = 10
[pools.small]
asg = "ide-small"
[pools.gpu]
asg = "ide-gpu"
idle_target = 1
region = "us-east-1"
endpoint_url = "http://127.0.0.1:5000"   # optional, like AWS_ENDPOINT_URL but for this pool only
"""


def config(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "warmpool.toml"
    path.write_text(text, encoding="utf-8")
    return {"WARMPOOL_CONFIG": str(path)}


def problems(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_deployment(config(tmp_path, text))
    return "\n".join(caught.value.problems)


def test_the_issues_example_works_as_written(tmp_path: Path) -> None:
    # given the example file / when it is loaded
    d = load_deployment(config(tmp_path, ISSUE_EXAMPLE))
    # expect two pools, small the default, each with its own group, queue and settings
    assert d.names() == ("small", "gpu") and d.default_pool == "small"
    small, gpu = d.pool("small"), d.pool("gpu")
    assert (small.asg_name, small.queue, small.settings.idle_target) == ("ide-small", "pool.small", 2)
    assert (gpu.asg_name, gpu.queue, gpu.settings.idle_target) == ("ide-gpu", "pool.gpu", 1)
    assert gpu.settings.region == "us-east-1" and gpu.settings.aws_endpoint_url == "http://127.0.0.1:5000"
    assert small.settings.region == Settings().region and small.settings.aws_endpoint_url == ""
    assert small.settings.refresh_seconds == gpu.settings.refresh_seconds == 10.0
    # state namespaced by group, jobs naming pool and group
    assert (small.namespace, gpu.namespace) == ("ide-small", "ide-gpu")
    assert gpu.job_kwargs() == {"pool": "gpu", "group": "ide-gpu"}
    assert d.pool(None) is small


def test_without_a_file_the_environment_describes_one_pool_named_default(tmp_path: Path) -> None:
    # given today's variables and no file
    d = load_deployment({"WARMPOOL_ASG_NAME": "legacy-asg", "WARMPOOL_IDLE_TARGET": "5"})
    # expect one pool, default, on the same group and the same state keys as before pools
    assert d.names() == (DEFAULT_POOL,) and d.default_pool == DEFAULT_POOL
    pool = d.pool()
    assert (pool.asg_name, pool.namespace, pool.settings.idle_target, pool.queue) == (
        "legacy-asg",
        "legacy-asg",
        5,
        "pool.default",
    )
    # and jobs name a group only when the environment names one (producers configured without it)
    assert pool.job_kwargs() == {"pool": "default", "group": "legacy-asg"}
    assert load_deployment({}).pool().job_kwargs() == {"pool": "default"}


def test_precedence_pool_table_then_defaults_then_top_level_then_environment(tmp_path: Path) -> None:
    env = {
        **config(
            tmp_path,
            """
lease_seconds = 60
[defaults]
idle_target = 3
[pools.a]
asg = "a-asg"
idle_target = 7
[pools.b]
asg = "b-asg"
""",
        ),
        "WARMPOOL_IDLE_TARGET": "9",
        "WARMPOOL_READY_TIMEOUT_SECONDS": "30",
    }
    d = load_deployment(env)
    a, b = d.pool("a"), d.pool("b")
    assert (a.settings.idle_target, b.settings.idle_target) == (7, 3)
    assert a.settings.lease_seconds == b.settings.lease_seconds == 60.0
    assert a.settings.ready_timeout_seconds == 30.0  # from the environment
    assert d.default_pool == "a"  # the first pool without default_pool


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[pools.small]\nasg = 'x'\nidel_target = 2\n", "unknown key 'idel_target'"),
        ("[pools.small]\nidle_target = 2\n", "asg is required"),
        ("[pools.small]\nasg = 'x'\nidle_target = -1\n", "[pools.small]: idle_target = '-1': expected"),
        ("[pools.Small]\nasg = 'x'\n", "pool names match"),
        ("[pools.small]\nasg = 'x'\nregion = 'Mars'\n", "region = 'Mars'"),
        ("[pools.small]\nasg = 'x'\nendpoint_url = 'ftp://x'\n", "endpoint_url = 'ftp://x'"),
        ("default_pool = 'gpu'\n[pools.small]\nasg = 'x'\n", "default_pool: 'gpu' is not one of the pools"),
        ("[pools.a]\nasg = 'x'\n[pools.b]\nasg = 'x'\n", "also [pools.a]'s"),
        ("broker_url = 'redis://x'\n[pools.a]\nasg = 'x'\n", "set WARMPOOL_BROKER_URL in the environment"),
        ("[pools.a]\nasg = 'x'\nrole_arn = 'admin'\n", "role_arn = 'admin': expected an IAM role ARN"),
        ("[pools.a]\nasg = 'x'\nnamespace = ''\n", "namespace = '': expected 1-255 characters"),
        ("[pools.a]\nasg = 'x'\naws_queue = ''\n", "aws_queue = '': expected aws, or aws.<name>"),
        ("[defaults]\nrole_arn = 'x'\n[pools.a]\nasg = 'x'\n", "role_arn belongs in a [pools.NAME] table"),
        ("pools = 3\n", "no pool"),
        ("[pools]\n", "no pool"),
        ("[pools.a\nasg = 'x'\n", "not valid TOML"),
    ],
)
def test_a_bad_file_is_refused_with_a_line_naming_the_key(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in problems(tmp_path, text)


def test_every_problem_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    found = problems(tmp_path, "[pools.a]\nasg = 'x'\nidle_target = 'many'\n[pools.b]\nasg = 'y'\nbogus = 1\n")
    assert "[pools.a]: idle_target" in found and "[pools.b]: unknown key 'bogus'" in found


def test_two_pools_on_groups_of_one_name_need_their_own_namespaces(tmp_path: Path) -> None:
    d = load_deployment(
        config(
            tmp_path,
            "[pools.eu]\nasg = 'ide'\nregion = 'eu-west-1'\nnamespace = 'ide@eu'\n"
            "[pools.us]\nasg = 'ide'\nregion = 'us-east-1'\n",
        )
    )
    assert (d.pool("eu").namespace, d.pool("us").namespace) == ("ide@eu", "ide")


def test_a_missing_file_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="WARMPOOL_CONFIG='/nonexistent.toml'"):
        load_deployment({"WARMPOOL_CONFIG": "/nonexistent.toml"})


@pytest.mark.parametrize("name", ["", "GPU", "-gpu", "a" * 33, "gpu_1", "gpu.1", None, 3])
def test_a_malformed_pool_name_is_invalid_and_an_unknown_one_unknown(tmp_path: Path, name: object) -> None:
    d = load_deployment(config(tmp_path, ISSUE_EXAMPLE))
    if name is not None:
        with pytest.raises(InvalidRequest, match="malformed pool name"):
            d.pool(name)
    with pytest.raises(UnknownPool, match="unknown pool 'cpu': configured pools are small, gpu"):
        d.pool("cpu")


def test_jobs_are_routed_to_their_pools_queue_and_aws_work_to_the_pools_aws_queue(tmp_path: Path) -> None:
    # given a gpu pool with an AWS queue of its own
    d = load_deployment(config(tmp_path, ISSUE_EXAMPLE + 'aws_queue = "aws.us-east-1"\n'))
    assert d.aws_queues() == ("aws", "aws.us-east-1")
    route = job_router(d)
    # expect pool jobs on their pool's queue, AWS work on the pool's AWS queue, other tasks left alone
    assert route("warmpool.assign", [], {"pool": "gpu"}, {}) == {"queue": "pool.gpu"}
    assert route("warmpool.assign", [], {}, {}) == {"queue": "pool.small"}
    assert route("warmpool.assign", [], {"pool": "../x"}, {}) == {"queue": "pool.small"}
    assert route("warmpool.refresh", [], {"pool": "gpu"}, {}) == {"queue": "aws.us-east-1"}
    assert route("warmpool.aws.terminate", [], {"pool": "gpu"}, {}) == {"queue": "aws.us-east-1"}
    assert route("warmpool.aws.terminate", [], {"pool": "small"}, {}) == {"queue": "aws"}
    assert route("celery.chord_unlock", [], {}, {}) is None


def test_an_aws_queue_must_be_aws_or_aws_dot_a_name(tmp_path: Path) -> None:
    assert "aws_queue = 'pool.gpu': expected aws, or aws.<name>" in problems(
        tmp_path, "[pools.gpu]\nasg = 'x'\naws_queue = 'pool.gpu'\n"
    )


def test_a_worker_owns_the_pools_whose_queues_it_consumes_and_pool_means_all(tmp_path: Path) -> None:
    from celery import Celery

    d = load_deployment(config(tmp_path, ISSUE_EXAMPLE))
    one = Runtimes(Celery("t1"), d)
    assert one.own_queues(["pool.gpu", "celery@x.dq2"]) == [] and one.owned == {"gpu"}
    every = Runtimes(Celery("t2"), d)
    assert every.own_queues(["pool"]) == ["pool.small", "pool.gpu"] and every.owned == {"small", "gpu"}
    aws = Runtimes(Celery("t3"), d)
    assert aws.own_queues(["aws"]) == [] and aws.owned == frozenset()
